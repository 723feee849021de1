import ArgumentParser
import Dispatch
import Foundation
import MigrationFormat
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// Options every command that writes a file shares.
struct OutputOptions: ParsableArguments {
  @Option(name: .shortAndLong, help: ArgumentHelp("The file to write.", valueName: "OUT"))
  var output: String?

  @Flag(help: "Replace OUT if it exists; a symbolic link at OUT is replaced, not followed.")
  var force = false

  @Flag(help: "Print a JSON summary on standard output.")
  var json = false

  @Option(help: "Threads that copy pages, 1 to 1024 (default: the number of CPUs).", transform: ArgumentValue.threads)
  var threads: Int = min(1024, max(1, ProcessInfo.processInfo.activeProcessorCount))

  @Option(help: ArgumentHelp("Alignment of each block's pages region: 1m (as QEMU writes) or 4k.", valueName: "ALIGN"))
  var align: Alignment = .mebibyte

  enum Alignment: String, ExpressibleByArgument {
    case mebibyte = "1m"
    case kibibyte4 = "4k"
    var bytes: UInt64 { self == .mebibyte ? 1 << 20 : 4096 }
  }
}

enum OutputFormat: String, ExpressibleByArgument, CaseIterable {
  case mappedRAM = "mapped-ram"
  case fixedRAMRFC1 = "fixed-ram-rfc1"
  case classic
  var streamFormat: StreamFormat {
    switch self {
    case .mappedRAM: return .mappedRAM
    case .fixedRAMRFC1: return .fixedRAMRFC1
    case .classic: return .classic
    }
  }
}

/// Writes `plan` to `path` safely, with a progress bar on a terminal, and reports the result.
func writeStream(_ plan: StreamPlan, to path: String, _ options: OutputOptions, what: String) throws -> WriteSummary {
  installInterruptCleanup()
  do {
    try plan.validate()
  } catch {
    printError("error: \(error)")
    throw Failure(code: 1)
  }
  let output: OutputFile
  do {
    output = try OutputFile(path: path, overwrite: options.force)
  } catch {
    printError("error: \(error)")
    throw Failure(code: 1)
  }
  let bar = isatty(2) == 1 ? ProgressBar(label: what) : nil
  do {
    var report: (@Sendable (UInt64, UInt64) -> Void)? = nil
    if let bar { report = { done, total in bar.update(done, total) } }
    let summary = try StreamWriter.write(plan, to: output, progress: report)
    bar?.finish()
    if options.json {
      print(JSONText.encode(summary), terminator: "")
    } else {
      print(
        "\(summary.path): \(summary.format), \(formatSize(summary.ramBytes)) of RAM, \(summary.populatedPages) pages populated, "
          + "file \(formatSize(summary.fileSize)) (\(formatSize(summary.allocatedBytes)) on disk), "
          + String(format: "%.2f s", summary.seconds))
    }
    return summary
  } catch {
    bar?.finish()
    printError("error: \(error)")
    throw Failure(code: 1)
  }
}

/// On SIGINT or SIGTERM, removes the half-written temporary file and exits 130 (no file named OUT appears).
func installInterruptCleanup() {
  OutputFile.prepareForSignals()
  let handler: @convention(c) (Int32) -> Void = { sig in
    OutputFile.removeInterruptedOutputs()
    _exit(128 + sig)
  }
  signal(SIGINT, handler)
  signal(SIGTERM, handler)
  // A parent (a shell's job control, a test harness) may have left them blocked.
  var set = sigset_t()
  sigemptyset(&set)
  sigaddset(&set, SIGINT)
  sigaddset(&set, SIGTERM)
  pthread_sigmask(SIG_UNBLOCK, &set, nil)
}

/// A one-line progress bar on standard error: percentage, MB/s and ETA.
final class ProgressBar: Sendable {
  let label: String
  let start = DispatchTime.now().uptimeNanoseconds
  /// Serializes the updates of several copying threads, so lines never interleave.
  private let lock = Mutex<Void>(())
  init(label: String) {
    self.label = label
  }
  func update(_ done: UInt64, _ total: UInt64) {
    lock.withLock { _ in draw(done, total) }
  }
  private func draw(_ done: UInt64, _ total: UInt64) {
    let elapsed = max(1e-3, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
    let frac = total == 0 ? 1 : Double(done) / Double(total)
    let width = 30
    let filled = Int(frac * Double(width))
    let rate = Double(done) / elapsed
    let eta = rate > 0 ? Double(total - min(done, total)) / rate : 0
    let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
    writeStderr(
      "\r\(label) [\(bar)] \(String(format: "%3.0f%%", frac * 100)) \(formatSize(UInt64(rate)))/s ETA \(String(format: "%.0f", eta)) s   ")
  }
  func finish() { writeStderr("\n") }
}

/// Expands `pc` and `q35` to QEMU 10's versioned machine types.
func resolveMachine(_ m: String) -> String {
  switch m {
  case "pc": return "pc-i440fx-10.0"
  case "q35": return "pc-q35-10.0"
  default: return m
  }
}

/// RAM size from the size of a flat physical dump: everything above 4 GiB is high RAM.
func physmemRAMSize(dumpSize: UInt64, machine: String) throws -> UInt64 {
  let fourG: UInt64 = 1 << 32
  if dumpSize <= fourG { return (dumpSize + 4095) / 4096 * 4096 }
  let low: UInt64 = machine.contains("q35") ? 0x8000_0000 : 0xc000_0000
  return low + (dumpSize - fourG + 4095) / 4096 * 4096
}

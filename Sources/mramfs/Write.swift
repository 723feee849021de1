import ArgumentParser
import Dispatch
import Foundation
import MappedRAM

#if canImport(Glibc)
  import Glibc
#endif

/// Options every command that writes a file shares.
struct OutputOptions: ParsableArguments {
  @Option(name: .shortAndLong, help: ArgumentHelp("The file to write.", valueName: "OUT"))
  var output: String

  @Flag(help: "Replace OUT if it exists; a symbolic link at OUT is replaced, not followed.")
  var force = false

  @Flag(help: "Print a JSON summary on standard output.")
  var json = false

  @Option(help: "Threads that copy pages (default: the number of CPUs).")
  var threads: Int = ProcessInfo.processInfo.activeProcessorCount

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

/// Writes `plan` to `options.output` safely, with a progress bar on a terminal, and reports the result.
func writeStream(_ plan: StreamPlan, _ options: OutputOptions, what: String) throws -> WriteSummary {
  installInterruptCleanup()
  let output: OutputFile
  do {
    output = try OutputFile(path: options.output, overwrite: options.force)
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
      let encoder = JSONEncoder()
      encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
      print(String(decoding: try encoder.encode(summary), as: UTF8.self))
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
  let handler: @convention(c) (Int32) -> Void = { sig in
    OutputFile.removeInterruptedOutput()
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
final class ProgressBar: @unchecked Sendable {
  let label: String
  let start = DispatchTime.now().uptimeNanoseconds
  var lock = pthread_mutex_t()
  init(label: String) {
    self.label = label
    pthread_mutex_init(&lock, nil)
  }
  func update(_ done: UInt64, _ total: UInt64) {
    pthread_mutex_lock(&lock)
    defer { pthread_mutex_unlock(&lock) }
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

/// Parses sizes such as `256M`, `5G`, `1T`, `4096`.
func parseSize(_ s: String) -> UInt64? {
  let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50]
  var t = s.uppercased()
  if t.hasSuffix("IB") { t.removeLast(2) } else if t.hasSuffix("B") { t.removeLast() }
  guard let last = t.last else { return nil }
  if let m = units[last] {
    guard let v = Double(t.dropLast()), v >= 0 else { return nil }
    return UInt64(v * Double(m))
  }
  return UInt64(t)
}

extension Mramfs {
  /// `mramfs create`: a mapped-ram file from raw memory dumps.
  struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Write a mapped-ram file whose RAM blocks hold the bytes of raw files.",
      discussion: """
        Each --block NAME=RAWFILE becomes a RAM block of the file's size (rounded up to 4 KiB). \
        Zero pages are not written and their bits stay clear, so the result is sparse. \
        --from-physmem takes a flat guest-physical dump (offset N = address N) and builds pc.ram \
        with the x86 split below/above 4 GiB for --machine pc or q35.

        For QEMU to load the result, the blocks must match the destination VM's RAM blocks \
        (names and sizes, as `info ramblock` shows) and --machine must be its machine type.

        Examples:
          mramfs create -o vm.mapped --machine pc-i440fx-10.0 --block pc.ram=ram.raw
          mramfs create -o vm.mapped --machine pc-q35-10.0 --from-physmem physmem.raw
        """)

    @OptionGroup var out: OutputOptions

    @Option(help: ArgumentHelp("Machine type recorded in the file (pc, q35, or a full name such as pc-i440fx-10.0).", valueName: "TYPE"))
    var machine: String = "pc-i440fx-10.0"

    @Option(help: "Layout to write.")
    var format: OutputFormat = .mappedRAM

    @Option(name: .customLong("block"), help: ArgumentHelp("A RAM block from a raw file.", valueName: "NAME=RAWFILE"))
    var blocks: [String] = []

    @Option(help: ArgumentHelp("A flat guest-physical memory dump to turn into pc.ram.", valueName: "DUMP"))
    var fromPhysmem: String?

    @Option(help: ArgumentHelp("RAM size for --from-physmem when the dump is shorter than the RAM (e.g. 5G).", valueName: "SIZE"))
    var ram: String?

    func validate() throws {
      if blocks.isEmpty && fromPhysmem == nil { throw ValidationError("give at least one --block NAME=RAWFILE, or --from-physmem DUMP") }
      for b in blocks where !b.contains("=") { throw ValidationError("--block \(b): expected NAME=RAWFILE") }
      if let r = ram, parseSize(r) == nil { throw ValidationError("--ram \(r): expected a size such as 256M or 5G") }
    }

    func run() throws {
      let machineType = resolveMachine(machine)
      var plan = StreamPlan(machineType: machineType)
      plan.format = format.streamFormat
      plan.alignment = out.align.bytes
      plan.threads = out.threads
      do {
        if let dump = fromPhysmem {
          let f = try ImageFile(path: dump)
          let ramSize = try ram.flatMap(parseSize) ?? physmemRAMSize(dumpSize: f.size, machine: machineType)
          let layout = try X86Layout(machineType: machineType, ramSize: ramSize)
          let segs = layout.ranges.map { RawFileSource.Segment(blockOffset: $0.blockOffset, fileOffset: $0.gpa, length: $0.length) }
          plan.blocks.append(BlockPlan(name: BlockName("pc.ram"), length: ramSize, source: RawFileSource(file: f, segments: segs)))
        }
        for spec in blocks {
          let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
          let f = try ImageFile(path: parts[1])
          let length = (f.size + 4095) / 4096 * 4096
          plan.blocks.append(
            BlockPlan(
              name: BlockName(parts[0]), length: length,
              source: RawFileSource(file: f, segments: [.init(blockOffset: 0, fileOffset: 0, length: f.size)])))
        }
      } catch let e as FormatError {
        printError("error: \(e)")
        throw Failure(code: 1)
      }
      _ = try writeStream(plan, out, what: "create")
    }
  }

  /// `mramfs convert`: classic ↔ mapped-ram.
  struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Convert a classic QEMU save into a mapped-ram file, or back.",
      discussion: """
        classic -> mapped-ram replays every RAM record (the last write of a page wins; ZERO \
        records and zero pages leave the bit clear), copies every device section and command \
        unchanged, adds mapped-ram to the configuration, and keeps a libvirt header (marked \
        sparse). The result is bounded by the guest's RAM however many passes the classic \
        stream holds, mounts with `mramfs mount`, and QEMU 9.0+ restores it with the \
        mapped-ram capability on.

        mapped-ram -> classic (--to classic) writes a stream that QEMU older than 9.0, or one \
        without mapped-ram, can load.

        XBZRLE, compressed or RDMA records cannot be carried and are refused.
        """)

    @Argument(help: "The input migration file.")
    var input: String

    @Option(name: .customLong("to"), help: "The layout to write.")
    var to: OutputFormat = .mappedRAM

    @OptionGroup var out: OutputOptions

    @Flag(help: "Open an interrupted input anyway (not recommended: the result would be partial).")
    var forceInput = false

    func run() throws {
      var opts = OpenOptions()
      opts.force = forceInput
      let file: MigrationFile
      do {
        file = try MigrationFile(path: input, options: opts)
      } catch {
        printError("error: \(error)")
        throw Failure(code: 1)
      }
      if (to == .classic) == (file.format == .classic) {
        printError("error: \(input) is already \(file.format.rawValue); nothing to convert")
        throw Failure(code: 1)
      }
      let plan: StreamPlan
      do {
        plan = try Converter.plan(file, to: to.streamFormat, alignment: out.align.bytes, threads: out.threads)
      } catch {
        printError("error: \(error)")
        throw Failure(code: 1)
      }
      _ = try writeStream(plan, out, what: "convert")
    }
  }

  /// `mramfs synth`: a synthetic guest.
  struct Synth: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Write a synthetic guest of any size, for tests and benchmarks.",
      discussion: """
        Each populated page carries its block name and offset, so a page served from the wrong \
        place is easy to spot. The file is sparse: a 1 TiB guest at low density takes little disk.

        --dirty-passes N models a running guest that re-dirties a quarter of its pages on each \
        pass: a classic stream grows with every pass, a mapped-ram file does not. Both sizes \
        are printed.

        Examples:
          mramfs synth -o big.mapped --ram 1T --density 0.0001
          mramfs synth -o busy.classic --ram 1G --format classic --dirty-passes 3
        """)

    @OptionGroup var out: OutputOptions

    @Option(help: ArgumentHelp("Size of pc.ram, such as 256M, 5G or 1T.", valueName: "SIZE"))
    var ram: String

    @Option(help: "Machine type recorded in the file.")
    var machine: String = "pc-i440fx-10.0"

    @Option(help: "Fraction of pages that hold data (0 to 1).")
    var density: Double = 0.05

    @Option(help: "Passes of re-dirtied pages, as a running guest's save would hold.")
    var dirtyPasses: Int = 0

    @Option(help: "Layout to write.")
    var format: OutputFormat = .mappedRAM

    @Option(help: "Seed for which pages are populated.")
    var seed: UInt64 = 0x6d72_616d_6673

    func validate() throws {
      guard let r = parseSize(ram), r > 0, r % 4096 == 0 else { throw ValidationError("--ram \(ram): expected a multiple of 4 KiB such as 256M, 5G or 1T") }
      guard r <= Limits.blockLength else { throw ValidationError("--ram: at most 64 TiB") }
      guard density >= 0 && density <= 1 else { throw ValidationError("--density must be between 0 and 1") }
      guard dirtyPasses >= 0 && dirtyPasses <= 100 else { throw ValidationError("--dirty-passes must be between 0 and 100") }
    }

    func run() throws {
      let size = parseSize(ram)!
      let src = SyntheticSource(name: "pc.ram", pages: size / 4096, density: density, seed: seed)
      var plan = StreamPlan(machineType: resolveMachine(machine))
      plan.format = format.streamFormat
      plan.alignment = out.align.bytes
      plan.threads = out.threads
      var block = BlockPlan(name: BlockName("pc.ram"), length: size, source: src)
      let passes = dirtyPasses
      let seed = self.seed
      block.classicRepeats = { p in
        var n = 1
        for k in 0..<passes where SyntheticSource.mix(p &* 31 &+ UInt64(k) ^ seed) % 4 == 0 { n += 1 }
        return n
      }
      plan.blocks = [block]
      let summary = try writeStream(plan, out, what: "synth")
      if !out.json {
        // The other layout's size, from the same page counts: a mapped-ram file holds each page once at
        // its fixed place; a classic stream holds one record (8 + name + 4096 bytes) per page per pass.
        let populated = summary.populatedPages
        if format == .classic {
          print("the same guest as mapped-ram: about \(formatSize(size + (1 << 20) + size / 4096 / 8)) apparent, \(formatSize(populated * 4096)) of data, whatever the passes")
        } else {
          var sends: UInt64 = 0
          if passes > 0 || populated > 0 {
            var p = src.nextCandidate(from: 0)
            while let q = p {
              sends += UInt64(block.classicRepeats(q))
              p = src.nextCandidate(from: q + 1)
            }
          }
          print("the same guest as a classic stream with \(passes) dirty pass\(passes == 1 ? "" : "es"): about \(formatSize(sends * (8 + 4096)))")
        }
      }
    }
  }
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

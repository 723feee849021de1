// Every option and argument of every subcommand, given hundreds of generated hostile values:
// each command line must end with exit status 1 or 2 and exactly one line on standard error,
// never with a signal (a Swift trap), and leave no file and no mount behind.
//
// The other arguments of each command line are valid (a real mapped-ram file written by
// `mramfs synth`, an empty mount point, a raw input), so the hostile value is what the
// command has to deal with.

import Foundation
import QEMUFixtures
import Synchronization
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// A place for one run of the hostile command lines: valid inputs, odd paths, and an output
/// directory whose listing must not change.
final class HostileSandbox: Sendable {
  let root: String
  /// A valid mapped-ram file.
  let image: String
  /// A valid classic stream (convert's input).
  let classic: String
  /// A raw memory dump of 64 KiB.
  let raw: String
  /// An empty directory, to mount on.
  let mountpoint: String
  /// Where outputs go; must stay empty.
  let outputs: String
  /// A FIFO (opening it for reading would block forever).
  let fifo: String
  /// An empty directory that is not a mount.
  let directory: String

  init() throws {
    var template = Array("\(FileManager.default.temporaryDirectory.path)/mramfs-hostile.XXXXXX".utf8CString)
    guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
      throw MountTestError("mkdtemp failed")
    }
    root = String(cString: made)
    image = "\(root)/valid.mapped"
    classic = "\(root)/valid.classic"
    raw = "\(root)/raw.bin"
    mountpoint = "\(root)/mnt"
    outputs = "\(root)/out"
    fifo = "\(root)/fifo"
    directory = "\(root)/dir"
    for d in [mountpoint, outputs, directory] { mkdir(d, 0o755) }
    mkfifo(fifo, 0o644)
    var bytes = [UInt8](repeating: 0, count: 64 << 10)
    for i in stride(from: 0, to: bytes.count, by: 4096) { bytes[i] = UInt8(truncatingIfNeeded: i >> 12) | 1 }
    FileManager.default.createFile(atPath: raw, contents: Data(bytes))
    let mramfs = try CLI.mramfs()
    for (path, format) in [(image, "mapped-ram"), (classic, "classic")] {
      let r = try CLI.run(mramfs, ["synth", "-o", path, "--ram", "16M", "--density", "0.1", "--format", format])
      guard r.status == 0 else { throw MountTestError("synth \(format) failed: \(r.stderr)") }
    }
  }

  deinit {
    _ = try? FileManager.default.removeItem(atPath: root)
  }
}

/// One hostile command line.
struct HostileCase: CustomStringConvertible, Sendable {
  var slot: String
  var arguments: [String]
  var description: String {
    let shown = arguments.map { a in
      a.count > 60 ? String(a.prefix(40)) + "…(\(a.utf8.count) bytes)" : a.debugDescription
    }
    return "[\(slot)] mramfs " + shown.joined(separator: " ")
  }
}

enum HostileValues {
  /// Values no number, size, address, fraction or count option may accept.
  static let numbers: [String] = [
    "", "=", "-", "+", "-1", "+1", "--1", "+-1", "0x", "0X", "0xG", "0x-1", "0x+1", "0x 1", "1e30", "1e30G", "1E3",
    "inf", "infG", "-inf", "Infinity", "nan", "NaN", "nanG", "G", "K", "KiB", "MB", "iB", "B", "1.5.5G", "1..5G",
    ".", ".5", "5.", "5.G", "1.0000001K", "0.3B", "18446744073709551616", "18446744073709551616K",
    "99999999999999999999999999999999", "0x10000000000000000", "0x1ffffffffffffffff", "17179869184P",
    "١٢٣", "１２３", "12\u{0663}", "１G", "١G", "12 3", " 123", "123 ", "1_000", "_1", "0b101", "0o17", "017x",
    "\u{202e}123", "123\n456", "\t7", "7\u{0}", "%n%s", "$(true)", "1,5G", "1/2", "1-2",
    String(repeating: "9", count: 400), String(repeating: "x", count: 10_000),
    String(repeating: "1", count: 100) + "G",
  ].filter { !$0.contains("\u{0}") }

  /// Values no enumerated option (`--format`, `--to`, `--align`, `--bitmap-layout`) accepts.
  static let words: [String] = [
    "", "=", "-", "x", "MAPPED-RAM", "mapped_ram", "mapped-ram ", " classic", "1m\n", "4K", "le64=", "le32",
    "ä", String(repeating: "w", count: 10_000), "\u{202e}le64",
  ]

  /// Inputs that are not migration files mramfs can open.
  static func inputPaths(_ s: HostileSandbox) -> [String] {
    [
      "", "/", "/nonexistent/x", "\(s.root)/missing", s.directory, s.fifo, "/dev/null", "/dev/zero", "/dev/urandom",
      "/proc/self/mem", "\(s.root)/" + String(repeating: "p", count: 300), "/" + String(repeating: "d/", count: 3000),
      "\(s.root)/x\ny", "\(s.raw)/", "\(s.raw)/child",
    ]
  }

  /// Outputs that cannot be written (or must not be replaced without --force).
  static func outputPaths(_ s: HostileSandbox) -> [String] {
    [
      "", "/", "/nonexistent/x", s.directory, "\(HostileCase.outputDirectory)/", s.fifo, "/dev/null", "/dev/zero", s.image,
      s.raw, "\(HostileCase.outputDirectory)/" + String(repeating: "o", count: 300),
      "/" + String(repeating: "d/", count: 3000) + "f",
      "\(s.raw)/child", "/proc/self/x",
    ]
  }

  /// Mount points that cannot be mounted on.
  static func mountpoints(_ s: HostileSandbox) -> [String] {
    ["", "/", "/nonexistent/x", s.raw, s.fifo, "/dev/null", "\(s.root)/" + String(repeating: "m", count: 300), "\(s.raw)/x"]
  }

  /// Machine types `create` and `synth` must refuse.
  static let machines: [String] = [
    "", "=", "pc\nx", "pc i440fx", "ä", "pc/../x", String(repeating: "m", count: 65), String(repeating: "m", count: 10_000),
    "\u{1b}[31mred", "$(true)",
  ]

  /// `--block NAME=RAWFILE` values `create` must refuse.
  static func blocks(_ s: HostileSandbox) -> [String] {
    [
      "", "=", "==", "=\(s.raw)", "pc.ram=", "pc.ram", "pc.ram=/nonexistent", "pc.ram=\(s.directory)", "pc.ram=\(s.fifo)",
      "pc.ram=/dev/null", "pc.ram=/dev/zero", String(repeating: "n", count: 256) + "=\(s.raw)",
      String(repeating: "n", count: 10_000) + "=\(s.raw)", "a\nb=\(s.raw)", "\u{1b}=\(s.raw)", "pc.ram=\(s.raw)/x",
    ]
  }

  /// `-o` mount option strings `mount` must refuse.
  static let mountOptions: [String] = {
    var out = ["=", "=x", ",=", "uid", "gid", "threads", "lowmem", "read", "read=", "read=mmap", "uid=", "direct_io=1",
      "force=yes", "allow_other=1", "max_read=4096", "fsname=x", "subtype=y", "bogus", "ro=1", "nofollow=",
      "base", "base=", "base-mismatch", "base-mismatch=", "base-mismatch=yes", "base-mismatch=ok,base=", "base-mismatch=ok",
      String(repeating: "o", count: 10_000), "uid=\n", "\u{1b}"]
    for key in ["uid", "gid", "threads", "lowmem"] {
      for v in numbers where !v.contains(",") { out.append("\(key)=\(v)") }
    }
    for v in ["0", "257", "4294967295"] { out.append("threads=\(v)") }
    for v in ["4294967295", "4294967296"] { out.append("uid=\(v)") }
    for v in ["0", "4097", "5G", "0x100000001", "4095"] { out.append("lowmem=\(v)") }
    return out
  }()
}

extension HostileCase {
  /// Stands for the case's own output directory in its arguments (cases run several at a time).
  static let outputDirectory = "@OUT@"

  /// The arguments with ``outputDirectory`` replaced by `directory`.
  func arguments(outputDirectory directory: String) -> [String] {
    arguments.map { $0.replacingOccurrences(of: HostileCase.outputDirectory, with: directory) }
  }

  /// Every hostile command line, slot by slot.
  static func all(_ s: HostileSandbox) -> [HostileCase] {
    var cases: [HostileCase] = []
    func add(_ slot: String, _ values: [String], _ make: (String) -> [String]) {
      for v in values { cases.append(HostileCase(slot: slot, arguments: make(v))) }
    }
    let numbers = HostileValues.numbers
    let out = "\(HostileCase.outputDirectory)/result"
    // info
    add("info FILE", HostileValues.inputPaths(s)) { ["info", $0] }
    add("info --lowmem", numbers + ["0", "4097", "5G", "0x100000001"]) { ["info", s.image, "--lowmem", $0] }
    add("info --offset", numbers) { ["info", s.image, "--offset", $0] }
    add("info --bitmap-layout", HostileValues.words) { ["info", s.image, "--bitmap-layout", $0] }
    add("info --json FILE", HostileValues.inputPaths(s)) { ["info", "--json", $0] }
    // translate
    add("translate FILE", HostileValues.inputPaths(s)) { ["translate", $0, "0x1000"] }
    add("translate VADDR", numbers.filter { $0 != "1_000" }) { ["translate", s.image, $0] }
    add("translate --cpu", numbers + ["4294967296"]) { ["translate", s.image, "0x1000", "--cpu", $0] }
    add("translate --lowmem", numbers + ["0", "5G"]) { ["translate", s.image, "0x1000", "--lowmem", $0] }
    add("translate --offset", numbers) { ["translate", s.image, "0x1000", "--offset", $0] }
    // mount
    add("mount FILE", HostileValues.inputPaths(s)) { ["mount", $0, s.mountpoint] }
    add("mount MOUNTPOINT", HostileValues.mountpoints(s)) { ["mount", s.image, $0] }
    add("mount -o", HostileValues.mountOptions) { ["mount", s.image, s.mountpoint, "-o", $0] }
    add("mount --offset", numbers) { ["mount", s.image, s.mountpoint, "--offset", $0] }
    add("mount --bitmap-layout", HostileValues.words) { ["mount", s.image, s.mountpoint, "--bitmap-layout", $0] }
    add("mount --ready-fd", numbers + ["0", "1", "2", "3", "4", "99", "2147483648"]) {
      ["mount", s.image, s.mountpoint, "--ready-fd", $0]
    }
    add("FILE DIR -o (mount.fuse3 form)", HostileValues.mountOptions.prefix(40).map { $0 }) { [s.image, s.mountpoint, "-o", $0] }
    // diff (exit 2 for trouble, as cmp)
    add("diff A", HostileValues.inputPaths(s) + [s.classic]) { ["diff", $0, s.image] }
    add("diff B", HostileValues.inputPaths(s) + [s.classic]) { ["diff", s.image, $0] }
    add("diff --threads", numbers + ["0", "1025"]) { ["diff", s.image, s.image, "--threads", $0] }
    add("diff --offset", numbers) { ["diff", s.image, s.image, "--offset", $0] }
    add("diff --bitmap-layout", HostileValues.words) { ["diff", s.image, s.image, "--bitmap-layout", $0] }
    add("mount -o base=", HostileValues.inputPaths(s).filter { !$0.contains(",") } + [s.classic]) {
      ["mount", s.image, s.mountpoint, "-o", "base=\($0)"]
    }
    // unmount
    add("unmount MOUNTPOINT", HostileValues.mountpoints(s) + [s.directory]) { ["unmount", $0] }
    // create
    add("create -o", HostileValues.outputPaths(s)) { ["create", "-o", $0, "--block", "pc.ram=\(s.raw)"] }
    add("create --block", HostileValues.blocks(s)) { ["create", "-o", out, "--block", $0] }
    add("create --machine", HostileValues.machines) { ["create", "-o", out, "--block", "pc.ram=\(s.raw)", "--machine", $0] }
    add("create --format", HostileValues.words) { ["create", "-o", out, "--block", "pc.ram=\(s.raw)", "--format", $0] }
    add("create --align", HostileValues.words + ["2m", "0", "4096"]) { ["create", "-o", out, "--block", "pc.ram=\(s.raw)", "--align", $0] }
    add("create --threads", numbers + ["0", "1025"]) { ["create", "-o", out, "--block", "pc.ram=\(s.raw)", "--threads", $0] }
    add("create --from-physmem", HostileValues.inputPaths(s)) { ["create", "-o", out, "--from-physmem", $0] }
    add("create --ram", numbers + ["0", "4097", "65T"]) { ["create", "-o", out, "--from-physmem", s.raw, "--ram", $0] }
    add("create (duplicate blocks)", ["pc.ram", "x"]) { ["create", "-o", out, "--block", "\($0)=\(s.raw)", "--block", "\($0)=\(s.raw)"] }
    // convert
    add("convert IN", HostileValues.inputPaths(s)) { ["convert", $0, out] }
    add("convert OUT", HostileValues.outputPaths(s)) { ["convert", s.classic, $0] }
    add("convert -o", HostileValues.outputPaths(s)) { ["convert", s.classic, "-o", $0] }
    add("convert OUT and -o", [out]) { ["convert", s.classic, $0, "-o", $0] }
    add("convert --to", HostileValues.words) { ["convert", s.classic, out, "--to", $0] }
    add("convert --threads", numbers + ["0", "1025"]) { ["convert", s.classic, out, "--threads", $0] }
    add("convert --align", HostileValues.words) { ["convert", s.classic, out, "--align", $0] }
    // synth
    add("synth -o", HostileValues.outputPaths(s)) { ["synth", "-o", $0, "--ram", "1M"] }
    add("synth --ram", numbers + ["0", "4097", "65T", "0.5K"]) { ["synth", "-o", out, "--ram", $0] }
    add("synth --density", numbers + ["1.1", "2", "101%", "0.0000001", "-0"]) { ["synth", "-o", out, "--ram", "1M", "--density", $0] }
    add("synth --dirty-passes", numbers + ["101", "-5"]) { ["synth", "-o", out, "--ram", "1M", "--dirty-passes", $0] }
    add("synth --seed", numbers.filter { $0 != "1_000" }) { ["synth", "-o", out, "--ram", "1M", "--seed", $0] }
    add("synth --machine", HostileValues.machines) { ["synth", "-o", out, "--ram", "1M", "--machine", $0] }
    add("synth --format", HostileValues.words) { ["synth", "-o", out, "--ram", "1M", "--format", $0] }
    add("synth --threads", numbers + ["0", "1025"]) { ["synth", "-o", out, "--ram", "1M", "--threads", $0] }
    return cases
  }
}

@Suite("Hostile command lines")
struct HostileArgumentTests {
  /// The outcome of one command line, for the summary.
  enum Outcome: Sendable { case ok, signal, badStatus, notOneLine, leftovers }

  @Test("every option and argument of every subcommand: exit 1 or 2, one line on stderr, no signal, nothing left behind")
  func hostileCommandLines() throws {
    let sandbox = try HostileSandbox()
    let mramfs = try CLI.mramfs()
    var all = HostileCase.all(sandbox)
    // MRAMFS_HOSTILE_SKIP=mount,unmount leaves out the slots starting with those words (to
    // count an older binary's crashes without letting it mount over `/`).
    let skip = (ProcessInfo.processInfo.environment["MRAMFS_HOSTILE_SKIP"] ?? "").split(separator: ",").map(String.init)
    all.removeAll { c in skip.contains { c.slot.hasPrefix($0) } }
    let cases = all
    if skip.isEmpty { #expect(cases.count > 600, "only \(cases.count) hostile command lines") }
    let counts = Mutex<[String: Int]>([:])
    let failures = Mutex<[String]>([])
    // Several at a time: each command is small, and a mount case may wait for a daemon.
    let next = Atomic<Int>(0)
    DispatchQueue.concurrentPerform(iterations: 4) { _ in
      while true {
        let i = next.wrappingAdd(1, ordering: .relaxed).oldValue
        guard i < cases.count else { return }
        let outcome = HostileArgumentTests.check(cases[i], index: i, mramfs: mramfs, sandbox: sandbox)
        counts.withLock { $0[String(describing: outcome.0), default: 0] += 1 }
        if let why = outcome.1 { failures.withLock { $0.append(why) } }
      }
    }
    let summary = counts.withLock { $0 }
    print("hostile command lines: \(cases.count) tried; outcomes \(summary.sorted { $0.key < $1.key })")
    for f in failures.withLock({ $0 }).prefix(60) { Issue.record(Comment(rawValue: f)) }
    #expect(summary["signal", default: 0] == 0, "command lines ended by a signal")
    #expect(failures.withLock { $0.count } == 0)
    // Nothing left in the outputs directory, no mount on the mount point.
    #expect((try? FileManager.default.contentsOfDirectory(atPath: sandbox.outputs)) == [])
    #expect(MountSupport.mount(at: sandbox.mountpoint) == nil)
  }

  /// Runs one case and judges it; returns the outcome and, when it is not ok, why.
  static func check(_ c: HostileCase, index: Int, mramfs: String, sandbox: HostileSandbox) -> (Outcome, String?) {
    let outputs = "\(sandbox.outputs)/\(index)"
    mkdir(outputs, 0o755)
    defer { rmdir(outputs) }
    let result: CommandResult
    do {
      result = try CLI.run(mramfs, c.arguments(outputDirectory: outputs), timeout: .seconds(60))
    } catch {
      return (.badStatus, "\(c): \(error)")
    }
    // Whatever happened, leave nothing behind for the next case.
    var leftovers: [String] = []
    if MountSupport.mount(at: sandbox.mountpoint) != nil {
      leftovers.append("a mount on \(sandbox.mountpoint)")
      MountSupport.unmount(sandbox.mountpoint)
    }
    for name in (try? FileManager.default.contentsOfDirectory(atPath: outputs)) ?? [] {
      leftovers.append("\(outputs)/\(name)")
      try? FileManager.default.removeItem(atPath: "\(outputs)/\(name)")
    }
    if !result.exitedNormally {
      return (.signal, "\(c): ended by signal \(result.status); stderr: \(result.stderr.prefix(300))")
    }
    if result.status != 1 && result.status != 2 {
      return (.badStatus, "\(c): exit status \(result.status), expected 1 or 2; stderr: \(result.stderr.prefix(300))")
    }
    let lines = result.stderr.split(separator: "\n", omittingEmptySubsequences: false)
    if lines.count != 2 || !lines[1].isEmpty || lines[0].isEmpty {
      return (.notOneLine, "\(c): \(lines.count - 1) lines on stderr, expected one: \(result.stderr.prefix(400).debugDescription)")
    }
    if !leftovers.isEmpty {
      return (.leftovers, "\(c): left behind \(leftovers.joined(separator: ", "))")
    }
    return (.ok, nil)
  }
}

// The real QEMU fixtures (scripts/make-fixtures.py) and their manifest, shared by
// the QEMUTests and MountTests targets.
//
// Where the files come from:
//   * MRAMFS_FIXTURES set: that directory, which must hold manifest.json.
//   * unset and CI=true: a failure (CI must make them, see scripts/test.sh).
//   * unset otherwise: <repo>/.fixtures, made once by `python3 scripts/make-fixtures.py`
//     when it is missing or older than the guest or the script (as scripts/test.sh
//     does); a file lock keeps the two test targets from making it at once.
// Nothing is ever skipped: a missing fixture is a failed test, with the reason.

import Foundation
import MigrationFormat

#if canImport(Glibc)
  import Glibc
#endif

/// A failure of the fixture machinery, with what to do about it.
public struct FixtureError: Error, CustomStringConvertible {
  public let description: String
  public init(_ description: String) { self.description = description }
}

/// The scenarios make-fixtures.py writes (its `SCENARIOS`), in its order.
public enum ScenarioName {
  public static let all = [
    "pc-256", "q35-256-mfd", "pc-5g", "q35-5g-mfd", "pc-256-libvirt", "pc-256-libvirt-part",
    "pc-256-live", "pc-256-classic", "pc-256-novmdesc",
  ]
  /// Every scenario whose file is a mapped-ram stream (bare or behind a libvirt header).
  public static let mappedRAM = all.filter { $0 != "pc-256-classic" }
  /// The mapped-ram scenarios that open without `force`.
  public static let complete = mappedRAM.filter { $0 != "pc-256-libvirt-part" }
}

/// manifest.json, as far as the tests read it. Integers decode from the JSON text
/// itself (swift-foundation's parser), so 64-bit values are exact; the fields above
/// 2^53 (registers, virtual addresses) are not read at all.
public struct FixtureManifest: Decodable, Sendable {
  public var format: Int
  public var qemuVersion: String
  public var guest: Guest
  public var scenarios: [Scenario]
  /// Scenarios added later (pc-256-live-classic, pc-numa-5g); absent in older manifests.
  public var extraScenarios: [ExtraScenario]?
  /// The real Linux guests (scripts/fixtures/linux.py); absent in older manifests.
  public var linux: LinuxFixture?

  /// An entry of "extra_scenarios": the scenario, or nil where the entry has another shape
  /// (pc-256-live-classic's stale_region describes records, not bits).
  public struct ExtraScenario: Decodable, Sendable {
    public var scenario: Scenario?
    public init(from decoder: any Decoder) throws { scenario = try? Scenario(from: decoder) }
  }

  enum CodingKeys: String, CodingKey {
    case format, guest, scenarios, linux
    case qemuVersion = "qemu_version"
    case extraScenarios = "extra_scenarios"
  }

  public struct Guest: Decodable, Sendable {
    public var readyGPA: UInt64
    public var markerStrings: [String: String]
    public var patterns: [Pattern]
    public var stale: Stale
    /// Markers written through virtual addresses, by marker name (`virt_marker`).
    public var virtualMarkers: [String: VirtualMarker]?

    enum CodingKeys: String, CodingKey {
      case readyGPA = "ready_gpa"
      case markerStrings = "marker_strings"
      case patterns, stale
      case virtualMarkers = "virtual_markers"
    }
  }

  public struct Pattern: Decodable, Sendable {
    public var gpa: UInt64
    public var length: UInt64
    public var onlyIfHighRAM: Bool
    enum CodingKeys: String, CodingKey {
      case gpa, length
      case onlyIfHighRAM = "only_if_high_ram"
    }
  }

  public struct Stale: Decodable, Sendable {
    public var gpa: UInt64
    public var length: UInt64
    public var fill: UInt8
  }

  public struct Scenario: Decodable, Sendable {
    public var name: String
    public var file: String
    public var kind: String
    public var machineType: String
    public var ramBytes: UInt64
    public var multifd: Bool
    public var live: Bool
    public var vmdesc: Bool
    public var vga: Bool
    public var streamOffset: UInt64
    public var libvirt: Libvirt?
    public var ramblocks: [RAMBlockInfo]
    public var pcram: String
    public var pcramLayout: [LayoutSegment]
    public var lowmem: UInt64
    public var compareExclude: [[UInt64]]
    public var markers: [String: UInt64]
    public var readyMarkerAtSave: String
    public var staleRegion: StaleRegion?
    public var fileSize: UInt64
    public var fileInfo: FileInfo
    /// The same stopped guest saved as a classic stream first, when the generator made one.
    public var classicFile: String?
    /// QEMU's own `dump-guest-memory` (ELF, paging=false) of the same paused guest, when the generator made one.
    public var elfDump: String?
    /// The blocks that make main RAM in node order, for a NUMA guest (no pc.ram); nil means pc.ram.
    public var mainRAMBlocks: [String]?
    /// QEMU's HMP `info registers` of the stopped guest, parsed (only its segments are read here).
    public var registers: HMPRegisters?
    /// The same registers' integer values as hex strings (`RAX`, `RIP`, `RFL`, `CR3`, `EFER`, …), exact above 2^53.
    public var registersHex: [String: String]?

    enum CodingKeys: String, CodingKey {
      case name, file, kind, multifd, live, vmdesc, vga, libvirt, ramblocks, pcram, lowmem, markers
      case machineType = "machine_type"
      case ramBytes = "ram_bytes"
      case streamOffset = "stream_offset"
      case pcramLayout = "pcram_layout"
      case compareExclude = "compare_exclude"
      case readyMarkerAtSave = "ready_marker_at_save"
      case staleRegion = "stale_region"
      case fileSize = "file_size"
      case fileInfo = "file_info"
      case classicFile = "classic_file"
      case elfDump = "elf_dump"
      case mainRAMBlocks = "main_ram_blocks"
      case registers
      case registersHex = "registers_hex"
    }
  }

  /// The `segments` of a scenario's parsed `info registers`: ES…GS, LDT, TR with
  /// selector/base/limit/flags, and GDT/IDT with base/limit.
  public struct HMPRegisters: Decodable, Sendable {
    public var segments: [String: [String: UInt64]]
  }

  /// A marker the guest wrote through a virtual address.
  public struct VirtualMarker: Decodable, Sendable {
    public var vaHex: String
    public var gpa: UInt64
    enum CodingKeys: String, CodingKey {
      case gpa
      case vaHex = "va_hex"
    }
  }

  public struct Libvirt: Decodable, Sendable {
    public var magic: String
    public var version: UInt32
    public var dataLen: UInt32
    public var wasRunning: UInt32
    public var format: UInt32
    public var xml: String
    enum CodingKeys: String, CodingKey {
      case magic, version, format, xml
      case dataLen = "data_len"
      case wasRunning = "was_running"
    }
  }

  /// One line of QEMU's `info ramblock`.
  public struct RAMBlockInfo: Decodable, Sendable {
    public var name: String
    public var pageSize: UInt64
    public var usedLength: UInt64
    public var maxLength: UInt64
    public var readOnly: Bool
    enum CodingKeys: String, CodingKey {
      case name
      case pageSize = "page_size"
      case usedLength = "used_length"
      case maxLength = "max_length"
      case readOnly = "read_only"
    }
  }

  /// Guest-physical [gpa, gpa + length) is pc.ram (and .pcram) [pcramOffset, pcramOffset + length).
  public struct LayoutSegment: Decodable, Sendable {
    public var gpa: UInt64
    public var length: UInt64
    public var pcramOffset: UInt64
    enum CodingKeys: String, CodingKey {
      case gpa, length
      case pcramOffset = "pcram_offset"
    }
  }

  public struct StaleRegion: Decodable, Sendable {
    public var gpa: UInt64
    public var length: UInt64
    public var fillInPagesRegion: UInt8
    public var bits: String
    enum CodingKeys: String, CodingKey {
      case gpa, length, bits
      case fillInPagesRegion = "fill_in_pages_region"
    }
  }

  /// What make-fixtures.py's own, independent reader found in the file.
  public struct FileInfo: Decodable, Sendable {
    public var streamOffset: UInt64
    public var machineType: String?
    public var capabilities: [String]
    public var blocks: [Block]
    public var memSizeTotal: UInt64
    public var vmdesc: VMDesc?

    enum CodingKeys: String, CodingKey {
      case capabilities, blocks, vmdesc
      case streamOffset = "stream_offset"
      case machineType = "machine_type"
      case memSizeTotal = "mem_size_total"
    }

    public struct Block: Decodable, Sendable {
      public var name: String
      public var usedLength: UInt64
      public var entryOffset: UInt64
      public var headerOffset: UInt64?
      public var bitmapOffset: UInt64?
      public var pagesOffset: UInt64?
      public var bitmapSize: UInt64?
      public var bitsSet: UInt64?
      enum CodingKeys: String, CodingKey {
        case name
        case usedLength = "used_length"
        case entryOffset = "entry_offset"
        case headerOffset = "header_offset"
        case bitmapOffset = "bitmap_offset"
        case pagesOffset = "pages_offset"
        case bitmapSize = "bitmap_size"
        case bitsSet = "bits_set"
      }
    }

    public struct VMDesc: Decodable, Sendable {
      public var offset: UInt64
      public var length: UInt64
      public var devices: Int
    }
  }
}

extension FixtureManifest.Scenario {
  /// The .pcram ranges (pc.ram offsets) that may legitimately differ, from the GPA ranges of `compare_exclude`.
  public var excludedBlockRanges: [Range<UInt64>] {
    compareExclude.compactMap { pair -> Range<UInt64>? in
      guard pair.count == 2 else { return nil }
      let (lo, hi) = (pair[0], pair[1])
      for seg in pcramLayout where lo >= seg.gpa && hi <= seg.gpa + seg.length {
        return (seg.pcramOffset + lo - seg.gpa)..<(seg.pcramOffset + hi - seg.gpa)
      }
      return nil
    }
  }

  /// The pc.ram offset of guest-physical address `gpa`, if it is RAM.
  public func blockOffset(ofGPA gpa: UInt64) -> UInt64? {
    for seg in pcramLayout where gpa >= seg.gpa && gpa < seg.gpa + seg.length {
      return seg.pcramOffset + (gpa - seg.gpa)
    }
    return nil
  }
}

/// The loaded fixture directory.
public final class Fixtures: Sendable {
  public let directory: String
  public let manifest: FixtureManifest

  public init(directory: String) throws {
    self.directory = directory
    let url = URL(fileURLWithPath: directory).appendingPathComponent("manifest.json")
    let data: Data
    do {
      data = try Data(contentsOf: url)
    } catch {
      throw FixtureError("cannot read \(url.path): \(error)")
    }
    do {
      manifest = try JSONDecoder().decode(FixtureManifest.self, from: data)
    } catch {
      throw FixtureError("cannot decode \(url.path): \(error)")
    }
  }

  /// The absolute path of a file named in the manifest.
  public func path(_ relative: String) -> String { "\(directory)/\(relative)" }

  /// The scenario `name`, or a failure saying the manifest lacks it.
  public func scenario(_ name: String) throws -> FixtureManifest.Scenario {
    let all = manifest.scenarios + (manifest.extraScenarios ?? []).compactMap(\.scenario)
    guard let s = all.first(where: { $0.name == name }) else {
      throw FixtureError(
        "manifest \(directory)/manifest.json has no scenario \(name) (it has \(manifest.scenarios.map(\.name)))")
    }
    return s
  }

  // MARK: Loading, once per process

  private final class Cache: @unchecked Sendable {
    let lock = NSLock()
    var result: Result<Fixtures, FixtureError>?
  }
  private static let cache = Cache()

  /// The repository root, from this file's path.
  public static let repositoryRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }  // Fixtures.swift, QEMUFixtures, Tests
    return url.path
  }()

  /// The fixtures, made first when the environment asks for it (see the top of this file).
  public static func load() throws -> Fixtures {
    cache.lock.lock()
    defer { cache.lock.unlock() }
    if let result = cache.result { return try result.get() }
    let result: Result<Fixtures, FixtureError>
    do {
      result = .success(try Fixtures(directory: try locate()))
    } catch let e as FixtureError {
      result = .failure(e)
    } catch {
      result = .failure(FixtureError("\(error)"))
    }
    cache.result = result
    return try result.get()
  }

  private static func locate() throws -> String {
    let env = ProcessInfo.processInfo.environment
    if let dir = env["MRAMFS_FIXTURES"], !dir.isEmpty {
      guard FileManager.default.fileExists(atPath: "\(dir)/manifest.json") else {
        throw FixtureError(
          "MRAMFS_FIXTURES=\(dir) has no manifest.json; make the files with `python3 scripts/make-fixtures.py \(dir)`")
      }
      return dir
    }
    if env["CI"]?.lowercased() == "true" {
      throw FixtureError(
        "MRAMFS_FIXTURES is not set and CI=true: CI must make the real QEMU fixtures first (scripts/test.sh does) "
          + "and point MRAMFS_FIXTURES at them; the tests never skip them")
    }
    let root = repositoryRoot
    let dir = "\(root)/.fixtures"
    // Another test target in this process (or another `swift test`) may be making them.
    let lockFD = open("\(root)/.fixtures.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
    guard lockFD >= 0 else {
      throw FixtureError("cannot create \(root)/.fixtures.lock: \(String(cString: strerror(errno)))")
    }
    defer { close(lockFD) }
    while flock(lockFD, LOCK_EX) != 0 && errno == EINTR {}
    if isFresh(dir: dir, root: root) { return dir }
    try? FileManager.default.removeItem(atPath: dir)
    let log = "\(root)/.fixtures.log"
    _ = FileManager.default.createFile(atPath: log, contents: nil)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["python3", "\(root)/scripts/make-fixtures.py", dir]
    p.standardInput = FileHandle.nullDevice
    guard let out = FileHandle(forWritingAtPath: log) else { throw FixtureError("cannot write \(log)") }
    p.standardOutput = out
    p.standardError = out
    do {
      try p.run()
    } catch {
      throw FixtureError("cannot run python3 \(root)/scripts/make-fixtures.py: \(error)")
    }
    p.waitUntilExit()
    try? out.close()
    guard p.terminationReason == .exit, p.terminationStatus == 0,
      FileManager.default.fileExists(atPath: "\(dir)/manifest.json")
    else {
      let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
      throw FixtureError(
        "MRAMFS_FIXTURES is not set, and `python3 scripts/make-fixtures.py \(dir)` failed "
          + "(status \(p.terminationStatus)); the end of its log \(log):\n\(text.suffix(3000))")
    }
    return dir
  }

  /// Whether `dir` has a manifest newer than the guest and the script that make it (scripts/test.sh's rule).
  private static func isFresh(dir: String, root: String) -> Bool {
    func mtime(_ path: String) -> Date? {
      (try? FileManager.default.attributesOfItem(atPath: path))?[.modificationDate] as? Date
    }
    guard let manifest = mtime("\(dir)/manifest.json") else { return false }
    for source in ["Tests/Guest/guest.S", "scripts/make-fixtures.py", "scripts/fixtures"] + (FileManager.default.subpaths(atPath: "\(root)/scripts/fixtures") ?? []).map({ "scripts/fixtures/\($0)" }) {
      if let m = mtime("\(root)/\(source)"), m > manifest { return false }
    }
    return true
  }
}

// MARK: - Reading helpers

/// An aligned scratch buffer that frees itself.
public final class Buffer: @unchecked Sendable {
  public let raw: UnsafeMutableRawBufferPointer
  public init(_ count: Int, fill: UInt8 = 0) {
    raw = .allocate(byteCount: max(count, 1), alignment: 4096)
    raw.initializeMemory(as: UInt8.self, repeating: fill)
  }
  deinit { raw.deallocate() }
  public var base: UnsafeMutableRawPointer { raw.baseAddress! }
  public func slice(_ count: Int) -> UnsafeMutableRawBufferPointer {
    UnsafeMutableRawBufferPointer(rebasing: raw[0..<count])
  }
}

/// 4 MiB of zeros, to memcmp against.
public let zeros = Buffer(4 << 20)

/// Whether `count` bytes at `p` are all zero.
public func isZero(_ p: UnsafeRawPointer, _ count: Int) -> Bool {
  var off = 0
  while off < count {
    let n = min(count - off, zeros.raw.count)
    if memcmp(p + off, zeros.base, n) != 0 { return false }
    off += n
  }
  return true
}

/// The offset of the first byte that differs in two buffers of `count` bytes, or nil.
public func firstDifference(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ count: Int) -> Int? {
  guard memcmp(a, b, count) != 0 else { return nil }
  // Narrow down by pages first so the byte loop stays short in debug builds.
  var page = 0
  while page < count {
    let n = min(4096, count - page)
    if memcmp(a + page, b + page, n) != 0 {
      for i in page..<page + n where a.load(fromByteOffset: i, as: UInt8.self) != b.load(fromByteOffset: i, as: UInt8.self) {
        return i
      }
    }
    page += n
  }
  return nil
}

/// Reads `count` bytes at `offset` from `fd` with pread, retrying short reads; returns the bytes read.
public func preadFully(_ fd: Int32, _ into: UnsafeMutableRawPointer, _ count: Int, _ offset: UInt64) -> Int {
  var done = 0
  while done < count {
    let n = pread(fd, into + done, count - done, off_t(offset) + off_t(done))
    if n > 0 {
      done += n
    } else if n == 0 {
      break
    } else if errno != EINTR {
      return -1
    }
  }
  return done
}

/// The first data offset at or after `offset` in `fd` (SEEK_DATA), or nil when there is none (ENXIO).
public func seekData(_ fd: Int32, _ offset: UInt64) -> UInt64? {
  let r = lseek(fd, off_t(offset), 3 /* SEEK_DATA */)
  return r < 0 ? nil : UInt64(r)
}

/// The first hole at or after `offset` in `fd` (SEEK_HOLE), or nil (ENXIO).
public func seekHole(_ fd: Int32, _ offset: UInt64) -> UInt64? {
  let r = lseek(fd, off_t(offset), 4 /* SEEK_HOLE */)
  return r < 0 ? nil : UInt64(r)
}

/// `[start, start + count)` cut into parts inside and outside `excluded`, in order.
public func split(_ start: UInt64, _ count: UInt64, by excluded: [Range<UInt64>]) -> [(range: Range<UInt64>, excluded: Bool)] {
  var parts: [(Range<UInt64>, Bool)] = []
  var pos = start
  let end = start + count
  while pos < end {
    if let r = excluded.first(where: { $0.contains(pos) }) {
      let stop = min(r.upperBound, end)
      parts.append((pos..<stop, true))
      pos = stop
    } else {
      let next = excluded.map(\.lowerBound).filter { $0 > pos }.min() ?? end
      let stop = min(next, end)
      parts.append((pos..<stop, false))
      pos = stop
    }
  }
  return parts
}

/// The errno of a call that returned -1, or nil when it succeeded; errno is read right after the call.
public func errnoOf(_ call: () -> Int) -> Int32? {
  errno = 0
  let r = call()
  let e = errno
  return r == -1 ? e : nil
}

// MARK: - Running the CLI

/// What a finished command printed.
public struct CommandResult {
  public var status: Int32
  public var exitedNormally: Bool
  public var stdout: String
  public var stderr: String
  public var stdoutData: Data
  /// Standard error's non-empty lines.
  public var stderrLines: [String] { stderr.split(separator: "\n", omittingEmptySubsequences: true).map(String.init) }
}

public enum CLI {
  /// The directory of the built executables: MRAMFS_BIN_DIR, else beside the test binary.
  public static func productsDirectory() -> String {
    if let dir = ProcessInfo.processInfo.environment["MRAMFS_BIN_DIR"], !dir.isEmpty { return dir }
    if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
      return URL(fileURLWithPath: exe).deletingLastPathComponent().path
    }
    return FileManager.default.currentDirectoryPath
  }

  /// The built `mramfs`, or a failure saying how to build it.
  public static func mramfs() throws -> String {
    let path = "\(productsDirectory())/mramfs"
    guard access(path, X_OK) == 0 else {
      throw FixtureError("\(path) is not built: run `swift build` first (or set MRAMFS_BIN_DIR)")
    }
    return path
  }

  /// Runs `executable` with `arguments` to completion (at most `timeout`), capturing both streams in files.
  ///
  /// It uses posix_spawn with every descriptor above 2 closed in the child, not Foundation's
  /// `Process`: `Process` learns that its child exited when the last holder of a socket it
  /// hands the child closes it, and a daemon started by the child (`mramfs mount`, mount(8))
  /// inherits that socket and keeps it open for as long as the mount lives.
  public static func run(
    _ executable: String, _ arguments: [String], environment: [String: String]? = nil,
    timeout: Duration = .seconds(60)
  ) throws -> CommandResult {
    let tmp = FileManager.default.temporaryDirectory.path
    let stamp = "\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
    let outPath = "\(tmp)/mramfs-cli-\(stamp).out"
    let errPath = "\(tmp)/mramfs-cli-\(stamp).err"
    defer {
      unlink(outPath)
      unlink(errPath)
    }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    guard closeFrom(&actions, 3) == 0 else {
      throw FixtureError("posix_spawn_file_actions_addclosefrom_np failed (glibc 2.34 or later is needed)")
    }
    let env = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    let envp = env.map { strdup($0) } + [nil]
    defer {
      for p in argv { free(p) }
      for p in envp { free(p) }
    }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, executable, &actions, nil, argv, envp)
    guard rc == 0 else {
      throw FixtureError("cannot start \(executable): \(String(cString: strerror(rc)))")
    }
    var status: Int32 = 0
    let deadline = ContinuousClock.now + timeout
    while true {
      let r = waitpid(pid, &status, WNOHANG)
      if r == pid { break }
      if r < 0 && errno != EINTR {
        throw FixtureError("waitpid \(pid): \(String(cString: strerror(errno)))")
      }
      if ContinuousClock.now >= deadline {
        kill(pid, SIGKILL)
        _ = waitpid(pid, &status, 0)
        throw FixtureError("\(executable) \(arguments.joined(separator: " ")) did not finish within \(timeout)")
      }
      usleep(2_000)
    }
    let outData = FileManager.default.contents(atPath: outPath) ?? Data()
    let errData = FileManager.default.contents(atPath: errPath) ?? Data()
    let exited = status & 0x7f == 0
    return CommandResult(
      status: exited ? (status >> 8) & 0xff : status & 0x7f, exitedNormally: exited,
      stdout: String(decoding: outData, as: UTF8.self), stderr: String(decoding: errData, as: UTF8.self),
      stdoutData: outData)
  }

  /// glibc's posix_spawn_file_actions_addclosefrom_np (2.34+), which the Glibc module does not import.
  private static func closeFrom(_ actions: UnsafeMutablePointer<posix_spawn_file_actions_t>, _ fd: Int32) -> Int32 {
    typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np")
    else { return -1 }
    return unsafeBitCast(symbol, to: AddCloseFrom.self)(actions, fd)
  }
}

// MARK: - Damaged copies

/// Makes sparse copies of fixture files to damage, in a directory removed on deinit.
public final class ScratchDirectory {
  public let path: String
  public init() throws {
    var template = Array("\(FileManager.default.temporaryDirectory.path)/mramfs-damaged.XXXXXX".utf8CString)
    guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
      throw FixtureError("mkdtemp failed: \(String(cString: strerror(errno)))")
    }
    path = String(cString: made)
  }
  deinit { try? FileManager.default.removeItem(atPath: path) }

  /// A copy of `source`'s first `length` bytes (all of it when nil), holes kept as holes.
  public func copy(_ source: String, as name: String, length: UInt64? = nil) throws -> String {
    let dest = "\(path)/\(name)"
    let src = open(source, O_RDONLY | O_CLOEXEC)
    guard src >= 0 else { throw FixtureError("cannot open \(source): \(String(cString: strerror(errno)))") }
    defer { close(src) }
    let dst = open(dest, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard dst >= 0 else { throw FixtureError("cannot create \(dest): \(String(cString: strerror(errno)))") }
    defer { close(dst) }
    var st = stat()
    fstat(src, &st)
    let size = min(UInt64(st.st_size), length ?? UInt64.max)
    let buf = Buffer(1 << 20)
    defer { withExtendedLifetime(buf) {} }  // its memory is used through raw pointers
    var pos: UInt64 = 0
    while pos < size, let data = seekData(src, pos), data < size {
      let end = min(seekHole(src, data) ?? size, size)
      var at = data
      while at < end {
        let n = Int(min(UInt64(buf.raw.count), end - at))
        guard preadFully(src, buf.base, n, at) == n, pwrite(dst, buf.base, n, off_t(at)) == n else {
          throw FixtureError("copying \(source) to \(dest) failed at \(at)")
        }
        at += UInt64(n)
      }
      pos = end
    }
    guard ftruncate(dst, off_t(size)) == 0 else { throw FixtureError("cannot size \(dest)") }
    return dest
  }

  /// Overwrites bytes of `file` at `offset`.
  public func patch(_ file: String, at offset: UInt64, with bytes: [UInt8]) throws {
    let fd = open(file, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { throw FixtureError("cannot open \(file)") }
    defer { close(fd) }
    let n = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, off_t(offset)) }
    guard n == bytes.count else { throw FixtureError("cannot patch \(file) at \(offset)") }
  }
}

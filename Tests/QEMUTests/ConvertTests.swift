// `mramfs convert` and `mramfs create`, proven against real QEMU 10: classic streams that
// QEMU saved are converted and compared block by block with QEMU's own mapped-ram save of
// the same stopped guest, and converted or created files are restored into a fresh QEMU
// (scripts/qemu-load.py: `-incoming defer`, `migrate-incoming file:`) whose memory is then
// compared with the ground truth the fixtures took from the original guest.
//
// Fixtures: scripts/make-fixtures.py (see Fixtures.swift for where they come from). This
// file reads the manifest keys it needs itself: classic_file, classic_heartbeat, heartbeat
// and classic_differs of the pc-256, q35-256-mfd, pc-5g and q35-5g-mfd scenarios, and the
// live classic save pc-256-live-classic under "extra_scenarios".

import Foundation
import GuestViews
import MigrationFormat
import QEMUFixtures
import Testing

#if canImport(Glibc)
  import Glibc
#endif

// MARK: - Support

/// A failure of this file's test machinery.
struct ConvertTestError: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}

/// The parts of manifest.json the writer tests read.
struct WriterManifest: Decodable {
  var guest: Guest
  var scenarios: [Scenario]
  var extraScenarios: [Scenario]?

  enum CodingKeys: String, CodingKey {
    case guest, scenarios
    case extraScenarios = "extra_scenarios"
  }

  struct Guest: Decodable {
    var heartbeatGPA: UInt64
    var readyGPA: UInt64
    enum CodingKeys: String, CodingKey {
      case heartbeatGPA = "heartbeat_gpa"
      case readyGPA = "ready_gpa"
    }
  }

  struct Scenario: Decodable {
    var name: String
    var file: String
    var kind: String
    var machineType: String
    var ramBytes: UInt64
    var live: Bool
    var accel: String
    var pcram: String
    var lowmem: UInt64
    var compareExclude: [[UInt64]]
    var streamOffset: UInt64
    var classicFile: String?
    var classicHeartbeat: UInt64?
    var heartbeat: UInt64?
    var classicDiffers: [Differ]?
    var staleRegion: Stale?

    enum CodingKeys: String, CodingKey {
      case name, file, kind, live, accel, pcram, lowmem, heartbeat
      case machineType = "machine_type"
      case ramBytes = "ram_bytes"
      case compareExclude = "compare_exclude"
      case streamOffset = "stream_offset"
      case classicFile = "classic_file"
      case classicHeartbeat = "classic_heartbeat"
      case classicDiffers = "classic_differs"
      case staleRegion = "stale_region"
    }

    /// compare_exclude as pc.ram offset ranges (the excluded window lies below lowmem, where offset = GPA).
    var excludedOffsets: [Range<UInt64>] {
      compareExclude.compactMap { $0.count == 2 && $0[1] <= lowmem ? $0[0]..<$0[1] : nil }
    }
  }

  struct Differ: Decodable {
    var gpa: UInt64
    var length: UInt64
    var what: String
    var classicValue: UInt64
    enum CodingKeys: String, CodingKey {
      case gpa, length, what
      case classicValue = "classic_value"
    }
  }

  struct Stale: Decodable {
    var gpa: UInt64
    var length: UInt64
  }
}

/// The fixtures plus this file's view of their manifest.
struct WriterFixtures {
  let fixtures: Fixtures
  let manifest: WriterManifest

  static func load() throws -> WriterFixtures {
    let fixtures = try Fixtures.load()
    let url = URL(fileURLWithPath: fixtures.directory).appendingPathComponent("manifest.json")
    let manifest = try JSONDecoder().decode(WriterManifest.self, from: try Data(contentsOf: url))
    return WriterFixtures(fixtures: fixtures, manifest: manifest)
  }

  func path(_ relative: String) -> String { fixtures.path(relative) }

  /// A scenario from "scenarios" or "extra_scenarios", or a failure naming what the manifest has.
  func scenario(_ name: String) throws -> WriterManifest.Scenario {
    let all = manifest.scenarios + (manifest.extraScenarios ?? [])
    guard let s = all.first(where: { $0.name == name }) else {
      throw ConvertTestError(
        "\(fixtures.directory)/manifest.json has no scenario \(name) (it has \(all.map(\.name))); "
          + "remake the fixtures with the current scripts/make-fixtures.py")
    }
    return s
  }

  /// A scenario that has a classic save of the same stopped guest (`classic_file`).
  func pairScenario(_ name: String) throws -> WriterManifest.Scenario {
    let s = try scenario(name)
    guard s.classicFile != nil, s.classicHeartbeat != nil, s.heartbeat != nil else {
      throw ConvertTestError(
        "scenario \(name) has no classic_file/classic_heartbeat/heartbeat: the fixtures in \(fixtures.directory) "
          + "predate the paired classic saves; remake them (MRAMFS_FRESH=1 scripts/test.sh)")
    }
    return s
  }
}

/// A temporary directory removed when the value goes away.
final class WriterScratch {
  let path: String
  init(_ prefix: String = "mramfs-writer") throws {
    var template = Array("\(FileManager.default.temporaryDirectory.path)/\(prefix).XXXXXX".utf8CString)
    guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
      throw ConvertTestError("mkdtemp failed: \(String(cString: strerror(errno)))")
    }
    path = String(cString: made)
  }
  deinit { try? FileManager.default.removeItem(atPath: path) }
  func file(_ name: String) -> String { "\(path)/\(name)" }
}

/// Runs the built tools and the repository's scripts.
enum WriterTools {
  static let repositoryRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }  // ConvertTests.swift, QEMUTests, Tests
    return url.path
  }()

  /// Runs `mramfs ARGS`, failing the test with its output unless it exits 0.
  @discardableResult
  static func mramfs(_ args: [String], timeout: Duration = .seconds(120)) throws -> CommandResult {
    let r = try CLI.run(try CLI.mramfs(), args, timeout: timeout)
    guard r.exitedNormally, r.status == 0 else {
      throw ConvertTestError("mramfs \(args.joined(separator: " ")) failed (status \(r.status)):\n\(r.stderr)\(r.stdout)")
    }
    return r
  }

  /// What scripts/qemu-load.py reports.
  struct LoadResult: Decodable {
    var pcram: String?
    var heartbeatBefore: UInt64?
    var heartbeatAfter: UInt64?
    var status: String?
    var statusAfterLoad: String?
    var mappedRAM: Bool?
    var offset: UInt64?
    var error: String?
    var qemuLogTail: String?
    enum CodingKeys: String, CodingKey {
      case pcram, status, offset, error
      case heartbeatBefore = "heartbeat_before"
      case heartbeatAfter = "heartbeat_after"
      case statusAfterLoad = "status_after_load"
      case mappedRAM = "mapped_ram"
      case qemuLogTail = "qemu_log_tail"
    }
  }

  /// Restores `file` into a fresh QEMU started like scenario `scenario`'s VM and dumps its RAM to `pcram`.
  static func qemuLoad(_ file: String, scenario: String, fixtures: WriterFixtures, pcram: String) throws -> LoadResult {
    let script = "\(repositoryRoot)/scripts/qemu-load.py"
    let r = try CLI.run(
      "/usr/bin/env",
      ["python3", script, file, "--pcram", pcram, "--fixtures", fixtures.fixtures.directory, "--scenario", scenario],
      timeout: .seconds(300))
    let result: LoadResult
    do {
      result = try JSONDecoder().decode(LoadResult.self, from: r.stdoutData)
    } catch {
      throw ConvertTestError("qemu-load.py \(file) printed no result (status \(r.status)):\n\(r.stdout)\n\(r.stderr)")
    }
    if let e = result.error {
      throw ConvertTestError("qemu-load.py \(file) (scenario \(scenario)): \(e)\n--- QEMU log ---\n\(result.qemuLogTail ?? "")")
    }
    guard r.status == 0, result.pcram != nil else {
      throw ConvertTestError("qemu-load.py \(file) exited \(r.status):\n\(r.stdout)\n\(r.stderr)")
    }
    return result
  }
}

/// Byte comparisons of large sparse things, chunk by chunk, skipping what is a hole on both sides.
enum SparseCompare {
  static let chunk = 4 << 20

  /// Bytes that must read differently from the reference: at `offset`, `bytes` are expected instead.
  struct Override {
    var offset: UInt64
    var bytes: [UInt8]
  }

  /// Pages (as byte offsets) where `actual` differs from `expected` with `overrides` applied, outside `excluded`
  /// (whole pages) and `ignoredBytes` (byte ranges that may hold anything).
  /// `fill(buffer, offset)` functions read `count` bytes at `offset` into the buffer; `hasData(offset, end)` says
  /// whether either side may hold non-zero bytes in [offset, end).
  static func differingPages(
    length: UInt64, excluded: [Range<UInt64>] = [], overrides: [Override] = [], ignoredBytes: [Range<UInt64>] = [],
    hasData: (UInt64, UInt64) -> Bool,
    readExpected: (UnsafeMutableRawBufferPointer, UInt64) throws -> Void,
    readActual: (UnsafeMutableRawBufferPointer, UInt64) throws -> Void
  ) throws -> [UInt64] {
    let a = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
    let b = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
    defer {
      a.deallocate()
      b.deallocate()
    }
    var diffs: [UInt64] = []
    var off: UInt64 = 0
    while off < length {
      let n = Int(min(UInt64(chunk), length - off))
      let end = off + UInt64(n)
      let touched = overrides.contains { $0.offset < end && $0.offset + UInt64($0.bytes.count) > off }
      if hasData(off, end) || touched {
        let ea = UnsafeMutableRawBufferPointer(rebasing: a[0..<n])
        let ab = UnsafeMutableRawBufferPointer(rebasing: b[0..<n])
        try readExpected(ea, off)
        try readActual(ab, off)
        for o in overrides {
          for (i, byte) in o.bytes.enumerated() where o.offset + UInt64(i) >= off && o.offset + UInt64(i) < end {
            ea[Int(o.offset + UInt64(i) - off)] = byte
          }
        }
        for r in ignoredBytes where r.lowerBound < end && r.upperBound > off {
          for at in max(r.lowerBound, off)..<min(r.upperBound, end) { ea[Int(at - off)] = ab[Int(at - off)] }
        }
        if memcmp(ea.baseAddress!, ab.baseAddress!, n) != 0 {
          var p = 0
          while p < n {
            let m = min(4096, n - p)
            let at = off + UInt64(p)
            if memcmp(ea.baseAddress! + p, ab.baseAddress! + p, m) != 0, !excluded.contains(where: { $0.contains(at) }) {
              diffs.append(at)
            }
            p += m
          }
        }
      }
      off = end
    }
    return diffs
  }

  /// Reads a whole sparse file region with pread (zeros past its end).
  static func pread(_ fd: Int32, _ path: String) -> (UnsafeMutableRawBufferPointer, UInt64) throws -> Void {
    { buffer, offset in
      memset(buffer.baseAddress!, 0, buffer.count)
      let n = preadFully(fd, buffer.baseAddress!, buffer.count, offset)
      if n < 0 { throw ConvertTestError("read \(path) at \(offset): \(String(cString: strerror(errno)))") }
    }
  }

  /// Whether `fd` has data in [start, end) (SEEK_DATA).
  static func fileHasData(_ fd: Int32, _ start: UInt64, _ end: UInt64) -> Bool {
    guard let d = seekData(fd, start) else { return false }
    return d < end
  }

  /// Pages where two sparse files of `length` bytes differ (outside `excluded`, with `overrides` on the first).
  static func files(
    expected: String, actual: String, length: UInt64, excluded: [Range<UInt64>] = [], overrides: [Override] = []
  ) throws -> [UInt64] {
    let fe = open(expected, O_RDONLY | O_CLOEXEC)
    guard fe >= 0 else { throw ConvertTestError("cannot open \(expected): \(String(cString: strerror(errno)))") }
    defer { close(fe) }
    let fa = open(actual, O_RDONLY | O_CLOEXEC)
    guard fa >= 0 else { throw ConvertTestError("cannot open \(actual): \(String(cString: strerror(errno)))") }
    defer { close(fa) }
    return try differingPages(
      length: length, excluded: excluded, overrides: overrides,
      hasData: { fileHasData(fe, $0, $1) || fileHasData(fa, $0, $1) },
      readExpected: pread(fe, expected), readActual: pread(fa, actual))
  }

  /// A block read through the library.
  static func block(_ file: MigrationFile, _ index: Int) -> (UnsafeMutableRawBufferPointer, UInt64) throws -> Void {
    { buffer, offset in
      let n = try file.read(block: index, at: offset, into: buffer)
      if n != buffer.count { throw ConvertTestError("short read of \(file.blocks[index].name) at \(offset): \(n)") }
    }
  }

  /// Whether block `index` of `file` has a populated page in [start, end).
  static func blockHasData(_ file: MigrationFile, _ index: Int, _ start: UInt64, _ end: UInt64) -> Bool {
    guard let d = file.nextData(block: index, from: start) else { return false }
    return d < end
  }

  /// Formats a few differing offsets for a message.
  static func describe(_ diffs: [UInt64]) -> String {
    "\(diffs.count) page(s) differ, first at " + diffs.prefix(8).map { "0x" + String($0, radix: 16) }.joined(separator: ", ")
  }
}

/// The 8 little-endian bytes of `v`.
func littleEndianBytes(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }

/// The scenarios with a classic save of the same stopped guest.
let pairedScenarios = ["pc-256", "q35-256-mfd", "pc-5g", "q35-5g-mfd"]

// MARK: - Tests

@Suite("convert and create, proven against real QEMU 10", .serialized)
struct ConvertTests {
  /// Converts `input` with `mramfs convert` (extra arguments first) into `output`; returns the --json summary.
  @discardableResult
  func convert(_ input: String, _ output: String, _ extra: [String] = []) throws -> [String: Any] {
    let r = try WriterTools.mramfs(["convert"] + extra + [input, "-o", output, "--json"])
    guard let json = try JSONSerialization.jsonObject(with: r.stdoutData) as? [String: Any] else {
      throw ConvertTestError("convert --json printed no JSON object: \(r.stdout)")
    }
    return json
  }

  @Test("classic -> mapped-ram: the result's blocks equal QEMU's own mapped-ram save of the same stopped guest",
        arguments: pairedScenarios)
  func classicToMappedRAMEqualsQEMUsSave(_ name: String) throws {
    let fx = try WriterFixtures.load()
    let s = try fx.pairScenario(name)
    let scratch = try WriterScratch()
    let out = scratch.file("converted.mapped")
    let summary = try convert(fx.path(s.classicFile!), out)
    #expect(summary["format"] as? String == "mapped-ram")

    let mine = try MigrationFile(path: out)
    let qemu = try MigrationFile(path: fx.path(s.file))
    let classic = try MigrationFile(path: fx.path(s.classicFile!))
    #expect(mine.format == .mappedRAM)
    #expect(mine.isComplete)
    #expect(mine.capabilities == ["mapped-ram"])
    #expect(mine.capabilities == qemu.capabilities)
    #expect(mine.machineType == s.machineType)
    #expect(mine.machineType == qemu.machineType)
    #expect(mine.memorySize == qemu.memorySize)
    #expect(summary["ramBytes"] as? UInt64 == qemu.memorySize)
    #expect(mine.blocks.map(\.name) == qemu.blocks.map(\.name), "same blocks in the same order")
    #expect(mine.blocks.map(\.length) == qemu.blocks.map(\.length))
    #expect(mine.blocks.map(\.populatedPages) == qemu.blocks.map(\.populatedPages), "populated pages per block")
    #expect(summary["populatedPages"] as? UInt64 == qemu.blocks.reduce(0) { $0 + ($1.populatedPages ?? 0) })

    // The only legitimate difference: QEMU refuses a second migration from 'postmigrate', so
    // make-fixtures.py let the guest run ~20 ms between the classic and the mapped-ram save.
    // The guest then only polls the keyboard with interrupts off, and increments its heartbeat
    // u64 at heartbeat_gpa (0x5008, in pc.ram below lowmem, so pc.ram offset = GPA). The manifest
    // records both values: the converted file must hold the classic save's, QEMU's the later one.
    //
    // Under KVM only (the fixtures use TCG unless made with --accel kvm): those 20 ms of running
    // also change 12 bytes in pc.ram [0xe8380, 0xe83a0), the data of the kvmvapic option ROM
    // that QEMU's KVM TPR-access patching (hw/i386/kvmvapic.c) keeps up to date while the vCPU
    // runs (the region FORMAT.md §12 saw change by 2 bytes after a load). Those 32 bytes, and
    // nothing else, may differ then.
    let differs = s.classicDiffers ?? []
    #expect(differs.count == 1 && differs.first?.gpa == fx.manifest.guest.heartbeatGPA && differs.first?.length == 8)
    let heartbeat = fx.manifest.guest.heartbeatGPA
    let kvmvapicData: [Range<UInt64>] = s.accel == "kvm" ? [0xe8380..<0xe83a0] : []
    for (i, b) in mine.blocks.enumerated() {
      guard let j = qemu.blockIndex(named: b.name.description) else { continue }
      var overrides: [SparseCompare.Override] = []
      var ignored: [Range<UInt64>] = []
      if b.name.description == "pc.ram" {
        ignored = kvmvapicData
        overrides = [.init(offset: heartbeat, bytes: littleEndianBytes(s.classicHeartbeat!))]
        var qemuHB = [UInt8](repeating: 0, count: 8)
        _ = try qemuHB.withUnsafeMutableBytes { try qemu.read(block: j, at: heartbeat, into: $0) }
        #expect(qemuHB == littleEndianBytes(s.heartbeat!), "QEMU's mapped-ram save holds the later heartbeat")
      }
      let diffs = try SparseCompare.differingPages(
        length: b.length, overrides: overrides, ignoredBytes: ignored,
        hasData: { SparseCompare.blockHasData(mine, i, $0, $1) || SparseCompare.blockHasData(qemu, j, $0, $1) },
        readExpected: SparseCompare.block(qemu, j), readActual: SparseCompare.block(mine, i))
      #expect(diffs.isEmpty, "\(name): block \(b.name): \(SparseCompare.describe(diffs))")
    }

    // Device sections, commands, EOF and the VM description are the classic stream's, verbatim.
    #expect(mine.devices.map(\.name) == classic.devices.map(\.name))
    #expect(!mine.devices.isEmpty)
    for (d, c) in zip(mine.devices, classic.devices) {
      let a = try mine.file.bytes(at: d.offset, count: d.size, "device")
      let b = try classic.file.bytes(at: c.offset, count: c.size, "device")
      #expect(a == b, "device section \(d.name) is copied verbatim")
    }
    if let vd = mine.vmDescriptionOffset, let vc = classic.vmDescriptionOffset {
      let a = try mine.file.bytes(at: vd, count: mine.file.size - vd, "vmdesc")
      let b = try classic.file.bytes(at: vc, count: classic.file.size - vc, "vmdesc")
      #expect(a == b, "the VM description is copied verbatim")
    } else {
      Issue.record("\(name): no VM description found in the converted file or the classic save")
    }
  }

  @Test("a converted classic save restores into a fresh QEMU: same memory, and the guest goes on running",
        arguments: pairedScenarios)
  func convertedClassicRestores(_ name: String) throws {
    let fx = try WriterFixtures.load()
    let s = try fx.pairScenario(name)
    let scratch = try WriterScratch()
    let out = scratch.file("converted.mapped")
    try convert(fx.path(s.classicFile!), out)
    let loaded = try WriterTools.qemuLoad(out, scenario: name, fixtures: fx, pcram: scratch.file("loaded.pcram"))
    #expect(loaded.mappedRAM == true, "the converted file is restored with the mapped-ram capability on")
    #expect(loaded.statusAfterLoad == "paused")
    // The guest's memory is the original's: the ground truth pcram, with the heartbeat the
    // classic save held (see classicToMappedRAMEqualsQEMUsSave), outside compare_exclude.
    let heartbeat = fx.manifest.guest.heartbeatGPA
    let diffs = try SparseCompare.files(
      expected: fx.path(s.pcram), actual: loaded.pcram!, length: s.ramBytes, excluded: s.excludedOffsets,
      overrides: [.init(offset: heartbeat, bytes: littleEndianBytes(s.classicHeartbeat!))])
    #expect(diffs.isEmpty, "\(name): restored RAM vs ground truth: \(SparseCompare.describe(diffs))")
    #expect(loaded.heartbeatBefore == s.classicHeartbeat)
    #expect(loaded.status == "running")
    let before = try #require(loaded.heartbeatBefore)
    let after = try #require(loaded.heartbeatAfter)
    #expect(after > before, "\(name): the restored guest goes on running (heartbeat \(before) -> \(after))")
  }

  @Test("a LIVE classic save (pages sent several times, stale pages zeroed later) converts and restores")
  func liveClassicSave() throws {
    let fx = try WriterFixtures.load()
    let s = try fx.scenario("pc-256-live-classic")
    #expect(s.kind == "classic" && s.live)
    let stale = try #require(s.staleRegion, "pc-256-live-classic has no stale_region")
    let scratch = try WriterScratch()
    let out = scratch.file("live.mapped")
    try convert(fx.path(s.file), out)

    // The last record of a page wins: the stale pages went out as 0xA5 first and as ZERO
    // records after the guest zeroed them, so the converted file leaves their bits clear.
    let mine = try MigrationFile(path: out)
    let index = try #require(mine.blockIndex(named: "pc.ram"))
    let bitmap = try #require(mine.blocks[index].bitmap)
    for page in stale.gpa / 4096..<(stale.gpa + stale.length) / 4096 {
      #expect(!bitmap.isSet(page), "stale page \(page) must be clear (its last record was a ZERO)")
    }
    let diffs = try SparseCompare.differingPages(
      length: s.ramBytes, excluded: s.excludedOffsets,
      hasData: { _, _ in true },
      readExpected: { buffer, offset in
        let fd = open(fx.path(s.pcram), O_RDONLY | O_CLOEXEC)
        defer { close(fd) }
        memset(buffer.baseAddress!, 0, buffer.count)
        _ = preadFully(fd, buffer.baseAddress!, buffer.count, offset)
      },
      readActual: SparseCompare.block(mine, index))
    #expect(diffs.isEmpty, "converted pc.ram vs the ground truth after the live save: \(SparseCompare.describe(diffs))")

    let loaded = try WriterTools.qemuLoad(out, scenario: s.name, fixtures: fx, pcram: scratch.file("loaded.pcram"))
    let loadDiffs = try SparseCompare.files(
      expected: fx.path(s.pcram), actual: loaded.pcram!, length: s.ramBytes, excluded: s.excludedOffsets)
    #expect(loadDiffs.isEmpty, "restored RAM vs ground truth: \(SparseCompare.describe(loadDiffs))")
    // This guest zeroed the stale region and then halted for good (hlt, interrupts off): the
    // VM runs, the counter stays where it was.
    #expect(loaded.status == "running")
    #expect(loaded.heartbeatAfter == loaded.heartbeatBefore)
  }

  @Test("mapped-ram -> classic restores into QEMU without mapped-ram (bare, and behind a libvirt header)",
        arguments: ["pc-256", "pc-256-libvirt"])
  func mappedRAMToClassicRestores(_ name: String) throws {
    let fx = try WriterFixtures.load()
    let s = try fx.scenario(name)
    let scratch = try WriterScratch()
    let out = scratch.file("back.classic")
    let summary = try convert(fx.path(s.file), out, ["--to", "classic"])
    #expect(summary["format"] as? String == "classic")

    // Inspect the header bytes directly (independent of the library's classic parser).
    let fd = open(out, O_RDONLY | O_CLOEXEC)
    #expect(fd >= 0)
    defer { close(fd) }
    var head = [UInt8](repeating: 0, count: 92)
    _ = head.withUnsafeMutableBytes { preadFully(fd, $0.baseAddress!, 92, 0) }
    var qevm = [UInt8](repeating: 0, count: 8)
    _ = qevm.withUnsafeMutableBytes { preadFully(fd, $0.baseAddress!, 8, s.streamOffset) }
    #expect(qevm == [0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3], "QEVM stream header at the original stream offset")
    if s.kind == "libvirt" {
      #expect(Array(head[0..<16]) == Array("LibvirtQemudSave".utf8), "the libvirt header is kept")
      let format = UInt32(head[28]) | UInt32(head[29]) << 8 | UInt32(head[30]) << 16 | UInt32(head[31]) << 24
      #expect(format == 0, "a classic stream behind a libvirt header is format 0 (raw)")
      let original = try MigrationFile(path: fx.path(s.file))
      var lvOrig = [UInt8](repeating: 0, count: Int(s.streamOffset))
      _ = try lvOrig.withUnsafeMutableBytes { try original.file.read(into: $0, at: 0, "prefix") }
      var lvMine = [UInt8](repeating: 0, count: Int(s.streamOffset))
      _ = lvMine.withUnsafeMutableBytes { preadFully(fd, $0.baseAddress!, $0.count, 0) }
      lvOrig.replaceSubrange(28..<32, with: [0, 0, 0, 0])
      #expect(lvMine == lvOrig, "the libvirt header and XML are kept, only the format changes (6 -> 0)")
    }

    let loaded = try WriterTools.qemuLoad(out, scenario: name, fixtures: fx, pcram: scratch.file("loaded.pcram"))
    #expect(loaded.mappedRAM == false, "restored with mapped-ram off")
    #expect(loaded.offset == s.streamOffset)
    let diffs = try SparseCompare.files(
      expected: fx.path(s.pcram), actual: loaded.pcram!, length: s.ramBytes, excluded: s.excludedOffsets)
    #expect(diffs.isEmpty, "\(name): restored RAM vs ground truth: \(SparseCompare.describe(diffs))")
    #expect(loaded.status == "running")
    let before = try #require(loaded.heartbeatBefore)
    let after = try #require(loaded.heartbeatAfter)
    #expect(after > before, "\(name): the restored guest goes on running (heartbeat \(before) -> \(after))")
  }

  @Test("create with a real VM's block list (RAM only, no device state) restores into QEMU with the same memory")
  func createdFileRestores() throws {
    let fx = try WriterFixtures.load()
    let s = try fx.scenario("pc-256")
    let scratch = try WriterScratch()
    let original = try MigrationFile(path: fx.path(s.file))
    // Every block's bytes through the library, into sparse raw files, in the original order.
    var args = ["create", "-o", scratch.file("created.mapped"), "--machine", s.machineType, "--json"]
    for (i, b) in original.blocks.enumerated() {
      let raw = scratch.file("block\(i).raw")
      try dumpBlock(original, i, to: raw)
      args += ["--block", "\(b.name.description)=\(raw)"]
    }
    try WriterTools.mramfs(args)
    let created = try MigrationFile(path: scratch.file("created.mapped"))
    #expect(created.blocks.map(\.name) == original.blocks.map(\.name))
    #expect(created.blocks.map(\.length) == original.blocks.map(\.length))
    #expect(created.blocks.map(\.populatedPages) == original.blocks.map(\.populatedPages))
    #expect(created.machineType == s.machineType)

    let loaded = try WriterTools.qemuLoad(
      scratch.file("created.mapped"), scenario: "pc-256", fixtures: fx, pcram: scratch.file("loaded.pcram"))
    #expect(loaded.statusAfterLoad == "paused")
    let diffs = try SparseCompare.files(
      expected: fx.path(s.pcram), actual: loaded.pcram!, length: s.ramBytes, excluded: s.excludedOffsets)
    #expect(diffs.isEmpty, "restored RAM of the created file vs ground truth: \(SparseCompare.describe(diffs))")
    // No CPU state in the file, so what the vCPU does after `cont` is not the guest's; not checked.
  }

  /// Writes block `index` of `file` to `path` as a sparse raw file of the block's length.
  func dumpBlock(_ file: MigrationFile, _ index: Int, to path: String) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw ConvertTestError("cannot create \(path)") }
    defer { close(fd) }
    let length = file.blocks[index].length
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: SparseCompare.chunk, alignment: 4096)
    defer { buffer.deallocate() }
    var off: UInt64 = 0
    while off < length, let data = file.nextData(block: index, from: off) {
      let hole = file.nextHole(block: index, from: data) ?? length
      var at = data
      while at < hole {
        let n = Int(min(UInt64(buffer.count), hole - at))
        let part = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
        _ = try file.read(block: index, at: at, into: part)
        guard pwrite(fd, part.baseAddress!, n, off_t(at)) == n else { throw ConvertTestError("cannot write \(path)") }
        at += UInt64(n)
      }
      off = hole
    }
    guard ftruncate(fd, off_t(length)) == 0 else { throw ConvertTestError("cannot size \(path)") }
  }
}

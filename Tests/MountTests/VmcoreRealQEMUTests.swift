// The mounted `vmcore` of real QEMU files against QEMU's own dump-guest-memory of the
// same paused guest (NAME.elf, paging=false, format elf): the same PT_LOAD segments
// (main RAM with the VGA window cut out, pc.bios, vga.vram) with the same bytes,
// accepted by readelf and gdb, with the registers QEMU's monitor showed. Volatility 3
// finds the guest's planted Linux banner in `physmem` at its guest-physical address.

import Foundation
import GuestViews
import MigrationFormat
import QEMUFixtures
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The full path of tool `name` (on PATH, or `override` from the environment); skips the test
/// when it is missing, or fails it under CI=true, saying how to install it.
func requireTool(_ name: String, environment override: String? = nil, install: String) throws -> String {
  if let key = override, let path = ProcessInfo.processInfo.environment[key], !path.isEmpty {
    guard access(path, X_OK) == 0 else {
      throw MountTestError("\(key)=\(path) is not an executable")
    }
    return path
  }
  if let path = MountSupport.findExecutable(name) { return path }
  let reason = "\(name) is needed and missing (\(install))"
  if MountSupport.isCI { throw MountTestError(reason + " — under CI=true this is a failure, not a skip") }
  try Test.cancel(Comment(rawValue: reason))
}

@Suite("vmcore of real QEMU files, mounted, against dump-guest-memory", .serialized)
struct VmcoreRealQEMUTests {
  static let dumped = ["pc-256", "q35-256-mfd", "pc-5g", "q35-5g-mfd"]

  @Test("vmcore has QEMU's PT_LOAD segments, page-aligned, with the dump's bytes", arguments: dumped)
  func segmentsMatchDump(_ name: String) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let elf = try #require(s.elfDump, "\(name): the manifest has no elf_dump; regenerate with scripts/make-fixtures.py")
    let dumpPath = fixtures.path(elf)
    let theirs = try ELFLoad.read(dumpPath)
    let mount = try QEMUMount(fixtures.path(s.file))
    defer { mount.cleanup() }
    let core = mount.path("vmcore")
    let ours = try ELFLoad.read(core)

    #expect(ours.map { [$0.paddr, $0.filesz] } == theirs.map { [$0.paddr, $0.filesz] }, "\(name): PT_LOAD (p_paddr, p_filesz)")
    for l in ours { #expect(l.offset % 4096 == 0, "\(name): segment \(l) is not page-aligned in the file") }
    var st = stat()
    try #require(stat(core, &st) == 0)
    let end = try #require(ours.map { $0.offset + $0.filesz }.max())
    #expect(UInt64(st.st_size) == end, "\(name): vmcore ends with its last segment")

    let fd = open(core, O_RDONLY | O_CLOEXEC)
    try #require(fd >= 0)
    defer { close(fd) }
    let dfd = open(dumpPath, O_RDONLY | O_CLOEXEC)
    try #require(dfd >= 0)
    defer { close(dfd) }
    // Both files are sparse: compare from wherever either has data, 1 MiB at a time; where neither
    // has data both read as zeros. The rest (holes in both) is checked by st_blocks below.
    let chunk: UInt64 = 1 << 20
    let a = Buffer(Int(chunk))
    let b = Buffer(Int(chunk))
    defer { withExtendedLifetime((a, b)) {} }  // their memory is used through raw pointers
    var compared: UInt64 = 0
    var populated: UInt64 = 0
    for (mine, dump) in zip(ours, theirs) where mine.paddr == dump.paddr && mine.filesz == dump.filesz {
      var pos: UInt64 = 0
      while pos < mine.filesz {
        let nextMine = seekData(fd, mine.offset + pos).map { $0 - mine.offset }
        let nextDump = seekData(dfd, dump.offset + pos).map { $0 - dump.offset }
        let next = min(nextMine ?? .max, nextDump ?? .max)
        guard next < mine.filesz else { break }
        let n = Int(min(chunk, mine.filesz - next))
        guard preadFully(fd, a.base, n, mine.offset + next) == n, preadFully(dfd, b.base, n, dump.offset + next) == n else {
          Issue.record("\(name): short read at GPA \(hex(mine.paddr + next))")
          return
        }
        if let d = firstDifference(a.base, b.base, n) {
          Issue.record("\(name): vmcore at GPA \(hex(mine.paddr + next + UInt64(d))) differs from QEMU's dump")
          return
        }
        compared += UInt64(n)
        pos = next + UInt64(n)
      }
      // Populated pages of the segment in vmcore, by SEEK_DATA/SEEK_HOLE.
      var at = mine.offset
      while at < mine.offset + mine.filesz, let d = seekData(fd, at), d < mine.offset + mine.filesz {
        let h = try #require(seekHole(fd, d))
        populated += min(h, mine.offset + mine.filesz) - d
        at = h
      }
    }
    #expect(compared > 0)
    let headerPages = try #require(ours.map(\.offset).min())
    #expect(UInt64(st.st_blocks) * 512 == headerPages + populated, "\(name): st_blocks = header pages + populated pages")
    #expect(seekData(fd, 0) == 0, "\(name): the header is data")
  }

  @Test("readelf -a accepts vmcore without a warning", arguments: ["pc-256", "q35-5g-mfd"])
  func readelfAccepts(_ name: String) throws {
    let readelf = try requireTool("readelf", install: "apt-get install binutils")
    let fixtures = try Fixtures.load()
    let mount = try QEMUMount(fixtures.path(try fixtures.scenario(name).file))
    defer { mount.cleanup() }
    let r = try CLI.run(readelf, ["-a", "-n", "-W", mount.path("vmcore")])
    #expect(r.exitedNormally && r.status == 0, "\(name): readelf exited \(r.status): \(r.stderr)")
    #expect(r.stderr.isEmpty, "\(name): readelf warned: \(r.stderr)")
    #expect(r.stdout.contains("CORE (Core file)") && r.stdout.contains("Advanced Micro Devices X86-64"))
    #expect(r.stdout.contains("NT_PRSTATUS"), "\(name): no NT_PRSTATUS note")
    #expect(r.stdout.contains("QEMU"), "\(name): no QEMU note")
  }

  @Test("gdb reads vmcore's registers, and they are QEMU's", arguments: dumped)
  func gdbRegisters(_ name: String) throws {
    let gdb = try requireTool("gdb", install: "apt-get install --no-install-recommends gdb; scripts/install-deps.sh does")
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let hmp = try #require(s.registersHex, "\(name): the manifest has no registers_hex")
    let segments = try #require(s.registers?.segments, "\(name): the manifest has no registers")
    let mount = try QEMUMount(fixtures.path(s.file))
    defer { mount.cleanup() }
    let r = try CLI.run(
      gdb, ["-batch", "-nx", "-ex", "set architecture i386:x86-64", "-ex", "info registers", "-c", mount.path("vmcore")],
      timeout: .seconds(120))
    #expect(r.exitedNormally && r.status == 0, "\(name): gdb exited \(r.status): \(r.stderr)")
    let problems = r.stderrLines.filter { $0.lowercased().contains("warning") || $0.lowercased().contains("error") }
    #expect(problems.isEmpty, "\(name): gdb said: \(problems)")
    // "rax            0x212121594441451c  2387225944764007708"
    var shown: [String: UInt64] = [:]
    for line in r.stdout.split(separator: "\n") {
      let f = line.split(separator: " ", omittingEmptySubsequences: true)
      guard f.count >= 2, f[1].hasPrefix("0x"), let v = UInt64(f[1].dropFirst(2), radix: 16) else { continue }
      shown[String(f[0])] = v
    }
    let general = [
      "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip",
    ]
    for reg in general {
      let want = hmp[reg.uppercased()].flatMap { UInt64($0.dropFirst(2), radix: 16) }
      #expect(want != nil && shown[reg] == want, "\(name): gdb shows \(reg) = \(shown[reg].map(hex) ?? "nothing"), QEMU \(want.map(hex) ?? "?")")
    }
    let rfl = hmp["RFL"].flatMap { UInt64($0.dropFirst(2), radix: 16) }
    #expect(rfl != nil && shown["eflags"] == rfl, "\(name): eflags")
    for seg in ["cs", "ss", "ds", "es", "fs", "gs"] {
      let want = segments[seg.uppercased()]?["selector"]
      #expect(want != nil && shown[seg] == want, "\(name): gdb shows \(seg) = \(shown[seg].map(hex) ?? "nothing"), QEMU \(want.map(hex) ?? "?")")
    }
    for (reg, seg) in [("fs_base", "FS"), ("gs_base", "GS")] where shown[reg] != nil {
      #expect(shown[reg] == segments[seg]?["base"], "\(name): \(reg)")
    }
  }

  /// Volatility 3's `banners.Banners` over a file of the mount: (offset, banner) rows.
  func volatilityBanners(_ vol: String, _ path: String) throws -> [(offset: UInt64, banner: String)] {
    let cache = FileManager.default.temporaryDirectory.appendingPathComponent("mramfs-vol-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: cache, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: cache) }
    // --offline: banners needs no symbol tables, and nothing is downloaded.
    let r = try CLI.run(
      vol, ["-q", "--offline", "--cache-path", cache, "-r", "csv", "-f", path, "banners.Banners"], timeout: .seconds(600))
    try #require(r.exitedNormally && r.status == 0, "vol exited \(r.status): \(r.stderr)")
    // "TreeDepth,Offset,Banner" then "0,0x1000000,\"Linux version …\""
    var rows: [(UInt64, String)] = []
    for line in r.stdout.split(separator: "\n").dropFirst() {
      let f = line.split(separator: ",", maxSplits: 2, omittingEmptySubsequences: false)
      guard f.count == 3, f[1].hasPrefix("0x"), let off = UInt64(f[1].dropFirst(2), radix: 16) else { continue }
      var banner = String(f[2])
      if banner.hasPrefix("\""), banner.hasSuffix("\""), banner.count >= 2 { banner = String(banner.dropFirst().dropLast()) }
      rows.append((off, banner.replacingOccurrences(of: "\"\"", with: "\"")))
    }
    return rows
  }

  @Test(
    "Volatility 3 finds the planted Linux banner at its guest-physical address",
    arguments: [("pc-256", "physmem"), ("q35-256-mfd", "physmem"), ("pc-256", "vmcore")])
  func volatilityBanner(_ name: String, _ view: String) throws {
    let vol = try requireTool(
      "vol", environment: "MRAMFS_VOLATILITY",
      install: "scripts/test.sh installs PyPI volatility3 into .venv and sets MRAMFS_VOLATILITY=.venv/bin/vol")
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let gpa = try #require(s.markers["linux_banner"], "\(name): the manifest has no linux_banner marker")
    let planted = try #require(fixtures.manifest.guest.markerStrings["linux_banner"])
    let text = String(planted.prefix { $0 != "\n" && $0 != "\0" })
    #expect(text.hasPrefix("Linux version 6.1.0-mramfs-test "))
    let mount = try QEMUMount(fixtures.path(s.file))
    defer { mount.cleanup() }
    let rows = try volatilityBanners(vol, mount.path(view))
    // Offsets in physmem are guest-physical addresses; for vmcore Volatility's ELF layer reports p_paddr-based ones.
    #expect(rows.contains { $0.offset == gpa && $0.banner == text }, "\(name)/\(view): no banner at \(hex(gpa)): \(rows)")
    // Every banner it reports is really at that address (the others are the guest image's own copy of the string).
    let fd = open(mount.path("physmem"), O_RDONLY | O_CLOEXEC)
    try #require(fd >= 0)
    defer { close(fd) }
    for row in rows {
      var bytes = [UInt8](repeating: 0, count: row.banner.utf8.count)
      let n = bytes.withUnsafeMutableBytes { preadFully(fd, $0.baseAddress!, $0.count, row.offset) }
      #expect(n == bytes.count && String(decoding: bytes, as: UTF8.self) == row.banner, "\(name)/\(view): \(hex(row.offset))")
    }
  }
}

// The mounted `physmem` of real QEMU files against QEMU's own dump-guest-memory of the
// same paused guest (NAME.elf, made by scripts/make-fixtures.py with paging=false,
// format elf). The ELF's PT_LOAD segments say which guest-physical ranges QEMU sees as
// RAM or ROM and what they hold: physmem must have exactly those ranges (main RAM less the
// VGA window, the BIOS below 4 GiB, VGA RAM at its BAR), agree with the dump byte for byte
// in every one of them at every address, and read zeros (holes) everywhere else.

import Foundation
import GuestViews
import MigrationFormat
import SaveFilesystem
import QEMUFixtures
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// A PT_LOAD program header of an ELF core: `filesz` bytes at file `offset` are guest-physical `paddr`.
struct ELFLoad: Equatable, CustomStringConvertible {
  var paddr: UInt64
  var offset: UInt64
  var filesz: UInt64
  var end: UInt64 { paddr + filesz }
  var description: String { "[\(hex(paddr)), \(hex(end))) at file \(hex(offset))" }

  /// The PT_LOAD headers of a 64-bit little-endian ELF file.
  static func read(_ path: String) throws -> [ELFLoad] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw MountTestError("cannot open \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    func bytes(_ count: Int, at offset: UInt64) throws -> [UInt8] {
      var out = [UInt8](repeating: 0, count: count)
      let n = out.withUnsafeMutableBytes { preadFully(fd, $0.baseAddress!, count, offset) }
      guard n == count else { throw MountTestError("\(path): short read of \(count) bytes at \(hex(offset))") }
      return out
    }
    func le(_ b: [UInt8], _ at: Int, _ width: Int) -> UInt64 {
      (0..<width).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) }
    }
    let header = try bytes(64, at: 0)
    guard header[0..<4] == [0x7f, 0x45, 0x4c, 0x46], header[4] == 2, header[5] == 1 else {
      throw MountTestError("\(path) is not a 64-bit little-endian ELF file")
    }
    let phoff = le(header, 0x20, 8)
    let phentsize = Int(le(header, 0x36, 2))
    let phnum = Int(le(header, 0x38, 2))
    guard phentsize >= 56, phnum > 0, phnum < 4096 else {
      throw MountTestError("\(path): odd program header table (\(phnum) of \(phentsize) bytes)")
    }
    let table = try bytes(phentsize * phnum, at: phoff)
    var loads: [ELFLoad] = []
    for i in 0..<phnum where le(table, i * phentsize, 4) == 1 {  // PT_LOAD
      let h = i * phentsize
      loads.append(ELFLoad(paddr: le(table, h + 24, 8), offset: le(table, h + 8, 8), filesz: le(table, h + 32, 8)))
    }
    return loads
  }
}

/// The intersection of two half-open ranges, or nil.
func overlap(_ a: Range<UInt64>, _ b: Range<UInt64>) -> Range<UInt64>? {
  let lo = max(a.lowerBound, b.lowerBound)
  let hi = min(a.upperBound, b.upperBound)
  return lo < hi ? lo..<hi : nil
}

@Suite("physmem of real QEMU files, mounted, against dump-guest-memory", .serialized)
struct PhysmemRealQEMUTests {
  static let dumped = ["pc-256", "q35-256-mfd", "pc-5g", "q35-5g-mfd", "pc-numa-5g"]

  @Test("physmem has exactly the ranges of QEMU's ELF dump, its bytes at every address, and zeros elsewhere", arguments: dumped)
  func matchesDump(_ name: String) throws {
    try checkAgainstDump(name, options: nil)
  }

  @Test("the same with -o direct_io,read=splice", arguments: ["pc-256", "q35-5g-mfd"])
  func matchesDumpSpliced(_ name: String) throws {
    try checkAgainstDump(name, options: "direct_io,read=splice")
  }

  func checkAgainstDump(_ name: String, options: String?) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let elf = try #require(s.elfDump, "\(name): the manifest has no elf_dump; regenerate with scripts/make-fixtures.py")
    let loads = try ELFLoad.read(fixtures.path(elf)).sorted { $0.paddr < $1.paddr }
    let file = try MigrationFile(path: fixtures.path(s.file))
    let layout = try PhysicalLayout(file)
    let mount = try QEMUMount(fixtures.path(s.file), options: options)
    defer { mount.cleanup() }

    // physmem's ranges are exactly the dump's PT_LOADs: same addresses, same lengths.
    #expect(
      layout.ranges.map { "\(hex($0.gpa))+\(hex($0.length))" } == loads.map { "\(hex($0.paddr))+\(hex($0.filesz))" },
      "\(name): physmem's ranges against the dump's PT_LOADs \(loads)")
    let size = try #require(loads.map(\.end).max())

    let path = mount.path("physmem")
    var st = stat()
    try #require(stat(path, &st) == 0, "\(name): stat physmem: \(String(cString: strerror(errno)))")
    #expect(UInt64(st.st_size) == size, "\(name): physmem ends where the dump's last segment does")
    #expect(UInt64(st.st_blocks) * 512 == layout.populatedBytes, "\(name): st_blocks counts the ranges' populated pages")
    #expect(st.st_mode & 0o7777 == 0o444 && st.st_mode & S_IFMT == S_IFREG)

    let fd = open(path, O_RDONLY | O_CLOEXEC)
    try #require(fd >= 0)
    defer { close(fd) }
    let dumpFD = open(fixtures.path(elf), O_RDONLY | O_CLOEXEC)
    try #require(dumpFD >= 0)
    defer { close(dumpFD) }

    // Every byte of physmem, in 1 MiB reads: the dump's byte inside a PT_LOAD, zero outside.
    let chunk: UInt64 = 1 << 20
    let got = Buffer(Int(chunk), fill: 0xEE)
    let want = Buffer(Int(chunk))
    defer { withExtendedLifetime((got, want)) {} }  // their memory is used through raw pointers
    var compared: UInt64 = 0
    var at: UInt64 = 0
    while at < size {
      let n = Int(min(chunk, size - at))
      let window = at..<(at + UInt64(n))
      guard preadFully(fd, got.base, n, at) == n else {
        Issue.record("\(name): short read of physmem at \(hex(at))")
        return
      }
      memset(want.base, 0, n)
      for load in loads {
        guard let piece = overlap(window, load.paddr..<load.end) else { continue }
        let fileAt = load.offset + (piece.lowerBound - load.paddr)
        // Holes in the sparse dump are zeros; read only where it has data.
        guard let data = seekData(dumpFD, fileAt), data < fileAt + UInt64(piece.count) else { continue }
        let into = want.base + Int(piece.lowerBound - at)
        guard preadFully(dumpFD, into, piece.count, fileAt) == piece.count else {
          Issue.record("\(name): short read of the dump at \(hex(fileAt))")
          return
        }
        compared += UInt64(piece.count)
      }
      if let d = firstDifference(got.base, want.base, n) {
        let gpa = at + UInt64(d)
        let inDump = loads.contains { ($0.paddr..<$0.end).contains(gpa) }
        let what = inDump ? "the dump's byte" : "zero: the dump has no segment there"
        Issue.record("\(name): physmem at GPA \(hex(gpa)) is \(got.raw[d]), expected \(want.raw[d]) (\(what))")
        return
      }
      at += UInt64(n)
    }
    #expect(pread(fd, got.base, 4096, off_t(size)) == 0, "\(name): nothing past the end")
    #expect(compared > 0)
  }

  @Test("the VGA window: physmem is a hole of zeros there (the CPU sees the VGA device), the pc.ram file keeps its bytes",
        arguments: ["pc-256", "q35-256-mfd"])
  func vgaWindow(_ name: String) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let file = try MigrationFile(path: fixtures.path(s.file))
    let ram = try #require(file.blockIndex(named: "pc.ram"))
    let mount = try QEMUMount(fixtures.path(s.file))
    defer { mount.cleanup() }
    let window = PhysicalLayout.legacyVGA
    let count = Int(window.upperBound - window.lowerBound)
    // The file holds pages there (SMRAM, whatever the guest left): the block file serves them.
    let populatedThere = PhysicalLayout.populatedBytes(file.blocks[ram], from: window.lowerBound, length: UInt64(count))
    #expect(populatedThere > 0, "\(name): the fixture has no populated page in the VGA window, so this test shows nothing")
    let library = Buffer(count)
    let served = Buffer(count, fill: 0xEE)
    defer { withExtendedLifetime((library, served)) {} }
    _ = try file.read(block: ram, at: window.lowerBound, into: UnsafeMutableRawBufferPointer(start: library.base, count: count))
    let blockFD = open(mount.path("pc.ram"), O_RDONLY | O_CLOEXEC)
    try #require(blockFD >= 0)
    defer { close(blockFD) }
    #expect(preadFully(blockFD, served.base, count, window.lowerBound) == count)
    #expect(firstDifference(library.base, served.base, count) == nil, "\(name): pc.ram serves its own bytes in the window")
    let physFD = open(mount.path("physmem"), O_RDONLY | O_CLOEXEC)
    try #require(physFD >= 0)
    defer { close(physFD) }
    #expect(preadFully(physFD, served.base, count, window.lowerBound) == count)
    #expect(served.raw.prefix(count).allSatisfy { $0 == 0 }, "\(name): physmem reads zeros in the VGA window")
    #expect(seekHole(physFD, window.lowerBound) == window.lowerBound, "\(name): the window is a hole")
    #expect(seekData(physFD, window.lowerBound).map { $0 >= window.upperBound } ?? true)
  }

  @Test("SEEK_DATA/SEEK_HOLE over physmem find exactly the populated pages of its ranges", arguments: ["pc-5g", "q35-5g-mfd", "pc-numa-5g"])
  func seekMap(_ name: String) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let file = try MigrationFile(path: fixtures.path(s.file))
    let layout = try PhysicalLayout(file)
    let mount = try QEMUMount(fixtures.path(s.file))
    defer { mount.cleanup() }
    let fd = open(mount.path("physmem"), O_RDONLY | O_CLOEXEC)
    try #require(fd >= 0)
    defer { close(fd) }
    // The runs the bitmaps give, placed through the ranges (checked against QEMU's dump above).
    var expected: [Range<UInt64>] = []
    for r in layout.ranges {
      let b = file.blocks[r.block]
      for run in try #require(b.bitmap).runs() {
        let lo = max(run.lowerBound * b.pageSize, r.blockOffset)
        let hi = min(run.upperBound * b.pageSize, r.blockOffset + r.length)
        guard lo < hi else { continue }
        let gpa = r.gpa + (lo - r.blockOffset)
        if let last = expected.last, last.upperBound == gpa {
          expected[expected.count - 1] = last.lowerBound..<(gpa + hi - lo)
        } else {
          expected.append(gpa..<(gpa + hi - lo))
        }
      }
    }
    var walked: [Range<UInt64>] = []
    var pos: UInt64 = 0
    while let data = seekData(fd, pos) {
      guard let hole = seekHole(fd, data), hole > data else {
        Issue.record("\(name): SEEK_HOLE from \(hex(data)) failed or went back")
        break
      }
      walked.append(data..<hole)
      pos = hole
    }
    #expect(walked == expected, "\(name): \(walked.count) data runs walked, \(expected.count) from the bitmaps")
    #expect(errnoOf { Int(lseek(fd, off_t(layout.size), 3)) } == ENXIO)
    #expect(errnoOf { Int(lseek(fd, off_t(layout.size), 4)) } == ENXIO)
    #expect(seekHole(fd, layout.lowmem) == layout.lowmem, "\(name): the PCI hole starts at lowmem")
    // In the PCI hole only device memory (VGA RAM, the BIOS) holds data.
    let devices = layout.ranges.filter { $0.kind != .mainRAM }
    #expect(!devices.isEmpty, "\(name): no BIOS or VGA RAM range")
    if let data = seekData(fd, layout.lowmem), data < 1 << 32 {
      #expect(devices.contains { ($0.gpa..<$0.end).contains(data) }, "\(name): data at \(hex(data)) in the PCI hole is no device's")
    }
  }

  @Test("-o lowmem=2G moves pc-5g's split; info.json is `info --json --lowmem 2G`; bad values are refused")
  func lowmemOption() throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario("pc-5g")
    let image = fixtures.path(s.file)
    let mount = try QEMUMount(image, options: "lowmem=2G")
    defer { mount.cleanup() }
    var st = stat()
    try #require(stat(mount.path("physmem"), &st) == 0)
    #expect(st.st_size == Int64((1 << 32) + s.ramBytes - 0x8000_0000))
    // The guest wrote DRAMHIGH at GPA 0x140000000: pc.ram offset 0x100000000 with the real split.
    let highMarker = try #require(s.markers["high_marker"])
    let offset = try #require(s.blockOffset(ofGPA: highMarker))
    let markerString = try #require(fixtures.manifest.guest.markerStrings["high_marker"])
    let marker = Array(markerString.utf8)
    let fd = open(mount.path("physmem"), O_RDONLY | O_CLOEXEC)
    try #require(fd >= 0)
    defer { close(fd) }
    let buf = Buffer(marker.count)
    defer { withExtendedLifetime(buf) {} }  // its memory is used through raw pointers
    let moved = (1 << 32) + offset - 0x8000_0000
    #expect(preadFully(fd, buf.base, marker.count, moved) == marker.count)
    #expect(Array(buf.raw.prefix(marker.count)) == marker, "\(hex(offset)) of pc.ram is at \(hex(moved)) with lowmem 2G")

    let served = try MountSupport.readFile(mount.path("info.json"))
    let info = try CLI.run(try CLI.mramfs(), ["info", "--json", "--lowmem", "2G", image])
    #expect(info.status == 0)
    #expect(String(decoding: served, as: UTF8.self) == info.stdout)
    #expect(info.stdout.contains("\"lowmem\" : 2147483648"))
    let plain = try CLI.run(try CLI.mramfs(), ["info", "--json", image])
    #expect(plain.stdout != info.stdout, "the override shows in the document")
    let table = try CLI.run(try CLI.mramfs(), ["info", image])
    #expect(table.stdout.contains("physmem         6 GiB, lowmem 0xc0000000: pc.ram [0x0, 0xc0000000) at 0x0; "))

    // Values that are not whole pages from 4K to 4G are refused before anything is mounted.
    let mountpoint = try MountSupport.makeMountpoint(prefix: "mramfs-lowmem")
    defer { rmdir(mountpoint) }
    for bad in ["lowmem=3000", "lowmem=5G", "lowmem=0", "lowmem=0xzz", "lowmem"] {
      let r = try CLI.run(try CLI.mramfs(), ["mount", image, mountpoint, "-o", bad])
      #expect(r.status != 0 && r.stderr.contains("lowmem"), "-o \(bad): status \(r.status), \(r.stderr)")
      #expect(MountSupport.mount(at: mountpoint) == nil)
    }
  }

  @Test("NUMA: info shows ram-node0 then ram-node1; a classic stream has no mount, but its info places RAM")
  func numaInfo() throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario("pc-numa-5g")
    let table = try CLI.run(try CLI.mramfs(), ["info", fixtures.path(s.file)])
    #expect(table.status == 0)
    #expect(
      table.stdout.contains(
        "physmem         6 GiB, lowmem 0xc0000000: ram-node0 [0x0, 0x40000000) at 0x0; ram-node1 [0x0, 0x80000000) at 0x40000000; pc.bios [0x0, 0x40000) at 0xfffc0000; ram-node1 [0x80000000, 0x100000000) at 0x100000000"
      ), "\(table.stdout)")
    let file = try MigrationFile(path: fixtures.path(s.file))
    #expect(file.blocks.first?.name.description == "ram-node1", "QEMU lists the bigger node first")
    let classic = try fixtures.scenario("pc-256-classic")
    let doc = InfoDocument(try MigrationFile(path: fixtures.path(classic.file)))
    #expect(doc.physmem?.size == classic.ramBytes)
  }
}

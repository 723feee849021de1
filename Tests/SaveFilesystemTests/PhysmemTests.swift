// The physmem view through the handlers: guest-physical address N at offset N,
// main RAM placed with the pc/q35 split (or a lowmem override), NUMA node blocks
// in node order, zeros and holes where there is no RAM, and no view at all for
// machines mramfs cannot place. No kernel; PhysmemRealQEMUTests checks the same
// through a mount against QEMU's own dump-guest-memory.
import FUSE
import Foundation
import Logging
import GuestViews
import MigrationFormat
import MigrationFormatTestSupport
import SaveFilesystem
import SystemPackage
import Testing

/// A file system over a synthetic image, with helpers to call the handlers on `physmem`.
struct PhysmemFixture {
  let path: String
  let file: MigrationFile
  let fs: MramFileSystem
  let configuration: MountConfiguration

  /// Writes `stream` to a temporary file and serves it.
  init(_ stream: FixtureStream, lowmem: UInt64? = nil, strategy: MountConfiguration.ReadStrategy = .pread) throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mramfs-physmem-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let path = dir.appendingPathComponent("image.mram").path
    try Data(stream.build().bytes).write(to: URL(fileURLWithPath: path))
    try self.init(path: path, lowmem: lowmem, strategy: strategy)
  }

  /// Serves the image at `path`.
  init(path: String, lowmem: UInt64? = nil, strategy: MountConfiguration.ReadStrategy = .pread) throws {
    self.path = path
    file = try MigrationFile(path: path)
    var c = MountConfiguration()
    c.lowmem = lowmem
    c.readStrategy = strategy
    configuration = c
    fs = MramFileSystem(file: file, configuration: c, logger: Logger(label: "test"))
  }

  func lookup(_ name: String) -> FileAttributes? {
    let r = ReplyRecorder()
    fs.lookup(Request(), parent: .root, name: name, reply: ReplyEntry(recordingInto: r))
    guard case .entry(let e) = r.last else { return nil }
    return e.attributes
  }

  func physmem() throws -> INode { try #require(lookup("physmem"), "no physmem").inode }

  func rootNames() -> [String] {
    let r = ReplyRecorder()
    fs.readdir(Request(), inode: .root, handle: .none, offset: 0, reply: ReplyDirectory(recordingInto: r))
    guard case .directory(let entries) = r.last else { return [] }
    return entries.map(\.name).sorted()
  }

  func read(_ offset: UInt64, _ size: Int) throws -> [UInt8]? {
    let r = ReplyRecorder()
    fs.read(
      Request(), inode: try physmem(), handle: .none, offset: Int64(offset), size: size,
      reply: ReplyData(recordingInto: r, size: size))
    guard case .data(let bytes) = r.last else { return nil }
    return bytes
  }

  func seek(_ offset: UInt64, _ whence: SeekWhence) throws -> RecordedReply? {
    let r = ReplyRecorder()
    fs.lseek(
      Request(), inode: try physmem(), handle: .none, offset: Int64(offset), whence: whence,
      reply: ReplyLseek(recordingInto: r))
    return r.last
  }

  var info: InfoDocument { InfoDocument(file, lowmem: configuration.lowmem, kernel: fs.kernel) }
}

/// The bytes a synthetic block reads as (present pages; stale ones are zero).
func blockBytes(_ b: FixtureBlock) -> [UInt8] {
  var out = [UInt8](repeating: 0, count: Int(b.length))
  for (p, content) in b.present {
    out.replaceSubrange(Int(p) * 4096..<Int(p + 1) * 4096, with: content + [UInt8](repeating: 0, count: 4096 - content.count))
  }
  return out
}

/// What `physmem` must read as in `[start, start + count)`, given pieces (gpa, bytes), zeros elsewhere.
func expectedPhysical(_ pieces: [(gpa: UInt64, bytes: ArraySlice<UInt8>)], _ start: UInt64, _ count: Int) -> [UInt8] {
  var out = [UInt8](repeating: 0, count: count)
  let end = start + UInt64(count)
  for piece in pieces {
    let lo = max(start, piece.gpa)
    let hi = min(end, piece.gpa + UInt64(piece.bytes.count))
    guard lo < hi else { continue }
    let from = piece.bytes.startIndex + Int(lo - piece.gpa)
    out.replaceSubrange(Int(lo - start)..<Int(hi - start), with: piece.bytes[from..<from + Int(hi - lo)])
  }
  return out
}

let page: UInt64 = 4096
let fourGiB: UInt64 = 1 << 32

/// pc.ram of 130 pages (runs of 1, 3 and 64 present pages, a stale page under a clear bit) and a VGA block.
func smallPC(machine: String? = "pc-i440fx-10.0", ramName: String = "pc.ram") -> FixtureStream {
  var vram = FixtureBlock(name: "0000:00:02.0/vga.vram", length: 16 * 4096)
  for p: UInt64 in [0, 1, 15] { vram.present[p] = FixtureBlock.pattern(block: "vga", page: p) }
  var ram = FixtureBlock(name: ramName, length: 130 * 4096)
  for p: UInt64 in [2, 20, 21, 22] + Array(60..<124) { ram.present[p] = FixtureBlock.pattern(block: "pc.ram", page: p) }
  ram.stale[10] = [UInt8](repeating: 0xA5, count: 4096)
  var s = FixtureStream(blocks: [vram, ram])
  s.machine = machine
  return s
}

/// A sparse page source for ``StreamWriter``: the given pages, zero elsewhere.
struct SparsePages: PageSource {
  let pages: [UInt64: [UInt8]]
  let sorted: [UInt64]
  init(_ pages: [UInt64: [UInt8]]) {
    self.pages = pages
    sorted = pages.keys.sorted()
  }
  func page(_ page: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FormatError) -> Bool {
    guard let bytes = pages[page] else { return false }
    buffer.copyBytes(from: bytes)
    return true
  }
  func nextCandidate(from: UInt64) -> UInt64? { sorted.first { $0 >= from } }
}

@Suite("physmem through the handlers")
struct PhysmemTests {
  @Test("a small pc guest: physmem is pc.ram at address 0, listed beside the blocks", arguments: [MountConfiguration.ReadStrategy.pread, .splice])
  func smallGuest(strategy: MountConfiguration.ReadStrategy) throws {
    let stream = smallPC()
    let f = try PhysmemFixture(stream, strategy: strategy)
    #expect(f.rootNames() == [".", "..", "0000:00:02.0", "devices", "info.json", "pc.ram", "physmem"])
    let a = try #require(f.lookup("physmem"))
    let ram = blockBytes(stream.blocks[1])
    #expect(a.size == Int64(ram.count))
    #expect(a.blocks == Int64(stream.blocks[1].present.count * 4096 / 512), "st_blocks counts pc.ram's populated pages only")
    #expect(a.mode.permissions.rawValue == 0o444 && a.mode.type == .regular)
    #expect(a.blockSize == 4096)
    #expect(try f.read(0, ram.count) == ram)
    #expect(try f.read(10 * page, 4096) == [UInt8](repeating: 0, count: 4096), "the stale page reads as zeros")
    #expect(try f.read(UInt64(ram.count) - 5, 100) == Array(ram.suffix(5)), "a read stops at the end")
    #expect(try f.read(UInt64(ram.count), 10) == [])
    #expect(try f.seek(0, .nextData) == .lseek(Int64(2 * page)))
    #expect(try f.seek(60 * page, .nextHole) == .lseek(Int64(124 * page)))
    #expect(try f.seek(124 * page, .nextData) == .error(.noSuchAddressOrDevice))
    #expect(try f.seek(124 * page, .nextHole) == .lseek(Int64(124 * page)))
    #expect(try f.seek(130 * page, .nextHole) == .error(.noSuchAddressOrDevice))
    let doc = f.info
    #expect(doc.physmemUnavailable == nil)
    #expect(doc.physmem?.size == 130 * page && doc.physmem?.lowmem == 130 * page)
    #expect(doc.physmem?.ranges.map(\.block) == ["pc.ram"])
  }

  @Test("-o lowmem splits pc.ram: the rest lands at 4 GiB, the PCI hole reads as zeros", arguments: [MountConfiguration.ReadStrategy.pread, .splice])
  func lowmemOverride(strategy: MountConfiguration.ReadStrategy) throws {
    let stream = smallPC()
    let low = 64 * page
    let f = try PhysmemFixture(stream, lowmem: low, strategy: strategy)
    let ram = blockBytes(stream.blocks[1])
    let pieces = [(gpa: UInt64(0), bytes: ram[0..<Int(low)]), (gpa: fourGiB, bytes: ram[Int(low)...])]
    let size = fourGiB + 66 * page
    let a = try #require(f.lookup("physmem"))
    #expect(a.size == Int64(size))
    #expect(a.blocks == Int64(stream.blocks[1].present.count * 4096 / 512))
    // Reads around lowmem, across the 4 GiB boundary, in the hole, and at the end.
    for (offset, count) in [
      (UInt64(0), Int(low) + 8192), (low - 100, 200), (low - 3, 1 << 20), (fourGiB - 5000, 10_000),
      (fourGiB - 512 * 1024, 1 << 20), (fourGiB + 1, 4096), (3 << 30, 4096), (fourGiB + 59 * page + 7, 3 * 4096),
      (size - 10, 100), (size, 10), (size + 12345, 10),
    ] {
      let want = offset >= size ? [] : expectedPhysical(pieces, offset, Int(min(UInt64(count), size - offset)))
      #expect(try f.read(offset, count) == want, "read \(count) at \(hex(offset))")
    }
    // The page at lowmem in pc.ram (page 64, present) is GPA 4 GiB.
    #expect(try f.read(fourGiB, 4096) == FixtureBlock.pattern(block: "pc.ram", page: 64))
    // SEEK_DATA / SEEK_HOLE through the ranges.
    #expect(try f.seek(0, .nextData) == .lseek(Int64(2 * page)))
    #expect(try f.seek(60 * page, .nextHole) == .lseek(Int64(low)), "the low range ends in data; the PCI hole follows")
    #expect(try f.seek(61 * page + 9, .nextData) == .lseek(Int64(61 * page + 9)))
    #expect(try f.seek(low, .nextData) == .lseek(Int64(fourGiB)), "from the hole to the first high page")
    #expect(try f.seek(3 << 30, .nextData) == .lseek(Int64(fourGiB)))
    #expect(try f.seek(3 << 30, .nextHole) == .lseek(Int64(3 << 30)), "the PCI hole is a hole")
    #expect(try f.seek(fourGiB, .nextHole) == .lseek(Int64(fourGiB + 60 * page)))
    #expect(try f.seek(fourGiB + 60 * page, .nextData) == .error(.noSuchAddressOrDevice))
    #expect(try f.seek(fourGiB + 60 * page, .nextHole) == .lseek(Int64(fourGiB + 60 * page)))
    #expect(try f.seek(size - 1, .nextHole) == .lseek(Int64(size - 1)))
    #expect(try f.seek(size, .nextHole) == .error(.noSuchAddressOrDevice))
    #expect(try f.seek(size, .nextData) == .error(.noSuchAddressOrDevice))
    // info.json describes the same layout, and is the document `info --lowmem` prints.
    let doc = f.info
    #expect(doc.physmem?.size == size && doc.physmem?.lowmem == low)
    #expect(doc.physmem?.ranges.map { [$0.gpa, $0.blockOffset, $0.length] } == [[0, 0, low], [fourGiB, low, 66 * page]])
    let r = ReplyRecorder()
    let info = try #require(f.lookup("info.json")).inode
    f.fs.read(Request(), inode: info, handle: .none, offset: 0, size: 1 << 20, reply: ReplyData(recordingInto: r, size: 1 << 20))
    #expect(r.last == .data(Array(doc.json().utf8)))
    #expect(doc.json().contains("\"physmem\""))
  }

  @Test("a 5 GiB guest: pc splits at 3 GiB, q35 at 2 GiB, the rest from 4 GiB", arguments: [
    ("pc-i440fx-10.0", UInt64(0xc000_0000)), ("pc-q35-10.0", UInt64(0x8000_0000)),
  ])
  func fiveGiB(machine: String, low: UInt64) throws {
    let length: UInt64 = 5 << 30
    // Pages at both ends of the low part, at both ends of the high part, and at pc.ram 0xC0000000
    // (FORMAT.md: q35 GPA 0x140000000).
    let offsets: [UInt64] = [0, low - page, low, 0xc000_0000, length - page]
    var pages: [UInt64: [UInt8]] = [:]
    for o in offsets { pages[o / page] = FixtureBlock.pattern(block: "pc.ram", page: o / page) }
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mramfs-physmem-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    let path = dir.appendingPathComponent("five.mram").path
    var plan = StreamPlan(machineType: machine)
    plan.blocks = [BlockPlan(name: BlockName("pc.ram"), length: length, source: SparsePages(pages))]
    _ = try StreamWriter.write(plan, to: try OutputFile(path: path, overwrite: false))

    for strategy in [MountConfiguration.ReadStrategy.pread, .splice] {
      let f = try PhysmemFixture(path: path, strategy: strategy)
      let size = fourGiB + (length - low)
      let a = try #require(f.lookup("physmem"))
      #expect(a.size == Int64(size))
      #expect(a.blocks == Int64(pages.count) * 8)
      func gpa(_ offset: UInt64) -> UInt64 { offset < low ? offset : fourGiB + offset - low }
      for o in offsets {
        #expect(try f.read(gpa(o), 4096) == pages[o / page], "\(machine): pc.ram \(hex(o)) at GPA \(hex(gpa(o)))")
      }
      if machine.contains("q35") { #expect(gpa(0xc000_0000) == 0x1_4000_0000) }
      // Across the end of low RAM and across 4 GiB, in 1 MiB reads.
      let lastLow = try #require(try f.read(low - 512 * 1024, 1 << 20))
      #expect(Array(lastLow[(512 * 1024 - 4096)..<(512 * 1024)]) == pages[(low - page) / page])
      #expect(lastLow[(512 * 1024)...].allSatisfy { $0 == 0 }, "the PCI hole reads as zeros")
      let boundary = try #require(try f.read(fourGiB - 512 * 1024, 1 << 20))
      #expect(boundary[..<(512 * 1024)].allSatisfy { $0 == 0 })
      #expect(Array(boundary[(512 * 1024)..<(512 * 1024 + 4096)]) == pages[low / page])
      #expect(try f.read(size - 4096, 8192) == pages[(length - page) / page], "the last page, then the end")
      #expect(try f.seek(page, .nextData) == .lseek(Int64(low - page)))
      #expect(try f.seek(low - page, .nextHole) == .lseek(Int64(low)))
      #expect(try f.seek(low, .nextData) == .lseek(Int64(fourGiB)))
      #expect(try f.seek(fourGiB, .nextHole) == .lseek(Int64(fourGiB + page)))
      #expect(try f.seek(size - page, .nextHole) == .lseek(Int64(size)))
      #expect(try f.seek(size - page - 1, .nextData) == .lseek(Int64(size - page)))
    }
  }

  @Test("NUMA: ram-node0, ram-node1 are main RAM in node order, whatever the stream order", arguments: ["", "/objects/"])
  func numa(prefix: String) throws {
    var node0 = FixtureBlock(name: prefix + "ram-node0", length: 16 * 4096)
    var node1 = FixtureBlock(name: prefix + "ram-node1", length: 48 * 4096)
    for p: UInt64 in [0, 15] { node0.present[p] = FixtureBlock.pattern(block: "node0", page: p) }
    for p: UInt64 in [0, 1, 15, 16, 47] { node1.present[p] = FixtureBlock.pattern(block: "node1", page: p) }
    var bios = FixtureBlock(name: "pc.bios", length: 4 * 4096)
    bios.present[0] = FixtureBlock.pattern(block: "bios", page: 0)
    // QEMU lists blocks by size: the bigger node first.
    let f = try PhysmemFixture(FixtureStream(blocks: [node1, node0, bios]), lowmem: 32 * page)
    let n0 = blockBytes(node0)
    let n1 = blockBytes(node1)
    let pieces = [(gpa: UInt64(0), bytes: n0[...]), (gpa: 16 * page, bytes: n1[0..<Int(16 * page)]), (gpa: fourGiB, bytes: n1[Int(16 * page)...])]
    let size = fourGiB + 32 * page
    let a = try #require(f.lookup("physmem"))
    #expect(a.size == Int64(size))
    #expect(a.blocks == 8 * 8, "seven pages of RAM and the BIOS's one")
    #expect(try f.read(0, Int(32 * page)) == expectedPhysical(pieces, 0, Int(32 * page)))
    #expect(try f.read(15 * page + 100, 8192) == expectedPhysical(pieces, 15 * page + 100, 8192), "across the node boundary")
    #expect(try f.read(fourGiB - 100, Int(32 * page) + 100) == expectedPhysical(pieces, fourGiB - 100, Int(32 * page) + 100))
    #expect(try f.seek(page, .nextData) == .lseek(Int64(15 * page)))
    #expect(try f.seek(15 * page, .nextHole) == .lseek(Int64(18 * page)), "node 0's last page runs on into node 1's first two")
    #expect(try f.seek(18 * page, .nextData) == .lseek(Int64(31 * page)))
    #expect(try f.seek(31 * page, .nextHole) == .lseek(Int64(32 * page)), "low RAM ends at lowmem; the hole follows")
    // The BIOS sits just below 4 GiB, as the CPU sees it.
    #expect(try f.seek(32 * page, .nextData) == .lseek(Int64(fourGiB - 4 * page)))
    #expect(try f.read(fourGiB - 4 * page, Int(page)) == Array(FixtureBlock.pattern(block: "bios", page: 0).prefix(Int(page))))
    #expect(try f.seek(fourGiB - 4 * page, .nextHole) == .lseek(Int64(fourGiB - 3 * page)))
    #expect(try f.seek(fourGiB - 3 * page, .nextData) == .lseek(Int64(fourGiB)))
    #expect(try f.seek(fourGiB, .nextHole) == .lseek(Int64(fourGiB + page)))
    #expect(try f.seek(fourGiB + page, .nextData) == .lseek(Int64(fourGiB + 31 * page)))
    let doc = f.info
    #expect(doc.physmem?.ranges.map(\.block) == [prefix + "ram-node0", prefix + "ram-node1", "pc.bios", prefix + "ram-node1"])
    #expect(doc.physmem?.ranges.map(\.gpa) == [0, 16 * page, fourGiB - 4 * page, fourGiB])
  }

  @Test("machines mramfs cannot place have no physmem, and info says why", arguments: [
    (smallPC(machine: "microvm"), "microvm"),
    (smallPC(machine: "isapc"), "isapc"),
    (smallPC(machine: nil), "machine type is unknown"),
    (smallPC(ramName: "mem0"), "no pc.ram block"),
    (FixtureStream(blocks: [FixtureBlock(name: "ram-node0", length: 4096), FixtureBlock(name: "ram-node2", length: 4096)]), "leave out node 1"),
    (FixtureStream(blocks: [FixtureBlock(name: "ram-node0", length: 4096), FixtureBlock(name: "/objects/ram-node0", length: 4096)]), "two blocks name NUMA node 0"),
  ])
  func absent(stream: FixtureStream, reason: String) throws {
    let f = try PhysmemFixture(stream)
    #expect(f.lookup("physmem") == nil)
    #expect(!f.rootNames().contains("physmem"))
    let doc = f.info
    #expect(doc.physmem == nil)
    let why = try #require(doc.physmemUnavailable)
    #expect(why.contains(reason), "\(why)")
    #expect(doc.json().contains("\"physmemUnavailable\""))
  }

  @Test("RAM reaching 0xfd00000000 is not placed: AMD guests have it at 1 TiB, and the file does not say which")
  func amdRelocation() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mramfs-physmem-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: dir) }
    // 3 GiB low + the rest from 4 GiB ends exactly at 0xfd00000000.
    let length: UInt64 = 0xfd_0000_0000 - fourGiB + 0xc000_0000
    let path = dir.appendingPathComponent("huge.mram").path
    var plan = StreamPlan(machineType: "pc-i440fx-10.0")
    plan.blocks = [BlockPlan(name: BlockName("pc.ram"), length: length, source: SparsePages([0: [1]]))]
    _ = try StreamWriter.write(plan, to: try OutputFile(path: path, overwrite: false))
    let f = try PhysmemFixture(path: path)
    #expect(f.lookup("physmem") == nil)
    #expect(f.info.physmemUnavailable?.contains("1 TiB") == true, "\(String(describing: f.info.physmemUnavailable))")
    // One page less, and it is placed.
    let g = try PhysmemFixture(path: path, lowmem: 0xc000_0000 + page)
    #expect(g.lookup("physmem")?.size == Int64(0xfd_0000_0000 - page))
  }

  @Test("a block named physmem does not take the view's name")
  func nameClash() throws {
    var s = smallPC()
    s.blocks.append(FixtureBlock(name: "physmem", length: 4096, present: [0: [1, 2, 3]]))
    let f = try PhysmemFixture(s)
    #expect(f.rootNames().contains("%70hysmem"))
    #expect(try #require(f.lookup("physmem")).size == 130 * 4096)
    #expect(BlockPaths.reserved.isSuperset(of: ["physmem", "vmcore", "cpu", "devices", "info.json"]))
  }
}

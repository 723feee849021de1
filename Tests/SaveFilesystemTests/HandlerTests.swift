// The mramfs handlers, called directly with replies that record their answers:
// no kernel, no mount. The mount tests check the same behaviour through the kernel.
import FUSE
import Foundation
import Logging
import GuestViews
import MigrationFormat
import MigrationFormatTestSupport
import SaveFilesystem
import SystemPackage
import Testing

/// A file system over an in-code fixture: pc.ram is not first and a name holds `/`.
struct Fixture {
  let stream: FixtureStream
  let file: MigrationFile
  let fs: MramFileSystem

  init(configuration: MountConfiguration = MountConfiguration()) throws {
    var vram = FixtureBlock(name: "0000:00:02.0/vga.vram", length: 70 * 4096)
    for p in stride(from: UInt64(0), to: 70, by: 5) { vram.present[p] = FixtureBlock.pattern(block: "vga", page: p) }
    var ram = FixtureBlock(name: "pc.ram", length: 130 * 4096)
    // Runs of 1, 3 and 64 present pages; page 10 has stale bytes under a clear bit.
    for p: UInt64 in [2, 20, 21, 22] + Array(60..<124) { ram.present[p] = FixtureBlock.pattern(block: "pc.ram", page: p) }
    ram.stale[10] = [UInt8](repeating: 0xA5, count: 4096)
    stream = FixtureStream(blocks: [vram, ram])
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mramfs-handler-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    let path = dir.appendingPathComponent("image.mram").path
    try Data(stream.build().bytes).write(to: URL(fileURLWithPath: path))
    file = try MigrationFile(path: path)
    fs = MramFileSystem(file: file, configuration: configuration, logger: Logger(label: "test"))
  }

  /// The bytes block `i` must read as.
  func expected(_ i: Int) -> [UInt8] {
    let b = stream.blocks[i]
    var out = [UInt8](repeating: 0, count: Int(b.length))
    for (p, content) in b.present { out.replaceSubrange(Int(p) * 4096..<Int(p + 1) * 4096, with: content.prefix(4096)) }
    return out
  }

  func lookup(_ parent: INode, _ name: String) -> FileAttributes? {
    let r = ReplyRecorder()
    fs.lookup(Request(), parent: parent, name: name, reply: ReplyEntry(recordingInto: r))
    guard case .entry(let e) = r.last else { return nil }
    return e.attributes
  }

  func inode(_ path: String) throws -> INode {
    var at = INode.root
    for part in path.split(separator: "/") {
      at = try #require(lookup(at, String(part)), "no \(part) in \(path)").inode
    }
    return at
  }

  func read(_ inode: INode, _ offset: Int64, _ size: Int) -> RecordedReply? {
    let r = ReplyRecorder()
    fs.read(Request(), inode: inode, handle: .none, offset: offset, size: size, reply: ReplyData(recordingInto: r, size: size))
    return r.last
  }

  func seek(_ inode: INode, _ offset: Int64, _ whence: SeekWhence) -> RecordedReply? {
    let r = ReplyRecorder()
    fs.lseek(Request(), inode: inode, handle: .none, offset: offset, whence: whence, reply: ReplyLseek(recordingInto: r))
    return r.last
  }
}

@Suite("mramfs handlers")
struct HandlerTests {
  @Test("layout: one file per block, names with / nest, info.json and physmem at the top")
  func layout() throws {
    let f = try Fixture()
    let r = ReplyRecorder()
    f.fs.readdir(Request(), inode: .root, handle: .none, offset: 0, reply: ReplyDirectory(recordingInto: r))
    guard case .directory(let entries) = r.last else { Issue.record("readdir gave \(String(describing: r.last))"); return }
    #expect(entries.map(\.name).sorted() == [".", "..", "0000:00:02.0", "devices", "info.json", "pc.ram", "physmem"])
    #expect(f.lookup(.root, "missing") == nil)
    let dir = try f.inode("0000:00:02.0")
    let vram = try #require(f.lookup(dir, "vga.vram"))
    #expect(vram.size == 70 * 4096)
    #expect(f.lookup(.root, "0000:00:02.0")?.mode.type == .directory)
  }

  @Test("attributes: size, st_blocks from the populated pages, page size, mode 0444")
  func attributes() throws {
    let f = try Fixture(configuration: { var c = MountConfiguration(); c.uid = 4321; c.gid = 99; return c }())
    let a = try #require(f.lookup(.root, "pc.ram"))
    #expect(a.size == 130 * 4096)
    #expect(a.blocks == Int64(f.stream.blocks[1].present.count * 4096 / 512))
    #expect(a.blockSize == 4096)
    #expect(a.mode.permissions.rawValue == 0o444)
    #expect(a.uid == 4321 && a.gid == 99)
    let dir = try #require(f.lookup(.root, "0000:00:02.0"))
    #expect(dir.mode.permissions.rawValue == 0o555)
  }

  @Test("reads at any offset and size mask by the bitmap", arguments: [MountConfiguration.ReadStrategy.pread, .splice])
  func reads(strategy: MountConfiguration.ReadStrategy) throws {
    var c = MountConfiguration()
    c.readStrategy = strategy
    let f = try Fixture(configuration: c)
    let ram = try f.inode("pc.ram")
    let want = f.expected(1)
    for (offset, size) in [(0, 130 * 4096), (1, 1), (10 * 4096 - 3, 4100), (4095, 2), (59 * 4096 + 17, 70_000), (130 * 4096 - 5, 100), (130 * 4096, 10), (200 * 4096, 10)] {
      let start = min(offset, want.count)
      let end = min(want.count, offset + size)
      #expect(f.read(ram, Int64(offset), size) == .data(Array(want[start..<end])), "read \(size) at \(offset)")
    }
    // The stale page under a clear bit reads as zeros.
    #expect(f.read(ram, 10 * 4096, 4096) == .data([UInt8](repeating: 0, count: 4096)))
    let vram = try f.inode("0000:00:02.0/vga.vram")
    #expect(f.read(vram, 0, 70 * 4096) == .data(f.expected(0)))
  }

  @Test("SEEK_DATA and SEEK_HOLE follow the bitmap's runs; ENXIO past the data")
  func seeks() throws {
    let f = try Fixture()
    let ram = try f.inode("pc.ram")
    let page: Int64 = 4096
    #expect(f.seek(ram, 0, .nextData) == .lseek(2 * page))
    #expect(f.seek(ram, 2 * page + 5, .nextData) == .lseek(2 * page + 5))
    #expect(f.seek(ram, 2 * page, .nextHole) == .lseek(3 * page))
    #expect(f.seek(ram, 3 * page, .nextData) == .lseek(20 * page))
    #expect(f.seek(ram, 20 * page, .nextHole) == .lseek(23 * page))
    #expect(f.seek(ram, 23 * page, .nextData) == .lseek(60 * page))
    #expect(f.seek(ram, 60 * page, .nextHole) == .lseek(124 * page))
    #expect(f.seek(ram, 124 * page, .nextData) == .error(.noSuchAddressOrDevice))
    #expect(f.seek(ram, 124 * page, .nextHole) == .lseek(124 * page))
    #expect(f.seek(ram, 130 * page, .nextHole) == .error(.noSuchAddressOrDevice))
    #expect(f.seek(ram, -1, .nextData) == .error(.noSuchAddressOrDevice))
  }

  @Test("opening for writing fails with EROFS; directories are not files")
  func opens() throws {
    let f = try Fixture()
    let ram = try f.inode("pc.ram")
    for (flags, want) in [
      (OpenFlags(rawValue: O_RDONLY), nil), (OpenFlags(rawValue: O_WRONLY), Errno.readOnlyFileSystem),
      (OpenFlags(rawValue: O_RDWR), .readOnlyFileSystem), (OpenFlags(rawValue: O_RDONLY | O_TRUNC), .readOnlyFileSystem),
    ] as [(OpenFlags, Errno?)] {
      let r = ReplyRecorder()
      f.fs.open(Request(), inode: ram, flags: flags, reply: ReplyOpen(recordingInto: r))
      if let want { #expect(r.last == .error(want)) } else { #expect(r.last == .open(.none, [.keepCache])) }
    }
    let r = ReplyRecorder()
    f.fs.open(Request(), inode: .root, flags: OpenFlags(rawValue: O_RDONLY), reply: ReplyOpen(recordingInto: r))
    #expect(r.last == .error(.isDirectory))
    f.fs.open(Request(), inode: INode(999), flags: OpenFlags(rawValue: O_RDONLY), reply: ReplyOpen(recordingInto: r))
    #expect(r.last == .error(.noSuchFileOrDirectory))
  }

  @Test("xattrs carry the exact block name and its figures")
  func xattrs() throws {
    let f = try Fixture()
    let vram = try f.inode("0000:00:02.0/vga.vram")
    let r = ReplyRecorder()
    f.fs.getxattr(Request(), inode: vram, name: "user.mramfs.block", size: 100, reply: ReplyXattr(recordingInto: r, size: 100))
    #expect(r.last == .xattrData(Array("0000:00:02.0/vga.vram".utf8)))
    f.fs.getxattr(Request(), inode: vram, name: "user.mramfs.block", size: 0, reply: ReplyXattr(recordingInto: r, size: 0))
    #expect(r.last == .xattrSize(21))
    f.fs.getxattr(Request(), inode: vram, name: "user.mramfs.block", size: 3, reply: ReplyXattr(recordingInto: r, size: 3))
    #expect(r.last == .error(.outOfRange))
    f.fs.getxattr(Request(), inode: vram, name: "user.mramfs.populated_pages", size: 100, reply: ReplyXattr(recordingInto: r, size: 100))
    #expect(r.last == .xattrData(Array("14".utf8)))
    f.fs.getxattr(Request(), inode: vram, name: "user.other", size: 100, reply: ReplyXattr(recordingInto: r, size: 100))
    #expect(r.last == .error(.noData))
    f.fs.getxattr(Request(), inode: vram, name: "user.mramfs.pages_offset", size: 100, reply: ReplyXattr(recordingInto: r, size: 100))
    #expect(r.last == .xattrData(Array("\(f.file.blocks[0].pagesOffset)".utf8)))
  }

  @Test("info.json is the info --json document")
  func infoJSON() throws {
    let f = try Fixture()
    let info = try f.inode("info.json")
    // The mount's document holds the kernel look-up it made (once); with it, it is the info --json document.
    let want = Array(InfoDocument(f.file, kernel: f.fs.kernel).json().utf8)
    #expect(f.read(info, 0, 1 << 20) == .data(want))
    #expect(f.read(info, 5, 10) == .data(Array(want[5..<15])))
  }

  @Test("statfs reports the RAM size and no free space")
  func statfs() throws {
    let f = try Fixture()
    let r = ReplyRecorder()
    f.fs.statfs(Request(), inode: .root, reply: ReplyStatFS(recordingInto: r))
    guard case .statfs(let s) = r.last else { Issue.record("statfs gave \(String(describing: r.last))"); return }
    #expect(s.blocks == 200)
    #expect(s.freeBlocks == 0 && s.availableBlocks == 0)
  }
}

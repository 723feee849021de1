// A delta mount's handlers (the view of B against a base A), called directly: block files
// and physmem serve B's bytes in the changed pages and holes elsewhere, a page that changed
// to zeros is data that reads as zeros, info.json names the base, and a base whose blocks
// do not match is refused with the blocks named.
import FUSE
import Foundation
import Logging
import MigrationFormat
import MigrationFormatTestSupport
import SaveFilesystem
import SystemPackage
import Testing

/// A and B, pc.ram of 130 pages; B rewrites page 2, clears page 20 (its bytes left behind),
/// adds page 100 and zeroes page 61 under a set bit; page 70 is set over zeros in B only.
struct DeltaFixture {
  static let page: Int64 = 4096
  let pathA: String
  let pathB: String
  let streamB: FixtureStream
  let fs: MramFileSystem

  init(configuration: MountConfiguration = MountConfiguration()) throws {
    var ram = FixtureBlock(name: "pc.ram", length: 130 * 4096)
    for p: UInt64 in [2, 20, 21, 61] + Array(30..<40) { ram.present[p] = FixtureBlock.pattern(block: "A", page: p) }
    let a = FixtureStream(blocks: [ram, patternBlock("pc.bios", pages: 16)])
    var b = a
    b.blocks[0].present[2] = FixtureBlock.pattern(block: "B", page: 2)
    b.blocks[0].present[20] = nil
    b.blocks[0].stale[20] = FixtureBlock.pattern(block: "A", page: 20)
    b.blocks[0].present[100] = FixtureBlock.pattern(block: "B", page: 100)
    b.blocks[0].present[61] = [UInt8](repeating: 0, count: 4096)
    b.blocks[0].present[70] = [UInt8](repeating: 0, count: 4096)
    streamB = b
    pathA = try temporaryFile(a.build().bytes, name: "a.mapped")
    pathB = try temporaryFile(b.build().bytes, name: "b.mapped")
    var request = MountRequest(image: pathB, mountpoint: "/nonexistent")
    request.base = pathA
    let (view, base) = try DeltaMount.view(of: MigrationFile(path: pathB), base: pathA, request)
    fs = MramFileSystem(file: view, configuration: configuration, logger: Logger(label: "test"), base: base)
  }

  func lookup(_ name: String) -> FileAttributes? {
    let r = ReplyRecorder()
    fs.lookup(Request(), parent: .root, name: name, reply: ReplyEntry(recordingInto: r))
    guard case .entry(let e) = r.last else { return nil }
    return e.attributes
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

  /// What pc.ram reads as in the delta mount: B's bytes in pages 2 and 100, zeros elsewhere.
  var expectedRAM: [UInt8] {
    var out = [UInt8](repeating: 0, count: 130 * 4096)
    out.replaceSubrange(2 * 4096..<3 * 4096, with: FixtureBlock.pattern(block: "B", page: 2))
    out.replaceSubrange(100 * 4096..<101 * 4096, with: FixtureBlock.pattern(block: "B", page: 100))
    return out
  }
}

@Suite("delta mount handlers")
struct DeltaHandlerTests {
  @Test("block files and physmem read B's bytes in the changed pages and zeros elsewhere", arguments: [MountConfiguration.ReadStrategy.pread, .splice])
  func reads(strategy: MountConfiguration.ReadStrategy) throws {
    var c = MountConfiguration()
    c.readStrategy = strategy
    let f = try DeltaFixture(configuration: c)
    let ram = try #require(f.lookup("pc.ram"))
    let physmem = try #require(f.lookup("physmem"))
    let want = f.expectedRAM
    for inode in [ram.inode, physmem.inode] {
      #expect(f.read(inode, 0, want.count) == .data(want))
      #expect(f.read(inode, 20 * 4096 - 7, 4100) == .data([UInt8](repeating: 0, count: 4100)), "cleared page: its stale bytes are not served")
      #expect(f.read(inode, 2 * 4096 + 100, 50) == .data(Array(want[2 * 4096 + 100..<2 * 4096 + 150])))
    }
    let bios = try #require(f.lookup("pc.bios"))
    #expect(f.read(bios.inode, 0, 16 * 4096) == .data([UInt8](repeating: 0, count: 16 * 4096)))
  }

  @Test("SEEK_DATA/SEEK_HOLE and st_blocks follow the changed pages, including those changed to zeros")
  func extents() throws {
    let f = try DeltaFixture()
    let page = DeltaFixture.page
    let ram = try #require(f.lookup("pc.ram"))
    let physmem = try #require(f.lookup("physmem"))
    #expect(ram.blocks == 4 * page / 512, "pages 2, 20, 61, 100")
    // physmem's st_blocks is PhysicalLayout.populatedBytes, which counts the data pages (the
    // changed ones), as SEEK_DATA does: pages 2, 20 (cleared in B), 61 and 100.
    #expect(physmem.blocks == 4 * page / 512)
    for inode in [ram.inode, physmem.inode] {
      var walked: [Range<Int64>] = []
      var at: Int64 = 0
      while case .lseek(let data) = f.seek(inode, at, .nextData), case .lseek(let hole) = f.seek(inode, data, .nextHole) {
        walked.append(data..<hole)
        at = hole
      }
      #expect(walked == [2..<3, 20..<21, 61..<62, 100..<101].map { $0.lowerBound * page..<$0.upperBound * page })
      #expect(f.seek(inode, 101 * page, .nextData) == .error(.noSuchAddressOrDevice))
    }
    let bios = try #require(f.lookup("pc.bios"))
    #expect(bios.blocks == 0 && f.seek(bios.inode, 0, .nextData) == .error(.noSuchAddressOrDevice))
    let r = ReplyRecorder()
    f.fs.getxattr(Request(), inode: ram.inode, name: "user.mramfs.populated_pages", size: 100, reply: ReplyXattr(recordingInto: r, size: 100))
    #expect(r.last == .xattrData(Array("4".utf8)))
  }

  @Test("info.json says which base the mount was taken against")
  func info() throws {
    let f = try DeltaFixture()
    let node = try #require(f.lookup("info.json"))
    guard case .data(let bytes) = f.read(node.inode, 0, 1 << 20) else {
      Issue.record("info.json did not read")
      return
    }
    let doc = try JSONDecoder().decode(InfoDocument.self, from: Data(bytes))
    let base = try #require(doc.base)
    #expect(base.file == f.pathA && base.changedPages == 4 && base.changedBytes == 4 * 4096 && base.mismatchedBlocks.isEmpty)
    #expect(doc.file == f.pathB && doc.populatedPages == 4)
    #expect(doc.blocks.map(\.populatedPages) == [4, 0])
  }

  @Test("a base whose blocks differ is refused with the blocks named; base-mismatch=ok keeps the matching ones")
  func mismatch() throws {
    let a = FixtureStream(blocks: [patternBlock("pc.ram", pages: 64), patternBlock("old.rom", pages: 2), patternBlock("vga.vram", pages: 8)])
    let b = FixtureStream(blocks: [patternBlock("pc.ram", pages: 64), patternBlock("vga.vram", pages: 16), patternBlock("new.rom", pages: 2)])
    let pathA = try temporaryFile(a.build().bytes, name: "a.mapped")
    let pathB = try temporaryFile(b.build().bytes, name: "b.mapped")
    var request = MountRequest(image: pathB, mountpoint: "/nonexistent")
    request.base = pathA
    let image = try MigrationFile(path: pathB)
    let refusal = #expect(throws: MountFailure.self) { try DeltaMount.view(of: image, base: pathA, request) }
    #expect(
      refusal?.description == "base \(pathA) does not match \(pathB): block \"old.rom\" is only in the base; "
        + "block \"vga.vram\" is 0x8000 bytes in the base, 0x10000 in \(pathB); block \"new.rom\" is only in \(pathB); "
        + "-o base-mismatch=ok mounts only the blocks that match")
    request.baseMismatchOK = true
    let (view, base) = try DeltaMount.view(of: image, base: pathA, request)
    #expect(view.blocks.map(\.name.description) == ["pc.ram"])
    #expect(base.mismatchedBlocks.map(\.name) == ["old.rom", "vga.vram", "new.rom"])
    #expect(base.mismatchedBlocks.map(\.status) == [.onlyInA, .sizeDiffers, .onlyInB])
    #expect(base.changedPages == 0)
  }

  @Test("a base that cannot be opened, or is a classic stream, is refused naming the base")
  func badBase() throws {
    let b = FixtureStream(blocks: [patternBlock("pc.ram", pages: 8)])
    let pathB = try temporaryFile(b.build().bytes, name: "b.mapped")
    var classic = b
    classic.format = .classic
    classic.capabilities = []
    let pathC = try temporaryFile(classic.build().bytes, name: "c.classic")
    var request = MountRequest(image: pathB, mountpoint: "/nonexistent")
    let image = try MigrationFile(path: pathB)
    let missing = #expect(throws: MountFailure.self) { try DeltaMount.view(of: image, base: "/nonexistent/base", request) }
    #expect(missing?.description.hasPrefix("base /nonexistent/base: file \"/nonexistent/base\" at offset 0x0: cannot open") == true)
    request.base = pathC
    let refused = #expect(throws: MountFailure.self) { try DeltaMount.view(of: image, base: pathC, request) }
    #expect(refused?.description.hasPrefix("base \(pathC) is a classic (sequential) stream") == true)
  }
}

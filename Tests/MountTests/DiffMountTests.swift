// `mramfs diff` through the built binary (exit status, text, --stat, --json) and the delta
// mount (`mount B DIR -o base=A`) through the kernel, on the real QEMU save pairs of
// scripts/fixtures/pairs.py. Every mount is undone in cleanup.

import Foundation
import GuestViews
import MigrationFormat
import QEMUFixtures
import SaveFilesystem
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The data runs of the file at `path` as `cp --sparse` finds them (SEEK_DATA, SEEK_HOLE).
func dataRuns(_ path: String) throws -> [Range<UInt64>] {
  let fd = open(path, O_RDONLY | O_CLOEXEC)
  guard fd >= 0 else { throw MountTestError("open \(path): \(String(cString: strerror(errno)))") }
  defer { close(fd) }
  var runs: [Range<UInt64>] = []
  var pos: UInt64 = 0
  while let data = seekData(fd, pos) {
    guard let hole = seekHole(fd, data), hole > data else { throw MountTestError("\(path): SEEK_HOLE from \(hex(data)) failed") }
    runs.append(data..<hole)
    pos = hole
  }
  return runs
}

/// `mramfs diff --json`, decoded: every documented key must be there.
struct DiffJSON: Decodable {
  struct Block: Decodable {
    var name: String
    var status: String
    var pageSize: UInt64
    var changedPages: UInt64
    var ranges: [Piece]?
  }
  struct Piece: Decodable, Equatable {
    var offset: UInt64
    var length: UInt64
  }
  struct Physical: Decodable, Equatable {
    var gpa: UInt64
    var length: UInt64
  }
  var identical: Bool
  var changedPages: UInt64
  var blocks: [Block]
  var physical: [Physical]?
}

@Suite("mramfs diff and the delta mount, through the binary and the kernel", .serialized)
struct DiffMountTests {
  struct Pair {
    let base: String
    let file: String
    let diff: SaveDiff
  }

  static func pair(_ name: String) throws -> Pair {
    let fixtures = try Fixtures.load()
    let p = try fixtures.savePair(name)
    let (base, file) = (fixtures.path(p.baseFile), fixtures.path(p.file))
    return Pair(base: base, file: file, diff: try SaveDiff(MigrationFile(path: base), MigrationFile(path: file)))
  }

  @Test("exit status as cmp: 1 for saves that differ, 0 for the same RAM, 2 for trouble, errors in one line")
  func exitStatus() throws {
    let fixtures = try Fixtures.load()
    let mramfs = try CLI.mramfs()
    let twice = try fixtures.savePair("pc-256-twice")
    let resaved = try fixtures.savePair("pc-256-resaved")
    let differ = try CLI.run(mramfs, ["diff", fixtures.path(twice.baseFile), fixtures.path(twice.file)])
    #expect(differ.status == 1 && differ.stderr.isEmpty, "\(differ.status): \(differ.stderr)")
    let same = try CLI.run(mramfs, ["diff", fixtures.path(resaved.baseFile), fixtures.path(resaved.file)])
    #expect(same.status == 0 && same.stderr.isEmpty, "\(same.status): \(same.stderr)")
    #expect(same.stdout.hasSuffix("identical: 8 blocks, \(try Self.pair("pc-256-resaved").diff.comparedPages) populated pages compared\n"))

    let classic = fixtures.path(try fixtures.scenario("pc-256-classic").file)
    let refused = try CLI.run(mramfs, ["diff", classic, fixtures.path(twice.file)])
    #expect(refused.status == 2)
    #expect(
      refused.stderrLines == [
        "mramfs: error: \(classic) is a classic (sequential) stream; its pages are not at fixed offsets. "
          + "Convert it first: mramfs convert \(classic) OUT.mapped, then diff OUT.mapped"
      ])
    let missing = try CLI.run(mramfs, ["diff", fixtures.path(twice.file), "/nonexistent/b.mapped"])
    #expect(missing.status == 2 && missing.stderrLines.count == 1)
    #expect(missing.stderr.hasPrefix("mramfs: error: file \"/nonexistent/b.mapped\" at offset 0x0: cannot open"))
    for usage in [["diff", fixtures.path(twice.file)], ["diff", "--threads", "0", "a", "b"], ["diff", "--bogus", "a", "b"]] {
      let r = try CLI.run(mramfs, usage)
      #expect(r.status == 2, "\(usage): \(r.status) \(r.stderr)")
    }
  }

  @Test("--json has the documented keys, exact integers and the library's ranges; --stat leaves the ranges out")
  func json() throws {
    let mramfs = try CLI.mramfs()
    let p = try Self.pair("pc-256-twice")
    let r = try CLI.run(mramfs, ["diff", "--json", p.base, p.file])
    #expect(r.status == 1)
    let doc = try JSONDecoder().decode(DiffJSON.self, from: r.stdoutData)
    #expect(!doc.identical && doc.changedPages == p.diff.changedPages && doc.changedPages > 256)
    #expect(doc.blocks.map(\.name) == p.diff.blocks.map(\.name.description))
    #expect(doc.blocks.map(\.status) == p.diff.blocks.map(\.status.rawValue))
    for (got, want) in zip(doc.blocks, p.diff.blocks) {
      #expect(got.pageSize == 4096 && got.changedPages == want.changedPages)
      #expect(got.ranges == want.changedRanges.map { DiffJSON.Piece(offset: $0.lowerBound, length: UInt64($0.count)) })
    }
    let physical = try p.diff.physicalRanges().get()
    #expect(doc.physical == physical.map { DiffJSON.Physical(gpa: $0.lowerBound, length: UInt64($0.count)) })
    let keys = try #require(JSONSerialization.jsonObject(with: r.stdoutData) as? [String: Any]).keys.sorted()
    #expect(keys == ["a", "b", "blocks", "changedBytes", "changedPages", "comparedPages", "identical", "physical"])

    let stat = try CLI.run(mramfs, ["diff", "--json", "--stat", p.base, p.file])
    #expect(stat.status == 1)
    let statDoc = try JSONDecoder().decode(DiffJSON.self, from: stat.stdoutData)
    #expect(statDoc.physical == nil && statDoc.blocks.allSatisfy { $0.ranges == nil })
    #expect(statDoc.changedPages == doc.changedPages)
  }

  @Test("text: a line per block, the total, then each range and its guest-physical address; --stat stops at the total")
  func text() throws {
    let mramfs = try CLI.mramfs()
    let p = try Self.pair("pc-256-twice")
    let r = try CLI.run(mramfs, ["diff", p.base, p.file])
    let lines = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    #expect(lines.first?.split(separator: " ", omittingEmptySubsequences: true) == ["BLOCK", "SIZE", "STATUS", "CHANGED", "BYTES", "RANGES"])
    for (i, block) in p.diff.blocks.enumerated() {
      let cells = lines[i + 1].split(separator: " ", omittingEmptySubsequences: true).map(String.init)
      #expect(cells.first == block.name.description && cells.contains(block.status.rawValue), "\(lines[i + 1])")
      #expect(cells.last == "\(block.changedRanges.count)")
    }
    let ram = try #require(p.diff.block(named: "pc.ram"))
    let total = "differ: \(ram.changedPages) pages (1.0 MiB) in \(ram.changedRanges.count) ranges, in 1 of 8 blocks compared"
    #expect(lines[p.diff.blocks.count + 1] == total)
    let rangeLines = lines.filter { $0.contains("[0x") }
    let expected =
      ram.changedRanges.map { "pc.ram [\(hex($0.lowerBound)), \(hex($0.upperBound)))" }
      + (try p.diff.physicalRanges().get()).map { "physical [\(hex($0.lowerBound)), \(hex($0.upperBound)))" }
    #expect(rangeLines.map { $0.split(separator: " ").prefix(3).joined(separator: " ") } == expected)
    let stat = try CLI.run(mramfs, ["diff", "--stat", p.base, p.file])
    #expect(stat.status == 1 && !stat.stdout.contains("[0x"))
    #expect(stat.stdout.split(separator: "\n").last.map(String.init) == total)
  }

  @Test("a delta mount: each file's data runs are the diff's ranges, with B's bytes there and zeros elsewhere", arguments: [nil, "read=splice"])
  func deltaMount(_ options: String?) throws {
    let p = try Self.pair("pc-256-twice")
    let mount = try QEMUMount(p.file, options: "base=\(p.base)" + (options.map { ",\($0)" } ?? ""))
    defer { mount.cleanup() }
    let b = p.diff.b
    let paths = BlockPaths.assign(b.blocks.map(\.name)).map { $0.joined(separator: "/") }
    let chunk = 1 << 20
    let (got, want) = (Buffer(chunk), Buffer(chunk))
    defer { withExtendedLifetime((got, want)) {} }  // their memory is used through raw pointers
    for (index, block) in b.blocks.enumerated() {
      let d = try #require(p.diff.block(named: block.name.description))
      let path = mount.path(paths[index])
      #expect(try dataRuns(path) == d.changedRanges, "\(paths[index])")
      var st = stat()
      #expect(stat(path, &st) == 0 && UInt64(st.st_blocks) * 512 == d.changedBytes && UInt64(st.st_size) == block.length)
      // Every byte: B's inside the ranges, zeros outside.
      let fd = open(path, O_RDONLY | O_CLOEXEC)
      try #require(fd >= 0)
      defer { close(fd) }
      var at: UInt64 = 0
      while at < block.length {
        let n = Int(min(UInt64(chunk), block.length - at))
        #expect(preadFully(fd, got.base, n, at) == n)
        memset(want.base, 0, n)
        for r in d.changedRanges where r.upperBound > at && r.lowerBound < at + UInt64(n) {
          let lo = max(r.lowerBound, at)
          let hi = min(r.upperBound, at + UInt64(n))
          _ = try b.read(block: index, at: lo, into: UnsafeMutableRawBufferPointer(start: want.base + Int(lo - at), count: Int(hi - lo)))
        }
        if let diffAt = firstDifference(got.base, want.base, n) {
          Issue.record("\(paths[index]) at \(hex(at + UInt64(diffAt))): \(got.raw[diffAt]), expected \(want.raw[diffAt])")
          break
        }
        at += UInt64(n)
      }
    }
    // physmem follows: its data runs are the guest-physical ranges, and the marker is at its address.
    let physical = try p.diff.physicalRanges().get()
    #expect(try dataRuns(mount.path("physmem")) == physical)
    let physmem = try MountSupport.readFile(mount.path("physmem"), chunk: 1 << 20)
    #expect(Array(physmem[0x5000..<0x5008]) == Array("ZEROED!!".utf8))
    #expect(physmem[0x300_0000..<0x310_0000].allSatisfy { $0 == 0 }, "the zeroed region reads zeros")
    // info.json names the base.
    let info = try JSONDecoder().decode(InfoDocument.self, from: Data(MountSupport.readFile(mount.path("info.json"))))
    #expect(info.base?.file == p.base && info.base?.changedPages == p.diff.changedPages)
    #expect(info.base?.mismatchedBlocks.isEmpty == true && info.populatedPages == p.diff.changedPages)
  }

  @Test("grep over a delta mount finds what appeared since the base and nothing older")
  func grepDelta() throws {
    let p = try Self.pair("pc-256-twice")
    let grep = try #require(MountSupport.findExecutable("grep"))
    let delta = try QEMUMount(p.file, options: "base=\(p.base)")
    defer { delta.cleanup() }
    let plain = try QEMUMount(p.file)
    defer { plain.cleanup() }
    let found = try CLI.run(grep, ["-a", "-o", "-b", "ZEROED!!", delta.path("pc.ram")])
    #expect(found.status == 0 && found.stdout == "20480:ZEROED!!\n", "\(found.stdout) \(found.stderr)")
    let older = try CLI.run(grep, ["-a", "-c", "MRAMFS-LOW-MARKER", delta.path("pc.ram")])
    #expect(older.status == 1 && older.stdout == "0\n", "an unchanged marker is not in the delta")
    let there = try CLI.run(grep, ["-a", "-c", "MRAMFS-LOW-MARKER", plain.path("pc.ram")])
    #expect(there.status == 0 && there.stdout != "0\n", "it is in the plain mount of the same file")
  }

  @Test("identical saves: a delta mount holds no data")
  func identicalDelta() throws {
    let p = try Self.pair("pc-256-resaved")
    #expect(p.diff.isIdentical)
    let mount = try QEMUMount(p.file, options: "base=\(p.base)")
    defer { mount.cleanup() }
    for path in BlockPaths.assign(p.diff.b.blocks.map(\.name)).map({ $0.joined(separator: "/") }) + ["physmem"] {
      let fd = open(mount.path(path), O_RDONLY | O_CLOEXEC)
      try #require(fd >= 0)
      defer { close(fd) }
      #expect(errnoOf { Int(lseek(fd, 0, 3)) } == ENXIO, "\(path) has data")
      var st = stat()
      #expect(fstat(fd, &st) == 0 && st.st_blocks == 0)
    }
  }

  @Test("a base with other blocks is refused, naming them; base-mismatch=ok mounts the matching blocks only")
  func mismatchedBase() throws {
    try MountSupport.requireFUSE()
    let fixtures = try Fixtures.load()
    let mramfs = try CLI.mramfs()
    let image = fixtures.path(try fixtures.scenario("pc-256").file)
    let base = fixtures.path(try fixtures.scenario("pc-5g").file)
    let mountpoint = try MountSupport.makeMountpoint(prefix: "mramfs-delta")
    defer {
      MountSupport.unmount(mountpoint)
      rmdir(mountpoint)
    }
    let refused = try CLI.run(mramfs, ["mount", image, mountpoint, "-o", "base=\(base)"])
    #expect(refused.status == 1 && MountSupport.mount(at: mountpoint) == nil)
    #expect(refused.stderrLines.count == 1)
    #expect(refused.stderr.hasPrefix("mramfs: error: base \(base) does not match \(image): "))
    #expect(refused.stderr.contains("block \"pc.ram\" is 0x140000000 bytes in the base, 0x10000000 in \(image)"))
    #expect(refused.stderr.contains("block \"0000:00:02.0/vga.vram\" is only in \(image)"))
    #expect(refused.stderr.hasSuffix("-o base-mismatch=ok mounts only the blocks that match\n"))

    let mount = try QEMUMount(image, options: "base=\(base),base-mismatch=ok")
    defer { mount.cleanup() }
    let names = try MountSupport.listDirectory(mount.mountpoint)
    #expect(!names.contains("pc.ram") && !names.contains("physmem") && !names.contains("0000:00:02.0"))
    #expect(names.contains("pc.bios") && names.contains("info.json"))
    let info = try JSONDecoder().decode(InfoDocument.self, from: Data(MountSupport.readFile(mount.path("info.json"))))
    let mismatched = try #require(info.base?.mismatchedBlocks)
    #expect(mismatched.first { $0.name == "pc.ram" }?.status == .sizeDiffers)
    #expect(mismatched.filter { $0.status == .onlyInB }.map(\.name).sorted() == ["0000:00:02.0/vga.rom", "0000:00:02.0/vga.vram"])
    #expect(info.blocks.allSatisfy { b in !mismatched.contains { $0.name == b.name } })
  }
}

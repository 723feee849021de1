// SaveDiff on real QEMU 10 saves (scripts/fixtures/pairs.py): one running guest saved twice
// with a known change in between, checked against QEMU's own pmemsave of both states; the
// same stopped guest saved by two QEMU processes; and crafted copies of a real save.

import Foundation
import GuestViews
import MigrationFormat
import QEMUFixtures
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The pages of byte ranges, as a set of page numbers.
private func pageSet(_ ranges: [Range<UInt64>], pageSize: UInt64 = 4096) -> Set<UInt64> {
  Set(ranges.flatMap { ($0.lowerBound / pageSize)..<($0.upperBound / pageSize) })
}

/// Reads `count` bytes at `offset` of a sparse file (holes are zeros; short files read zeros past their end).
private func readSparse(_ fd: Int32, _ into: UnsafeMutableRawPointer, _ count: Int, _ offset: UInt64) {
  memset(into, 0, count)
  _ = preadFully(fd, into, count, offset)
}

@Suite("diff of real QEMU saves", .serialized)
struct DiffRealQEMUTests {
  @Test("a running guest saved twice: the diff is exactly where QEMU's pmemsaves differ, with the second state's bytes")
  func savedTwice() throws {
    let fixtures = try Fixtures.load()
    let pair = try fixtures.savePair("pc-256-twice")
    let a = try MigrationFile(path: fixtures.path(pair.baseFile))
    let b = try MigrationFile(path: fixtures.path(pair.file))
    let diff = try SaveDiff(a, b, threads: 4)
    #expect(!diff.isIdentical)
    #expect(diff.blocks.count == b.blocks.count && diff.mismatchedBlocks.isEmpty)
    for block in diff.blocks where block.name.description != "pc.ram" {
      #expect(block.status == .same, "\(block.name) changed between two saves of a guest that only wrote to pc.ram")
    }
    let ram = try #require(diff.block(named: "pc.ram"))
    #expect(ram.status == .changed)
    let ranges = ram.changedRanges
    let changed = pageSet(ranges)

    // The guest's marker and the region it zeroed are in the ranges.
    for change in pair.expectedChanges {
      let pages = pageSet([change.gpa..<(change.gpa + change.length)])
      #expect(pages.isSubset(of: changed), "\(change.what) at \(hex(change.gpa)) is not in the diff \(ranges)")
    }
    var marker = [UInt8](repeating: 0, count: 8)
    _ = try marker.withUnsafeMutableBytes { try b.read(block: try #require(b.blockIndex(named: "pc.ram")), at: 0x5000, into: $0) }
    #expect(String(decoding: marker, as: UTF8.self) == "ZEROED!!")

    // Exactly the pages where the two pmemsaves differ (outside the VGA window, where pmemsave does not read pc.ram).
    let excluded = pair.excluded
    let truthDiffers = pageSet(pair.pcramDiffers.map { $0[0]..<$0[1] })
    let outside = changed.filter { p in !excluded.contains { $0.contains(p * 4096) } }
    #expect(outside == truthDiffers, "diff \(ranges) vs the pmemsaves' \(pair.pcramDiffers)")

    // Every range's bytes (the second file's, through the library) equal the second pmemsave; and, page by page
    // over every page either pmemsave holds, nothing outside the ranges differs between the two pmemsaves.
    let ramIndex = try #require(b.blockIndex(named: "pc.ram"))
    let fdA = open(fixtures.path(pair.basePcram), O_RDONLY | O_CLOEXEC)
    let fdB = open(fixtures.path(pair.pcram), O_RDONLY | O_CLOEXEC)
    try #require(fdA >= 0 && fdB >= 0)
    defer {
      close(fdA)
      close(fdB)
    }
    let chunk = 1 << 20
    let (ba, bb, lib) = (Buffer(chunk), Buffer(chunk), Buffer(chunk))
    defer { withExtendedLifetime((ba, bb, lib)) {} }  // their memory is used through raw pointers
    for r in ranges {
      var at = r.lowerBound
      while at < r.upperBound {
        let n = Int(min(UInt64(chunk), r.upperBound - at))
        readSparse(fdB, bb.base, n, at)
        #expect(try b.read(block: ramIndex, at: at, into: lib.slice(n)) == n)
        for part in split(at, UInt64(n), by: excluded) where !part.excluded {
          let off = Int(part.range.lowerBound - at)
          let d = firstDifference(lib.base + off, bb.base + off, part.range.count)
          #expect(d == nil, "pc.ram at \(hex(part.range.lowerBound + UInt64(d ?? 0))) in the diff: the second save and its pmemsave differ")
        }
        at += UInt64(n)
      }
    }
    var pos: UInt64 = 0
    var compared = 0
    while pos < pair.ramBytes {
      let next = [seekData(fdA, pos), seekData(fdB, pos)].compactMap { $0 }.min()
      guard let start = next.map({ $0 / 4096 * 4096 }) else { break }
      let n = Int(min(UInt64(chunk), pair.ramBytes - start))
      readSparse(fdA, ba.base, n, start)
      readSparse(fdB, bb.base, n, start)
      for i in stride(from: 0, to: n, by: 4096) {
        let page = (start + UInt64(i)) / 4096
        guard !changed.contains(page), !excluded.contains(where: { $0.contains(page * 4096) }) else { continue }
        compared += 1
        #expect(memcmp(ba.base + i, bb.base + i, 4096) == 0, "page \(hex(page * 4096)) differs between the pmemsaves but not in the diff")
      }
      pos = start + UInt64(n)
    }
    #expect(compared > 1000, "only \(compared) pages with data compared")

    // The same changes as guest-physical ranges (pc, 256 MiB: address = pc.ram offset); the same on one thread.
    #expect(try diff.physicalRanges().get() == ranges)
    #expect(try SaveDiff(a, b, threads: 1).blocks.map(\.changedRanges) == diff.blocks.map(\.changedRanges))
  }

  @Test("the same stopped guest saved by two QEMU processes is identical, whatever the bitmaps say")
  func resaved() throws {
    let fixtures = try Fixtures.load()
    let pair = try fixtures.savePair("pc-256-resaved")
    #expect(pair.identicalMemory && pair.pcramDiffers.isEmpty)
    let a = try MigrationFile(path: fixtures.path(pair.baseFile))
    let b = try MigrationFile(path: fixtures.path(pair.file))
    let diff = try SaveDiff(a, b)
    #expect(diff.isIdentical, "\(diff.blocks.filter { $0.status != .same }.map { "\($0.name): \($0.status) \($0.changedRanges.prefix(4))" })")
    #expect(diff.blocks.map(\.status) == Array(repeating: .same, count: a.blocks.count))
    #expect(diff.comparedPages >= a.blocks.reduce(0) { $0 + ($1.populatedPages ?? 0) })

    // A copy of the second file whose pc.ram bitmap also sets pages that hold zeros: another bitmap, the same RAM.
    let scratch = try ScratchDirectory()
    let copy = try scratch.copy(fixtures.path(pair.file), as: "bits-over-zeros.mapped")
    let block = try #require(b.block(named: "pc.ram"))
    let bitmap = try #require(block.bitmap)
    var patched = 0
    var page = bitmap.nextClear(from: 0x10_0000 / 4096) ?? 0
    while patched < 40, page < block.pageCount {
      let byte = block.bitmapOffset + page / 8
      let current = try ImageFile(path: copy).bytes(at: byte, count: 1, "bitmap")
      try scratch.patch(copy, at: byte, with: [current[0] | UInt8(1 << (page % 8))])
      patched += 1
      page = bitmap.nextClear(from: page + 97) ?? block.pageCount
    }
    let widened = try MigrationFile(path: copy)
    let widenedRAM = try #require(widened.block(named: "pc.ram"))
    #expect(widenedRAM.populatedPages == (block.populatedPages ?? 0) + UInt64(patched))
    let again = try SaveDiff(a, widened)
    #expect(again.isIdentical && again.comparedPages == diff.comparedPages + UInt64(patched))
  }

  @Test("crafted copies of a real save: changed bytes, a bit set over zeros, a bit cleared under data")
  func craftedCopies() throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario("pc-256")
    let original = try MigrationFile(path: fixtures.path(s.file))
    let ram = try #require(original.block(named: "pc.ram"))
    let bitmap = try #require(ram.bitmap)
    let runs = bitmap.runs()
    let scratch = try ScratchDirectory()
    let copy = try scratch.copy(fixtures.path(s.file), as: "crafted.mapped")
    // One byte inside a populated page, inside a run of several pages.
    let run = try #require(runs.first { $0.count >= 3 })
    let edited = run.lowerBound + 1
    let at = ram.fileOffset(ofPage: edited) + 123
    let old = try original.file.bytes(at: at, count: 1, "page")
    try scratch.patch(copy, at: at, with: [old[0] ^ 0x40])
    // A bit set over a page the file holds no data for (a hole: zeros).
    let zero = try #require(bitmap.nextClear(from: 0x20_0000 / 4096))
    let zeroByte = ram.bitmapOffset + zero / 8
    var b = try original.file.bytes(at: zeroByte, count: 1, "bitmap")
    try scratch.patch(copy, at: zeroByte, with: [b[0] | UInt8(1 << (zero % 8))])
    // A bit cleared under the page's data, which stays in the file.
    let cleared = try #require(runs.last { $0.count >= 2 }).lowerBound
    let clearedByte = ram.bitmapOffset + cleared / 8
    b = try original.file.bytes(at: clearedByte, count: 1, "bitmap")
    try scratch.patch(copy, at: clearedByte, with: [b[0] & ~UInt8(1 << (cleared % 8))])

    let diff = try SaveDiff(original, MigrationFile(path: copy))
    let block = try #require(diff.block(named: "pc.ram"))
    #expect(pageSet(block.changedRanges) == [edited, cleared], "edited page \(edited), cleared \(cleared), set over zeros \(zero)")
    #expect(diff.blocks.filter { $0.status != .same }.map(\.name.description) == ["pc.ram"])
  }

  @Test("blocks removed, added and resized: saves of other machines")
  func otherMachines() throws {
    let fixtures = try Fixtures.load()
    let withVGA = try MigrationFile(path: fixtures.path(try fixtures.scenario("pc-256").file))
    let noVGA = try MigrationFile(path: fixtures.path(try fixtures.scenario("pc-256-novmdesc").file))
    let big = try MigrationFile(path: fixtures.path(try fixtures.scenario("pc-5g").file))
    let removed = try SaveDiff(withVGA, noVGA)
    let vga = removed.blocks.filter { $0.name.description.contains("vga") }
    #expect(!vga.isEmpty && vga.allSatisfy { $0.status == .onlyInA && $0.indexInB == nil })
    let added = try SaveDiff(noVGA, withVGA)
    #expect(added.blocks.filter { $0.status == .onlyInB }.map(\.name.description).sorted() == vga.map(\.name.description).sorted())
    #expect(!removed.isIdentical && !added.isIdentical)
    let resized = try SaveDiff(noVGA, big)
    let ram = try #require(resized.block(named: "pc.ram"))
    #expect(ram.status == .sizeDiffers && ram.lengthInA == 256 << 20 && ram.lengthInB == 5 << 30 && ram.changed == nil)
    guard case .failure(let why) = resized.physicalRanges() else {
      Issue.record("physical ranges for 256 MiB against 5 GiB")
      return
    }
    #expect(why.reason.hasPrefix("the two files lay out guest-physical memory differently"))
  }
}

// SaveDiff on files built in code: what counts as a changed page (the bytes a mount serves,
// with clear bits reading as zeros), blocks that do not match, word and chunk boundaries,
// threads, read errors, and the delta view a `mount -o base=` serves.
import Foundation
import MigrationFormat
import MigrationFormatTestSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// Opens two built streams as A and B and compares them.
func diff(_ a: FixtureStream, _ b: FixtureStream, threads: Int = 2) throws -> SaveDiff {
  try SaveDiff(open(a.build()), open(b.build()), threads: threads)
}

/// A page of `byte`s.
func filled(_ byte: UInt8) -> [UInt8] { [UInt8](repeating: byte, count: 4096) }

/// The page numbers of byte ranges of 4 KiB pages.
func pages(_ ranges: [Range<UInt64>]) -> [UInt64] { ranges.flatMap { Array(($0.lowerBound / 4096)..<($0.upperBound / 4096)) } }

@Suite("Comparing two saves")
struct SaveDiffTests {
  @Test("the same RAM at other offsets is identical", arguments: [UInt64(4096), 1 << 20])
  func identical(alignment: UInt64) throws {
    var b = typicalStream()
    b.alignment = alignment
    b.blocks[1].stale[1] = filled(0x5A)  // stale bytes under a clear bit read as zeros: no change
    let d = try diff(typicalStream(), b)
    #expect(d.isIdentical)
    #expect(d.changedPages == 0)
    #expect(d.blocks.map(\.status) == [.same, .same, .same, .same])
    #expect(d.blocks.map(\.name.description) == typicalStream().blocks.map { String(decoding: $0.name, as: UTF8.self) })
    #expect(d.comparedPages == typicalStream().blocks.reduce(0) { $0 + UInt64($1.present.count) })
    #expect(d.blocks.allSatisfy { $0.changedRanges.isEmpty && $0.pageSize == 4096 })
  }

  @Test("bytes changed inside populated pages, in runs across a bitmap word")
  func changedBytes() throws {
    let a = FixtureStream(blocks: [patternBlock("pc.ram", pages: 130, every: 1)])
    var b = a
    for p: UInt64 in [3, 5, 62, 63, 64, 65, 129] {
      b.blocks[0].present[p]![Int(p * 37 % 4096)] ^= 0x01  // one bit of one byte
    }
    let d = try diff(a, b)
    let block = try #require(d.block(named: "pc.ram"))
    #expect(block.status == .changed)
    #expect(block.changedPages == 7)
    #expect(d.changedPages == 7 && d.changedBytes == 7 * 4096 && !d.isIdentical)
    #expect(block.changedRanges == [3..<4, 5..<6, 62..<66, 129..<130].map { ($0.lowerBound * 4096)..<($0.upperBound * 4096) })
    #expect(d.comparedPages == 130)
  }

  @Test("a bit set over a page of zeros is no change; a bit cleared under data is one")
  func bitsAgainstBytes() throws {
    var a = FixtureBlock(name: "pc.ram", length: 64 * 4096)
    var b = FixtureBlock(name: "pc.ram", length: 64 * 4096)
    // 1: set over zeros in B only. 2: set over zeros in both. 3: set over zeros in A only.
    b.present[1] = filled(0)
    a.present[2] = filled(0)
    b.present[2] = filled(0)
    a.present[3] = filled(0)
    // 10: data in A, cleared in B with the same bytes left in its pages region (a live save).
    a.present[10] = filled(0x11)
    b.stale[10] = filled(0x11)
    // 11: stale bytes under clear bits on both sides, different: both read zeros.
    a.stale[11] = filled(0x22)
    b.stale[11] = filled(0x33)
    // 12: data only in B. 13: data only in A. 14: same data in both.
    b.present[12] = filled(0x44)
    a.present[13] = filled(0x55)
    a.present[14] = FixtureBlock.pattern(block: "x", page: 14)
    b.present[14] = FixtureBlock.pattern(block: "x", page: 14)
    // 15: data in A, zeros under a set bit in B (changed to zero).
    a.present[15] = filled(0x66)
    b.present[15] = filled(0)
    let d = try diff(FixtureStream(blocks: [a]), FixtureStream(blocks: [b]))
    let block = try #require(d.blocks.first)
    #expect(pages(block.changedRanges) == [10, 12, 13, 15])
    #expect(d.comparedPages == 8)  // 1, 2, 3, 10, 12, 13, 14, 15
  }

  @Test("blocks added, removed and resized are reported as such, in A's order then B's")
  func mismatchedBlocks() throws {
    let a = FixtureStream(blocks: [
      patternBlock("gone", pages: 4), patternBlock("kept", pages: 8), patternBlock("resized", pages: 10),
    ])
    let b = FixtureStream(blocks: [
      patternBlock("resized", pages: 12), patternBlock("new", pages: 2), patternBlock("kept", pages: 8),
    ])
    let d = try diff(a, b)
    #expect(d.blocks.map(\.name.description) == ["gone", "kept", "resized", "new"])
    #expect(d.blocks.map(\.status) == [.onlyInA, .same, .sizeDiffers, .onlyInB])
    #expect(d.blocks.map(\.indexInA) == [0, 1, 2, nil])
    #expect(d.blocks.map(\.indexInB) == [nil, 2, 0, 1])
    #expect(d.blocks[2].lengthInA == 10 * 4096 && d.blocks[2].lengthInB == 12 * 4096)
    #expect(d.mismatchedBlocks.map(\.name.description) == ["gone", "resized", "new"])
    #expect(d.mismatchedBlocks.allSatisfy { $0.changed == nil && $0.changedPages == 0 && $0.changedRanges.isEmpty })
    #expect(!d.isIdentical && d.changedPages == 0)
    // The view a delta mount serves keeps the matching block only.
    #expect(d.delta().blocks.map(\.name.description) == ["kept"])
  }

  @Test("page counts at word boundaries: the first and the last page", arguments: [UInt64(1), 63, 64, 65, 129, 4097])
  func wordBoundaries(count: UInt64) throws {
    let a = FixtureStream(blocks: [
      FixtureBlock(name: "empty", length: 0), patternBlock("edge", pages: count, every: 1),
    ])
    var b = a
    b.blocks[1].present[count - 1] = filled(0x77)
    b.blocks[1].present[0] = filled(0x78)
    let d = try diff(a, b, threads: 3)
    #expect(d.blocks[0].status == .same && d.blocks[0].changed?.pageCount == 0)
    #expect(pages(d.blocks[1].changedRanges) == Array(Set([0, count - 1])).sorted())
  }

  @Test("a large sparse block: the same changed pages on 1, 2 and 5 threads, across many chunks", arguments: [1, 2, 5])
  func threads(threads: Int) throws {
    let pages: UInt64 = 300_000  // 1.1 GiB of RAM, 73 chunks of 4096 pages
    let base = SyntheticSource(name: "pc.ram", pages: pages, density: 0.01, seed: 7)
    var populated: [UInt64] = []
    var p = base.nextCandidate(from: 0)
    while let q = p {
      populated.append(q)
      p = base.nextCandidate(from: q + 1)
    }
    // Rewrite every 97th populated page, drop every 89th, add pages where there were none.
    let rewritten = Set(populated.enumerated().filter { $0.offset % 97 == 0 }.map(\.element))
    let dropped = Set(populated.enumerated().filter { $0.offset % 89 == 1 }.map(\.element))
    let added = Set((0..<40).map { UInt64($0) * 7411 + 5 }.filter { !base.isPopulated($0) } + [pages - 1].filter { !base.isPopulated($0) })
    let a = try writeFile(base, pages: pages)
    let b = try writeFile(EditedSource(base: base, rewritten: rewritten, dropped: dropped, added: added), pages: pages)
    let progress = ProgressLog()
    let d = try SaveDiff(MigrationFile(path: a), MigrationFile(path: b), threads: threads) { done, total in
      progress.append(done, total)
    }
    let changed = try #require(d.blocks.first?.changed)
    let expected = rewritten.union(dropped).union(added).sorted()
    #expect(changed.populated == UInt64(expected.count))
    #expect(d.blocks[0].changedRanges.flatMap { Array(($0.lowerBound / 4096)..<($0.upperBound / 4096)) } == expected)
    #expect(d.comparedPages == UInt64(Set(populated).union(added).count))
    let last = try #require(progress.last)
    #expect(last.done == last.total && last.total == d.comparedPages * 4096)
  }

  @Test("a present page the file no longer holds is an I/O error naming the page and the file")
  func truncatedAfterOpening() throws {
    let a = FixtureStream(blocks: [patternBlock("pc.ram", pages: 64, every: 2)])
    let pathB = try temporaryFile(a.build().bytes)
    let fileA = try open(a.build())
    let fileB = try MigrationFile(path: pathB)
    let cut = fileB.blocks[0].pagesOffset + 20 * 4096
    #expect(truncate(pathB, off_t(cut)) == 0)
    let e = #expect(throws: FormatError.self) { try SaveDiff(fileA, fileB) }
    #expect(e?.kind == .io && e?.offset == cut)
    #expect(e?.structure == "page 20 of block \"pc.ram\" in \(pathB)", "\(String(describing: e))")
  }

  @Test("a classic stream is refused: its pages are not at fixed offsets")
  func classic() throws {
    var c = typicalStream()
    c.format = .classic
    c.capabilities = []
    let e = #expect(throws: FormatError.self) { try diff(typicalStream(), c) }
    #expect(e?.kind == .unsupported && "\(String(describing: e))".contains("classic"))
  }

  @Test("the delta view: B's bytes in changed pages, zeros elsewhere; the changed pages are its data")
  func deltaView() throws {
    var a = FixtureBlock(name: "pc.ram", length: 80 * 4096)
    for p: UInt64 in [1, 2, 3, 10, 40, 70] { a.present[p] = FixtureBlock.pattern(block: "a", page: p) }
    var b = a
    b.present[2] = FixtureBlock.pattern(block: "b", page: 2)  // rewritten
    b.present[3] = nil  // cleared, stale bytes left: changed to zeros
    b.stale[3] = FixtureBlock.pattern(block: "a", page: 3)
    b.present[50] = filled(0x99)  // new
    b.present[51] = filled(0)  // set over zeros: no change
    b.present[70] = filled(0)  // data in A, zeros in B: changed to zeros
    let streamB = FixtureStream(blocks: [patternBlock("vga.vram", pages: 8), b])
    let d = try SaveDiff(open(FixtureStream(blocks: [a, patternBlock("vga.vram", pages: 8)]).build()), open(streamB.build()))
    #expect(d.blocks.map(\.status) == [.changed, .same])
    let view = d.delta()
    #expect(view.blocks.map(\.name.description) == ["vga.vram", "pc.ram"], "B's order")
    #expect(view.file === d.b.file && view.machineType == d.b.machineType)
    // vga.vram: nothing changed, all holes.
    #expect(view.blocks[0].populatedPages == 0 && view.nextData(block: 0, from: 0) == nil)
    #expect(try readAll(view, 0) == [UInt8](repeating: 0, count: 8 * 4096))
    // pc.ram: the changed pages are data; reads serve B where B holds non-zero bytes.
    let ram = view.blocks[1]
    #expect(ram.populatedPages == 4)
    var want = [UInt8](repeating: 0, count: 80 * 4096)
    want.replaceSubrange(2 * 4096..<3 * 4096, with: FixtureBlock.pattern(block: "b", page: 2))
    want.replaceSubrange(50 * 4096..<51 * 4096, with: filled(0x99))
    #expect(try readAll(view, 1) == want)
    var extents: [Range<UInt64>] = []
    var at: UInt64 = 0
    while let data = view.nextData(block: 1, from: at), let hole = view.nextHole(block: 1, from: data) {
      extents.append(data..<hole)
      at = hole
    }
    #expect(extents == [2..<4, 50..<51, 70..<71].map { ($0.lowerBound * 4096)..<($0.upperBound * 4096) })
    #expect(view.nextHole(block: 1, from: 3 * 4096 + 5) == 4 * 4096)
    #expect(view.nextData(block: 1, from: 71 * 4096) == nil)
    // B itself is untouched.
    #expect(d.b.blocks[1].populatedPages == 7 && d.b.blocks[1].extentMap == nil)
  }
}

/// Writes a one-block mapped-ram file of `pages` pages from `source`.
func writeFile(_ source: some PageSource, pages: UInt64) throws -> String {
  let path = try temporaryFile([], name: "synth.mapped")
  unlink(path)
  var plan = StreamPlan(machineType: "pc-i440fx-10.0")
  plan.blocks = [BlockPlan(name: BlockName("pc.ram"), length: pages * 4096, source: source)]
  _ = try StreamWriter.write(plan, to: OutputFile(path: path, overwrite: true), progress: nil)
  return path
}

/// A synthetic guest with some pages rewritten, some dropped (zero) and some added.
struct EditedSource: PageSource {
  let base: SyntheticSource
  let rewritten: Set<UInt64>
  let dropped: Set<UInt64>
  let added: Set<UInt64>

  func page(_ page: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FormatError) -> Bool {
    if dropped.contains(page) { return false }
    if rewritten.contains(page) || added.contains(page) {
      SyntheticSource(name: "edited", pages: base.pages, density: 1).fill(page, buffer)
      return true
    }
    return try base.page(page, into: buffer)
  }

  func nextCandidate(from page: UInt64) -> UInt64? {
    let next = base.nextCandidate(from: page)
    let add = added.filter { $0 >= page }.min()
    return [next, add].compactMap { $0 }.min()
  }
}

/// Progress reports, from any thread.
final class ProgressLog: @unchecked Sendable {
  private let lock = NSLock()
  private var reports: [(done: UInt64, total: UInt64)] = []
  func append(_ done: UInt64, _ total: UInt64) { lock.withLock { reports.append((done, total)) } }
  var last: (done: UInt64, total: UInt64)? { lock.withLock { reports.last } }
}

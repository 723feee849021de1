#if canImport(Glibc)
  import Glibc
#endif
import Dispatch
import Synchronization

/// How the RAM of two saves differs: for each RAM block, the pages that read differently
/// from one file and from the other (``MigrationFile/read(block:at:into:)``).
///
/// Blocks are matched by their exact name bytes. A block in both files with the same length
/// and page size is compared page by page; a page *changed* when the bytes a read gives
/// differ, and a clear bit reads as zeros. So a page whose bit is set over all-zero bytes in
/// one file and clear in the other has not changed, and a page whose bit was cleared under
/// non-zero bytes (stale bytes of a live save, left in the pages region) has, if the other
/// file holds non-zero bytes there.
///
/// Cost follows the bitmaps, never the RAM: the union of the two bitmaps is walked a 64-bit
/// word at a time, only pages set in A or in B are read, in runs of up to 1 MiB with `pread`
/// from each file's descriptor, and a page set on one side only is checked for zeros without
/// reading the other file. Blocks are cut into chunks of whole bitmap words that several
/// threads take in turn, so no two threads ever write the same word of a result.
public struct SaveDiff: Sendable {
  /// How a block name of A and of B compare.
  public enum Status: String, Sendable, Codable, CaseIterable {
    /// In both files, same length and page size, and no page changed.
    case same
    /// In both files, same length and page size, and at least one page changed.
    case changed
    /// Only A has a block of this name.
    case onlyInA
    /// Only B has a block of this name.
    case onlyInB
    /// Both have it, with different lengths or page sizes; it is not compared page by page.
    case sizeDiffers
  }

  /// One block name, found in A, in B or in both.
  public struct Block: Sendable {
    /// The block's name.
    public let name: BlockName
    /// How the two files' blocks of this name compare.
    public let status: Status
    /// The block's index in A's ``MigrationFile/blocks``, if A has it.
    public let indexInA: Int?
    /// The block's index in B's ``MigrationFile/blocks``, if B has it.
    public let indexInB: Int?
    /// The block's length in A, if A has it.
    public let lengthInA: UInt64?
    /// The block's length in B, if B has it.
    public let lengthInB: UInt64?
    /// The block's page size in A, if A has it.
    public let pageSizeInA: UInt64?
    /// The block's page size in B, if B has it.
    public let pageSizeInB: UInt64?
    /// The changed pages, for a block compared page by page (``Status/same`` or
    /// ``Status/changed``); nil for the others.
    public let changed: PageBitmap?

    /// The page size: B's, or A's for a block only in A.
    public var pageSize: UInt64 { pageSizeInB ?? pageSizeInA ?? 0 }
    /// Whether the block was compared page by page.
    public var isCompared: Bool { changed != nil }
    /// Pages that changed (0 for a block not compared).
    public var changedPages: UInt64 { changed?.populated ?? 0 }
    /// Bytes in the pages that changed.
    public var changedBytes: UInt64 { changedPages * pageSize }
    /// The changed pages as maximal runs of consecutive pages, as byte ranges of the block, in order.
    public var changedRanges: [Range<UInt64>] {
      let ps = pageSize
      return (changed?.runs() ?? []).map { ($0.lowerBound * ps)..<($0.upperBound * ps) }
    }
  }

  /// The first file, the base.
  public let a: MigrationFile
  /// The second file.
  public let b: MigrationFile
  /// Every block name: A's blocks in A's order, then those only in B in B's order.
  public let blocks: [Block]
  /// Pages set in A or in B, over the blocks compared page by page: the pages that were read.
  public let comparedPages: UInt64

  /// Pages that changed, over all blocks.
  public var changedPages: UInt64 { blocks.reduce(0) { $0 + $1.changedPages } }
  /// Bytes in the pages that changed, over all blocks.
  public var changedBytes: UInt64 { blocks.reduce(0) { $0 + $1.changedBytes } }
  /// Whether both files have the same blocks and every page reads the same.
  public var isIdentical: Bool { blocks.allSatisfy { $0.status == .same } }
  /// The blocks that could not be compared page by page: only in one file, or of different sizes.
  public var mismatchedBlocks: [Block] { blocks.filter { !$0.isCompared } }

  /// The number of online CPUs, the default number of threads.
  public static var defaultThreads: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

  /// Compares the RAM of `a` and `b`, which must both have pages at fixed offsets
  /// (``StreamFormat/isPositional``).
  ///
  /// - Parameters:
  ///   - threads: How many threads read and compare pages.
  ///   - progress: Called now and then, from any of those threads, with the bytes compared so
  ///     far and the bytes there are to compare (pages set in A or B); at most five times a second.
  /// - Throws: ``FormatError`` with ``FormatError/Kind/unsupported`` for a classic stream, or
  ///   the read error of a page whose bit is set but that the file cannot give (cut, or an I/O error).
  public init(
    _ a: MigrationFile, _ b: MigrationFile, threads: Int = SaveDiff.defaultThreads,
    progress: (@Sendable (_ done: UInt64, _ total: UInt64) -> Void)? = nil
  ) throws(FormatError) {
    for f in [a, b] where !f.format.isPositional {
      throw FormatError(
        .unsupported, "file \(quoted(Array(f.path.utf8)))", at: f.streamOffset,
        "a classic (sequential) stream: its pages are not at fixed offsets; convert it to mapped-ram first")
    }
    self.a = a
    self.b = b
    var indexInB: [BlockName: Int] = [:]
    for (i, block) in b.blocks.enumerated() { indexInB[block.name] = i }
    var pairs: [PagePair] = []
    var found: [(ia: Int?, ib: Int?, pair: Int?)] = []
    for (ia, ba) in a.blocks.enumerated() {
      guard let ib = indexInB.removeValue(forKey: ba.name) else {
        found.append((ia, nil, nil))
        continue
      }
      let bb = b.blocks[ib]
      if ba.length == bb.length, ba.pageSize == bb.pageSize, let ma = ba.bitmap, let mb = bb.bitmap {
        found.append((ia, ib, pairs.count))
        pairs.append(PagePair(a: a, blockA: ba, bitmapA: ma, b: b, blockB: bb, bitmapB: mb))
      } else {
        found.append((ia, ib, nil))
      }
    }
    for (ib, bb) in b.blocks.enumerated() where indexInB[bb.name] != nil { found.append((nil, ib, nil)) }

    let union = pairs.map { $0.unionCount() }
    comparedPages = union.reduce(0, +)
    let totalBytes = zip(pairs, union).reduce(UInt64(0)) { $0 + $1.1 * $1.0.pageSize }
    let counter = ProgressCounter(total: totalBytes, report: progress)
    do {
      try PagePair.compare(pairs, threads: threads, counter: counter)
    } catch {
      for p in pairs { p.changed.deallocate() }
      throw error
    }
    counter.finish()

    blocks = found.map { f in
      let ba = f.ia.map { a.blocks[$0] }
      let bb = f.ib.map { b.blocks[$0] }
      let changed = f.pair.map { pairs[$0].result() }
      let status: Status
      switch (ba, bb, changed) {
      case (_, _, .some(let c)): status = c.populated == 0 ? .same : .changed
      case (.some, .some, nil): status = .sizeDiffers
      case (.some, nil, nil): status = .onlyInA
      default: status = .onlyInB
      }
      return Block(
        name: (ba ?? bb)?.name ?? BlockName(bytes: []), status: status, indexInA: f.ia, indexInB: f.ib,
        lengthInA: ba?.length, lengthInB: bb?.length, pageSizeInA: ba?.pageSize, pageSizeInB: bb?.pageSize,
        changed: changed)
    }
  }

  /// The block named `name`, if either file has one.
  public func block(named name: String) -> Block? {
    blocks.first { $0.name.bytes.elementsEqual(name.utf8) }
  }

  /// B less what A already had: a view of B (same file, same device state) holding only the
  /// blocks compared page by page, each reading B's bytes in the pages that changed and zeros
  /// everywhere else, with the changed pages as its data pages (``RAMBlock/extentMap``, which
  /// ``MigrationFile/nextData(block:from:)``, ``MigrationFile/nextHole(block:from:)`` and
  /// ``RAMBlock/populatedPages`` go by). A page that changed to zeros is data that reads as
  /// zeros. Blocks only in B or of another size than A's are left out.
  ///
  /// Reads of the view cost what reads of B cost: the masks are built here, once.
  public func delta() -> MigrationFile {
    var changedInB: [Int: PageBitmap] = [:]
    for d in blocks {
      if let ib = d.indexInB, let c = d.changed { changedInB[ib] = c }
    }
    let kept = b.blocks.indices.compactMap { i -> RAMBlock? in
      guard let changed = changedInB[i], let bitmap = b.blocks[i].bitmap else { return nil }
      return b.blocks[i].masked(serving: bitmap.intersection(changed), extents: changed)
    }
    return MigrationFile(b, blocks: kept)
  }
}

/// One block of A and its namesake in B, compared page by page into a bitmap of changed pages.
struct PagePair: @unchecked Sendable {
  let a: MigrationFile
  let blockA: RAMBlock
  let bitmapA: PageBitmap
  let b: MigrationFile
  let blockB: RAMBlock
  let bitmapB: PageBitmap
  /// The changed pages, one bit each; threads write disjoint words. Owned by the result.
  let changed: UnsafeMutablePointer<UInt64>

  var pageCount: UInt64 { blockA.pageCount }
  var pageSize: UInt64 { blockA.pageSize }
  var wordCount: Int { Int((pageCount + 63) / 64) }

  init(a: MigrationFile, blockA: RAMBlock, bitmapA: PageBitmap, b: MigrationFile, blockB: RAMBlock, bitmapB: PageBitmap) {
    (self.a, self.blockA, self.bitmapA, self.b, self.blockB, self.bitmapB) = (a, blockA, bitmapA, b, blockB, bitmapB)
    let n = max(1, Int((blockA.pageCount + 63) / 64))
    changed = .allocate(capacity: n)
    changed.initialize(repeating: 0, count: n)
  }

  /// The changed pages as a bitmap that takes over the storage; call once, after ``compare``.
  func result() -> PageBitmap { PageBitmap(pageCount: pageCount, adopting: changed) }

  /// Pages set in A or in B.
  func unionCount() -> UInt64 {
    (0..<wordCount).reduce(0) { $0 + UInt64((bitmapA.wordOrZero($1) | bitmapB.wordOrZero($1)).nonzeroBitCount) }
  }

  /// The most bytes read from each file at once.
  static let bufferBytes = 1 << 20
  /// Bitmap words per unit of work: 64 words are 4096 pages (16 MiB of 4 KiB pages).
  static let chunkWords = 64

  /// Compares every pair on up to `threads` threads, taking chunks of whole bitmap words in turn.
  static func compare(_ pairs: [PagePair], threads: Int, counter: ProgressCounter) throws(FormatError) {
    var chunks: [(pair: Int, words: Range<Int>)] = []
    for (i, p) in pairs.enumerated() {
      for w in stride(from: 0, to: p.wordCount, by: chunkWords) {
        chunks.append((i, w..<min(p.wordCount, w + chunkWords)))
      }
    }
    let work = chunks
    let next = Atomic<Int>(0)
    let failed = Atomic<Bool>(false)
    let failure = Mutex<FormatError?>(nil)
    DispatchQueue.concurrentPerform(iterations: max(1, min(threads, work.count))) { _ in
      let buffers = UnsafeMutableRawPointer.allocate(byteCount: 3 * bufferBytes, alignment: 4096)
      defer { buffers.deallocate() }
      let scratch = Scratch(a: buffers, b: buffers + bufferBytes, zeros: buffers + 2 * bufferBytes)
      memset(scratch.zeros, 0, bufferBytes)
      while !failed.load(ordering: .relaxed) {
        let c = next.wrappingAdd(1, ordering: .relaxed).oldValue
        guard c < work.count else { break }
        do throws(FormatError) {
          try pairs[work[c].pair].compare(words: work[c].words, scratch, counter)
        } catch {
          failure.withLock { if $0 == nil { $0 = error } }
          failed.store(true, ordering: .relaxed)
        }
      }
    }
    if let e = failure.withLock({ $0 }) { throw e }
  }

  /// One thread's buffers: a run of A's pages, the same run of B's, and zeros to compare with.
  struct Scratch {
    let a: UnsafeMutableRawPointer
    let b: UnsafeMutableRawPointer
    let zeros: UnsafeMutableRawPointer
  }

  /// Compares the pages of bitmap words `words`: runs of pages set in A or B, up to a buffer each.
  func compare(words: Range<Int>, _ s: Scratch, _ counter: ProgressCounter) throws(FormatError) {
    let end = min(UInt64(words.upperBound) * 64, pageCount)
    let batch = UInt64(max(1, PagePair.bufferBytes / Int(pageSize)))
    var p = UInt64(words.lowerBound) * 64
    while p < end, let start = nextUnion(from: p, limit: end, set: true) {
      let limit = min(end, start + batch)
      let stop = nextUnion(from: start, limit: limit, set: false) ?? limit
      try compare(pages: start..<stop, s)
      counter.add((stop - start) * pageSize)
      p = stop
    }
  }

  /// The first page in `[from, limit)` set in A or B (`set`), or clear in both (`!set`); nil if none.
  func nextUnion(from: UInt64, limit end: UInt64, set: Bool) -> UInt64? {
    let flip: UInt64 = set ? 0 : ~0
    return PageBitmap.firstSetBit(from: from, end: end) { (bitmapA.wordOrZero($0) | bitmapB.wordOrZero($0)) ^ flip }
  }

  /// Compares a run of pages, each set in A or B, that fits the buffers (or one page larger
  /// than a buffer, in buffer-sized slices), and marks the pages whose bytes differ.
  func compare(pages run: Range<UInt64>, _ s: Scratch) throws(FormatError) {
    let ps = pageSize
    let slice = min(ps, UInt64(PagePair.bufferBytes))
    var offset: UInt64 = 0  // into each page, for pages larger than a buffer
    repeat {
      try readPresent(a, blockA, bitmapA, run, offset: offset, slice: slice, into: s.a)
      try readPresent(b, blockB, bitmapB, run, offset: offset, slice: slice, into: s.b)
      for page in run where changed[Int(page >> 6)] & (1 << (page & 63)) == 0 {
        let at = Int((page - run.lowerBound) * slice)
        let inA = bitmapA.isSet(page)
        let inB = bitmapB.isSet(page)
        let differs =
          inA && inB
          ? memcmp(s.a + at, s.b + at, Int(slice)) != 0
          : memcmp(inA ? s.a + at : s.b + at, s.zeros, Int(slice)) != 0
        if differs { changed[Int(page >> 6)] |= 1 << (page & 63) }
      }
      offset += slice
    } while offset < ps && changed[Int(run.lowerBound >> 6)] & (1 << (run.lowerBound & 63)) == 0
  }

  /// Reads bytes `[offset, offset + slice)` of each page of `run` that `bitmap` holds into
  /// `buffer` (page *i* of the run at *i × slice*); pages it does not hold are left untouched.
  func readPresent(
    _ file: MigrationFile, _ block: RAMBlock, _ bitmap: PageBitmap, _ run: Range<UInt64>, offset: UInt64,
    slice: UInt64, into buffer: UnsafeMutableRawPointer
  ) throws(FormatError) {
    let ps = block.pageSize
    var p = run.lowerBound
    while p < run.upperBound, let first = bitmap.nextSet(from: p, limit: run.upperBound) {
      let end = bitmap.nextClear(from: first, limit: run.upperBound) ?? run.upperBound
      // Whole pages are one read per run; slices of big pages are one read each.
      let count = slice == ps ? (end - first) * ps : slice
      let at = block.pagesOffset + first * ps + offset
      let into = buffer + Int((first - run.lowerBound) * slice)
      var done = 0
      while done < Int(count) {
        let n = pread(file.file.descriptor.rawValue, into + done, Int(count) - done, off_t(at) + off_t(done))
        if n > 0 {
          done += n
        } else if n == 0 {
          throw FormatError(
            .io, "page \((at + UInt64(done) - block.pagesOffset) / ps) of block \(quoted(block.name.bytes)) in \(file.path)",
            at: at + UInt64(done), "the bitmap says the page is present but the file ends before it")
        } else if errno != EINTR {
          throw FormatError(
            .io, "page \((at + UInt64(done) - block.pagesOffset) / ps) of block \(quoted(block.name.bytes)) in \(file.path)",
            at: at + UInt64(done), "read failed: errno \(errno)")
        }
      }
      p = slice == ps ? end : first + 1
    }
  }
}

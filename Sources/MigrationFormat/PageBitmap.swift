/// How the bitmap's words were laid out by the host that wrote the file.
///
/// QEMU writes its in-memory `unsigned long` array raw, so the layout is the
/// writing host's word size and byte order; nothing in the file records it.
/// Every practical writer is 64-bit little-endian.
public enum BitmapLayout: String, Sendable, CaseIterable {
  /// 64-bit little-endian words: bit *i* is byte *i/8*, bit *i%8* (x86-64, aarch64, ppc64le, riscv64).
  case littleEndian64 = "le64"
  /// 64-bit big-endian words (s390x, ppc64).
  case bigEndian64 = "be64"
}

/// One bit per page of a RAM block: set means the page's bytes are in the file,
/// clear means the page is zero, whatever bytes the file holds there.
///
/// The words live in one allocation made at open time and never change, so
/// readers on any thread query it without locks. Queries that search
/// (``nextSet(from:limit:)``, ``nextClear(from:limit:)``) cost O(words
/// scanned), never O(pages).
public final class PageBitmap: @unchecked Sendable {
  /// Number of pages (bits that mean something).
  public let pageCount: UInt64
  /// Number of set bits (populated pages).
  public let populated: UInt64
  private let words: UnsafeMutablePointer<UInt64>
  @usableFromInline let wordCount: Int

  /// Creates a bitmap from its file bytes, dropping padding bits past `pageCount`.
  ///
  /// `bytes` may be shorter than the words need (an RFC fixed-ram file from a
  /// 32-bit host); missing bytes read as zero.
  public init(pageCount: UInt64, bytes: UnsafeRawBufferPointer, layout: BitmapLayout) {
    self.pageCount = pageCount
    let n = Int((pageCount + 63) / 64)
    wordCount = n
    words = .allocate(capacity: max(n, 1))
    words.initialize(repeating: 0, count: max(n, 1))
    var count: UInt64 = 0
    for w in 0..<n {
      var v: UInt64 = 0
      let base = w * 8
      if base + 8 <= bytes.count {
        let raw = bytes.loadUnaligned(fromByteOffset: base, as: UInt64.self)
        v = layout == .littleEndian64 ? UInt64(littleEndian: raw) : UInt64(bigEndian: raw)
      } else {
        for i in 0..<8 where base + i < bytes.count {
          let byte = UInt64(bytes[base + i])
          v |= layout == .littleEndian64 ? byte << (8 * UInt64(i)) : byte << (8 * UInt64(7 - i))
        }
      }
      if w == n - 1 && pageCount % 64 != 0 {
        v &= (1 << (pageCount % 64)) - 1
      }
      words[w] = v
      count += UInt64(v.nonzeroBitCount)
    }
    populated = count
  }

  /// Creates a bitmap whose `byteCount` file bytes are written by `fill`
  /// straight into the word storage, so a large bitmap is held only once.
  public init(
    pageCount: UInt64, byteCount: Int, layout: BitmapLayout,
    fill: (UnsafeMutableRawBufferPointer) throws(FormatError) -> Void
  ) throws(FormatError) {
    self.pageCount = pageCount
    let n = Int((pageCount + 63) / 64)
    wordCount = n
    words = .allocate(capacity: max(n, 1))
    words.initialize(repeating: 0, count: max(n, 1))
    let raw = UnsafeMutableRawBufferPointer(start: words, count: min(byteCount, n * 8))
    do {
      try fill(raw)
    } catch {
      words.deallocate()
      throw error
    }
    var count: UInt64 = 0
    for w in 0..<n {
      var v = layout == .littleEndian64 ? UInt64(littleEndian: words[w]) : UInt64(bigEndian: words[w])
      if w == n - 1 && pageCount % 64 != 0 {
        v &= (1 << (pageCount % 64)) - 1
      }
      words[w] = v
      count += UInt64(v.nonzeroBitCount)
    }
    populated = count
  }

  /// A bitmap with no page set and no storage for its words: a block whose bitmap
  /// the file does not hold (a cut file opened with `force`). Its size is never
  /// an allocation, whatever `pageCount` the file claims.
  public init(allClear pageCount: UInt64) {
    self.pageCount = pageCount
    populated = 0
    wordCount = 0
    words = .allocate(capacity: 1)
    words.initialize(to: 0)
  }

  /// Takes ownership of `words` (`(pageCount + 63) / 64` of them, at least one, allocated with
  /// `UnsafeMutablePointer.allocate`): bit *i* of word *w* is page *64w + i*. Padding bits past
  /// `pageCount` are cleared.
  init(pageCount: UInt64, adopting words: UnsafeMutablePointer<UInt64>) {
    self.pageCount = pageCount
    let n = Int((pageCount + 63) / 64)
    wordCount = n
    self.words = words
    if n > 0 && pageCount % 64 != 0 { words[n - 1] &= (1 << (pageCount % 64)) - 1 }
    var count: UInt64 = 0
    for w in 0..<n { count += UInt64(words[w].nonzeroBitCount) }
    populated = count
  }

  /// The pages set in both this bitmap and `other`, which must have as many pages.
  public func intersection(_ other: PageBitmap) -> PageBitmap {
    precondition(other.pageCount == pageCount, "intersection of bitmaps of \(pageCount) and \(other.pageCount) pages")
    let n = Int((pageCount + 63) / 64)
    let out = UnsafeMutablePointer<UInt64>.allocate(capacity: max(n, 1))
    out.initialize(repeating: 0, count: max(n, 1))
    for w in 0..<n { out[w] = wordOrZero(w) & other.wordOrZero(w) }
    return PageBitmap(pageCount: pageCount, adopting: out)
  }

  /// Word `i` (pages `64i ..< 64i + 64`), or zero for a bitmap without storage (``init(allClear:)``).
  @inline(__always)
  func wordOrZero(_ i: Int) -> UInt64 { i < wordCount ? words[i] : 0 }

  /// Creates a bitmap from an array of bytes in the given layout.
  public static func from(pageCount: UInt64, bytes: [UInt8], layout: BitmapLayout = .littleEndian64) -> PageBitmap {
    bytes.withUnsafeBytes { PageBitmap(pageCount: pageCount, bytes: $0, layout: layout) }
  }

  /// Creates a bitmap from the indices of set pages (tests and the writer).
  public static func from(pageCount: UInt64, setPages: some Sequence<UInt64>) -> PageBitmap {
    var bytes = [UInt8](repeating: 0, count: Int((pageCount + 63) / 64) * 8)
    for p in setPages where p < pageCount { bytes[Int(p / 8)] |= 1 << (p % 8) }
    return from(pageCount: pageCount, bytes: bytes)
  }

  deinit {
    words.deallocate()
  }

  /// Whether page `page` is present in the file.
  @inlinable
  public func isSet(_ page: UInt64) -> Bool {
    page < pageCount && wordCount > 0 && word(Int(page >> 6)) >> (page & 63) & 1 == 1
  }

  @usableFromInline
  func word(_ i: Int) -> UInt64 { words[i] }

  /// The first set page in `[from, limit)`, or nil.
  public func nextSet(from: UInt64, limit: UInt64? = nil) -> UInt64? {
    guard wordCount > 0 else { return nil }
    return PageBitmap.firstSetBit(from: from, end: min(limit ?? pageCount, pageCount)) { words[$0] }
  }

  /// The first clear page in `[from, limit)`, or nil when every page there is set.
  public func nextClear(from: UInt64, limit: UInt64? = nil) -> UInt64? {
    let end = min(limit ?? pageCount, pageCount)
    guard from < end else { return nil }
    guard wordCount > 0 else { return from }
    return PageBitmap.firstSetBit(from: from, end: end) { ~words[$0] }
  }

  /// The first bit index in `[from, end)` set in the words `word(0)`, `word(1)`, …; nil if none.
  ///
  /// The one word scan behind every search (set pages, clear pages, a union of two bitmaps):
  /// it skips 64 pages at a time, so its cost follows the words scanned, never the pages.
  /// `word` is only called for words that hold a bit of `[from, end)`.
  @inline(__always)
  static func firstSetBit(from: UInt64, end: UInt64, word: (Int) -> UInt64) -> UInt64? {
    guard from < end else { return nil }
    var w = Int(from >> 6)
    var v = word(w) & (~0 << (from & 63))
    let lastWord = Int((end - 1) >> 6)
    while true {
      if v != 0 {
        let p = UInt64(w) << 6 + UInt64(v.trailingZeroBitCount)
        return p < end ? p : nil
      }
      w += 1
      if w > lastWord { return nil }
      v = word(w)
    }
  }

  /// The runs of set pages, as half-open page ranges, in order.
  public func runs() -> [Range<UInt64>] {
    var result: [Range<UInt64>] = []
    var p: UInt64 = 0
    while let s = nextSet(from: p) {
      let e = nextClear(from: s) ?? pageCount
      result.append(s..<e)
      p = e
    }
    return result
  }

  /// The bitmap as little-endian 64-bit words, as an x86-64 QEMU writes it
  /// (empty for an ``init(allClear:)`` bitmap).
  public func littleEndianBytes() -> [UInt8] {
    var out = [UInt8](repeating: 0, count: wordCount * 8)
    for w in 0..<wordCount {
      let v = words[w]
      for i in 0..<8 { out[w * 8 + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }
    return out
  }
}

#if canImport(Glibc)
  import Glibc
#endif

/// Supplies the pages of one block to the writer.
public protocol PageSource: Sendable {
  /// Fills `buffer` (one page) with page `page`, returning false if the page is known to be zero
  /// (then `buffer` need not be filled).
  func page(_ page: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FormatError) -> Bool
  /// The first page at or after `from` that may hold data, or nil if none; lets sparse sources skip holes.
  func nextCandidate(from: UInt64) -> UInt64?
  /// How many pages from `first` on (at most `limit`, at least 1) may hold data and are
  /// cheaper to fetch together with ``pages(_:count:into:)`` than one by one.
  func candidateRun(from first: UInt64, limit: Int) -> Int
  /// Fills `buffer` (`count` pages) with the pages from `first` on; returns false if they
  /// are all known to be zero (then `buffer` need not be filled).
  func pages(_ first: UInt64, count: Int, into buffer: UnsafeMutableRawBufferPointer) throws(FormatError) -> Bool
}

extension PageSource {
  /// One page at a time.
  public func candidateRun(from first: UInt64, limit: Int) -> Int { 1 }

  /// Page by page, zero-filling pages known to be zero.
  public func pages(_ first: UInt64, count: Int, into buffer: UnsafeMutableRawBufferPointer) throws(FormatError) -> Bool {
    let size = buffer.count / max(count, 1)
    var any = false
    for i in 0..<count {
      let one = UnsafeMutableRawBufferPointer(rebasing: buffer[i * size..<(i + 1) * size])
      if try page(first + UInt64(i), into: one) { any = true } else { memset(one.baseAddress!, 0, size) }
    }
    return any
  }
}

/// Pages from raw files: a block's byte ranges mapped onto ranges of one file.
///
/// Holes in a sparse input are skipped with `SEEK_DATA`, so a mostly empty
/// multi-GiB dump costs only its data.
public final class RawFileSource: PageSource, @unchecked Sendable {
  /// One contiguous range: block bytes `[blockOffset, blockOffset + length)` come from file offset `fileOffset`.
  public struct Segment: Sendable {
    public var blockOffset: UInt64
    public var fileOffset: UInt64
    public var length: UInt64
    public init(blockOffset: UInt64, fileOffset: UInt64, length: UInt64) {
      self.blockOffset = blockOffset
      self.fileOffset = fileOffset
      self.length = length
    }
  }

  let file: ImageFile
  let segments: [Segment]
  let pageSize: UInt64 = 4096

  /// Reads from `file` through `segments` (sorted, non-overlapping).
  public init(file: ImageFile, segments: [Segment]) {
    self.file = file
    self.segments = segments
  }

  public func page(_ page: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FormatError) -> Bool {
    memset(buffer.baseAddress!, 0, buffer.count)
    let start = page * pageSize
    var any = false
    for s in segments where s.blockOffset < start + pageSize && start < s.blockOffset + s.length {
      let from = max(start, s.blockOffset)
      let to = min(start + pageSize, s.blockOffset + s.length)
      let fileFrom = s.fileOffset + (from - s.blockOffset)
      guard fileFrom < file.size else { continue }
      let count = Int(min(to - from, file.size - fileFrom))
      let into = UnsafeMutableRawBufferPointer(rebasing: buffer[Int(from - start)..<Int(from - start) + count])
      try file.read(into: into, at: fileFrom, "input \(quoted(Array(file.path.utf8)))")
      any = true
    }
    return any
  }

  /// Up to the next hole of the input file (`SEEK_HOLE`) or the end of the segment, whichever is first.
  public func candidateRun(from first: UInt64, limit: Int) -> Int {
    let start = first * pageSize
    guard let s = segments.first(where: { $0.blockOffset <= start && start < $0.blockOffset + $0.length }),
      start % pageSize == 0, s.blockOffset % pageSize == 0
    else { return 1 }
    let fileAt = s.fileOffset + (start - s.blockOffset)
    guard fileAt < file.size else { return 1 }
    var end = min(s.fileOffset + s.length, file.size)
    let hole = lseek(file.descriptor.rawValue, off_t(fileAt), 4 /* SEEK_HOLE */)
    if hole > 0 { end = min(end, UInt64(hole)) }
    let pages = (end - fileAt + pageSize - 1) / pageSize
    return Int(max(1, min(UInt64(limit), pages)))
  }

  /// One read per segment the pages cover.
  public func pages(_ first: UInt64, count: Int, into buffer: UnsafeMutableRawBufferPointer) throws(FormatError) -> Bool {
    memset(buffer.baseAddress!, 0, buffer.count)
    let start = first * pageSize
    let stop = start + UInt64(count) * pageSize
    var any = false
    for s in segments where s.blockOffset < stop && start < s.blockOffset + s.length {
      let from = max(start, s.blockOffset)
      let to = min(stop, s.blockOffset + s.length)
      let fileFrom = s.fileOffset + (from - s.blockOffset)
      guard fileFrom < file.size else { continue }
      let n = Int(min(to - from, file.size - fileFrom))
      let into = UnsafeMutableRawBufferPointer(rebasing: buffer[Int(from - start)..<Int(from - start) + n])
      try file.read(into: into, at: fileFrom, "input \(quoted(Array(file.path.utf8)))")
      any = true
    }
    return any
  }

  public func nextCandidate(from page: UInt64) -> UInt64? {
    let pos = page * pageSize
    for s in segments where s.blockOffset + s.length > pos {
      let inSeg = max(pos, s.blockOffset)
      let fileAt = s.fileOffset + (inSeg - s.blockOffset)
      guard fileAt < file.size else { continue }
      let d = lseek(file.descriptor.rawValue, off_t(fileAt), 3 /* SEEK_DATA */)
      if d < 0 {
        if errno == ENXIO { continue }
        return inSeg / pageSize
      }
      let data = UInt64(d)
      let segEnd = s.fileOffset + s.length
      if data >= segEnd { continue }
      return (s.blockOffset + (data - s.fileOffset)) / pageSize
    }
    return nil
  }
}

/// Pages of a block of an open migration file (mapped-ram or fixed-ram).
public struct MigrationBlockSource: PageSource {
  public let file: MigrationFile
  public let index: Int
  public init(file: MigrationFile, index: Int) {
    self.file = file
    self.index = index
  }

  public func page(_ page: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FormatError) -> Bool {
    let b = file.blocks[index]
    guard b.isPresent(page: page) else { return false }
    _ = try file.read(block: index, at: page * b.pageSize, into: buffer)
    return true
  }

  public func nextCandidate(from page: UInt64) -> UInt64? {
    file.blocks[index].bitmap?.nextSet(from: page)
  }
}

/// Synthetic pages for tests and benchmarks: each populated page names its block, offset and
/// the seed, so a page served from the wrong place is visible.
public struct SyntheticSource: PageSource {
  public let name: String
  public let pages: UInt64
  /// Fraction of pages that hold data, in millionths.
  public let densityPPM: UInt64
  public let seed: UInt64

  /// A source of `pages` pages of which about `densityPPM` in a million hold data (capped at a million).
  public init(name: String, pages: UInt64, densityPPM: UInt64, seed: UInt64 = 0x6d72_616d_6673) {
    self.name = name
    self.pages = pages
    self.densityPPM = min(densityPPM, 1_000_000)
    self.seed = seed
  }

  /// A source with `density` (0 to 1) of its pages holding data; NaN counts as 0.
  public init(name: String, pages: UInt64, density: Double, seed: UInt64 = 0x6d72_616d_6673) {
    let clamped = density.isNaN ? 0 : max(0, min(1, density))
    self.init(name: name, pages: pages, densityPPM: UInt64((clamped * 1_000_000).rounded()), seed: seed)
  }

  /// Whether page `p` holds data.
  @inlinable
  public func isPopulated(_ p: UInt64) -> Bool {
    densityPPM >= 1_000_000 || SyntheticSource.mix(p ^ seed) % 1_000_000 < densityPPM
  }

  /// A 64-bit mixing function (splitmix64's finaliser).
  @inlinable
  public static func mix(_ x: UInt64) -> UInt64 {
    var z = x &+ 0x9E37_79B9_7F4A_7C15
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }

  /// The bytes of page `p`: `mramfs-synth NAME page P offset 0xOFF ` repeated, then the page index as 8 bytes.
  public func fill(_ p: UInt64, _ buffer: UnsafeMutableRawBufferPointer) {
    let tag = Array("mramfs-synth \(name) page \(p) offset \(hex(p * 4096)) ".utf8)
    // The tag once, then the filled part copied onto the rest, doubling each time.
    let first = min(tag.count, buffer.count)
    tag.withUnsafeBytes { buffer.baseAddress!.copyMemory(from: $0.baseAddress!, byteCount: first) }
    var filled = first
    while filled < buffer.count {
      let n = min(filled, buffer.count - filled)
      (buffer.baseAddress! + filled).copyMemory(from: buffer.baseAddress!, byteCount: n)
      filled += n
    }
    withUnsafeBytes(of: p.littleEndian) { raw in
      for i in 0..<8 { buffer[buffer.count - 8 + i] = raw[i] }
    }
  }

  public func page(_ page: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FormatError) -> Bool {
    guard page < pages, isPopulated(page) else { return false }
    fill(page, buffer)
    return true
  }

  public func nextCandidate(from page: UInt64) -> UInt64? {
    if densityPPM == 0 { return nil }
    var p = page
    while p < pages {
      if isPopulated(p) { return p }
      p += 1
    }
    return nil
  }
}

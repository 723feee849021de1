#if canImport(Glibc)
  import Glibc
#endif

/// Where each page of a classic stream's blocks ends up after replaying every
/// RAM record: the last write of a page wins, and a ZERO record clears it.
public final class ClassicPageIndex: @unchecked Sendable {
  /// Per block: sorted pages that hold data, and the file offset of each one's last PAGE record.
  public let pages: [[UInt64]]
  public let offsets: [[UInt64]]

  /// Replays the ram records of `file` (a classic stream).
  public init(file: MigrationFile) throws(FormatError) {
    precondition(file.format == .classic)
    // Page records carry their flags in the low bits of a target-page-aligned offset,
    // and the writer lays pages out in 4 KiB units.
    guard (file.targetPageBits ?? 12) == 12 else {
      throw FormatError(
        .unsupported, "configuration record", at: file.streamOffset,
        "target pages of \(1 << UInt64(file.targetPageBits ?? 12)) bytes; convert handles 4 KiB target pages only")
    }
    var latest = [[UInt64: UInt64]](repeating: [:], count: file.blocks.count)
    var bodies: [UInt64] = []
    if let start = file.ramListEnd { bodies.append(start) }
    for r in file.records where (r.kind == .sectionPart || r.kind == .sectionEnd) && r.sectionID == file.ramSectionID {
      bodies.append(r.offset + 5)
    }
    var lastBlock: Int? = nil
    for bodyStart in bodies {
      var reader = ClassicRecordReader(
        file: file.file, at: bodyStart, blocks: file.blocks, pageSize: 4096, lastBlock: lastBlock)
      while let record = try reader.next() {
        let page = record.address / 4096
        switch record.payload {
        case .zero(let fill):
          guard fill == 0 else {
            throw FormatError(
              .unsupported, "ram zero-page record", at: record.offset, "fill byte \(hex(fill)), expected 0")
          }
          latest[record.block].removeValue(forKey: page)
        case .page(let dataOffset):
          latest[record.block][page] = dataOffset
        }
      }
      lastBlock = reader.lastBlock
    }
    var pages: [[UInt64]] = []
    var offsets: [[UInt64]] = []
    for d in latest {
      let keys = d.keys.sorted()
      pages.append(keys)
      offsets.append(keys.map { d[$0]! })
    }
    self.pages = pages
    self.offsets = offsets
  }
}

/// The pages of one classic block, from a ``ClassicPageIndex``.
public struct ClassicBlockSource: PageSource {
  let file: MigrationFile
  let index: ClassicPageIndex
  let block: Int
  public init(file: MigrationFile, index: ClassicPageIndex, block: Int) {
    self.file = file
    self.index = index
    self.block = block
  }

  func position(_ page: UInt64) -> Int {
    var lo = 0
    var hi = index.pages[block].count
    while lo < hi {
      let mid = (lo + hi) / 2
      if index.pages[block][mid] < page { lo = mid + 1 } else { hi = mid }
    }
    return lo
  }

  public func page(_ page: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FormatError) -> Bool {
    let i = position(page)
    guard i < index.pages[block].count, index.pages[block][i] == page else { return false }
    try file.file.read(into: buffer, at: index.offsets[block][i], "ram page record")
    return true
  }

  public func nextCandidate(from page: UInt64) -> UInt64? {
    let i = position(page)
    return i < index.pages[block].count ? index.pages[block][i] : nil
  }

  /// Consecutive pages whose last records follow each other in the stream (a CONTINUE
  /// record's 8-byte header, then its 4096 bytes): one `preadv` fetches them all.
  public func candidateRun(from first: UInt64, limit: Int) -> Int {
    let pages = index.pages[block]
    let offsets = index.offsets[block]
    let i = position(first)
    guard i < pages.count, pages[i] == first else { return 1 }
    var n = 1
    while n < min(limit, ClassicBlockSource.maxRun), i + n < pages.count, pages[i + n] == first + UInt64(n),
      offsets[i + n] == offsets[i + n - 1] + 4096 + 8
    {
      n += 1
    }
    return n
  }

  /// At most this many pages per `preadv` (two vectors each, within IOV_MAX of 1024).
  static let maxRun = 256

  public func pages(_ first: UInt64, count: Int, into buffer: UnsafeMutableRawBufferPointer) throws(FormatError) -> Bool {
    guard count > 1, count <= ClassicBlockSource.maxRun, candidateRun(from: first, limit: count) == count else {
      var any = false
      for k in 0..<count {
        let one = UnsafeMutableRawBufferPointer(rebasing: buffer[k * 4096..<(k + 1) * 4096])
        if try page(first + UInt64(k), into: one) { any = true } else { memset(one.baseAddress!, 0, 4096) }
      }
      return any
    }
    let start = index.offsets[block][position(first)]
    let total = count * (4096 + 8) - 8
    let (end, overflow) = start.addingReportingOverflow(UInt64(total))
    guard !overflow, end <= file.file.size else {
      throw FormatError.truncated("ram page record", at: start, needed: UInt64(total), fileSize: file.file.size)
    }
    var headers = (UInt64(0), UInt64(0))
    return try withUnsafeMutableBytes(of: &headers) { (skip) throws(FormatError) -> Bool in
      try withUnsafeTemporaryAllocation(of: iovec.self, capacity: 2 * count) { (v) throws(FormatError) -> Bool in
        for k in 0..<count {
          v[2 * k] = iovec(iov_base: buffer.baseAddress! + k * 4096, iov_len: 4096)
          v[2 * k + 1] = iovec(iov_base: skip.baseAddress!, iov_len: 8)
        }
        // The last page is not followed by a header in this read.
        var done = 0
        while done < total {
          // Find the vector where `done` falls and read from there.
          var k = 0
          var skipped = 0
          while skipped + v[k].iov_len <= done { skipped += v[k].iov_len; k += 1 }
          let saved = v[k]
          v[k].iov_base = saved.iov_base! + (done - skipped)
          v[k].iov_len = saved.iov_len - (done - skipped)
          let n = preadv(file.file.descriptor.rawValue, v.baseAddress! + k, Int32(2 * count - 1 - k), off_t(start) + off_t(done))
          v[k] = saved
          if n > 0 {
            done += n
          } else if n == 0 {
            throw FormatError.truncated("ram page record", at: start + UInt64(done), needed: UInt64(total - done), fileSize: file.file.size)
          } else if errno != EINTR {
            throw FormatError(.io, "ram page record", at: start + UInt64(done), "read failed: \(String(cString: strerror(errno)))")
          }
        }
        return true
      }
    }
  }
}

/// Turns classic streams into mapped-ram ones and back, keeping every other record.
public enum Converter {
  /// The plan that rewrites `file` in `format`: same machine, blocks, device sections and
  /// commands; RAM laid out as `format` wants.
  public static func plan(_ file: MigrationFile, to format: StreamFormat, alignment: UInt64 = 1 << 20, threads: Int = 2)
    throws(FormatError) -> StreamPlan
  {
    guard file.isComplete else {
      throw FormatError(.incomplete, "stream", at: file.file.size, "the stream is not complete; mramfs does not convert a partial save")
    }
    guard let machine = file.machineType else {
      throw FormatError(.unsupported, "configuration record", at: file.streamOffset + 8, "the stream has no configuration record, so QEMU could not check the result")
    }
    if format != .classic && file.capabilities.contains("x-ignore-shared") {
      throw FormatError(
        .unsupported, "configuration record", at: file.streamOffset + 8,
        "capability x-ignore-shared: QEMU 10 cannot load x-ignore-shared with mapped-ram, so this would be a wrong file")
    }
    var plan = StreamPlan(machineType: machine)
    plan.format = format
    plan.capabilities = file.capabilities
    plan.uuid = file.uuid
    plan.targetPageBits = file.targetPageBits
    plan.alignment = alignment
    plan.threads = threads
    plan.ramSectionID = file.ramSectionID
    if file.streamOffset > 0 {
      var prefix = try file.file.bytes(at: 0, count: file.streamOffset, "prefix")
      if file.libvirt != nil, prefix.count >= 32 {
        // The libvirt header's image format: 6 (sparse) for mapped-ram, 0 (raw) for classic.
        let le = UInt32(prefix[16]) | UInt32(prefix[17]) << 8 | UInt32(prefix[18]) << 16 | UInt32(prefix[19]) << 24
        let value: UInt32 = format == .classic ? 0 : 6
        let bytes = (0..<4).map { UInt8(truncatingIfNeeded: value >> (8 * UInt32($0))) }
        prefix.replaceSubrange(28..<32, with: le <= 2 ? bytes : bytes.reversed())
      }
      plan.prefix = prefix
    }
    let classicIndex = file.format == .classic ? try ClassicPageIndex(file: file) : nil
    for (i, b) in file.blocks.enumerated() {
      let source: any PageSource =
        classicIndex.map { ClassicBlockSource(file: file, index: $0, block: i) } ?? MigrationBlockSource(file: file, index: i)
      plan.blocks.append(BlockPlan(name: b.name, length: b.length, source: source))
    }
    // Records between the ram START and END that are not ram's own, then everything after the END.
    let recs = file.records
    guard let startIndex = recs.firstIndex(where: { $0.kind == .sectionStart && $0.sectionID == file.ramSectionID }),
      let endIndex = recs.firstIndex(where: { $0.kind == .sectionEnd && $0.sectionID == file.ramSectionID }),
      endIndex + 1 < recs.count
    else {
      throw FormatError(.incomplete, "stream", at: file.streamOffset, "no ram END section followed by more records was found")
    }
    var middle: [UInt8] = []
    for k in startIndex + 1..<endIndex {
      let r = recs[k]
      if r.sectionID == file.ramSectionID && (r.kind == .sectionPart || r.kind == .sectionEnd) { continue }
      middle += try file.file.bytes(at: r.offset, count: recs[k + 1].offset - r.offset, "record")
    }
    plan.middle = middle
    let tailStart = recs[endIndex + 1].offset
    plan.tail = try file.file.bytes(at: tailStart, count: file.file.size - tailStart, "device sections")
    return plan
  }
}

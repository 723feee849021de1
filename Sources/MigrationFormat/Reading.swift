#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

extension MigrationFile {
  /// Reads bytes of block `index` starting at `offset` into `buffer`.
  ///
  /// Each page is masked by its bitmap bit: a set bit serves the page's bytes
  /// from the file, a clear bit serves zeros whatever the file holds there.
  /// Reads stop at the block's end, so the result may be short; the return
  /// value is the number of bytes written. A set bit whose page lies past
  /// the end of the file (a cut or truncated image) throws an
  /// ``FormatError/Kind/io`` error rather than serving zeros.
  ///
  /// It allocates nothing and takes no lock; call it from any thread.
  public func read(block index: Int, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer)
    throws(FormatError) -> Int
  {
    let block = blocks[index]
    guard offset < block.length, buffer.count > 0, let bitmap = block.bitmap else { return 0 }
    let count = Int(min(UInt64(buffer.count), block.length - offset))
    let end = offset + UInt64(count)
    let ps = block.pageSize
    let lastPage = (end - 1) / ps + 1
    var pos = offset
    let fd = file.descriptor.rawValue
    let base = buffer.baseAddress!
    while pos < end {
      let page = pos / ps
      let into = base + Int(pos - offset)
      if bitmap.isSet(page) {
        let runEnd = bitmap.nextClear(from: page, limit: lastPage) ?? lastPage
        let stop = min(runEnd * ps, end)
        var done = 0
        let want = Int(stop - pos)
        let fileOffset = block.pagesOffset + pos
        while done < want {
          let n = pread(fd, into + done, want - done, off_t(fileOffset) + off_t(done))
          if n > 0 {
            done += n
          } else if n == 0 {
            throw FormatError(
              .io, "page \(page) of block \(quoted(block.name.bytes))", at: fileOffset + UInt64(done),
              "the bitmap says the page is present but the file ends before it")
          } else if errno != EINTR {
            throw FormatError(
              .io, "page \(page) of block \(quoted(block.name.bytes))", at: fileOffset + UInt64(done),
              "read failed: errno \(errno)")
          }
        }
        pos = stop
      } else {
        let runEnd = bitmap.nextSet(from: page, limit: lastPage) ?? lastPage
        let stop = min(runEnd * ps, end)
        memset(into, 0, Int(stop - pos))
        pos = stop
      }
    }
    return count
  }

  /// The first offset at or after `offset` in block `index` that holds data, or nil past the last data.
  ///
  /// Data is the block's ``RAMBlock/extentMap`` when it has one (a delta view), else its bitmap.
  /// Costs O(bitmap words scanned), never O(pages).
  public func nextData(block index: Int, from offset: UInt64) -> UInt64? {
    let block = blocks[index]
    guard offset < block.length, let bitmap = block.dataPages else { return nil }
    let page = offset / block.pageSize
    if bitmap.isSet(page) { return offset }
    return bitmap.nextSet(from: page + 1).map { $0 * block.pageSize }
  }

  /// The first offset at or after `offset` in block `index` that is a hole; the block's length if none.
  ///
  /// Like `SEEK_HOLE`, the end of the block counts as a hole. Returns nil when `offset` is past the end.
  /// Data is the block's ``RAMBlock/extentMap`` when it has one, as for ``nextData(block:from:)``.
  public func nextHole(block index: Int, from offset: UInt64) -> UInt64? {
    let block = blocks[index]
    guard offset < block.length else { return nil }
    guard let bitmap = block.dataPages else { return block.length }
    let page = offset / block.pageSize
    if !bitmap.isSet(page) { return offset }
    return bitmap.nextClear(from: page + 1).map { $0 * block.pageSize } ?? block.length
  }
}

import FUSE
import GuestViews
import MigrationFormat
import SystemPackage

// The `physmem` file: guest-physical address N at offset N (PhysicalLayout).
// Reads go through the layout's ranges to the same block reads as the block
// files (masked by the bitmap), with zeros between them; SEEK_DATA/SEEK_HOLE
// and st_blocks follow the populated pages of main RAM. Like the block files,
// the read paths allocate nothing and take no lock.

extension MramFileSystem {
  /// The attributes of `physmem`: its size is one past the highest RAM address;
  /// st_blocks counts main RAM's populated pages, which the layout maps exactly once.
  func physmemAttributes(_ node: Node) -> FileAttributes {
    let size = physmem?.size ?? 0
    let populated = physmem?.populatedBytes ?? 0
    return FileAttributes(
      inode: node.inode, mode: FileMode(type: .regular, permissions: FilePermissions(rawValue: 0o444)), linkCount: 1,
      uid: uid, gid: gid, size: Int64(clamping: size), blocks: Int64(populated / 512),
      blockSize: Int32(clamping: physmem?.pageSize ?? 4096),
      accessTime: time, modificationTime: time, changeTime: time)
  }

  /// Answers a read of `physmem` with main RAM's bytes, masked by the bitmaps, and zeros
  /// where there is no RAM, copied into this thread's buffer.
  func physmemPreadRead(offset: UInt64, size: Int, reply: consuming ReplyData) {
    guard let layout = physmem else { return reply.error(.ioError) }
    let buffer = buffers.current
    let want = min(size, buffer.count)
    do {
      let n = try file.read(
        physical: layout, at: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]))
      reply.bytes(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
    } catch {
      if readErrors.add(1, ordering: .relaxed).oldValue == 0 {
        logger.error("physmem read failed, answering EIO (logged once): \(error)")
      }
      reply.error(.ioError)
    }
  }

  /// Answers a read of `physmem` with file segments for present runs and shared zeros for
  /// holes and for addresses that are not RAM; falls back to a copy past
  /// ``spliceSegmentLimit`` runs, as block reads do.
  func physmemSpliceRead(offset: UInt64, size: Int, reply: consuming ReplyData) {
    guard let layout = physmem else { return reply.error(.ioError) }
    guard offset < layout.size, size > 0 else { return reply.bytes(UnsafeRawBufferPointer(start: nil, count: 0)) }
    let end = min(layout.size, offset + UInt64(size))
    let raw = segmentBuffers.current
    let capacity = raw.count / MemoryLayout<DataSegment>.stride
    let segs = raw.baseAddress!.bindMemory(to: DataSegment.self, capacity: capacity)
    let limit = min(capacity, Self.spliceSegmentLimit)
    var n = 0
    var pos = offset
    var i = layout.firstRange(endingAfter: pos)
    // Looked up at the first file segment, as block reads do (see currentImageSize()).
    var imageSize: UInt64? = nil
    while pos < end {
      if n == limit { return physmemPreadRead(offset: offset, size: size, reply: reply) }
      guard i < layout.ranges.count, layout.ranges[i].gpa <= pos else {
        // Not RAM: zeros up to the next range.
        let stop = i < layout.ranges.count ? min(end, layout.ranges[i].gpa) : end
        (segs + n).initialize(to: .zeros(Int(stop - pos)))
        n += 1
        pos = stop
        continue
      }
      let r = layout.ranges[i]
      let b = file.blocks[r.block]
      guard let bitmap = b.bitmap else { return reply.error(.ioError) }
      let ps = b.pageSize
      let stopInRange = min(end, r.end)
      // Block offsets of this piece of the read.
      var at = r.blockOffset + (pos - r.gpa)
      let atEnd = r.blockOffset + (stopInRange - r.gpa)
      let lastPage = (atEnd - 1) / ps + 1
      while at < atEnd {
        if n == limit { return physmemPreadRead(offset: offset, size: size, reply: reply) }
        let page = at / ps
        if bitmap.isSet(page) {
          let stop = min((bitmap.nextClear(from: page, limit: lastPage) ?? lastPage) * ps, atEnd)
          let fileOffset = b.pagesOffset + at
          if imageSize == nil { imageSize = currentImageSize() }
          guard fileOffset + (stop - at) <= imageSize ?? 0 else {
            if readErrors.add(1, ordering: .relaxed).oldValue == 0 {
              logger.error(
                "physmem: block \(b.name) present page \(page) lies past the end of the image (was it truncated?); answering EIO (logged once)")
            }
            return reply.error(.ioError)
          }
          (segs + n).initialize(to: .file(file.file.descriptor, offset: Int64(fileOffset), count: Int(stop - at)))
          at = stop
        } else {
          let stop = min((bitmap.nextSet(from: page, limit: lastPage) ?? lastPage) * ps, atEnd)
          (segs + n).initialize(to: .zeros(Int(stop - at)))
          at = stop
        }
        n += 1
      }
      pos = stopInRange
      i += 1
    }
    reply.segments(UnsafeBufferPointer(start: segs, count: n))
  }

  /// Answers SEEK_DATA and SEEK_HOLE on `physmem` from main RAM's bitmaps through the
  /// layout's ranges; addresses that are not RAM are holes; ENXIO at or past the end.
  func physmemSeek(from offset: UInt64, whence: SeekWhence, reply: consuming ReplyLseek) {
    guard let layout = physmem else { return reply.error(.noSuchAddressOrDevice) }
    let result =
      whence == .nextData
      ? file.nextData(physical: layout, from: offset) : file.nextHole(physical: layout, from: offset)
    guard let r = result else { return reply.error(.noSuchAddressOrDevice) }
    reply.offset(Int64(r))
  }
}

import FUSE
import GuestViews
import MigrationFormat
import SystemPackage

// The `vmcore` file: an ELF64 core of the guest (ELFCore), as QEMU's
// dump-guest-memory with paging=false shapes one. The header and notes are
// computed once at mount; reads of the segments go through the same block reads
// as `physmem` (masked by the bitmaps). SEEK_DATA/SEEK_HOLE and st_blocks follow
// the populated pages, with the header pages counting as data. Both read
// strategies copy (pread): a core is read by tools that parse it, not streamed.
// The read paths allocate nothing and take no lock.

extension MramFileSystem {
  /// The attributes of `vmcore`: st_blocks counts the header pages and the segments' populated pages.
  func vmcoreAttributes(_ node: Node) -> FileAttributes {
    FileAttributes(
      inode: node.inode, mode: FileMode(type: .regular, permissions: FilePermissions(rawValue: 0o444)), linkCount: 1,
      uid: uid, gid: gid, size: Int64(clamping: vmcore?.size ?? 0), blocks: Int64((vmcore?.populatedBytes ?? 0) / 512),
      blockSize: Int32(clamping: vmcore?.pageSize ?? 4096),
      accessTime: time, modificationTime: time, changeTime: time)
  }

  /// Answers a read of `vmcore` with its bytes, copied into this thread's buffer.
  func vmcoreRead(offset: UInt64, size: Int, reply: consuming ReplyData) {
    guard let core = vmcore, let layout = physmem else { return reply.error(.ioError) }
    let buffer = buffers.current
    let want = min(size, buffer.count)
    do {
      let n = try file.read(
        core: core, layout: layout, at: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]))
      reply.bytes(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
    } catch {
      if readErrors.add(1, ordering: .relaxed).oldValue == 0 {
        logger.error("vmcore read failed, answering EIO (logged once): \(error)")
      }
      reply.error(.ioError)
    }
  }

  /// Answers SEEK_DATA and SEEK_HOLE on `vmcore`; ENXIO at or past the end.
  func vmcoreSeek(from offset: UInt64, whence: SeekWhence, reply: consuming ReplyLseek) {
    guard let core = vmcore else { return reply.error(.noSuchAddressOrDevice) }
    let result =
      whence == .nextData ? file.nextData(core: core, from: offset) : file.nextHole(core: core, from: offset)
    guard let r = result else { return reply.error(.noSuchAddressOrDevice) }
    reply.offset(Int64(r))
  }
}

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif
import SystemPackage

/// An open image file: a read-only descriptor and the size it had when opened.
///
/// Reads go through `pread`, so one `ImageFile` serves any number of threads
/// at once without a lock.
public final class ImageFile: Sendable {
  /// The path the file was opened from.
  public let path: String
  /// The descriptor, opened `O_RDONLY | O_CLOEXEC`.
  public let descriptor: FileDescriptor
  /// The file size in bytes when it was opened.
  public let size: UInt64
  /// The file's modification time (seconds, nanoseconds) when it was opened.
  public let modificationTime: (seconds: Int, nanoseconds: Int)
  /// The file's owner.
  public let owner: (uid: UInt32, gid: UInt32)

  /// Opens `path` read-only.
  ///
  /// - Parameter noFollow: refuse to open a symbolic link (`O_NOFOLLOW`).
  public init(path: String, noFollow: Bool = false) throws(FormatError) {
    self.path = path
    // Non-blocking for the open only: opening a FIFO (or a device that waits for a peer)
    // for reading would otherwise wait forever for a writer. It is refused just below.
    var options: FileDescriptor.OpenOptions = [.closeOnExec, .nonBlocking]
    if noFollow { options.insert(.noFollow) }
    let fd: FileDescriptor
    do {
      fd = try FileDescriptor.open(path, .readOnly, options: options)
    } catch {
      throw FormatError(.io, "file \(quoted(Array(path.utf8)))", at: 0, "cannot open: \(error)")
    }
    var st = stat()
    guard fstat(fd.rawValue, &st) == 0 else {
      let e = Errno(rawValue: errno)
      try? fd.close()
      throw FormatError(.io, "file \(quoted(Array(path.utf8)))", at: 0, "cannot stat: \(e)")
    }
    guard (st.st_mode & S_IFMT) == S_IFREG || (st.st_mode & S_IFMT) == S_IFBLK else {
      try? fd.close()
      let kind: String
      switch st.st_mode & S_IFMT {
      case S_IFDIR: kind = "a directory"
      case S_IFIFO: kind = "a FIFO"
      case S_IFCHR: kind = "a character device"
      case S_IFSOCK: kind = "a socket"
      default: kind = "not a regular file"
      }
      throw FormatError(
        .badValue, "file \(quoted(Array(path.utf8)))", at: 0, "is \(kind); give a saved VM file (a regular file or a block device)")
    }
    let flags = fcntl(fd.rawValue, F_GETFL)
    if flags >= 0 { _ = fcntl(fd.rawValue, F_SETFL, flags & ~O_NONBLOCK) }
    descriptor = fd
    var size = UInt64(st.st_size)
    if (st.st_mode & S_IFMT) == S_IFBLK {
      let end = lseek(fd.rawValue, 0, SEEK_END)
      size = end > 0 ? UInt64(end) : 0
    }
    self.size = size
    modificationTime = (Int(st.st_mtim.tv_sec), Int(st.st_mtim.tv_nsec))
    owner = (st.st_uid, st.st_gid)
  }

  deinit {
    try? descriptor.close()
  }

  /// Reads exactly `buffer.count` bytes at `offset`, or fails.
  ///
  /// Retries short reads and `EINTR`. A read that meets end of file throws a
  /// ``FormatError/Kind/truncated`` error naming `structure`.
  public func read(
    into buffer: UnsafeMutableRawBufferPointer, at offset: UInt64, _ structure: @autoclosure () -> String
  ) throws(FormatError) {
    var done = 0
    while done < buffer.count {
      let n = pread(
        descriptor.rawValue, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
      if n > 0 {
        done += n
      } else if n == 0 {
        throw FormatError.truncated(structure(), at: offset, needed: UInt64(buffer.count), fileSize: size)
      } else if errno != EINTR {
        throw FormatError(.io, structure(), at: offset + UInt64(done), "read failed: \(Errno(rawValue: errno))")
      }
    }
  }

  /// Reads `count` bytes at `offset` into a new array, after checking that
  /// they lie inside the file (so `count` never sizes an allocation by itself).
  public func bytes(at offset: UInt64, count: UInt64, _ structure: @autoclosure () -> String)
    throws(FormatError) -> [UInt8]
  {
    let (end, o) = offset.addingReportingOverflow(count)
    guard !o, end <= size else {
      throw FormatError.truncated(structure(), at: offset, needed: count, fileSize: size)
    }
    if count == 0 { return [] }
    var result = [UInt8](repeating: 0, count: Int(count))
    var failure: FormatError? = nil
    result.withUnsafeMutableBytes { raw in
      do throws(FormatError) { try read(into: raw, at: offset, structure()) } catch { failure = error }
    }
    if let failure { throw failure }
    return result
  }
}

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
    var options: FileDescriptor.OpenOptions = [.closeOnExec]
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
      throw FormatError(.badValue, "file \(quoted(Array(path.utf8)))", at: 0, "not a regular file")
    }
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

/// A forward reader over an ``ImageFile`` with a small buffer.
///
/// Verbs follow SwiftNIO's `ByteBuffer`: `read…` advances, and the byte
/// order is part of each method's name. Every read is bounds-checked against
/// the file size and reports the structure it was reading.
struct StreamCursor {
  let file: ImageFile
  /// Absolute offset of the next byte.
  private(set) var offset: UInt64
  private var buffer: [UInt8] = []
  private var bufferStart: UInt64 = 0
  private static let chunk = 64 * 1024
  private static let smallChunk = 512

  init(file: ImageFile, offset: UInt64) {
    self.file = file
    self.offset = offset
  }

  /// Bytes left between the cursor and end of file.
  var remaining: UInt64 { file.size > offset ? file.size - offset : 0 }

  var atEnd: Bool { offset >= file.size }

  mutating func seek(to newOffset: UInt64) {
    offset = newOffset
  }

  mutating func skip(_ count: UInt64, _ structure: @autoclosure () -> String) throws(FormatError) {
    let (end, o) = offset.addingReportingOverflow(count)
    guard !o, end <= file.size else {
      throw FormatError.truncated(structure(), at: offset, needed: count, fileSize: file.size)
    }
    offset = end
  }

  /// Makes sure `count` bytes at the cursor are in the buffer.
  private mutating func fill(_ count: Int, _ structure: () -> String) throws(FormatError) {
    let have = bufferStart + UInt64(buffer.count)
    if offset >= bufferStart && offset + UInt64(count) <= have { return }
    guard UInt64(count) <= remaining else {
      throw FormatError.truncated(structure(), at: offset, needed: UInt64(count), fileSize: file.size)
    }
    // After a skip past the buffer (over a page's data, say) the next record is most
    // likely a small header followed by another skip: read a little, not a chunk.
    let skippedAhead = !buffer.isEmpty && offset > have
    let want = UInt64(max(count, skippedAhead ? Self.smallChunk : Self.chunk))
    let take = min(want, remaining)
    buffer = try file.bytes(at: offset, count: take, structure())
    bufferStart = offset
  }

  mutating func peekUInt8(_ structure: @autoclosure () -> String) throws(FormatError) -> UInt8 {
    try fill(1, structure)
    return buffer[Int(offset - bufferStart)]
  }

  mutating func readUInt8(_ structure: @autoclosure () -> String) throws(FormatError) -> UInt8 {
    let v = try peekUInt8(structure())
    offset += 1
    return v
  }

  mutating func readUInt16BE(_ structure: @autoclosure () -> String) throws(FormatError) -> UInt16 {
    UInt16(truncatingIfNeeded: try readBE(2, structure))
  }

  mutating func readUInt32BE(_ structure: @autoclosure () -> String) throws(FormatError) -> UInt32 {
    UInt32(truncatingIfNeeded: try readBE(4, structure))
  }

  mutating func readUInt64BE(_ structure: @autoclosure () -> String) throws(FormatError) -> UInt64 {
    try readBE(8, structure)
  }

  mutating func peekUInt64BE(_ structure: @autoclosure () -> String) throws(FormatError) -> UInt64 {
    let start = offset
    let v = try readBE(8, structure)
    offset = start
    return v
  }

  private mutating func readBE(_ n: Int, _ structure: () -> String) throws(FormatError) -> UInt64 {
    try fill(n, structure)
    var v: UInt64 = 0
    let base = Int(offset - bufferStart)
    for i in 0..<n { v = v << 8 | UInt64(buffer[base + i]) }
    offset += UInt64(n)
    return v
  }

  /// Reads `count` bytes; `count` must already be bounded (it is at most 255 or checked by the caller).
  mutating func readBytes(_ count: Int, _ structure: @autoclosure () -> String) throws(FormatError) -> [UInt8] {
    if count <= Self.chunk {
      try fill(count, structure)
      let base = Int(offset - bufferStart)
      offset += UInt64(count)
      return Array(buffer[base..<base + count])
    }
    let r = try file.bytes(at: offset, count: UInt64(count), structure())
    offset += UInt64(count)
    return r
  }
}

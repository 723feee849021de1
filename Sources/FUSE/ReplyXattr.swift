import CFuse
import Glibc
import SystemPackage

/// The answer to a `getxattr` or `listxattr`: a value, its size, or an error.
///
/// The corresponding C functions are `fuse_reply_xattr`, `fuse_reply_buf` and
/// `fuse_reply_err`. A client first asks with ``size`` `0` for the length, then with a
/// buffer; ``value(_:)`` handles both and answers `ERANGE` when the buffer is too small.
/// A missing attribute is ``SystemPackage/Errno/noData`` (`ENODATA`).
public struct ReplyXattr: ~Copyable, @unchecked Sendable {
  let target: ReplyTarget
  /// The client's buffer size; `0` asks for the size of the value only.
  public let size: Int

  init(_ target: ReplyTarget, size: Int) {
    self.target = target
    self.size = size
  }

  /// Creates a reply that records its answer, for handler tests.
  public init(recordingInto recorder: ReplyRecorder, size: Int) {
    self.init(ReplyTarget(recorder: recorder), size: size)
  }

  /// Answers with a value: its size for a size query, the bytes if they fit, else `ERANGE`.
  public consuming func value(_ bytes: UnsafeRawBufferPointer) {
    let target = self.target
    let size = self.size
    discard self
    ReplyXattr.send(target, size: size, value: bytes)
  }

  /// Answers a `listxattr` with attribute names, each terminated by a NUL byte.
  public consuming func names<Names: Sequence>(_ names: Names) where Names.Element == String {
    let target = self.target
    let size = self.size
    discard self
    var list: [UInt8] = []
    for name in names {
      list.append(contentsOf: name.utf8)
      list.append(0)
    }
    list.withUnsafeBytes { ReplyXattr.send(target, size: size, value: $0) }
  }

  /// Answers a size query with the length of the value without producing it.
  public consuming func size(_ count: Int) {
    let target = self.target
    discard self
    if target.record(.xattrSize(count)) { return }
    target.check(fuse_reply_xattr(target.request, count), "fuse_reply_xattr")
  }

  /// Answers with an error, such as ``SystemPackage/Errno/noData`` for a missing attribute.
  public consuming func error(_ errno: Errno) {
    let target = self.target
    discard self
    target.error(errno)
  }

  deinit { target.unanswered("xattr request") }

  private static func send(_ target: ReplyTarget, size: Int, value bytes: UnsafeRawBufferPointer) {
    if size == 0 {
      if target.record(.xattrSize(bytes.count)) { return }
      target.check(fuse_reply_xattr(target.request, bytes.count), "fuse_reply_xattr")
    } else if bytes.count > size {
      target.error(.outOfRange)
    } else {
      if target.record(.xattrData(Array(bytes))) { return }
      target.check(
        fuse_reply_buf(
          target.request, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count),
        "fuse_reply_buf")
    }
  }
}

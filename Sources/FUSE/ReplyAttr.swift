import CFuse
import Glibc
import SystemPackage

/// The answer to a `getattr`: the attributes of an inode, or an error.
///
/// The corresponding C functions are `fuse_reply_attr` and `fuse_reply_err`.
public struct ReplyAttr: ~Copyable, @unchecked Sendable {
  let target: ReplyTarget

  init(_ target: ReplyTarget) { self.target = target }

  /// Creates a reply that records its answer, for handler tests.
  public init(recordingInto recorder: ReplyRecorder) { self.init(ReplyTarget(recorder: recorder)) }

  /// Answers with the attributes, which the kernel may cache for `timeout`.
  public consuming func attributes(_ attributes: FileAttributes, timeout: Duration) {
    let target = self.target
    discard self
    if target.record(.attributes(attributes, timeout: timeout)) { return }
    var st = attributes.stat
    target.check(fuse_reply_attr(target.request, &st, timeout.fuseSeconds), "fuse_reply_attr")
  }

  /// Answers with an error.
  public consuming func error(_ errno: Errno) {
    let target = self.target
    discard self
    target.error(errno)
  }

  deinit { target.unanswered("getattr") }
}

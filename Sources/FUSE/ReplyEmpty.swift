import CFuse
import Glibc
import SystemPackage

/// The answer to a request without data (`release`, `releasedir`, `access`): done, or an error.
///
/// The corresponding C function is `fuse_reply_err`, with `0` for success.
public struct ReplyEmpty: ~Copyable, @unchecked Sendable {
  let target: ReplyTarget

  init(_ target: ReplyTarget) { self.target = target }

  /// Creates a reply that records its answer, for handler tests.
  public init(recordingInto recorder: ReplyRecorder) { self.init(ReplyTarget(recorder: recorder)) }

  /// Answers success.
  public consuming func ok() {
    let target = self.target
    discard self
    if target.record(.empty) { return }
    target.check(fuse_reply_err(target.request, 0), "fuse_reply_err")
  }

  /// Answers with an error.
  public consuming func error(_ errno: Errno) {
    let target = self.target
    discard self
    target.error(errno)
  }

  deinit { target.unanswered("request") }
}

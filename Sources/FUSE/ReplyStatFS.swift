import CFuse
import Glibc
import SystemPackage

/// The answer to a `statfs`: file system statistics, or an error.
///
/// The corresponding C functions are `fuse_reply_statfs` and `fuse_reply_err`.
public struct ReplyStatFS: ~Copyable, @unchecked Sendable {
  let target: ReplyTarget

  init(_ target: ReplyTarget) { self.target = target }

  /// Creates a reply that records its answer, for handler tests.
  public init(recordingInto recorder: ReplyRecorder) { self.init(ReplyTarget(recorder: recorder)) }

  /// Answers with the statistics.
  public consuming func statfs(_ info: StatFSInfo) {
    let target = self.target
    discard self
    if target.record(.statfs(info)) { return }
    var s = info.cValue
    target.check(fuse_reply_statfs(target.request, &s), "fuse_reply_statfs")
  }

  /// Answers with an error.
  public consuming func error(_ errno: Errno) {
    let target = self.target
    discard self
    target.error(errno)
  }

  deinit { target.unanswered("statfs") }
}

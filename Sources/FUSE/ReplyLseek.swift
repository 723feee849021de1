import CFuse
import Glibc
import SystemPackage

/// The answer to an `lseek` with `SEEK_DATA` or `SEEK_HOLE`: the offset found, or an error.
///
/// The corresponding C functions are `fuse_reply_lseek` and `fuse_reply_err`. `ENXIO`
/// means there is no data (or no hole) at or after the offset, or the offset is past EOF.
public struct ReplyLseek: ~Copyable, @unchecked Sendable {
  let target: ReplyTarget

  init(_ target: ReplyTarget) { self.target = target }

  /// Creates a reply that records its answer, for handler tests.
  public init(recordingInto recorder: ReplyRecorder) { self.init(ReplyTarget(recorder: recorder)) }

  /// Answers with the resulting file offset.
  public consuming func offset(_ offset: Int64) {
    let target = self.target
    discard self
    if target.record(.lseek(offset)) { return }
    target.check(fuse_reply_lseek(target.request, off_t(offset)), "fuse_reply_lseek")
  }

  /// Answers with an error, such as ``SystemPackage/Errno/noSuchAddressOrDevice`` (`ENXIO`).
  public consuming func error(_ errno: Errno) {
    let target = self.target
    discard self
    target.error(errno)
  }

  deinit { target.unanswered("lseek") }
}

import CFuse
import Glibc
import SystemPackage

/// The answer to a `lookup`: an entry, a cached negative entry, or an error.
///
/// The corresponding C functions are `fuse_reply_entry` and `fuse_reply_err`.
public struct ReplyEntry: ~Copyable, @unchecked Sendable {
  let target: ReplyTarget

  init(_ target: ReplyTarget) { self.target = target }

  /// Creates a reply that records its answer, for handler tests.
  public init(recordingInto recorder: ReplyRecorder) { self.init(ReplyTarget(recorder: recorder)) }

  /// Answers that the name exists; the kernel's lookup count of the inode grows by one.
  public consuming func entry(_ parameters: EntryParameters) {
    let target = self.target
    discard self
    precondition(
      parameters.attributes.inode.rawValue != 0, "a positive entry needs an inode other than 0")
    if target.record(.entry(parameters)) { return }
    var e = parameters.cValue
    target.check(fuse_reply_entry(target.request, &e), "fuse_reply_entry")
  }

  /// Answers that the name exists; the kernel's lookup count of the inode grows by one.
  public consuming func entry(
    _ attributes: FileAttributes, generation: UInt64 = 0,
    attributeTimeout: Duration, entryTimeout: Duration
  ) {
    entry(
      EntryParameters(
        attributes: attributes, generation: generation,
        attributeTimeout: attributeTimeout, entryTimeout: entryTimeout))
  }

  /// Answers that the name does not exist, and lets the kernel remember that for `timeout`.
  ///
  /// This is an entry with inode `0`: the client sees `ENOENT`, and lookups of the same
  /// name within `timeout` are answered by the kernel alone. It adds no lookup count.
  public consuming func negative(timeout: Duration) {
    let target = self.target
    discard self
    if target.record(.negativeEntry(timeout: timeout)) { return }
    var e = fuse_entry_param()
    e.ino = 0
    e.entry_timeout = timeout.fuseSeconds
    target.check(fuse_reply_entry(target.request, &e), "fuse_reply_entry")
  }

  /// Answers with an error, such as ``SystemPackage/Errno/noSuchFileOrDirectory`` (not cached).
  public consuming func error(_ errno: Errno) {
    let target = self.target
    discard self
    target.error(errno)
  }

  deinit { target.unanswered("lookup") }
}

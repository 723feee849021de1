import CFuse
import Glibc
import SystemPackage

/// The answer to an `open` or `opendir`: a file handle and caching options, or an error.
///
/// The corresponding C functions are `fuse_reply_open` and `fuse_reply_err`. The reply
/// keeps its own copy of the request's `fuse_file_info` (which lives on a libfuse worker's
/// stack only while the handler runs), so it may be answered after the handler returned.
public struct ReplyOpen: ~Copyable, @unchecked Sendable {
  let target: ReplyTarget
  let fileInfo: fuse_file_info

  init(_ target: ReplyTarget, fileInfo: fuse_file_info) {
    self.target = target
    self.fileInfo = fileInfo
  }

  /// Creates a reply that records its answer, for handler tests.
  public init(recordingInto recorder: ReplyRecorder) {
    self.init(ReplyTarget(recorder: recorder), fileInfo: fuse_file_info())
  }

  /// Answers that the file is open.
  ///
  /// - Parameters:
  ///   - handle: A value the kernel passes back on every request about this open file.
  ///   - options: How the kernel should cache the file's data (``OpenOptions/directIO``,
  ///     ``OpenOptions/keepCache``, ...).
  public consuming func opened(handle: FileHandle = .none, options: OpenOptions = []) {
    let target = self.target
    let fileInfo = self.fileInfo
    discard self
    if target.record(.open(handle, options)) { return }
    var fi = fileInfo
    fi.fh = handle.rawValue
    options.apply(to: &fi)
    target.check(fuse_reply_open(target.request, &fi), "fuse_reply_open")
  }

  /// Answers with an error, such as ``SystemPackage/Errno/readOnlyFileSystem``.
  public consuming func error(_ errno: Errno) {
    let target = self.target
    discard self
    target.error(errno)
  }

  deinit { target.unanswered("open") }
}

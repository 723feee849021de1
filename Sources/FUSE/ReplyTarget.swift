import CFuse
import Logging
import SystemPackage

// Every reply is a one-shot, noncopyable value: a handler receives it `consuming`, and
// each answering method is `consuming` too, so the compiler rejects a second answer and
// a reply escaping into two places. A reply dropped without an answer answers EIO from
// its `deinit` and logs a warning, so the client's system call never hangs.
//
// Replies are `@unchecked Sendable`: libfuse lets any thread answer a request, so a
// handler may hand its reply to another thread and answer later.

/// Where a reply goes: the kernel, through a libfuse request, or a test's ``ReplyRecorder``.
///
/// Every field is trivially destroyable, which `discard self` in the reply types needs.
struct ReplyTarget {
  let request: fuse_req_t?
  /// The session, taken while the request is alive: a `fuse_reply_*` call frees the
  /// request, so nothing may be looked up through it afterwards (such as the logger
  /// that reports a failed reply).
  let context: Unmanaged<SessionContext>?
  let recorder: Unmanaged<ReplyRecorder>?

  init(_ request: fuse_req_t) {
    self.request = request
    self.context = Unmanaged.passUnretained(SessionContext.of(request))
    self.recorder = nil
  }

  init(recorder: ReplyRecorder) {
    self.request = nil
    self.context = nil
    self.recorder = Unmanaged.passUnretained(recorder)
  }

  /// The logger of the session (or recorder) this request belongs to; never reads the request.
  var logger: Logger {
    if let recorder { return recorder.takeUnretainedValue().logger }
    guard let context else { return Logger(label: "FUSE") }
    return context.takeUnretainedValue().logger
  }

  /// Hands a reply to the recorder; returns `false` when the reply must go to the kernel.
  func record(_ reply: @autoclosure () -> RecordedReply) -> Bool {
    guard let recorder else { return false }
    recorder.takeUnretainedValue().append(reply())
    return true
  }

  /// Answers with an error number.
  func error(_ errno: Errno) {
    precondition(
      errno.rawValue > 0 && errno.rawValue < 1000,
      "a FUSE error reply needs a positive errno below 1000, got \(errno.rawValue)")
    if record(.error(errno)) { return }
    check(fuse_reply_err(request, errno.rawValue), "fuse_reply_err")
  }

  /// Answers a request whose handler returned without replying.
  func unanswered(_ kind: StaticString) {
    logger.warning("handler returned without answering a \(kind); answering EIO")
    if record(.unanswered) { return }
    check(fuse_reply_err(request, Errno.ioError.rawValue), "fuse_reply_err")
  }

  /// Judges the result of a `fuse_reply_*` call.
  ///
  /// `EBADF` and `EFAULT` mean the process itself is broken (a closed `/dev/fuse`, a bad
  /// pointer) and trap, as NIO does for "unacceptable" errnos. `ENOENT` is the kernel
  /// dropping the reply to an interrupted request, which is normal. Anything else, such
  /// as `EINVAL` for a reply larger than the request allowed, is logged.
  func check(_ result: Int32, _ call: StaticString) {
    guard result != 0 else { return }
    let errno = Errno(rawValue: -result)
    switch errno {
    case .badFileDescriptor, .badAddress:
      preconditionFailure("\(call) failed with an unacceptable error: \(errno)")
    case .noSuchFileOrDirectory:
      logger.debug("\(call): the request was interrupted; the kernel dropped the reply")
    default:
      logger.error("\(call) failed: \(errno)")
    }
  }
}

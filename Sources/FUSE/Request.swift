import CFuse
import Glibc

/// The client side of one FUSE request: who asked.
///
/// The corresponding C type is `fuse_req_t`, and the identity comes from `fuse_req_ctx`.
/// The identity is that of the thread that made the system call; under
/// `-o default_permissions` the kernel has already checked permissions against it.
/// A `Request` is valid until its reply is sent.
public struct Request: @unchecked Sendable {
  /// The libfuse request, or `nil` for a request made up by a test.
  let raw: fuse_req_t?

  /// The caller's effective user ID (`fuse_ctx.uid`).
  public let uid: uid_t
  /// The caller's effective group ID (`fuse_ctx.gid`).
  public let gid: gid_t
  /// The caller's thread ID (`fuse_ctx.pid`); `0` for requests the kernel makes itself.
  public let pid: pid_t
  /// The caller's umask (`fuse_ctx.umask`).
  public let umask: mode_t

  init(_ raw: fuse_req_t) {
    self.raw = raw
    let ctx = fuse_req_ctx(raw).pointee
    self.uid = ctx.uid
    self.gid = ctx.gid
    self.pid = ctx.pid
    self.umask = ctx.umask
  }

  /// Creates a request with no kernel behind it, for handler tests.
  public init(uid: uid_t = 0, gid: gid_t = 0, pid: pid_t = 0, umask: mode_t = 0o022) {
    self.raw = nil
    self.uid = uid
    self.gid = gid
    self.pid = pid
    self.umask = umask
  }

  /// Whether the client gave up on this request (a signal interrupted its system call).
  ///
  /// The corresponding C function is `fuse_req_interrupted`. A long handler may check it
  /// and answer ``SystemPackage/Errno/interrupted``; a reply to an interrupted request is
  /// simply dropped by the kernel.
  public var isInterrupted: Bool {
    guard let raw else { return false }
    return fuse_req_interrupted(raw) != 0
  }
}

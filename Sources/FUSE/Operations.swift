import CFuse
import Logging

/// What every trampoline needs, reached through `fuse_req_userdata(req)`.
///
/// One context is retained per session (`Unmanaged.passRetained`), handed to
/// `fuse_session_new` as userdata, and released after `fuse_session_destroy`.
final class SessionContext: Sendable {
  let fileSystem: any FileSystem
  let logger: Logger
  /// The `-o max_read=N` mount option, mirrored into `conn->max_read` before `init`.
  let mountMaxRead: UInt32?

  init(fileSystem: any FileSystem, logger: Logger, mountMaxRead: UInt32?) {
    self.fileSystem = fileSystem
    self.logger = logger
    self.mountMaxRead = mountMaxRead
  }

  static func of(userdata: UnsafeMutableRawPointer) -> SessionContext {
    Unmanaged<SessionContext>.fromOpaque(userdata).takeUnretainedValue()
  }

  static func of(_ request: fuse_req_t) -> SessionContext {
    guard let userdata = fuse_req_userdata(request) else {
      preconditionFailure("FUSE request without session userdata")
    }
    return of(userdata: userdata)
  }
}

/// Builds the libfuse operation table whose C callbacks forward to the session's ``FileSystem``.
///
/// This is an ordinary function in a non-main file on purpose: closures written in
/// `main.swift` top-level code are inferred `@MainActor`, and Swift 6 inserts isolation
/// checks that trap (SIGILL) when libfuse calls them on its worker threads. The closures
/// capture nothing (C function pointers cannot); state comes from `fuse_req_userdata`.
/// libfuse copies the table, so returning it by value is fine.
func makeOperations() -> fuse_lowlevel_ops {
  var ops = fuse_lowlevel_ops()

  ops.`init` = { userdata, conn in
    guard let userdata, let conn else { return }
    let context = SessionContext.of(userdata: userdata)
    // libfuse aborts INIT unless conn->max_read equals the max_read mount option, so
    // the option is mirrored before the file system sees the connection.
    conn.pointee.max_read = context.mountMaxRead ?? 0
    context.fileSystem.initialize(connection: Connection(conn))
    let wanted = context.mountMaxRead ?? 0
    if conn.pointee.max_read != wanted {
      context.logger.error(
        """
        initialize(connection:) set maxRead to \(conn.pointee.max_read) but the mount option \
        max_read is \(wanted); libfuse will refuse the connection. Pass -o max_read=N instead.
        """)
    }
    context.logger.debug(
      """
      FUSE connection \(conn.pointee.proto_major).\(conn.pointee.proto_minor): \
      max_read \(conn.pointee.max_read), max_readahead \(conn.pointee.max_readahead), \
      want 0x\(String(conn.pointee.want, radix: 16))
      """
    )
  }

  ops.destroy = { userdata in
    guard let userdata else { return }
    SessionContext.of(userdata: userdata).fileSystem.destroy()
  }

  ops.lookup = { req, parent, name in
    guard let req else { return }
    let context = SessionContext.of(req)
    let name = name.map { String(cString: $0) } ?? ""
    context.fileSystem.lookup(
      Request(req), parent: INode(parent), name: name, reply: ReplyEntry(ReplyTarget(req)))
  }

  ops.forget = { req, ino, nlookup in
    guard let req else { return }
    SessionContext.of(req).fileSystem.forget(Request(req), inode: INode(ino), lookups: nlookup)
    // FORGET has no answer, but libfuse must still be told the request is done.
    fuse_reply_none(req)
  }

  ops.getattr = { req, ino, fi in
    guard let req else { return }
    SessionContext.of(req).fileSystem.getattr(
      Request(req), inode: INode(ino), handle: fi.map { FileHandle($0.pointee.fh) },
      reply: ReplyAttr(ReplyTarget(req)))
  }

  ops.open = { req, ino, fi in
    guard let req else { return }
    SessionContext.of(req).fileSystem.open(
      Request(req), inode: INode(ino), flags: OpenFlags(rawValue: fi?.pointee.flags ?? 0),
      reply: ReplyOpen(ReplyTarget(req), fileInfo: fi?.pointee ?? fuse_file_info()))
  }

  ops.read = { req, ino, size, offset, fi in
    guard let req else { return }
    SessionContext.of(req).fileSystem.read(
      Request(req), inode: INode(ino), handle: FileHandle(fi?.pointee.fh ?? 0),
      offset: Int64(offset), size: size, reply: ReplyData(ReplyTarget(req), size: size))
  }

  ops.release = { req, ino, fi in
    guard let req else { return }
    SessionContext.of(req).fileSystem.release(
      Request(req), inode: INode(ino), handle: FileHandle(fi?.pointee.fh ?? 0),
      flags: OpenFlags(rawValue: fi?.pointee.flags ?? 0), reply: ReplyEmpty(ReplyTarget(req)))
  }

  ops.opendir = { req, ino, fi in
    guard let req else { return }
    SessionContext.of(req).fileSystem.opendir(
      Request(req), inode: INode(ino), flags: OpenFlags(rawValue: fi?.pointee.flags ?? 0),
      reply: ReplyOpen(ReplyTarget(req), fileInfo: fi?.pointee ?? fuse_file_info()))
  }

  ops.readdir = { req, ino, size, offset, fi in
    guard let req else { return }
    let context = SessionContext.of(req)
    let reply = ReplyDirectory(ReplyTarget(req), size: size)
    context.fileSystem.readdir(
      Request(req), inode: INode(ino), handle: FileHandle(fi?.pointee.fh ?? 0),
      offset: Int64(offset), reply: reply)
  }

  ops.releasedir = { req, ino, fi in
    guard let req else { return }
    SessionContext.of(req).fileSystem.releasedir(
      Request(req), inode: INode(ino), handle: FileHandle(fi?.pointee.fh ?? 0),
      reply: ReplyEmpty(ReplyTarget(req)))
  }

  ops.statfs = { req, ino in
    guard let req else { return }
    SessionContext.of(req).fileSystem.statfs(
      Request(req), inode: INode(ino), reply: ReplyStatFS(ReplyTarget(req)))
  }

  ops.getxattr = { req, ino, name, size in
    guard let req else { return }
    let name = name.map { String(cString: $0) } ?? ""
    SessionContext.of(req).fileSystem.getxattr(
      Request(req), inode: INode(ino), name: name, size: size,
      reply: ReplyXattr(ReplyTarget(req), size: size))
  }

  ops.listxattr = { req, ino, size in
    guard let req else { return }
    SessionContext.of(req).fileSystem.listxattr(
      Request(req), inode: INode(ino), size: size, reply: ReplyXattr(ReplyTarget(req), size: size))
  }

  ops.lseek = { req, ino, offset, whence, fi in
    guard let req else { return }
    SessionContext.of(req).fileSystem.lseek(
      Request(req), inode: INode(ino), handle: FileHandle(fi?.pointee.fh ?? 0),
      offset: Int64(offset), whence: SeekWhence(rawValue: whence),
      reply: ReplyLseek(ReplyTarget(req)))
  }

  ops.access = { req, ino, mask in
    guard let req else { return }
    SessionContext.of(req).fileSystem.access(
      Request(req), inode: INode(ino), mask: AccessMask(rawValue: mask),
      reply: ReplyEmpty(ReplyTarget(req)))
  }

  return ops
}

import SystemPackage

/// A file system served over FUSE: one method per low-level operation.
///
/// The methods are named after the fields of `struct fuse_lowlevel_ops`. Every method is
/// a protocol requirement with a default in an extension: a conformer implements what it
/// supports, and the rest answer `ENOSYS`, which the kernel remembers for `open`,
/// `opendir`, `getxattr`, `listxattr`, `lseek` and `access` (it stops asking and uses
/// its generic behaviour). Declaring them as requirements matters: a method that existed
/// only in an extension would be dispatched statically and would shadow the conformer's.
///
/// Handlers run on libfuse's worker threads, several at once, hence `Sendable`. Each
/// handler must answer its reply exactly once, before or after it returns; see
/// <doc:FUSE> for caching, lookup counts and threading.
public protocol FileSystem: AnyObject, Sendable {
  /// Negotiates connection parameters before the first request (`init`).
  ///
  /// Set ``Connection/maxRead``, ``Connection/maxReadahead`` and capabilities such as
  /// ``Capabilities/spliceWrite`` here. The default keeps libfuse's defaults.
  func initialize(connection: Connection)

  /// Cleans up when the session ends (`destroy`); no request follows.
  func destroy()

  /// Looks up a name in a directory (`lookup`).
  ///
  /// Answer with ``ReplyEntry/entry(_:)`` (the inode's lookup count grows by one),
  /// ``ReplyEntry/negative(timeout:)`` to let the kernel cache the absence, or an error.
  func lookup(_ request: Request, parent: INode, name: String, reply: consuming ReplyEntry)

  /// Drops `lookups` references the kernel held on an inode (`forget`); no reply.
  ///
  /// When an inode's count reaches zero the kernel has forgotten it and will look it up
  /// again before using it. The root's count is never forgotten.
  func forget(_ request: Request, inode: INode, lookups: UInt64)

  /// Reports an inode's attributes for `stat(2)` (`getattr`).
  ///
  /// `handle` is the open file's handle when the client called `fstat(2)`.
  func getattr(_ request: Request, inode: INode, handle: FileHandle?, reply: consuming ReplyAttr)

  /// Opens a file (`open`).
  ///
  /// A read-only file system answers opens for writing with
  /// ``SystemPackage/Errno/readOnlyFileSystem`` (the kernel does it alone under `-o ro`).
  func open(_ request: Request, inode: INode, flags: OpenFlags, reply: consuming ReplyOpen)

  /// Reads up to `size` bytes at `offset` of an open file (`read`).
  ///
  /// Fewer bytes mean end of file. With the page cache the kernel sends readahead-sized
  /// requests; with ``OpenOptions/directIO``, the client's own sizes (at most 1 MiB).
  func read(
    _ request: Request, inode: INode, handle: FileHandle, offset: Int64, size: Int,
    reply: consuming ReplyData)

  /// Closes an open file after its last descriptor is gone (`release`); errors are ignored.
  func release(
    _ request: Request, inode: INode, handle: FileHandle, flags: OpenFlags,
    reply: consuming ReplyEmpty)

  /// Opens a directory (`opendir`).
  func opendir(_ request: Request, inode: INode, flags: OpenFlags, reply: consuming ReplyOpen)

  /// Lists directory entries from `offset` on (`readdir`).
  ///
  /// `offset` is `0` or a `nextOffset` this file system gave an earlier entry. Entries
  /// include "." and ".." if the file system wants `readdir(3)` to show them.
  func readdir(
    _ request: Request, inode: INode, handle: FileHandle, offset: Int64,
    reply: consuming ReplyDirectory)

  /// Closes an open directory (`releasedir`).
  func releasedir(_ request: Request, inode: INode, handle: FileHandle, reply: consuming ReplyEmpty)

  /// Reports file system statistics for `statfs(2)` and `df` (`statfs`).
  func statfs(_ request: Request, inode: INode, reply: consuming ReplyStatFS)

  /// Reads an extended attribute (`getxattr`); `size` `0` asks for its length.
  func getxattr(
    _ request: Request, inode: INode, name: String, size: Int, reply: consuming ReplyXattr)

  /// Lists extended attribute names (`listxattr`); `size` `0` asks for the list's length.
  func listxattr(_ request: Request, inode: INode, size: Int, reply: consuming ReplyXattr)

  /// Lets clients inquire allocation status with `SEEK_DATA` and `SEEK_HOLE` (`lseek`).
  ///
  /// The kernel handles `SEEK_SET`, `SEEK_CUR` and `SEEK_END` itself. Answering `ENOSYS`
  /// makes it treat the whole file as data from then on.
  func lseek(
    _ request: Request, inode: INode, handle: FileHandle, offset: Int64, whence: SeekWhence,
    reply: consuming ReplyLseek)

  /// Checks permissions for `access(2)` (`access`); unused under `-o default_permissions`.
  func access(_ request: Request, inode: INode, mask: AccessMask, reply: consuming ReplyEmpty)
}

extension FileSystem {
  /// Keeps libfuse's connection defaults.
  public func initialize(connection: Connection) {}

  /// Does nothing.
  public func destroy() {}

  /// Answers `ENOSYS`.
  public func lookup(_ request: Request, parent: INode, name: String, reply: consuming ReplyEntry) {
    reply.error(.noFunction)
  }

  /// Does nothing: a file system without lookup counts has nothing to release.
  public func forget(_ request: Request, inode: INode, lookups: UInt64) {}

  /// Answers `ENOSYS`.
  public func getattr(
    _ request: Request, inode: INode, handle: FileHandle?, reply: consuming ReplyAttr
  ) {
    reply.error(.noFunction)
  }

  /// Answers `ENOSYS`; the kernel then opens without asking again.
  public func open(_ request: Request, inode: INode, flags: OpenFlags, reply: consuming ReplyOpen) {
    reply.error(.noFunction)
  }

  /// Answers `ENOSYS`.
  public func read(
    _ request: Request, inode: INode, handle: FileHandle, offset: Int64, size: Int,
    reply: consuming ReplyData
  ) {
    reply.error(.noFunction)
  }

  /// Answers `ENOSYS` (the kernel ignores errors from `release`).
  public func release(
    _ request: Request, inode: INode, handle: FileHandle, flags: OpenFlags,
    reply: consuming ReplyEmpty
  ) {
    reply.error(.noFunction)
  }

  /// Answers `ENOSYS`; the kernel then opens directories without asking again.
  public func opendir(
    _ request: Request, inode: INode, flags: OpenFlags, reply: consuming ReplyOpen
  ) {
    reply.error(.noFunction)
  }

  /// Answers `ENOSYS`.
  public func readdir(
    _ request: Request, inode: INode, handle: FileHandle, offset: Int64,
    reply: consuming ReplyDirectory
  ) {
    reply.error(.noFunction)
  }

  /// Answers `ENOSYS` (the kernel ignores errors from `releasedir`).
  public func releasedir(
    _ request: Request, inode: INode, handle: FileHandle, reply: consuming ReplyEmpty
  ) {
    reply.error(.noFunction)
  }

  /// Answers `ENOSYS`.
  public func statfs(_ request: Request, inode: INode, reply: consuming ReplyStatFS) {
    reply.error(.noFunction)
  }

  /// Answers `ENOSYS`; the kernel then reports `EOPNOTSUPP` without asking again.
  public func getxattr(
    _ request: Request, inode: INode, name: String, size: Int, reply: consuming ReplyXattr
  ) {
    reply.error(.noFunction)
  }

  /// Answers `ENOSYS`; the kernel then reports `EOPNOTSUPP` without asking again.
  public func listxattr(_ request: Request, inode: INode, size: Int, reply: consuming ReplyXattr) {
    reply.error(.noFunction)
  }

  /// Answers `ENOSYS`; the kernel then treats every file as all data.
  public func lseek(
    _ request: Request, inode: INode, handle: FileHandle, offset: Int64, whence: SeekWhence,
    reply: consuming ReplyLseek
  ) {
    reply.error(.noFunction)
  }

  /// Answers `ENOSYS`; the kernel then grants every `access(2)` without asking again.
  public func access(
    _ request: Request, inode: INode, mask: AccessMask, reply: consuming ReplyEmpty
  ) {
    reply.error(.noFunction)
  }
}

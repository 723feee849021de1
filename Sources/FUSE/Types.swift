import CFuse
import Glibc
import SystemPackage

/// A FUSE inode number.
///
/// The corresponding C type is `fuse_ino_t`. Inode numbers are the file system's own:
/// the kernel echoes back whatever a positive ``ReplyEntry`` handed it, and `0` means
/// "no inode" (a negative lookup).
public struct INode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
  /// The raw inode number.
  public var rawValue: UInt64

  /// Creates an inode number from its raw value.
  public init(rawValue: UInt64) { self.rawValue = rawValue }

  /// Creates an inode number from its raw value.
  public init(_ rawValue: UInt64) { self.rawValue = rawValue }

  /// The root directory of the mount.
  ///
  /// The corresponding C constant is `FUSE_ROOT_ID`.
  public static var root: INode { INode(rawValue: UInt64(FUSE_ROOT_ID)) }

  /// A printable form, for logs.
  public var description: String { "inode \(rawValue)" }
}

/// A file handle chosen by the file system when it opens a file or a directory.
///
/// The corresponding C field is `fuse_file_info.fh`. The kernel stores the value and
/// passes it back on every `read`, `readdir`, `lseek` and `release` of that open file.
public struct FileHandle: RawRepresentable, Hashable, Sendable {
  /// The raw handle value.
  public var rawValue: UInt64

  /// Creates a file handle from its raw value.
  public init(rawValue: UInt64) { self.rawValue = rawValue }

  /// Creates a file handle from its raw value.
  public init(_ rawValue: UInt64) { self.rawValue = rawValue }

  /// The handle of a file system that keeps no per-open state.
  public static var none: FileHandle { FileHandle(rawValue: 0) }
}

/// The flags a client passed to `open(2)`.
///
/// The corresponding C field is `fuse_file_info.flags`. `O_CREAT`, `O_EXCL` and
/// `O_NOCTTY` are handled by the kernel and never appear here.
public struct OpenFlags: OptionSet, Hashable, Sendable {
  /// The raw `open(2)` flags, access mode included.
  public var rawValue: Int32

  /// Creates open flags from their raw value.
  public init(rawValue: Int32) { self.rawValue = rawValue }

  /// Writes go to the end of the file. The corresponding C constant is `O_APPEND`.
  public static var append: OpenFlags { OpenFlags(rawValue: O_APPEND) }
  /// The file is to be truncated. The corresponding C constant is `O_TRUNC`.
  public static var truncate: OpenFlags { OpenFlags(rawValue: O_TRUNC) }
  /// The client does not block. The corresponding C constant is `O_NONBLOCK`.
  public static var nonBlocking: OpenFlags { OpenFlags(rawValue: O_NONBLOCK) }
  /// Writes are synchronous. The corresponding C constant is `O_SYNC`.
  public static var sync: OpenFlags { OpenFlags(rawValue: O_SYNC) }

  /// The access mode (`O_RDONLY`, `O_WRONLY` or `O_RDWR`).
  ///
  /// The corresponding C expression is `flags & O_ACCMODE`.
  public var accessMode: FileDescriptor.AccessMode {
    FileDescriptor.AccessMode(rawValue: rawValue & O_ACCMODE)
  }

  /// Whether the client asked to write, through the access mode or `O_TRUNC`.
  ///
  /// A read-only file system answers such opens with ``SystemPackage/Errno/readOnlyFileSystem``.
  public var requestsWriting: Bool {
    accessMode != .readOnly || contains(.truncate)
  }
}

/// The attributes of one inode, as `stat(2)` reports them.
///
/// The corresponding C type is `struct stat`. Fields the kernel ignores (`st_dev`,
/// `st_rdev` of regular files) are left zero.
public struct FileAttributes: Hashable, Sendable {
  /// The inode number (`st_ino`).
  public var inode: INode
  /// The type and permissions (`st_mode`), as SystemPackage's `FileMode`.
  public var mode: FileMode
  /// The number of hard links (`st_nlink`).
  public var linkCount: UInt32
  /// The owner (`st_uid`).
  public var uid: uid_t
  /// The group (`st_gid`).
  public var gid: gid_t
  /// The size in bytes (`st_size`).
  public var size: Int64
  /// The allocated space in 512-byte units (`st_blocks`).
  ///
  /// Report the real allocation of sparse files: `cp` only looks for holes with
  /// `SEEK_DATA` when `st_blocks < st_size / 512`.
  public var blocks: Int64
  /// The preferred I/O size (`st_blksize`).
  public var blockSize: Int32
  /// The last access time (`st_atim`).
  public var accessTime: FileTime
  /// The last modification time (`st_mtim`).
  public var modificationTime: FileTime
  /// The last status change time (`st_ctim`).
  public var changeTime: FileTime

  /// Creates file attributes; the times default to the epoch.
  public init(
    inode: INode, mode: FileMode, linkCount: UInt32 = 1, uid: uid_t = 0, gid: gid_t = 0,
    size: Int64 = 0, blocks: Int64 = 0, blockSize: Int32 = 4096,
    accessTime: FileTime = .epoch, modificationTime: FileTime = .epoch,
    changeTime: FileTime = .epoch
  ) {
    self.inode = inode
    self.mode = mode
    self.linkCount = linkCount
    self.uid = uid
    self.gid = gid
    self.size = size
    self.blocks = blocks
    self.blockSize = blockSize
    self.accessTime = accessTime
    self.modificationTime = modificationTime
    self.changeTime = changeTime
  }

  /// The C `struct stat` the kernel receives.
  public var stat: Glibc.stat {
    var st = Glibc.stat()
    st.st_ino = .init(inode.rawValue)
    st.st_mode = mode.rawValue
    st.st_nlink = .init(linkCount)
    st.st_uid = uid
    st.st_gid = gid
    st.st_size = .init(size)
    st.st_blocks = .init(blocks)
    st.st_blksize = .init(blockSize)
    st.st_atim = accessTime.timespec
    st.st_mtim = modificationTime.timespec
    st.st_ctim = changeTime.timespec
    return st
  }
}

/// A point in time with nanosecond resolution, as `struct timespec` carries it.
public struct FileTime: Hashable, Sendable, Comparable {
  /// Whole seconds since the Unix epoch (`tv_sec`).
  public var seconds: Int64
  /// Nanoseconds within the second, `0..<1_000_000_000` (`tv_nsec`).
  public var nanoseconds: Int32

  /// Creates a time from seconds and nanoseconds since the epoch.
  public init(seconds: Int64, nanoseconds: Int32 = 0) {
    self.seconds = seconds
    self.nanoseconds = nanoseconds
  }

  /// Creates a time from a C `timespec`.
  public init(_ ts: timespec) {
    self.init(seconds: Int64(ts.tv_sec), nanoseconds: Int32(ts.tv_nsec))
  }

  /// 1970-01-01T00:00:00Z.
  public static var epoch: FileTime { FileTime(seconds: 0) }

  /// The current wall-clock time (`clock_gettime(CLOCK_REALTIME)`).
  public static var now: FileTime {
    var ts = Glibc.timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return FileTime(ts)
  }

  /// The C `timespec`.
  public var timespec: Glibc.timespec {
    Glibc.timespec(tv_sec: .init(seconds), tv_nsec: .init(nanoseconds))
  }

  /// Orders times chronologically.
  public static func < (lhs: FileTime, rhs: FileTime) -> Bool {
    (lhs.seconds, lhs.nanoseconds) < (rhs.seconds, rhs.nanoseconds)
  }
}

/// What a successful lookup tells the kernel.
///
/// The corresponding C type is `struct fuse_entry_param`. Each positive entry adds one to
/// the kernel's lookup count of ``attributes``' inode, which
/// ``FileSystem/forget(_:inode:lookups:)`` later takes back.
public struct EntryParameters: Hashable, Sendable {
  /// The attributes of the inode found; its `inode` must not be `0`.
  public var attributes: FileAttributes
  /// Distinguishes reuses of one inode number (`generation`); `0` if numbers are never reused.
  public var generation: UInt64
  /// How long the kernel may cache ``attributes`` (`attr_timeout`).
  public var attributeTimeout: Duration
  /// How long the kernel may cache the name-to-inode binding (`entry_timeout`).
  public var entryTimeout: Duration

  /// Creates entry parameters.
  public init(
    attributes: FileAttributes, generation: UInt64 = 0,
    attributeTimeout: Duration, entryTimeout: Duration
  ) {
    self.attributes = attributes
    self.generation = generation
    self.attributeTimeout = attributeTimeout
    self.entryTimeout = entryTimeout
  }

  var cValue: fuse_entry_param {
    var e = fuse_entry_param()
    e.ino = attributes.inode.rawValue
    e.generation = generation
    e.attr = attributes.stat
    e.attr_timeout = attributeTimeout.fuseSeconds
    e.entry_timeout = entryTimeout.fuseSeconds
    return e
  }
}

/// File system statistics, as `statvfs(3)` reports them.
///
/// The corresponding C type is `struct statvfs`.
public struct StatFSInfo: Hashable, Sendable {
  /// The file system block size (`f_bsize`).
  public var blockSize: UInt64
  /// The fragment size, the unit of the block counts (`f_frsize`).
  public var fragmentSize: UInt64
  /// The size of the file system in fragments (`f_blocks`).
  public var blocks: UInt64
  /// Free fragments (`f_bfree`).
  public var freeBlocks: UInt64
  /// Free fragments for unprivileged users (`f_bavail`).
  public var availableBlocks: UInt64
  /// The number of inodes (`f_files`).
  public var files: UInt64
  /// Free inodes (`f_ffree`).
  public var freeFiles: UInt64
  /// Free inodes for unprivileged users (`f_favail`).
  public var availableFiles: UInt64
  /// The longest file name (`f_namemax`).
  public var maximumNameLength: UInt64

  /// Creates file system statistics; a read-only file system reports no free space.
  public init(
    blockSize: UInt64 = 4096, fragmentSize: UInt64? = nil, blocks: UInt64 = 0,
    freeBlocks: UInt64 = 0, availableBlocks: UInt64 = 0, files: UInt64 = 0,
    freeFiles: UInt64 = 0, availableFiles: UInt64 = 0, maximumNameLength: UInt64 = 255
  ) {
    self.blockSize = blockSize
    self.fragmentSize = fragmentSize ?? blockSize
    self.blocks = blocks
    self.freeBlocks = freeBlocks
    self.availableBlocks = availableBlocks
    self.files = files
    self.freeFiles = freeFiles
    self.availableFiles = availableFiles
    self.maximumNameLength = maximumNameLength
  }

  var cValue: statvfs {
    var s = statvfs()
    s.f_bsize = .init(blockSize)
    s.f_frsize = .init(fragmentSize)
    s.f_blocks = .init(blocks)
    s.f_bfree = .init(freeBlocks)
    s.f_bavail = .init(availableBlocks)
    s.f_files = .init(files)
    s.f_ffree = .init(freeFiles)
    s.f_favail = .init(availableFiles)
    s.f_namemax = .init(maximumNameLength)
    return s
  }
}

/// Where an `lseek(2)` offset is measured from.
///
/// The corresponding C parameter is `whence`. SystemPackage's `SeekOrigin` lacks
/// `SEEK_DATA` and `SEEK_HOLE` on Linux, hence this type.
public struct SeekWhence: RawRepresentable, Hashable, Sendable {
  /// The raw `whence` value.
  public var rawValue: Int32

  /// Creates a seek origin from its raw value.
  public init(rawValue: Int32) { self.rawValue = rawValue }

  /// From the start of the file. The corresponding C constant is `SEEK_SET`.
  public static var start: SeekWhence { SeekWhence(rawValue: SEEK_SET) }
  /// From the current offset. The corresponding C constant is `SEEK_CUR`.
  public static var current: SeekWhence { SeekWhence(rawValue: SEEK_CUR) }
  /// From the end of the file. The corresponding C constant is `SEEK_END`.
  public static var end: SeekWhence { SeekWhence(rawValue: SEEK_END) }
  /// To the next data at or after the offset. The corresponding C constant is `SEEK_DATA`.
  public static var nextData: SeekWhence { SeekWhence(rawValue: 3) }
  /// To the next hole at or after the offset. The corresponding C constant is `SEEK_HOLE`.
  public static var nextHole: SeekWhence { SeekWhence(rawValue: 4) }
}

/// The permissions an `access(2)` call checks.
///
/// The corresponding C parameter is `mask`; the empty set is `F_OK` (existence only).
public struct AccessMask: OptionSet, Hashable, Sendable {
  /// The raw mask.
  public var rawValue: Int32

  /// Creates an access mask from its raw value.
  public init(rawValue: Int32) { self.rawValue = rawValue }

  /// Read permission. The corresponding C constant is `R_OK`.
  public static var read: AccessMask { AccessMask(rawValue: R_OK) }
  /// Write permission. The corresponding C constant is `W_OK`.
  public static var write: AccessMask { AccessMask(rawValue: W_OK) }
  /// Execute or search permission. The corresponding C constant is `X_OK`.
  public static var execute: AccessMask { AccessMask(rawValue: X_OK) }
}

/// Options the file system sets when it answers an `open` or `opendir`.
///
/// The corresponding C fields are the `fuse_file_info` bitfields.
public struct OpenOptions: OptionSet, Hashable, Sendable {
  /// The raw option bits (this module's own numbering, not a C value).
  public var rawValue: UInt32

  /// Creates open options from their raw value.
  public init(rawValue: UInt32) { self.rawValue = rawValue }

  /// Bypass the page cache: every `read(2)` becomes one READ of exactly its size (`direct_io`).
  public static var directIO: OpenOptions { OpenOptions(rawValue: 1 << 0) }
  /// Keep cached pages from an earlier open of the file (`keep_cache`).
  public static var keepCache: OpenOptions { OpenOptions(rawValue: 1 << 1) }
  /// The file is a stream: the kernel will not send offsets (`nonseekable`).
  public static var nonSeekable: OpenOptions { OpenOptions(rawValue: 1 << 2) }
  /// Let the kernel cache directory entries (`cache_readdir`, `opendir` only).
  public static var cacheDirectory: OpenOptions { OpenOptions(rawValue: 1 << 3) }
  /// No FLUSH request on `close(2)` (`noflush`).
  public static var noFlush: OpenOptions { OpenOptions(rawValue: 1 << 4) }

  func apply(to fi: inout fuse_file_info) {
    if contains(.directIO) { fi.direct_io = 1 }
    if contains(.keepCache) { fi.keep_cache = 1 }
    if contains(.nonSeekable) { fi.nonseekable = 1 }
    if contains(.cacheDirectory) { fi.cache_readdir = 1 }
    if contains(.noFlush) { fi.noflush = 1 }
  }
}

extension Duration {
  /// The duration in seconds as the `double` timeouts of libfuse want it.
  var fuseSeconds: Double {
    let (seconds, attoseconds) = components
    return Double(seconds) + Double(attoseconds) * 1e-18
  }
}

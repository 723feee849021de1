import CFuse

/// The connection parameters negotiated with the kernel at mount time.
///
/// The corresponding C type is `struct fuse_conn_info`. A `Connection` is handed to
/// ``FileSystem/initialize(connection:)`` and is valid only during that call: set what
/// the file system wants there and keep nothing.
public struct Connection {
  let raw: UnsafeMutablePointer<fuse_conn_info>

  init(_ raw: UnsafeMutablePointer<fuse_conn_info>) { self.raw = raw }

  /// The FUSE protocol version the kernel speaks, such as `(7, 38)`.
  public var protocolVersion: (major: UInt32, minor: UInt32) {
    (raw.pointee.proto_major, raw.pointee.proto_minor)
  }

  /// The largest READ request, in bytes (`max_read`).
  ///
  /// Preset to the mount option `-o max_read=N` when one was given: libfuse aborts the
  /// session at INIT unless the two agree ("init() and fuse_session_new() requested
  /// different maximum read size"). Changing it here without the mount option fails
  /// the same way.
  public var maxRead: UInt32 {
    get { raw.pointee.max_read }
    nonmutating set { raw.pointee.max_read = newValue }
  }

  /// The largest readahead, in bytes (`max_readahead`).
  ///
  /// Starts at what the kernel offers (128 KiB): it can only be lowered here. Raising
  /// readahead needs `/sys/class/bdi/<dev>/read_ahead_kb` after mounting.
  public var maxReadahead: UInt32 {
    get { raw.pointee.max_readahead }
    nonmutating set { raw.pointee.max_readahead = newValue }
  }

  /// The largest WRITE request, in bytes (`max_write`).
  public var maxWrite: UInt32 {
    get { raw.pointee.max_write }
    nonmutating set { raw.pointee.max_write = newValue }
  }

  /// The timestamp granularity in nanoseconds, `0` or `1` for nanosecond precision (`time_gran`).
  public var timeGranularity: UInt32 {
    get { raw.pointee.time_gran }
    nonmutating set { raw.pointee.time_gran = newValue }
  }

  /// What the kernel and libfuse support (`capable`).
  public var capable: Capabilities { Capabilities(rawValue: raw.pointee.capable) }

  /// What the file system asks for (`want`); libfuse has already set some defaults.
  ///
  /// Asking for a capability that is not in ``capable`` aborts the session at INIT;
  /// prefer ``enable(_:)``.
  public var want: Capabilities {
    get { Capabilities(rawValue: raw.pointee.want) }
    nonmutating set { raw.pointee.want = newValue.rawValue }
  }

  /// Asks for the capabilities that are supported, and reports whether all of them were.
  @discardableResult
  public func enable(_ capabilities: Capabilities) -> Bool {
    let granted = capabilities.intersection(capable)
    want.formUnion(granted)
    return granted == capabilities
  }

  /// Stops asking for capabilities.
  public func disable(_ capabilities: Capabilities) {
    want.subtract(capabilities)
  }
}

/// Optional protocol features negotiated at INIT.
///
/// The corresponding C constants are the `FUSE_CAP_*` macros.
public struct Capabilities: OptionSet, Hashable, Sendable {
  /// The raw `FUSE_CAP_*` bits.
  public var rawValue: UInt32

  /// Creates capabilities from their raw bits.
  public init(rawValue: UInt32) { self.rawValue = rawValue }

  /// Several READs of one file may be in flight at once (`FUSE_CAP_ASYNC_READ`).
  public static var asyncRead: Capabilities { .init(rawValue: UInt32(FUSE_CAP_ASYNC_READ)) }
  /// Lookups of "." and ".." for NFS export (`FUSE_CAP_EXPORT_SUPPORT`).
  public static var exportSupport: Capabilities { .init(rawValue: UInt32(FUSE_CAP_EXPORT_SUPPORT)) }
  /// Replies may be spliced from a file descriptor into `/dev/fuse` (`FUSE_CAP_SPLICE_WRITE`).
  ///
  /// libfuse 3.14 does not ask for it by default: without it ``ReplyData/segments(_:)``
  /// with file segments silently reads into a fresh buffer per request.
  public static var spliceWrite: Capabilities { .init(rawValue: UInt32(FUSE_CAP_SPLICE_WRITE)) }
  /// Spliced pages may be moved rather than copied (`FUSE_CAP_SPLICE_MOVE`).
  public static var spliceMove: Capabilities { .init(rawValue: UInt32(FUSE_CAP_SPLICE_MOVE)) }
  /// Requests are spliced from `/dev/fuse` (`FUSE_CAP_SPLICE_READ`).
  public static var spliceRead: Capabilities { .init(rawValue: UInt32(FUSE_CAP_SPLICE_READ)) }
  /// The kernel drops cached pages when `mtime` or size change (`FUSE_CAP_AUTO_INVAL_DATA`).
  public static var autoInvalidateData: Capabilities {
    .init(rawValue: UInt32(FUSE_CAP_AUTO_INVAL_DATA))
  }
  /// The kernel may send READDIRPLUS (`FUSE_CAP_READDIRPLUS`); there is no handler for it here.
  public static var readdirPlus: Capabilities { .init(rawValue: UInt32(FUSE_CAP_READDIRPLUS)) }
  /// The kernel chooses between READDIR and READDIRPLUS (`FUSE_CAP_READDIRPLUS_AUTO`).
  public static var readdirPlusAuto: Capabilities {
    .init(rawValue: UInt32(FUSE_CAP_READDIRPLUS_AUTO))
  }
  /// Asynchronous direct I/O (`FUSE_CAP_ASYNC_DIO`).
  public static var asyncDirectIO: Capabilities { .init(rawValue: UInt32(FUSE_CAP_ASYNC_DIO)) }
  /// Lookups and readdirs in one directory may run in parallel (`FUSE_CAP_PARALLEL_DIROPS`).
  public static var parallelDirectoryOperations: Capabilities {
    .init(rawValue: UInt32(FUSE_CAP_PARALLEL_DIROPS))
  }
  /// An ENOSYS answer to `open` means "opens always succeed" (`FUSE_CAP_NO_OPEN_SUPPORT`).
  public static var noOpenSupport: Capabilities {
    .init(rawValue: UInt32(FUSE_CAP_NO_OPEN_SUPPORT))
  }
  /// An ENOSYS answer to `opendir` means "opendirs always succeed" (`FUSE_CAP_NO_OPENDIR_SUPPORT`).
  public static var noOpendirSupport: Capabilities {
    .init(rawValue: UInt32(FUSE_CAP_NO_OPENDIR_SUPPORT))
  }
  /// The kernel caches symlink targets (`FUSE_CAP_CACHE_SYMLINKS`).
  public static var cacheSymlinks: Capabilities { .init(rawValue: UInt32(FUSE_CAP_CACHE_SYMLINKS)) }
  /// Cached data is dropped only on explicit invalidation (`FUSE_CAP_EXPLICIT_INVAL_DATA`).
  public static var explicitInvalidateData: Capabilities {
    .init(rawValue: UInt32(FUSE_CAP_EXPLICIT_INVAL_DATA))
  }
}

import CFuse
import Glibc
import SystemPackage

// Every reply is a one-shot, noncopyable value: a handler receives it `consuming`, and
// each answering method is `consuming` too, so the compiler rejects a second answer and
// a reply escaping into two places. A reply dropped without an answer answers EIO from
// its `deinit` and logs a warning, so the client's system call never hangs.
//
// Replies are `@unchecked Sendable`: libfuse lets any thread answer a request, so a
// handler may hand its reply to another thread and answer later.

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

/// The answer to a `getattr`: the attributes of an inode, or an error.
///
/// The corresponding C functions are `fuse_reply_attr` and `fuse_reply_err`.
public struct ReplyAttr: ~Copyable, @unchecked Sendable {
  let target: ReplyTarget

  init(_ target: ReplyTarget) { self.target = target }

  /// Creates a reply that records its answer, for handler tests.
  public init(recordingInto recorder: ReplyRecorder) { self.init(ReplyTarget(recorder: recorder)) }

  /// Answers with the attributes, which the kernel may cache for `timeout`.
  public consuming func attributes(_ attributes: FileAttributes, timeout: Duration) {
    let target = self.target
    discard self
    if target.record(.attributes(attributes, timeout: timeout)) { return }
    var st = attributes.stat
    target.check(fuse_reply_attr(target.request, &st, timeout.fuseSeconds), "fuse_reply_attr")
  }

  /// Answers with an error.
  public consuming func error(_ errno: Errno) {
    let target = self.target
    discard self
    target.error(errno)
  }

  deinit { target.unanswered("getattr") }
}

/// The answer to an `open` or `opendir`: a file handle and caching options, or an error.
///
/// The corresponding C functions are `fuse_reply_open` and `fuse_reply_err`.
public struct ReplyOpen: ~Copyable, @unchecked Sendable {
  let target: ReplyTarget
  let fileInfo: UnsafeMutablePointer<fuse_file_info>?

  init(_ target: ReplyTarget, fileInfo: UnsafeMutablePointer<fuse_file_info>?) {
    self.target = target
    self.fileInfo = fileInfo
  }

  /// Creates a reply that records its answer, for handler tests.
  public init(recordingInto recorder: ReplyRecorder) {
    self.init(ReplyTarget(recorder: recorder), fileInfo: nil)
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
    var fi = fileInfo?.pointee ?? fuse_file_info()
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

/// One piece of the data of a READ reply: bytes in memory, or a range of a file.
///
/// The corresponding C type is `struct fuse_buf`. A file segment becomes
/// `FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK` at `pos`, which libfuse can splice into
/// `/dev/fuse` without copying through user space.
public struct DataSegment {
  enum Storage {
    case memory(UnsafeRawBufferPointer)
    case file(FileDescriptor, offset: Int64, count: Int)
  }

  /// The most bytes one ``zeros(_:)`` segment may carry: 4 MiB, four times the largest READ.
  public static var maximumZeroCount: Int { zeroBytes.count }

  let storage: Storage

  /// Bytes in memory; they must stay valid until the reply method returns.
  public static func memory(_ bytes: UnsafeRawBufferPointer) -> DataSegment {
    DataSegment(storage: .memory(bytes))
  }

  /// `count` zero bytes, for holes, from a shared read-only buffer that is never written.
  public static func zeros(_ count: Int) -> DataSegment {
    precondition(
      count >= 0 && count <= zeroBytes.count, "a zero segment holds 0...\(zeroBytes.count) bytes")
    return DataSegment(storage: .memory(UnsafeRawBufferPointer(rebasing: zeroBytes[..<count])))
  }

  /// `count` bytes of an open file from `offset`; the file must be at least that long.
  public static func file(_ descriptor: FileDescriptor, offset: Int64, count: Int) -> DataSegment {
    precondition(offset >= 0 && count >= 0, "a file segment needs a non-negative offset and count")
    return DataSegment(storage: .file(descriptor, offset: offset, count: count))
  }

  /// The number of bytes in the segment.
  public var count: Int {
    switch storage {
    case .memory(let bytes): bytes.count
    case .file(_, _, let count): count
    }
  }

  var cValue: fuse_buf {
    switch storage {
    case .memory(let bytes):
      fuse_buf(
        size: bytes.count, flags: fuse_buf_flags(rawValue: 0),
        mem: UnsafeMutableRawPointer(mutating: bytes.baseAddress), fd: -1, pos: 0)
    case .file(let descriptor, let offset, let count):
      fuse_buf(
        size: count,
        flags: fuse_buf_flags(rawValue: FUSE_BUF_IS_FD.rawValue | FUSE_BUF_FD_SEEK.rawValue),
        mem: nil, fd: descriptor.rawValue, pos: off_t(offset))
    }
  }
}

/// Zero bytes for ``DataSegment/zeros(_:)``.
///
/// A constant, not state: `calloc`ed once (on first use, thread-safely, as Swift globals
/// are) and never written, so sharing it between threads is safe. A large `calloc` maps
/// the kernel's zero page, so it costs no memory until read, and reading costs none either.
private nonisolated(unsafe) let zeroBytes: UnsafeRawBufferPointer = {
  let count = 4 << 20
  guard let memory = calloc(count, 1) else { fatalError("cannot allocate the zero buffer") }
  return UnsafeRawBufferPointer(start: memory, count: count)
}()

/// The answer to a `read`: at most ``size`` bytes, or an error.
///
/// The corresponding C functions are `fuse_reply_buf`, `fuse_reply_data` and `fuse_reply_err`.
/// Fewer bytes than asked mean end of file (unless the file was opened with
/// ``OpenOptions/directIO``, where a short read is passed to the client as is).
public struct ReplyData: ~Copyable, @unchecked Sendable {
  let target: ReplyTarget
  /// The most bytes the reply may carry: the `size` of the READ request.
  public let size: Int

  init(_ target: ReplyTarget, size: Int) {
    self.target = target
    self.size = size
  }

  /// Creates a reply that records its answer, for handler tests.
  public init(recordingInto recorder: ReplyRecorder, size: Int) {
    self.init(ReplyTarget(recorder: recorder), size: size)
  }

  /// Answers with bytes in memory, copied into `/dev/fuse` with one `writev`.
  ///
  /// Traps when `bytes` is larger than ``size``: the kernel would refuse the reply.
  public consuming func bytes(_ bytes: UnsafeRawBufferPointer) {
    let target = self.target
    let size = self.size
    discard self
    ReplyData.send(target, size: size, bytes: bytes)
  }

  /// Answers with a copy-free view of contiguous bytes, such as an `Array` or `ArraySlice`.
  ///
  /// A reply cannot be consumed inside a closure such as the body of `withUnsafeBytes`
  /// ("missing reinitialization of closure capture after consume"); this overload does
  /// that step for you. Non-contiguous collections are copied first.
  public consuming func bytes<Bytes: Collection>(_ bytes: Bytes) where Bytes.Element == UInt8 {
    let target = self.target
    let size = self.size
    discard self
    let sent: Void? = bytes.withContiguousStorageIfAvailable {
      ReplyData.send(target, size: size, bytes: UnsafeRawBufferPointer($0))
    }
    if sent == nil {
      Array(bytes).withUnsafeBytes { ReplyData.send(target, size: size, bytes: $0) }
    }
  }

  /// Answers with `count` bytes of an open file from `offset`, spliced when possible.
  ///
  /// Splicing needs ``Capabilities/spliceWrite`` (enable it in
  /// ``FileSystem/initialize(connection:)``), a reply of at least two pages, and a pipe
  /// big enough for it; otherwise libfuse reads the bytes into a temporary buffer.
  public consuming func file(_ descriptor: FileDescriptor, offset: Int64, count: Int) {
    let target = self.target
    let size = self.size
    discard self
    ReplyData.send(
      target, size: size, segments: CollectionOfOne(.file(descriptor, offset: offset, count: count))
    )
  }

  /// Answers with a mix of file ranges and memory, in order, in one reply.
  ///
  /// Use this for data that comes partly from a file and partly from elsewhere, such as
  /// zero-filled holes from a static buffer. The segments are described to libfuse in a
  /// stack buffer; nothing is allocated on the heap.
  public consuming func segments<Segments: Collection>(_ segments: Segments)
  where Segments.Element == DataSegment {
    let target = self.target
    let size = self.size
    discard self
    ReplyData.send(target, size: size, segments: segments)
  }

  /// Answers with an error.
  public consuming func error(_ errno: Errno) {
    let target = self.target
    discard self
    target.error(errno)
  }

  deinit { target.unanswered("read") }

  private static func send(_ target: ReplyTarget, size: Int, bytes: UnsafeRawBufferPointer) {
    precondition(
      bytes.count <= size, "read reply of \(bytes.count) bytes exceeds the \(size) requested")
    if target.record(.data(Array(bytes))) { return }
    target.check(
      fuse_reply_buf(
        target.request, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count),
      "fuse_reply_buf")
  }

  private static func send<Segments: Collection>(
    _ target: ReplyTarget, size: Int, segments: Segments
  ) where Segments.Element == DataSegment {
    let total = segments.reduce(0) { $0 + $1.count }
    precondition(total <= size, "read reply of \(total) bytes exceeds the \(size) requested")
    if let recorder = target.recorder {
      recorder.takeUnretainedValue().append(.data(materialize(segments, total: total)))
      return
    }
    let count = segments.count
    guard count > 0 else {
      target.check(fuse_reply_buf(target.request, nil, 0), "fuse_reply_buf")
      return
    }
    withUnsafeTemporaryAllocation(
      byteCount: cfuse_bufvec_size(count), alignment: MemoryLayout<fuse_bufvec>.alignment
    ) { raw in
      guard let base = raw.baseAddress else { return }
      let stride = MemoryLayout<fuse_buf>.stride
      let first =
        MemoryLayout<fuse_bufvec>.offset(of: \fuse_bufvec.buf) ?? (raw.count - count * stride)
      var vector = fuse_bufvec()
      vector.count = count
      vector.idx = 0
      vector.off = 0
      base.storeBytes(of: vector, as: fuse_bufvec.self)
      for (index, segment) in segments.enumerated() {
        base.storeBytes(of: segment.cValue, toByteOffset: first + index * stride, as: fuse_buf.self)
      }
      let bufv = base.assumingMemoryBound(to: fuse_bufvec.self)
      // No FUSE_BUF_SPLICE_MOVE: moving pages out of the image's page cache measured no faster.
      target.check(
        fuse_reply_data(target.request, bufv, fuse_buf_copy_flags(rawValue: 0)), "fuse_reply_data")
    }
  }

  /// Reads the segments into one array, as the client would receive them.
  private static func materialize<Segments: Collection>(
    _ segments: Segments, total: Int
  ) -> [UInt8] where Segments.Element == DataSegment {
    var bytes: [UInt8] = []
    bytes.reserveCapacity(total)
    for segment in segments {
      switch segment.storage {
      case .memory(let memory):
        bytes.append(contentsOf: memory)
      case .file(let descriptor, let offset, let count):
        var chunk = [UInt8](repeating: 0, count: count)
        let read = chunk.withUnsafeMutableBytes { buffer in
          (try? descriptor.read(fromAbsoluteOffset: offset, into: buffer)) ?? 0
        }
        bytes.append(contentsOf: chunk[..<read])
      }
    }
    return bytes
  }
}

/// One entry a ``ReplyDirectory`` carries.
public struct DirectoryEntry: Hashable, Sendable {
  /// The entry's name, without a slash.
  public var name: String
  /// The inode number `readdir(3)` reports as `d_ino`.
  public var inode: INode
  /// The type `readdir(3)` reports as `d_type`.
  public var type: FileType
  /// The offset at which a later `readdir` resumes after this entry.
  public var nextOffset: Int64

  /// Creates a directory entry.
  public init(name: String, inode: INode, type: FileType, nextOffset: Int64) {
    self.name = name
    self.inode = inode
    self.type = type
    self.nextOffset = nextOffset
  }
}

/// The answer to a `readdir`: as many entries as fit in the requested size, or an error.
///
/// The corresponding C functions are `fuse_add_direntry`, `fuse_reply_buf` and
/// `fuse_reply_err`. Offsets are the file system's own: each entry carries the offset the
/// next `readdir` will start from, and the handler resumes at the `offset` it is given
/// (`0` for the first call). An empty reply means end of directory.
///
/// ```swift
/// var reply = reply
/// for (index, child) in children.enumerated().dropFirst(Int(offset)) {
///   let next = Int64(index + 1)
///   if !reply.add(child.name, inode: child.inode, type: .regular, nextOffset: next) { break }
/// }
/// reply.send()
/// ```
public struct ReplyDirectory: ~Copyable, @unchecked Sendable {
  let target: ReplyTarget
  let buffer: UnsafeMutableRawPointer
  /// The most bytes of entries the reply may carry.
  public let capacity: Int
  /// The bytes of entries added so far.
  public private(set) var byteCount = 0
  /// The number of entries added so far.
  public private(set) var count = 0
  /// Whether an ``add(_:inode:type:nextOffset:)`` was refused for lack of space.
  public private(set) var isFull = false

  init(_ target: ReplyTarget, buffer: UnsafeMutableRawBufferPointer, size: Int) {
    guard let base = buffer.baseAddress else {
      preconditionFailure("a directory reply needs a buffer")
    }
    self.target = target
    self.buffer = base
    self.capacity = max(0, min(size, buffer.count))
  }

  /// Creates a reply that records its answer, for handler tests.
  public init(recordingInto recorder: ReplyRecorder, size: Int = 4096) {
    self.init(ReplyTarget(recorder: recorder), buffer: recorder.directoryBuffer.current, size: size)
  }

  /// Adds an entry if it fits, and reports whether it did.
  ///
  /// Once an entry did not fit, ``isFull`` is `true`; send the reply and let the kernel
  /// come back with that entry's offset. `name` must be a non-empty single path
  /// component: the kernel fails the whole `readdir` with `EIO` when a name contains a
  /// slash (checked with `assert` in debug builds), so sanitize names taken from input.
  public mutating func add(_ name: String, inode: INode, type: FileType, nextOffset: Int64) -> Bool
  {
    assert(
      !name.isEmpty && !name.utf8.contains(UInt8(ascii: "/")),
      "directory entry name \(name.debugDescription) is not a single path component")
    guard !isFull else { return false }
    var st = Glibc.stat()
    st.st_ino = .init(inode.rawValue)
    st.st_mode = type.rawValue
    let remaining = capacity - byteCount
    let request = target.request
    let buffer = self.buffer
    let used = byteCount
    let needed = name.withCString { cName in
      fuse_add_direntry(
        request, (buffer + used).assumingMemoryBound(to: CChar.self), remaining, cName, &st,
        off_t(nextOffset))
    }
    guard needed <= remaining else {
      isFull = true
      return false
    }
    byteCount += needed
    count += 1
    return true
  }

  /// Sends the entries added so far; none means end of directory.
  public consuming func send() {
    let target = self.target
    let buffer = self.buffer
    let byteCount = self.byteCount
    discard self
    if target.record(
      .directory(ReplyDirectory.parse(UnsafeRawBufferPointer(start: buffer, count: byteCount))))
    {
      return
    }
    target.check(
      fuse_reply_buf(target.request, buffer.assumingMemoryBound(to: CChar.self), byteCount),
      "fuse_reply_buf")
  }

  /// Answers with an error.
  public consuming func error(_ errno: Errno) {
    let target = self.target
    discard self
    target.error(errno)
  }

  deinit { target.unanswered("readdir") }

  /// Decodes `struct fuse_dirent` records (ino, off, namelen, type, name, padded to 8).
  static func parse(_ bytes: UnsafeRawBufferPointer) -> [DirectoryEntry] {
    var entries: [DirectoryEntry] = []
    var position = 0
    while position + 24 <= bytes.count {
      let ino = bytes.loadUnaligned(fromByteOffset: position, as: UInt64.self)
      let off = bytes.loadUnaligned(fromByteOffset: position + 8, as: UInt64.self)
      let nameLength = Int(bytes.loadUnaligned(fromByteOffset: position + 16, as: UInt32.self))
      let type = bytes.loadUnaligned(fromByteOffset: position + 20, as: UInt32.self)
      guard position + 24 + nameLength <= bytes.count else { break }
      let name = String(
        decoding: bytes[(position + 24)..<(position + 24 + nameLength)], as: UTF8.self)
      entries.append(
        DirectoryEntry(
          name: name, inode: INode(ino), type: FileType(rawValue: mode_t(type) << 12),
          nextOffset: Int64(bitPattern: off)))
      position += (24 + nameLength + 7) & ~7
    }
    return entries
  }
}

/// The answer to a request without data (`release`, `releasedir`, `access`): done, or an error.
///
/// The corresponding C function is `fuse_reply_err`, with `0` for success.
public struct ReplyEmpty: ~Copyable, @unchecked Sendable {
  let target: ReplyTarget

  init(_ target: ReplyTarget) { self.target = target }

  /// Creates a reply that records its answer, for handler tests.
  public init(recordingInto recorder: ReplyRecorder) { self.init(ReplyTarget(recorder: recorder)) }

  /// Answers success.
  public consuming func ok() {
    let target = self.target
    discard self
    if target.record(.empty) { return }
    target.check(fuse_reply_err(target.request, 0), "fuse_reply_err")
  }

  /// Answers with an error.
  public consuming func error(_ errno: Errno) {
    let target = self.target
    discard self
    target.error(errno)
  }

  deinit { target.unanswered("request") }
}

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

/// The answer to a `getxattr` or `listxattr`: a value, its size, or an error.
///
/// The corresponding C functions are `fuse_reply_xattr`, `fuse_reply_buf` and
/// `fuse_reply_err`. A client first asks with ``size`` `0` for the length, then with a
/// buffer; ``value(_:)`` handles both and answers `ERANGE` when the buffer is too small.
/// A missing attribute is ``SystemPackage/Errno/noData`` (`ENODATA`).
public struct ReplyXattr: ~Copyable, @unchecked Sendable {
  let target: ReplyTarget
  /// The client's buffer size; `0` asks for the size of the value only.
  public let size: Int

  init(_ target: ReplyTarget, size: Int) {
    self.target = target
    self.size = size
  }

  /// Creates a reply that records its answer, for handler tests.
  public init(recordingInto recorder: ReplyRecorder, size: Int) {
    self.init(ReplyTarget(recorder: recorder), size: size)
  }

  /// Answers with a value: its size for a size query, the bytes if they fit, else `ERANGE`.
  public consuming func value(_ bytes: UnsafeRawBufferPointer) {
    let target = self.target
    let size = self.size
    discard self
    ReplyXattr.send(target, size: size, value: bytes)
  }

  /// Answers a `listxattr` with attribute names, each terminated by a NUL byte.
  public consuming func names<Names: Sequence>(_ names: Names) where Names.Element == String {
    let target = self.target
    let size = self.size
    discard self
    var list: [UInt8] = []
    for name in names {
      list.append(contentsOf: name.utf8)
      list.append(0)
    }
    list.withUnsafeBytes { ReplyXattr.send(target, size: size, value: $0) }
  }

  /// Answers a size query with the length of the value without producing it.
  public consuming func size(_ count: Int) {
    let target = self.target
    discard self
    if target.record(.xattrSize(count)) { return }
    target.check(fuse_reply_xattr(target.request, count), "fuse_reply_xattr")
  }

  /// Answers with an error, such as ``SystemPackage/Errno/noData`` for a missing attribute.
  public consuming func error(_ errno: Errno) {
    let target = self.target
    discard self
    target.error(errno)
  }

  deinit { target.unanswered("xattr request") }

  private static func send(_ target: ReplyTarget, size: Int, value bytes: UnsafeRawBufferPointer) {
    if size == 0 {
      if target.record(.xattrSize(bytes.count)) { return }
      target.check(fuse_reply_xattr(target.request, bytes.count), "fuse_reply_xattr")
    } else if bytes.count > size {
      target.error(.outOfRange)
    } else {
      if target.record(.xattrData(Array(bytes))) { return }
      target.check(
        fuse_reply_buf(
          target.request, bytes.baseAddress?.assumingMemoryBound(to: CChar.self), bytes.count),
        "fuse_reply_buf")
    }
  }
}

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

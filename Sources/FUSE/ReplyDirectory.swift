import CFuse
import Glibc
import SystemPackage

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
///
/// The entries are packed into memory the reply owns (allocated for it, freed when it is
/// answered), so it may be answered after the handler returned, from any thread.
public struct ReplyDirectory: ~Copyable, @unchecked Sendable {
  let target: ReplyTarget
  /// `capacity` bytes, at least one, from `malloc`; freed by whichever answer consumes the reply.
  let buffer: UnsafeMutableRawPointer
  /// The most bytes of entries the reply may carry.
  public let capacity: Int
  /// The bytes of entries added so far.
  public private(set) var byteCount = 0
  /// The number of entries added so far.
  public private(set) var count = 0
  /// Whether an ``add(_:inode:type:nextOffset:)`` was refused for lack of space.
  public private(set) var isFull = false

  /// The most bytes one reply packs: what the kernel asks for (a page or a few), capped.
  static let maximumCapacity = 128 * 1024

  init(_ target: ReplyTarget, size: Int) {
    let capacity = max(0, min(size, ReplyDirectory.maximumCapacity))
    guard let memory = malloc(max(capacity, 1)) else { fatalError("cannot allocate a directory reply") }
    self.target = target
    self.buffer = memory
    self.capacity = capacity
  }

  /// Creates a reply that records its answer, for handler tests.
  public init(recordingInto recorder: ReplyRecorder, size: Int = 4096) {
    self.init(ReplyTarget(recorder: recorder), size: size)
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
    defer { free(buffer) }
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
    let buffer = self.buffer
    discard self
    free(buffer)
    target.error(errno)
  }

  deinit {
    free(buffer)
    target.unanswered("readdir")
  }

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

import FUSE
import Logging
import GuestViews
import MigrationFormat
import Synchronization
import SystemPackage

#if canImport(Glibc)
  import Glibc
#endif

/// How a mount presents its files.
public struct MountConfiguration: Sendable {
  /// Owner of every file; nil means the image file's owner.
  public var uid: UInt32? = nil
  /// Group of every file; nil means the image file's group.
  public var gid: UInt32? = nil
  /// Bypass the kernel's page cache (`direct_io`): fastest for one pass (cp, dd),
  /// slower for re-reads and small reads (grep, Volatility).
  public var directIO = false
  /// How long the kernel may cache names and attributes; the image never changes while mounted.
  public var cacheTimeout: Duration = .seconds(86400)
  /// The largest read the kernel sends (`max_read`).
  public var maxRead = 1 << 20
  /// How present pages reach the kernel.
  public var readStrategy: ReadStrategy = .pread
  /// Bytes of main RAM below 4 GiB in `physmem`, overriding the machine type's rule
  /// (QEMU's `max-ram-below-4g`, which the file does not record); nil: the rule.
  public var lowmem: UInt64? = nil

  /// How present pages reach the kernel.
  public enum ReadStrategy: String, Sendable {
    /// `pread` into a per-thread buffer, then `fuse_reply_buf`.
    case pread
    /// `fuse_reply_data` with file segments that libfuse may splice from the image's descriptor.
    case splice
  }

  /// The defaults: page cache with keep_cache, day-long timeouts, 1 MiB reads.
  public init() {}
}

/// The mramfs filesystem: one read-only sparse file per RAM block, plus `info.json` and `physmem`.
///
/// Every handler reads immutable state built at mount time, or the kernel views
/// (``KernelViews``: computed once, then read through an atomic load), so handlers
/// run on any number of libfuse worker threads without locks; reads use a
/// per-thread buffer and allocate nothing.
public final class MramFileSystem: FileSystem {
  /// The migration file being served.
  public let file: MigrationFile
  /// How the files are presented.
  public let configuration: MountConfiguration
  let tree: Tree
  let buffers: WorkerBuffer
  /// Per-thread room for the segments of one spliced reply (at most one per page, plus one).
  let segmentBuffers: WorkerBuffer
  let logger: Logger
  let uid: UInt32
  let gid: UInt32
  let time: FileTime
  /// Counts read errors, so each kind is logged once and not per request.
  let readErrors = Atomic<Int>(0)
  /// Where main RAM sits in `physmem`; nil when the file's machine cannot be placed (no `physmem`).
  let physmem: PhysicalLayout?
  /// `vmcoreinfo`, `vmcore` and info.json, which depend on the guest kernel's VMCOREINFO and are
  /// computed once, in the background from FUSE's INIT or at the first request that needs them.
  let kernelViews: KernelViews

  /// Builds the namespace for `file`; cost O(blocks).
  ///
  /// - Parameter base: For a delta mount (`file` is a ``SaveDiff/delta()`` view), what it was
  ///   taken against, for `info.json`.
  public init(
    file: MigrationFile, configuration: MountConfiguration = MountConfiguration(), logger: Logger,
    base: InfoDocument.Base? = nil
  ) {
    self.file = file
    self.configuration = configuration
    self.logger = logger
    let paths = BlockPaths.assign(file.blocks.map(\.name))
    physmem = file.format.isPositional ? try? PhysicalLayout(file, lowmem: configuration.lowmem) : nil
    // Without the VMCOREINFO note, which only the kernel views add: whether there is a `vmcore` at all.
    let baseCore = physmem == nil ? nil : try? ELFCore.resolve(file, layout: physmem).get()
    kernelViews = KernelViews.make(file: file, layout: physmem, lowmem: configuration.lowmem, baseCore: baseCore, base: base)
    tree = Tree(
      blockPaths: paths, generated: [],
      views: [(TopLevelName.info.rawValue, .info)]
        + (physmem == nil ? [] : [(TopLevelName.physmem.rawValue, .physmem)])
        + (baseCore == nil ? [] : [(TopLevelName.vmcore.rawValue, .vmcore)])
        + (physmem == nil ? [] : [(TopLevelName.vmcoreinfo.rawValue, .vmcoreinfo)]),
      files: StateViews.files(file))
    buffers = WorkerBuffer(capacity: configuration.maxRead + 4096)
    segmentBuffers = WorkerBuffer(capacity: (configuration.maxRead / 4096 + 2) * MemoryLayout<DataSegment>.stride)
    uid = configuration.uid ?? file.file.owner.uid
    gid = configuration.gid ?? file.file.owner.gid
    time = FileTime(seconds: Int64(file.file.modificationTime.seconds), nanoseconds: Int32(file.file.modificationTime.nanoseconds))
  }

  /// The relative path of every block, in block order (for messages and tests).
  public var blockPaths: [String] {
    BlockPaths.assign(file.blocks.map(\.name)).map { $0.joined(separator: "/") }
  }

  // MARK: - Attributes

  func attributes(_ node: Node) -> FileAttributes {
    switch node.kind {
    case .directory:
      return FileAttributes(
        inode: node.inode, mode: FileMode(type: .directory, permissions: FilePermissions(rawValue: 0o555)),
        linkCount: UInt32(2 + tree.subdirectoryCount(node)), uid: uid, gid: gid, size: 0, blocks: 0,
        blockSize: 4096, accessTime: time, modificationTime: time, changeTime: time)
    case .block(let i):
      let b = file.blocks[i]
      let populated = (b.populatedPages ?? 0) * b.pageSize
      return FileAttributes(
        inode: node.inode, mode: FileMode(type: .regular, permissions: FilePermissions(rawValue: 0o444)), linkCount: 1, uid: uid, gid: gid,
        size: Int64(b.length), blocks: Int64(populated / 512), blockSize: Int32(clamping: b.pageSize),
        accessTime: time, modificationTime: time, changeTime: time)
    case .generated(let bytes):
      return FileAttributes(
        inode: node.inode, mode: FileMode(type: .regular, permissions: FilePermissions(rawValue: 0o444)), linkCount: 1, uid: uid, gid: gid,
        size: Int64(bytes.count), blocks: Int64((bytes.count + 511) / 512), blockSize: 4096,
        accessTime: time, modificationTime: time, changeTime: time)
    case .info, .vmcoreinfo:
      let count = kernelFileBytes(node)?.count ?? 0
      return FileAttributes(
        inode: node.inode, mode: FileMode(type: .regular, permissions: FilePermissions(rawValue: 0o444)), linkCount: 1, uid: uid, gid: gid,
        size: Int64(count), blocks: Int64((count + 511) / 512), blockSize: 4096,
        accessTime: time, modificationTime: time, changeTime: time)
    case .physmem:
      return physmemAttributes(node)
    case .vmcore:
      return vmcoreAttributes(node)
    }
  }

  // MARK: - Handlers

  public func initialize(connection: Connection) {
    connection.maxRead = UInt32(configuration.maxRead)
    if configuration.readStrategy == .splice {
      _ = connection.enable([.spliceWrite])
    }
    kernelViews.startInBackground()
  }

  public func lookup(_ request: Request, parent: INode, name: String, reply: consuming ReplyEntry) {
    guard let p = tree.node(parent), p.isDirectory else { return reply.error(.notDirectory) }
    guard let ino = tree.lookup(parent, name), let node = tree.node(ino), !isHidden(node) else {
      return reply.negative(timeout: configuration.cacheTimeout)
    }
    reply.entry(
      attributes(node), attributeTimeout: configuration.cacheTimeout, entryTimeout: configuration.cacheTimeout)
  }

  public func getattr(_ request: Request, inode: INode, handle: FileHandle?, reply: consuming ReplyAttr) {
    guard let node = tree.node(inode), !isHidden(node) else { return reply.error(.noSuchFileOrDirectory) }
    reply.attributes(attributes(node), timeout: configuration.cacheTimeout)
  }

  public func open(_ request: Request, inode: INode, flags: OpenFlags, reply: consuming ReplyOpen) {
    guard let node = tree.node(inode), !isHidden(node) else { return reply.error(.noSuchFileOrDirectory) }
    if node.isDirectory { return reply.error(.isDirectory) }
    if flags.requestsWriting { return reply.error(.readOnlyFileSystem) }
    var options: FUSE.OpenOptions = []
    if node.servesRAM, configuration.directIO {
      options.insert(.directIO)
    } else {
      options.insert(.keepCache)
    }
    reply.opened(handle: .none, options: options)
  }

  public func read(
    _ request: Request, inode: INode, handle: FileHandle, offset: Int64, size: Int, reply: consuming ReplyData
  ) {
    guard let node = tree.node(inode), offset >= 0 else { return reply.error(.invalidArgument) }
    switch node.kind {
    case .directory:
      reply.error(.isDirectory)
    case .generated(let bytes):
      let start = min(Int(clamping: offset), bytes.count)
      let end = min(bytes.count, start + size)
      reply.bytes(bytes[start..<end])
    case .info, .vmcoreinfo:
      guard let bytes = kernelFileBytes(node) else { return reply.error(.noSuchFileOrDirectory) }
      let start = min(Int(clamping: offset), bytes.count)
      let end = min(bytes.count, start + size)
      reply.bytes(bytes[start..<end])
    case .block(let index) where configuration.readStrategy == .splice:
      spliceRead(index: index, offset: UInt64(offset), size: size, reply: reply)
    case .block(let index):
      preadRead(index: index, offset: UInt64(offset), size: size, reply: reply)
    case .physmem where configuration.readStrategy == .splice:
      physmemSpliceRead(offset: UInt64(offset), size: size, reply: reply)
    case .physmem:
      physmemPreadRead(offset: UInt64(offset), size: size, reply: reply)
    case .vmcore:
      vmcoreRead(offset: UInt64(offset), size: size, reply: reply)
    }
  }

  /// Answers a read with the block's bytes, masked by the bitmap, copied into this thread's buffer.
  func preadRead(index: Int, offset: UInt64, size: Int, reply: consuming ReplyData) {
    let buffer = buffers.current
    let want = min(size, buffer.count)
    do {
      let n = try file.read(block: index, at: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]))
      reply.bytes(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
    } catch {
      if readErrors.add(1, ordering: .relaxed).oldValue == 0 {
        logger.error("read failed, answering EIO (logged once): \(error)")
      }
      reply.error(.ioError)
    }
  }

  /// Beyond this many runs in one read, splicing costs more than copying (measured with scripts/bench.sh).
  static let spliceSegmentLimit = 16

  /// Answers a read with file segments for present runs and shared zeros for holes; no copy in user space.
  func spliceRead(index: Int, offset: UInt64, size: Int, reply: consuming ReplyData) {
    let b = file.blocks[index]
    guard offset < b.length, size > 0, let bitmap = b.bitmap else { return reply.bytes(UnsafeRawBufferPointer(start: nil, count: 0)) }
    let end = min(b.length, offset + UInt64(size))
    let ps = b.pageSize
    let lastPage = (end - 1) / ps + 1
    let raw = segmentBuffers.current
    let capacity = raw.count / MemoryLayout<DataSegment>.stride
    let segs = raw.baseAddress!.bindMemory(to: DataSegment.self, capacity: capacity)
    var n = 0
    var pos = offset
    let limit = min(capacity, Self.spliceSegmentLimit)
    // Looked up at the first file segment, not taken from open time: see currentImageSize().
    var imageSize: UInt64? = nil
    while pos < end {
      if n == limit { return preadRead(index: index, offset: offset, size: size, reply: reply) }
      let page = pos / ps
      if bitmap.isSet(page) {
        let stop = min((bitmap.nextClear(from: page, limit: lastPage) ?? lastPage) * ps, end)
        let at = b.pagesOffset + pos
        if imageSize == nil { imageSize = currentImageSize() }
        guard at + (stop - pos) <= imageSize ?? 0 else {
          if readErrors.add(1, ordering: .relaxed).oldValue == 0 {
            logger.error(
              "block \(b.name): present page \(page) lies past the end of the image (was it truncated?); answering EIO (logged once)")
          }
          return reply.error(.ioError)
        }
        (segs + n).initialize(to: .file(file.file.descriptor, offset: Int64(at), count: Int(stop - pos)))
        pos = stop
      } else {
        let stop = min((bitmap.nextSet(from: page, limit: lastPage) ?? lastPage) * ps, end)
        (segs + n).initialize(to: .zeros(Int(stop - pos)))
        pos = stop
      }
      n += 1
    }
    reply.segments(UnsafeBufferPointer(start: segs, count: n))
  }

  /// The image's size now, or nil when `fstat` fails.
  ///
  /// Why not the size from open time: a regular file can shrink under a live mount
  /// (truncated, or cut by whoever rewrites it), and libfuse splices a file segment that
  /// meets end of file as a short reply, which the client takes for end of file (the page
  /// cache even shrinks the file to it) rather than an error. One `fstat` per spliced read,
  /// no allocation, no lock. A truncation between this call and the splice can still give
  /// one short reply; the pread strategy has no such window. A block device cannot
  /// shrink this way, and `fstat` does not report its size.
  func currentImageSize() -> UInt64? {
    var st = stat()
    guard fstat(file.file.descriptor.rawValue, &st) == 0 else { return nil }
    guard (st.st_mode & Glibc.S_IFMT) == Glibc.S_IFREG else { return file.file.size }
    return UInt64(st.st_size)
  }

  public func release(
    _ request: Request, inode: INode, handle: FileHandle, flags: OpenFlags, reply: consuming ReplyEmpty
  ) {
    reply.ok()
  }

  public func opendir(_ request: Request, inode: INode, flags: OpenFlags, reply: consuming ReplyOpen) {
    guard let node = tree.node(inode) else { return reply.error(.noSuchFileOrDirectory) }
    guard node.isDirectory else { return reply.error(.notDirectory) }
    reply.opened(handle: .none, options: [.keepCache])
  }

  public func readdir(
    _ request: Request, inode: INode, handle: FileHandle, offset: Int64, reply: consuming ReplyDirectory
  ) {
    guard let node = tree.node(inode), case .directory(let children) = node.kind else {
      return reply.error(.notDirectory)
    }
    var i = Int(clamping: max(0, offset))
    while i < children.count + 2 {
      let added: Bool
      if i == 0 {
        added = reply.add(".", inode: node.inode, type: .directory, nextOffset: 1)
      } else if i == 1 {
        added = reply.add("..", inode: node.parent, type: .directory, nextOffset: 2)
      } else {
        let c = children[i - 2]
        let child = tree.node(c.inode)
        if let child, isHidden(child) {
          i += 1
          continue
        }
        let isDir = child?.isDirectory == true
        added = reply.add(c.name, inode: c.inode, type: isDir ? .directory : .regular, nextOffset: Int64(i + 1))
      }
      if !added { break }
      i += 1
    }
    reply.send()
  }

  public func releasedir(_ request: Request, inode: INode, handle: FileHandle, reply: consuming ReplyEmpty) {
    reply.ok()
  }

  public func statfs(_ request: Request, inode: INode, reply: consuming ReplyStatFS) {
    let bytes = file.blocks.reduce(UInt64(0)) { $0 + $1.length }
    reply.statfs(
      StatFSInfo(
        blockSize: 4096, fragmentSize: 4096, blocks: (bytes + 4095) / 4096, freeBlocks: 0, availableBlocks: 0,
        files: UInt64(tree.nodes.count), freeFiles: 0, availableFiles: 0, maximumNameLength: 255))
  }

  /// The xattrs of a block file.
  func xattrs(_ node: Node) -> [(String, [UInt8])] {
    guard case .block(let i) = node.kind else { return [] }
    let b = file.blocks[i]
    return [
      ("user.mramfs.block", b.name.bytes),
      ("user.mramfs.page_size", Array("\(b.pageSize)".utf8)),
      ("user.mramfs.populated_pages", Array("\(b.populatedPages ?? 0)".utf8)),
      ("user.mramfs.pages_offset", Array("\(b.pagesOffset)".utf8)),
      ("user.mramfs.bitmap_offset", Array("\(b.bitmapOffset)".utf8)),
    ]
  }

  public func getxattr(_ request: Request, inode: INode, name: String, size: Int, reply: consuming ReplyXattr) {
    guard let node = tree.node(inode) else { return reply.error(.noSuchFileOrDirectory) }
    guard let value = xattrs(node).first(where: { $0.0 == name })?.1 else { return reply.error(.noData) }
    if size == 0 { return reply.size(value.count) }
    guard value.count <= size else { return reply.error(.outOfRange) }
    let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(value.count, 1), alignment: 1)
    defer { copy.deallocate() }
    copy.copyBytes(from: value)
    reply.value(UnsafeRawBufferPointer(rebasing: copy[0..<value.count]))
  }

  public func listxattr(_ request: Request, inode: INode, size: Int, reply: consuming ReplyXattr) {
    guard let node = tree.node(inode) else { return reply.error(.noSuchFileOrDirectory) }
    reply.names(xattrs(node).map(\.0))
  }

  public func lseek(
    _ request: Request, inode: INode, handle: FileHandle, offset: Int64, whence: SeekWhence,
    reply: consuming ReplyLseek
  ) {
    guard let node = tree.node(inode) else { return reply.error(.noSuchFileOrDirectory) }
    guard whence == .nextData || whence == .nextHole else { return reply.error(.invalidArgument) }
    guard offset >= 0 else { return reply.error(.noSuchAddressOrDevice) }
    let off = UInt64(offset)
    switch node.kind {
    case .directory:
      reply.error(.isDirectory)
    case .generated(let bytes):
      guard off < bytes.count else { return reply.error(.noSuchAddressOrDevice) }
      reply.offset(whence == .nextData ? offset : Int64(bytes.count))
    case .info, .vmcoreinfo:
      let count = kernelFileBytes(node)?.count ?? 0
      guard off < count else { return reply.error(.noSuchAddressOrDevice) }
      reply.offset(whence == .nextData ? offset : Int64(count))
    case .block(let i):
      let result = whence == .nextData ? file.nextData(block: i, from: off) : file.nextHole(block: i, from: off)
      guard let r = result else { return reply.error(.noSuchAddressOrDevice) }
      reply.offset(Int64(r))
    case .physmem:
      physmemSeek(from: off, whence: whence, reply: reply)
    case .vmcore:
      vmcoreSeek(from: off, whence: whence, reply: reply)
    }
  }
}

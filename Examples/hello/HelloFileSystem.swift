import FUSE
import Glibc
import SystemPackage

/// The file system of `hello-fs`: a root directory holding one read-only file.
///
/// It lives outside `main.swift` so that nothing of it is inferred `@MainActor`.
final class HelloFileSystem: FileSystem {
  static let fileName = "hello"
  static let contents: [UInt8] = Array("Hello World!\n".utf8)
  static let fileInode = INode(2)

  /// Nothing here ever changes, so the kernel may cache names and attributes for long.
  private let timeout = Duration.seconds(3600)
  private let uid = getuid()
  private let gid = getgid()
  private let mountTime = FileTime.now

  private func attributes(of inode: INode) -> FileAttributes? {
    switch inode {
    case .root:
      FileAttributes(
        inode: .root,
        mode: FileMode(
          type: .directory,
          permissions: [.ownerReadWriteExecute, .groupReadExecute, .otherReadExecute]),
        linkCount: 2, uid: uid, gid: gid, accessTime: mountTime, modificationTime: mountTime,
        changeTime: mountTime)
    case Self.fileInode:
      FileAttributes(
        inode: Self.fileInode,
        mode: FileMode(type: .regular, permissions: [.ownerRead, .groupRead, .otherRead]),
        uid: uid, gid: gid, size: Int64(Self.contents.count), blocks: 1,
        accessTime: mountTime, modificationTime: mountTime, changeTime: mountTime)
    default:
      nil
    }
  }

  func lookup(_ request: Request, parent: INode, name: String, reply: consuming ReplyEntry) {
    guard parent == .root, name == Self.fileName, let attributes = attributes(of: Self.fileInode)
    else {
      reply.negative(timeout: timeout)
      return
    }
    reply.entry(attributes, attributeTimeout: timeout, entryTimeout: timeout)
  }

  func getattr(_ request: Request, inode: INode, handle: FileHandle?, reply: consuming ReplyAttr) {
    guard let attributes = attributes(of: inode) else {
      reply.error(.noSuchFileOrDirectory)
      return
    }
    reply.attributes(attributes, timeout: timeout)
  }

  func open(_ request: Request, inode: INode, flags: OpenFlags, reply: consuming ReplyOpen) {
    if inode == .root {
      reply.error(.isDirectory)
    } else if inode != Self.fileInode {
      reply.error(.noSuchFileOrDirectory)
    } else if flags.requestsWriting {
      reply.error(.permissionDenied)
    } else {
      reply.opened(options: .keepCache)
    }
  }

  func read(
    _ request: Request, inode: INode, handle: FileHandle, offset: Int64, size: Int,
    reply: consuming ReplyData
  ) {
    guard inode == Self.fileInode else {
      reply.error(.noSuchFileOrDirectory)
      return
    }
    let start = Int(clamping: min(max(offset, 0), Int64(Self.contents.count)))
    let end = min(start + size, Self.contents.count)
    reply.bytes(Self.contents[start..<end])
  }

  func release(
    _ request: Request, inode: INode, handle: FileHandle, flags: OpenFlags,
    reply: consuming ReplyEmpty
  ) {
    reply.ok()
  }

  func opendir(_ request: Request, inode: INode, flags: OpenFlags, reply: consuming ReplyOpen) {
    guard inode == .root else {
      reply.error(inode == Self.fileInode ? .notDirectory : .noSuchFileOrDirectory)
      return
    }
    reply.opened()
  }

  func readdir(
    _ request: Request, inode: INode, handle: FileHandle, offset: Int64,
    reply: consuming ReplyDirectory
  ) {
    guard inode == .root else {
      reply.error(.notDirectory)
      return
    }
    let entries: [(String, INode, FileType)] = [
      (".", .root, .directory), ("..", .root, .directory),
      (Self.fileName, Self.fileInode, .regular),
    ]
    // An entry's offset is its index + 1: where the next readdir resumes.
    var reply = reply
    for (index, entry) in entries.enumerated().dropFirst(Int(clamping: max(offset, 0))) {
      if !reply.add(entry.0, inode: entry.1, type: entry.2, nextOffset: Int64(index + 1)) { break }
    }
    reply.send()
  }

  func releasedir(_ request: Request, inode: INode, handle: FileHandle, reply: consuming ReplyEmpty)
  {
    reply.ok()
  }

  func statfs(_ request: Request, inode: INode, reply: consuming ReplyStatFS) {
    reply.statfs(StatFSInfo(blockSize: 4096, blocks: 1, files: 2))
  }
}

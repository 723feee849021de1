// Handler and reply tests that need no kernel: replies go to a ReplyRecorder.
import FUSE
import Glibc
import SystemPackage
import Testing

final class Empty: FileSystem {}

final class Forgetful: FileSystem {
  func getattr(_ request: Request, inode: INode, handle: FileHandle?, reply: consuming ReplyAttr) {
    _ = consume reply
  }
  func readdir(_ request: Request, inode: INode, handle: FileHandle, offset: Int64, reply: consuming ReplyDirectory) {
    var reply = reply
    var i = Int(offset)
    while reply.add("name-\(i)", inode: INode(UInt64(i + 10)), type: .regular, nextOffset: Int64(i + 1)) { i += 1 }
    reply.send()
  }
  /// A file the test writes itself: "0123456789abcdef".
  static let file: String = {
    let path = "/tmp/mramfs-recorder-\(getpid()).bin"
    let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    precondition(fd >= 0, "cannot create \(path)")
    _ = Array("0123456789abcdef".utf8).withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    Glibc.close(fd)
    return path
  }()

  func read(_ request: Request, inode: INode, handle: FileHandle, offset: Int64, size: Int, reply: consuming ReplyData) {
    // A file segment from an offset, then a hole: what a spliced block read sends.
    let fd = FileDescriptor(rawValue: Glibc.open(Forgetful.file, O_RDONLY))
    defer { try? fd.close() }
    reply.segments([DataSegment.file(fd, offset: 10, count: 4), .zeros(3)])
  }
}

@Test func defaultsAnswerENOSYS() {
  let r = ReplyRecorder()
  let fs = Empty()
  fs.lookup(Request(), parent: .root, name: "x", reply: ReplyEntry(recordingInto: r))
  fs.getattr(Request(), inode: .root, handle: nil, reply: ReplyAttr(recordingInto: r))
  fs.lseek(Request(), inode: .root, handle: .none, offset: 0, whence: .nextData, reply: ReplyLseek(recordingInto: r))
  #expect(r.replies == [.error(.noFunction), .error(.noFunction), .error(.noFunction)])
  let any: any FileSystem = fs
  any.statfs(Request(), inode: .root, reply: ReplyStatFS(recordingInto: r))
  #expect(r.last == .error(.noFunction))
}

@Test func forgottenReplyAnswersEIO() {
  let r = ReplyRecorder()
  Forgetful().getattr(Request(), inode: .root, handle: nil, reply: ReplyAttr(recordingInto: r))
  #expect(r.replies == [.unanswered])
}

@Test func directoryFillsAndParses() {
  let r = ReplyRecorder()
  Forgetful().readdir(Request(), inode: .root, handle: .none, offset: 3, reply: ReplyDirectory(recordingInto: r, size: 200))
  guard case .directory(let entries) = r.last else { Issue.record("no dir"); return }
  // each entry: 24 + 6 -> 32 bytes; 200/32 = 6
  #expect(entries.count == 6)
  #expect(entries.first == DirectoryEntry(name: "name-3", inode: INode(13), type: .regular, nextOffset: 4))
}

@Test func segmentsRead() {
  let r = ReplyRecorder()
  Forgetful().read(Request(), inode: .root, handle: .none, offset: 0, size: 100, reply: ReplyData(recordingInto: r, size: 100))
  #expect(r.last == .data(Array("abcd".utf8) + [0, 0, 0]))
}

@Test func xattr() {
  let r = ReplyRecorder()
  ReplyXattr(recordingInto: r, size: 0).names(["user.a", "user.b"])
  ReplyXattr(recordingInto: r, size: 5).names(["user.a", "user.b"])
  ReplyXattr(recordingInto: r, size: 100).names(["a"])
  #expect(r.replies == [.xattrSize(14), .error(.outOfRange), .xattrData([97, 0])])
}

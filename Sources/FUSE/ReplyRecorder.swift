import Logging
import Synchronization
import SystemPackage

/// A reply as a handler test sees it.
public enum RecordedReply: Hashable, Sendable {
  /// ``ReplyEntry/entry(_:)``.
  case entry(EntryParameters)
  /// ``ReplyEntry/negative(timeout:)``.
  case negativeEntry(timeout: Duration)
  /// ``ReplyAttr/attributes(_:timeout:)``.
  case attributes(FileAttributes, timeout: Duration)
  /// ``ReplyOpen/opened(handle:options:)``.
  case open(FileHandle, OpenOptions)
  /// Any ``ReplyData`` answer, with file segments read back as the client would get them.
  case data([UInt8])
  /// ``ReplyDirectory/send()``, decoded from the packed `fuse_dirent` buffer.
  case directory([DirectoryEntry])
  /// ``ReplyEmpty/ok()``.
  case empty
  /// ``ReplyStatFS/statfs(_:)``.
  case statfs(StatFSInfo)
  /// A ``ReplyXattr`` answer to a size query.
  case xattrSize(Int)
  /// A ``ReplyXattr`` answer with the value.
  case xattrData([UInt8])
  /// ``ReplyLseek/offset(_:)``.
  case lseek(Int64)
  /// Any `error(_:)` answer.
  case error(Errno)
  /// The handler dropped the reply without answering; the kernel would have seen `EIO`.
  case unanswered
}

/// A reply sink for handler tests: replies created with `init(recordingInto:)` append
/// their answer here instead of writing to `/dev/fuse`.
///
/// ```swift
/// let recorder = ReplyRecorder()
/// fs.getattr(Request(), inode: .root, handle: nil, reply: ReplyAttr(recordingInto: recorder))
/// #expect(recorder.replies == [.attributes(rootAttributes, timeout: .seconds(3600))])
/// ```
///
/// Keep the recorder alive while its replies exist: they refer to it without retaining it.
public final class ReplyRecorder: Sendable {
  private let recorded = Mutex<[RecordedReply]>([])
  /// The logger replies use for "no reply sent" warnings.
  public let logger: Logger

  /// Creates an empty recorder.
  public init(logger: Logger = Logger(label: "FUSE.ReplyRecorder")) {
    self.logger = logger
  }

  /// Every reply so far, oldest first.
  public var replies: [RecordedReply] { recorded.withLock { $0 } }

  /// The most recent reply.
  public var last: RecordedReply? { recorded.withLock { $0.last } }

  /// Forgets the replies so far.
  public func removeAll() { recorded.withLock { $0.removeAll() } }

  func append(_ reply: RecordedReply) { recorded.withLock { $0.append(reply) } }
}

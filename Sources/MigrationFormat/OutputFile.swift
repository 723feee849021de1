#if canImport(Glibc)
  import Glibc
#endif
import Synchronization
import SystemPackage

/// Writes a file through a temporary beside the destination, then fsyncs and renames it,
/// so an interrupted run never leaves a file that looks valid but is not.
///
/// The temporary file is `.NAME.mramfs-PID.tmp` in OUT's own directory (`/` for `/OUT`), so
/// the final rename never crosses filesystems. It is removed when the `OutputFile` goes away
/// uncommitted (an error), and by ``removeInterruptedOutputs()`` from a signal handler.
public final class OutputFile: @unchecked Sendable {
  /// The destination path.
  public let path: String
  /// The temporary path being written.
  public let temporaryPath: String
  /// The descriptor of the temporary file.
  public let descriptor: FileDescriptor
  private var committed = false
  /// This file's entry in ``InterruptCleanup``, while it is registered.
  private let cleanupSlot: Int?

  /// Creates the temporary file. Refuses an existing `path` (or a symlink there) unless `overwrite`.
  public init(path: String, overwrite: Bool) throws(FormatError) {
    self.path = path
    let structure = "output \(quoted(Array(path.utf8)))"
    guard !path.isEmpty, !path.hasSuffix("/") else {
      throw FormatError(.badValue, structure, at: 0, "is not a file path; give the name of the file to write")
    }
    var st = stat()
    if lstat(path, &st) == 0 {
      let type = st.st_mode & S_IFMT
      if type == S_IFDIR {
        throw FormatError(.badValue, structure, at: 0, "is a directory; give the name of the file to write")
      }
      if type == S_IFLNK && !overwrite {
        throw FormatError(
          .badValue, structure, at: 0, "is a symbolic link; give --force to replace the link (its target is left alone)")
      }
      if !overwrite {
        throw FormatError(.badValue, structure, at: 0, "already exists; give --force to replace it")
      }
      if type != S_IFREG && type != S_IFLNK {
        throw FormatError(.badValue, structure, at: 0, "is not a regular file; mramfs replaces regular files and links only")
      }
    }
    let (dir, base) = OutputFile.split(path)
    temporaryPath = (dir == "/" ? "/" : dir + "/") + ".\(base).mramfs-\(getpid()).tmp"
    guard temporaryPath.utf8.count < InterruptCleanup.pathCapacity else {
      throw FormatError(.badValue, structure, at: 0, "the path is longer than \(InterruptCleanup.pathCapacity - 40) bytes")
    }
    let fd = Glibc.open(temporaryPath, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
    guard fd >= 0 else {
      throw FormatError(.io, structure, at: 0, "cannot create \(temporaryPath): \(Errno(rawValue: errno))")
    }
    descriptor = FileDescriptor(rawValue: fd)
    cleanupSlot = InterruptCleanup.register(temporaryPath)
  }

  /// The directory and file name of `path`: `("/", "x")` for `/x`, `(".", "x")` for `x`.
  static func split(_ path: String) -> (directory: String, name: String) {
    guard let slash = path.lastIndex(of: "/") else { return (".", path) }
    let dir = String(path[..<slash])
    return (dir.isEmpty ? "/" : dir, String(path[path.index(after: slash)...]))
  }

  /// Writes `bytes` at `offset`.
  public func write(_ bytes: [UInt8], at offset: UInt64) throws(FormatError) {
    var failure: FormatError? = nil
    bytes.withUnsafeBytes { raw in
      do throws(FormatError) { try write(raw, at: offset) } catch { failure = error }
    }
    if let failure { throw failure }
  }

  /// Writes raw bytes at `offset`.
  public func write(_ raw: UnsafeRawBufferPointer, at offset: UInt64) throws(FormatError) {
    var done = 0
    while done < raw.count {
      let n = pwrite(descriptor.rawValue, raw.baseAddress! + done, raw.count - done, off_t(offset) + off_t(done))
      if n > 0 {
        done += n
      } else if n < 0 && errno == EINTR {
        continue
      } else {
        throw FormatError(
          .io, "output \(quoted(Array(path.utf8)))", at: offset + UInt64(done),
          "write failed: \(n == 0 ? "no progress" : "\(Errno(rawValue: errno))")")
      }
    }
  }

  /// Sets the file's final size (holes stay holes), fsyncs it and renames it into place.
  public func commit(size: UInt64) throws(FormatError) {
    guard ftruncate(descriptor.rawValue, off_t(size)) == 0, fsync(descriptor.rawValue) == 0 else {
      throw FormatError(.io, "output \(quoted(Array(path.utf8)))", at: size, "cannot finish: \(Errno(rawValue: errno))")
    }
    guard rename(temporaryPath, path) == 0 else {
      throw FormatError(
        .io, "output \(quoted(Array(path.utf8)))", at: 0, "cannot rename into place: \(Errno(rawValue: errno))")
    }
    committed = true
    if let cleanupSlot { InterruptCleanup.unregister(cleanupSlot) }
    let dfd = Glibc.open(OutputFile.split(path).directory, O_RDONLY | O_DIRECTORY)
    if dfd >= 0 {
      fsync(dfd)
      Glibc.close(dfd)
    }
  }

  deinit {
    try? descriptor.close()
    if !committed {
      unlink(temporaryPath)
      if let cleanupSlot { InterruptCleanup.unregister(cleanupSlot) }
    }
  }

  /// Removes the temporary files of every output still being written; safe in a signal handler.
  public static func removeInterruptedOutputs() {
    InterruptCleanup.unlinkAll()
  }

  /// Makes ``removeInterruptedOutputs()`` ready to run in a signal handler: call it before
  /// installing the handler, so the handler never initializes anything.
  public static func prepareForSignals() {
    _ = InterruptCleanup.slots.count
  }
}

/// The temporary files a signal handler must remove, in memory a handler may read.
///
/// A fixed table of slots made once and never freed: each has a path buffer and an atomic
/// state (0 free, 1 being filled or emptied, 2 armed). A handler only reads armed slots, so it
/// never sees a path being written, and never follows a pointer that `deinit` frees. Several
/// outputs at once each take their own slot.
enum InterruptCleanup {
  /// Bytes per path, NUL included.
  static let pathCapacity = 4096
  static let slotCount = 8

  final class Slot: Sendable {
    let state = Atomic<Int>(0)
    nonisolated(unsafe) let path: UnsafeMutablePointer<CChar>
    init() {
      path = .allocate(capacity: InterruptCleanup.pathCapacity)
      path.initialize(repeating: 0, count: InterruptCleanup.pathCapacity)
    }
  }

  static let slots: [Slot] = (0..<slotCount).map { _ in Slot() }

  /// Takes a free slot for `path`; nil when all are taken (the file is then removed on errors
  /// but not on a signal).
  static func register(_ path: String) -> Int? {
    for (i, slot) in slots.enumerated() {
      guard slot.state.compareExchange(expected: 0, desired: 1, ordering: .acquiring).exchanged else { continue }
      let bytes = Array(path.utf8.prefix(pathCapacity - 1))
      for (k, b) in bytes.enumerated() { slot.path[k] = CChar(bitPattern: b) }
      slot.path[bytes.count] = 0
      slot.state.store(2, ordering: .releasing)
      return i
    }
    return nil
  }

  /// Frees slot `index`.
  static func unregister(_ index: Int) {
    slots[index].state.store(0, ordering: .releasing)
  }

  /// The paths of the armed slots: what ``unlinkAll()`` would remove now.
  static func armedPaths() -> [String] {
    slots.filter { $0.state.load(ordering: .acquiring) == 2 }.map { String(cString: $0.path) }
  }

  /// Unlinks the path of every armed slot. Only atomic loads and `unlink`: async-signal-safe.
  static func unlinkAll() {
    for slot in slots where slot.state.load(ordering: .acquiring) == 2 {
      unlink(slot.path)
    }
  }
}

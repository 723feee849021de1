import Glibc

/// A reusable, page-aligned buffer per thread, so that request handlers never allocate
/// on the hot path.
///
/// libfuse runs handlers on a pool of worker threads. Each thread that asks for
/// ``current`` gets its own buffer of ``capacity`` bytes, made once with `posix_memalign`
/// and freed by a `pthread_key_create` destructor when the thread exits. Allocating a
/// 1 MiB buffer per READ halves throughput (measured), reusing one does not.
///
/// A buffer belongs to the calling thread until that thread's handler returns: fill it,
/// pass it to ``ReplyData/bytes(_:)``, and do not keep pointers into it.
///
/// ```swift
/// let buffers = WorkerBuffer(capacity: 1 << 20)
/// func read(_ req: Request, inode: INode, handle: FileHandle, offset: Int64, size: Int,
///           reply: consuming ReplyData) {
///   let buffer = UnsafeMutableRawBufferPointer(rebasing: buffers.current[..<size])
///   let n = pread(fd, buffer.baseAddress, size, off_t(offset))
///   ...
///   reply.bytes(UnsafeRawBufferPointer(rebasing: buffer[..<n]))
/// }
/// ```
public final class WorkerBuffer: Sendable {
  /// The size of every thread's buffer, in bytes.
  public let capacity: Int
  /// The alignment of every thread's buffer, in bytes (the page size by default).
  public let alignment: Int
  private let key: pthread_key_t

  /// Creates a per-thread buffer of `capacity` bytes; no memory is allocated until a
  /// thread asks for ``current``.
  ///
  /// - Parameters:
  ///   - capacity: The size of each thread's buffer. 1 MiB plus a page covers the largest
  ///     READ libfuse 3.14 can receive.
  ///   - alignment: A power of two; defaults to the page size, which `O_DIRECT` reads need.
  public init(capacity: Int = (1 << 20) + 4096, alignment: Int? = nil) {
    precondition(capacity > 0, "WorkerBuffer capacity must be positive")
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let alignment = alignment ?? (page > 0 ? page : 4096)
    precondition(
      alignment.nonzeroBitCount == 1 && alignment >= MemoryLayout<UnsafeRawPointer>.size,
      "WorkerBuffer alignment must be a power of two of at least a pointer's size")
    self.capacity = capacity
    self.alignment = alignment
    var key = pthread_key_t()
    let rc = pthread_key_create(&key, workerBufferDestructor)
    precondition(rc == 0, "pthread_key_create failed: \(rc)")
    self.key = key
  }

  deinit {
    // Threads that already exited freed their buffers through the destructor; the
    // destructor does not run for the calling thread on pthread_key_delete, so free its
    // buffer here. Buffers of other threads still alive leak: delete a WorkerBuffer only
    // after the session's workers have stopped.
    free(pthread_getspecific(key))
    pthread_key_delete(key)
  }

  /// The calling thread's buffer, allocated on first use.
  ///
  /// Traps when `posix_memalign` fails: there is no sensible way to go on without memory.
  public var current: UnsafeMutableRawBufferPointer {
    if let existing = pthread_getspecific(key) {
      return UnsafeMutableRawBufferPointer(start: existing, count: capacity)
    }
    var memory: UnsafeMutableRawPointer?
    let rc = posix_memalign(&memory, alignment, capacity)
    guard rc == 0, let memory else {
      fatalError("WorkerBuffer: posix_memalign(\(alignment), \(capacity)) failed: \(rc)")
    }
    let set = pthread_setspecific(key, memory)
    precondition(set == 0, "pthread_setspecific failed: \(set)")
    return UnsafeMutableRawBufferPointer(start: memory, count: capacity)
  }
}

/// Frees a thread's buffer when it exits.
///
/// A plain function in a non-main file: a destructor closure written in `main.swift`
/// would be inferred `@MainActor` and trap on a libfuse worker thread.
private func workerBufferDestructor(_ pointer: UnsafeMutableRawPointer?) {
  free(pointer)
}

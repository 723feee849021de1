import CFuse
import Glibc
import SystemPackage

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

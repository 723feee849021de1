#if canImport(Glibc)
  import Glibc
#endif
import Dispatch
import SystemPackage

/// Big-endian encoding into a byte array.
struct ByteSink {
  var bytes: [UInt8] = []
  mutating func u8(_ v: UInt8) { bytes.append(v) }
  mutating func u16(_ v: UInt16) { for s in stride(from: 8, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt16(s))) } }
  mutating func u32(_ v: UInt32) { for s in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt32(s))) } }
  mutating func u64(_ v: UInt64) { for s in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt64(s))) } }
  mutating func raw(_ b: [UInt8]) { bytes += b }
  mutating func name(_ b: [UInt8]) { u8(UInt8(b.count)); raw(b) }
}

/// Writes a file through a temporary beside the destination, then fsyncs and renames it,
/// so an interrupted run never leaves a file that looks valid but is not.
public final class OutputFile: @unchecked Sendable {
  /// The destination path.
  public let path: String
  /// The temporary path being written.
  public let temporaryPath: String
  /// The descriptor of the temporary file.
  public let descriptor: FileDescriptor
  private var committed = false

  /// The temporary file currently being written, removed by ``removeInterruptedOutput()`` on a signal.
  nonisolated(unsafe) static var current: UnsafeMutablePointer<CChar>? = nil

  /// Creates the temporary file. Refuses an existing `path` (or a symlink there) unless `overwrite`.
  public init(path: String, overwrite: Bool) throws(FormatError) {
    self.path = path
    var st = stat()
    if lstat(path, &st) == 0 {
      if (st.st_mode & S_IFMT) == S_IFLNK && !overwrite {
        throw FormatError(.badValue, "output \(quoted(Array(path.utf8)))", at: 0, "is a symbolic link; give --force to replace the link (its target is left alone)")
      }
      if !overwrite {
        throw FormatError(.badValue, "output \(quoted(Array(path.utf8)))", at: 0, "already exists; give --force to replace it")
      }
    }
    let dir = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
    let base = path.split(separator: "/").last.map(String.init) ?? path
    temporaryPath = (dir.isEmpty ? "" : dir + "/") + ".\(base).mramfs-\(getpid()).tmp"
    let fd = Glibc.open(temporaryPath, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
    guard fd >= 0 else {
      throw FormatError(.io, "output \(quoted(Array(path.utf8)))", at: 0, "cannot create \(temporaryPath): \(Errno(rawValue: errno))")
    }
    descriptor = FileDescriptor(rawValue: fd)
    OutputFile.current = strdup(temporaryPath)
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
      if n > 0 { done += n } else if n < 0 && errno == EINTR { continue } else {
        throw FormatError(.io, "output \(quoted(Array(path.utf8)))", at: offset + UInt64(done), "write failed: \(Errno(rawValue: errno))")
      }
    }
  }

  /// Sets the file's final size (holes stay holes), fsyncs it and renames it into place.
  public func commit(size: UInt64) throws(FormatError) {
    guard ftruncate(descriptor.rawValue, off_t(size)) == 0, fsync(descriptor.rawValue) == 0 else {
      throw FormatError(.io, "output \(quoted(Array(path.utf8)))", at: size, "cannot finish: \(Errno(rawValue: errno))")
    }
    guard rename(temporaryPath, path) == 0 else {
      throw FormatError(.io, "output \(quoted(Array(path.utf8)))", at: 0, "cannot rename into place: \(Errno(rawValue: errno))")
    }
    committed = true
    let dir = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
    let dfd = Glibc.open(dir.isEmpty ? "/" : dir, O_RDONLY | O_DIRECTORY)
    if dfd >= 0 {
      fsync(dfd)
      Glibc.close(dfd)
    }
  }

  deinit {
    try? descriptor.close()
    if !committed { unlink(temporaryPath) }
    if let c = OutputFile.current { free(c); OutputFile.current = nil }
  }

  /// Removes the temporary file of an interrupted run; safe to call from a signal handler.
  public static func removeInterruptedOutput() {
    if let c = current { unlink(c) }
  }
}

/// Supplies the pages of one block to the writer.
public protocol PageSource: Sendable {
  /// Fills `buffer` (one page) with page `page`, returning false if the page is known to be zero
  /// (then `buffer` need not be filled).
  func page(_ page: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FormatError) -> Bool
  /// The first page at or after `from` that may hold data, or nil if none; lets sparse sources skip holes.
  func nextCandidate(from: UInt64) -> UInt64?
  /// How many pages from `first` on (at most `limit`, at least 1) may hold data and are
  /// cheaper to fetch together with ``pages(_:count:into:)`` than one by one.
  func candidateRun(from first: UInt64, limit: Int) -> Int
  /// Fills `buffer` (`count` pages) with the pages from `first` on; returns false if they
  /// are all known to be zero (then `buffer` need not be filled).
  func pages(_ first: UInt64, count: Int, into buffer: UnsafeMutableRawBufferPointer) throws(FormatError) -> Bool
}

extension PageSource {
  /// One page at a time.
  public func candidateRun(from first: UInt64, limit: Int) -> Int { 1 }

  /// Page by page, zero-filling pages known to be zero.
  public func pages(_ first: UInt64, count: Int, into buffer: UnsafeMutableRawBufferPointer) throws(FormatError) -> Bool {
    let size = buffer.count / max(count, 1)
    var any = false
    for i in 0..<count {
      let one = UnsafeMutableRawBufferPointer(rebasing: buffer[i * size..<(i + 1) * size])
      if try page(first + UInt64(i), into: one) { any = true } else { memset(one.baseAddress!, 0, size) }
    }
    return any
  }
}

/// A block to write.
public struct BlockPlan: Sendable {
  public var name: BlockName
  public var length: UInt64
  public var source: any PageSource
  /// For classic output: how many times each present page is sent (dirty passes); 1 = once.
  public var classicRepeats: @Sendable (UInt64) -> Int = { _ in 1 }

  public init(name: BlockName, length: UInt64, source: any PageSource) {
    self.name = name
    self.length = length
    self.source = source
  }
}

/// Everything that describes a stream to write.
public struct StreamPlan: Sendable {
  /// Bytes before the stream (a libvirt header); offsets in the file are absolute.
  public var prefix: [UInt8] = []
  public var machineType: String
  /// Capabilities for the configuration record; `mapped-ram` is added or removed by the format.
  public var capabilities: [String] = []
  public var uuid: [UInt8]? = nil
  public var targetPageBits: UInt32? = nil
  public var format: StreamFormat = .mappedRAM
  /// Alignment of pages regions: 1 MiB as QEMU writes them, or 4 KiB.
  public var alignment: UInt64 = 1 << 20
  public var blocks: [BlockPlan] = []
  public var ramSectionID: UInt32 = 1
  /// Records that go between the ram START and the ram END, copied verbatim (commands, early devices).
  public var middle: [UInt8] = []
  /// Everything after the ram END: device sections, EOF and the VM description, verbatim.
  /// Empty means just the EOF byte.
  public var tail: [UInt8] = []
  /// Worker threads for page copying.
  public var threads = 2

  public init(machineType: String) {
    self.machineType = machineType
  }
}

/// What a write did.
public struct WriteSummary: Sendable, Codable {
  public var path: String
  public var format: String
  public var bytesWritten: UInt64
  public var fileSize: UInt64
  public var allocatedBytes: UInt64
  public var ramBytes: UInt64
  public var populatedPages: UInt64
  public var seconds: Double
}

/// Writes migration streams: mapped-ram (QEMU 9.0+), RFC v1 fixed-ram, or classic.
public enum StreamWriter {
  static let pageSize: UInt64 = 4096

  /// Writes `plan` to `output`, calling `progress(bytesDone, bytesTotal)` now and then.
  public static func write(
    _ plan: StreamPlan, to output: OutputFile, progress: (@Sendable (UInt64, UInt64) -> Void)? = nil
  ) throws(FormatError) -> WriteSummary {
    let start = DispatchTime.now().uptimeNanoseconds
    var s = ByteSink()
    s.raw(plan.prefix)
    s.u32(0x5145_564d)
    s.u32(3)
    var caps = plan.capabilities.filter { $0 != "mapped-ram" && $0 != "fixed-ram" }
    switch plan.format {
    case .mappedRAM: caps.append("mapped-ram")
    case .fixedRAM, .fixedRAMRFC1: caps.append("fixed-ram")
    case .classic: break
    }
    s.u8(0x07)
    s.u32(UInt32(plan.machineType.utf8.count))
    s.raw(Array(plan.machineType.utf8))
    if let bits = plan.targetPageBits {
      s.u8(0x05); s.name(Array("configuration/target-page-bits".utf8)); s.u32(1); s.u32(bits)
    }
    if !caps.isEmpty {
      s.u8(0x05); s.name(Array("configuration/capabilities".utf8)); s.u32(1)
      s.u32(UInt32(caps.count))
      for c in caps { s.name(Array(c.utf8)) }
    }
    if let uuid = plan.uuid {
      s.u8(0x05); s.name(Array("configuration/uuid".utf8)); s.u32(1); s.raw(uuid)
    }
    let id = plan.ramSectionID
    s.u8(0x01); s.u32(id); s.name(Array("ram".utf8)); s.u32(0); s.u32(4)
    let total = plan.blocks.reduce(UInt64(0)) { $0 + $1.length }
    s.u64(total | RAMFlag.memSize)
    var offset: UInt64 = 0
    var populated: UInt64 = 0
    var written: UInt64 = 0
    let ramBytes = total
    let counter = ProgressCounter(total: ramBytes, report: progress)
    let hasMRAddr = caps.contains("x-ignore-shared")
    if plan.format == .classic {
      for b in plan.blocks {
        s.name(b.name.bytes); s.u64(b.length)
        if hasMRAddr { s.u64(0) }
      }
      s.u64(RAMFlag.eos)
      s.u8(0x7e); s.u32(id)
      try output.write(s.bytes, at: 0)
      offset = UInt64(s.bytes.count)
      written += offset
      // One PART with every present page, as a stopped guest's save would hold.
      var part = ByteSink()
      part.u8(0x02); part.u32(id)
      try output.write(part.bytes, at: offset)
      offset += UInt64(part.bytes.count)
      let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(pageSize), alignment: 4096)
      defer { buffer.deallocate() }
      for b in plan.blocks {
        var first = true
        var p = b.source.nextCandidate(from: 0) ?? b.length / pageSize
        let pages = b.length / pageSize
        while p < pages {
          if try b.source.page(p, into: buffer), !isZero(UnsafeRawBufferPointer(buffer)) {
            populated += 1
            for _ in 0..<max(1, b.classicRepeats(p)) {
              var rec = ByteSink()
              rec.u64(p * pageSize | RAMFlag.page | (first ? 0 : RAMFlag.continue))
              if first { rec.name(b.name.bytes) }
              first = false
              try output.write(rec.bytes, at: offset)
              offset += UInt64(rec.bytes.count)
              try output.write(UnsafeRawBufferPointer(buffer), at: offset)
              offset += pageSize
              written += UInt64(rec.bytes.count) + pageSize
            }
          }
          counter.add(pageSize)
          p = b.source.nextCandidate(from: p + 1) ?? pages
        }
      }
      var end = ByteSink()
      end.u64(RAMFlag.eos); end.u8(0x7e); end.u32(id)
      try output.write(end.bytes, at: offset)
      offset += UInt64(end.bytes.count)
    } else {
      for b in plan.blocks {
        let pages = b.length / pageSize
        s.name(b.name.bytes); s.u64(b.length)
        if hasMRAddr { s.u64(0) }
        let h = offset + UInt64(s.bytes.count)
        let bitmapSize: UInt64
        let bitmapOffset: UInt64
        if plan.format == .fixedRAMRFC1 {
          bitmapSize = (pages + 63) / 64 * 8
          bitmapOffset = h + 12
        } else {
          bitmapSize = (pages + 63) / 64 * 8
          bitmapOffset = h + 28
        }
        let pagesOffset = (bitmapOffset + bitmapSize + plan.alignment - 1) / plan.alignment * plan.alignment
        if plan.format == .fixedRAMRFC1 {
          s.u32(UInt32(bitmapSize)); s.u64(pagesOffset)
        } else {
          s.u32(1); s.u64(pageSize); s.u64(bitmapOffset); s.u64(pagesOffset)
        }
        try output.write(s.bytes, at: offset)
        written += UInt64(s.bytes.count)
        s = ByteSink()
        let (bitmap, count, bytes) = try copyPages(b, pagesOffset: pagesOffset, output: output, threads: plan.threads, counter: counter)
        populated += count
        written += bytes
        try output.write(bitmap, at: bitmapOffset)
        written += UInt64(bitmap.count)
        offset = pagesOffset + b.length
      }
      s.u64(RAMFlag.eos); s.u8(0x7e); s.u32(id)
      try output.write(s.bytes, at: offset)
      offset += UInt64(s.bytes.count)
    }
    var tail = ByteSink()
    tail.raw(plan.middle)
    tail.u8(0x03); tail.u32(id)
    if plan.format != .fixedRAMRFC1 { tail.u64(RAMFlag.eos) }
    tail.u8(0x7e); tail.u32(id)
    if plan.tail.isEmpty { tail.u8(0x00) } else { tail.raw(plan.tail) }
    try output.write(tail.bytes, at: offset)
    offset += UInt64(tail.bytes.count)
    written += UInt64(tail.bytes.count)
    try output.commit(size: offset)
    var st = stat()
    _ = stat(output.path, &st)
    counter.finish()
    return WriteSummary(
      path: output.path, format: plan.format.rawValue, bytesWritten: written, fileSize: offset,
      allocatedBytes: UInt64(st.st_blocks) * 512, ramBytes: ramBytes, populatedPages: populated,
      seconds: Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
  }

  /// Copies one block's non-zero pages to their fixed offsets on several threads; returns its bitmap.
  static func copyPages(
    _ b: BlockPlan, pagesOffset: UInt64, output: OutputFile, threads: Int, counter: ProgressCounter
  ) throws(FormatError) -> ([UInt8], UInt64, UInt64) {
    let pages = b.length / pageSize
    let words = Int((pages + 63) / 64)
    let bitmap = UnsafeMutablePointer<UInt64>.allocate(capacity: max(words, 1))
    bitmap.initialize(repeating: 0, count: max(words, 1))
    defer { bitmap.deallocate() }
    // Chunks of whole bitmap words, so no two threads share a word.
    let chunkPages: UInt64 = 64 * 256  // 64 MiB of RAM
    let chunks = Int((pages + chunkPages - 1) / chunkPages)
    let failures = ErrorBox()
    let stats = ErrorBox()
    let bm = SendablePointer(bitmap)
    let next = Counter()
    DispatchQueue.concurrentPerform(iterations: max(1, min(threads, chunks))) { _ in
      // Runs of up to 1 MiB are read with one call and written with one call per run of non-zero pages.
      let batch = Int(max(1, (1 << 20) / pageSize))
      let ps = Int(pageSize)
      let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: batch * ps, alignment: 4096)
      defer { buffer.deallocate() }
      var count: UInt64 = 0
      var bytes: UInt64 = 0
      while failures.error == nil {
        let c = next.next()
        if c >= chunks { break }
        let first = UInt64(c) * chunkPages
        let last = min(pages, first + chunkPages)
        var p = b.source.nextCandidate(from: first) ?? last
        var lastReported = first
        do throws(FormatError) {
          while p < last {
            // Gather consecutive candidate pages (fetched in the source's own runs) into one
            // batch, so that scattered sources still get one write per run of data.
            let room = Int(min(UInt64(batch), last - p))
            var n = 0
            var any = false
            // The next candidate after the batch, when the gathering loop already asked for it.
            var following: UInt64?? = nil
            while n < room {
              let k = max(1, min(b.source.candidateRun(from: p + UInt64(n), limit: room - n), room - n))
              let part = UnsafeMutableRawBufferPointer(rebasing: buffer[n * ps..<(n + k) * ps])
              if try b.source.pages(p + UInt64(n), count: k, into: part) {
                any = true
              } else {
                memset(part.baseAddress!, 0, part.count)
              }
              n += k
              if n < room {
                let next = b.source.nextCandidate(from: p + UInt64(n))
                if next != p + UInt64(n) {
                  following = .some(next)
                  break
                }
              }
            }
            let run = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n * ps])
            if any {
              var i = 0
              while i < n {
                if isZero(UnsafeRawBufferPointer(rebasing: run[i * ps..<(i + 1) * ps])) {
                  i += 1
                  continue
                }
                var j = i + 1
                while j < n && !isZero(UnsafeRawBufferPointer(rebasing: run[j * ps..<(j + 1) * ps])) { j += 1 }
                try output.write(
                  UnsafeRawBufferPointer(rebasing: run[i * ps..<j * ps]), at: pagesOffset + (p + UInt64(i)) * pageSize)
                for k in p + UInt64(i)..<p + UInt64(j) { bm.pointer[Int(k / 64)] |= 1 << (k % 64) }
                count += UInt64(j - i)
                bytes += UInt64(j - i) * pageSize
                i = j
              }
            }
            p += UInt64(n)
            if p - lastReported >= 4096 {
              counter.add((p - lastReported) * pageSize)
              lastReported = p
            }
            p = (following ?? b.source.nextCandidate(from: p)) ?? last
          }
        } catch {
          failures.set(error)
        }
        counter.add((max(last, lastReported) - lastReported) * pageSize)
      }
      stats.add(count, bytes)
    }
    if let e = failures.error { throw e }
    var out = [UInt8](repeating: 0, count: words * 8)
    for w in 0..<words {
      let v = bitmap[w]
      for i in 0..<8 { out[w * 8 + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }
    return (out, stats.count, stats.bytes)
  }

  /// Whether a page is all zeros.
  @inlinable
  public static func isZero(_ page: UnsafeRawBufferPointer) -> Bool {
    let words = page.count / 8
    var acc: UInt64 = 0
    for i in 0..<words {
      acc |= page.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)
      if i & 63 == 63 && acc != 0 { return false }
    }
    for i in words * 8..<page.count { acc |= UInt64(page[i]) }
    return acc == 0
  }
}

/// A pointer shared by worker threads that write disjoint parts of it.
struct SendablePointer: @unchecked Sendable {
  let pointer: UnsafeMutablePointer<UInt64>
  init(_ p: UnsafeMutablePointer<UInt64>) { pointer = p }
}

/// Hands out chunk numbers to worker threads.
final class Counter: @unchecked Sendable {
  private var value = 0
  private var lock = pthread_mutex_t()
  init() { pthread_mutex_init(&lock, nil) }
  deinit { pthread_mutex_destroy(&lock) }
  func next() -> Int {
    pthread_mutex_lock(&lock)
    defer { pthread_mutex_unlock(&lock) }
    value += 1
    return value - 1
  }
}

/// The first error of several threads, and their summed counts.
final class ErrorBox: @unchecked Sendable {
  private var lock = pthread_mutex_t()
  private(set) var error: FormatError? = nil
  private(set) var count: UInt64 = 0
  private(set) var bytes: UInt64 = 0
  init() { pthread_mutex_init(&lock, nil) }
  deinit { pthread_mutex_destroy(&lock) }
  func set(_ e: FormatError) {
    pthread_mutex_lock(&lock)
    if error == nil { error = e }
    pthread_mutex_unlock(&lock)
  }
  func add(_ c: UInt64, _ b: UInt64) {
    pthread_mutex_lock(&lock)
    count += c
    bytes += b
    pthread_mutex_unlock(&lock)
  }
}

/// Counts progress across threads and reports it at most a few times a second.
final class ProgressCounter: @unchecked Sendable {
  let total: UInt64
  let report: (@Sendable (UInt64, UInt64) -> Void)?
  private var done: UInt64 = 0
  private var lastReport: UInt64 = 0
  private var lock = pthread_mutex_t()
  init(total: UInt64, report: (@Sendable (UInt64, UInt64) -> Void)?) {
    self.total = total
    self.report = report
    pthread_mutex_init(&lock, nil)
  }
  deinit { pthread_mutex_destroy(&lock) }
  func add(_ n: UInt64) {
    guard let report else { return }
    pthread_mutex_lock(&lock)
    done += n
    let now = DispatchTime.now().uptimeNanoseconds
    let due = now - lastReport > 200_000_000
    if due { lastReport = now }
    let d = done
    pthread_mutex_unlock(&lock)
    if due { report(min(d, total), total) }
  }
  func finish() { report?(total, total) }
}

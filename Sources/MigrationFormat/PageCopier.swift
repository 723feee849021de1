#if canImport(Glibc)
  import Glibc
#endif
import Dispatch
import Synchronization

/// Copies a block's pages into a mapped-ram file on several threads and builds its bitmap.
///
/// The block is cut into chunks of 64 MiB of RAM (whole bitmap words, so no two threads ever
/// share a word); threads take chunks in turn. Inside a chunk, runs of candidate pages are read
/// together (up to 1 MiB, in the source's own runs) and each run of non-zero pages is written
/// with one call. Zero pages are skipped and their bits stay clear.
enum PageCopier {
  static let pageSize: UInt64 = 4096

  /// What a copy did.
  struct Result {
    /// The block's bitmap as little-endian 64-bit words, as an x86-64 QEMU writes it.
    var bitmap: [UInt8]
    /// Pages written.
    var pages: UInt64
    /// Bytes written.
    var bytes: UInt64
  }

  /// Copies one block's non-zero pages to their fixed offsets on several threads.
  static func copy(
    _ b: BlockPlan, pagesOffset: UInt64, output: OutputFile, threads: Int, counter: ProgressCounter
  ) throws(FormatError) -> Result {
    let pages = b.length / pageSize
    let words = Int((pages + 63) / 64)
    let bitmap = UnsafeMutablePointer<UInt64>.allocate(capacity: max(words, 1))
    bitmap.initialize(repeating: 0, count: max(words, 1))
    defer { bitmap.deallocate() }
    // Chunks of whole bitmap words, so no two threads share a word.
    let chunkPages: UInt64 = 64 * 256  // 64 MiB of RAM
    let chunks = Int((pages + chunkPages - 1) / chunkPages)
    let failure = Mutex<FormatError?>(nil)
    let failed = Atomic<Bool>(false)
    let pagesCopied = Atomic<UInt64>(0)
    let bytesCopied = Atomic<UInt64>(0)
    let bm = SendablePointer(bitmap)
    let nextChunk = Atomic<Int>(0)
    DispatchQueue.concurrentPerform(iterations: max(1, min(threads, chunks))) { _ in
      // Runs of up to 1 MiB are read with one call and written with one call per run of non-zero pages.
      let batch = Int(max(1, (1 << 20) / pageSize))
      let ps = Int(pageSize)
      let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: batch * ps, alignment: 4096)
      defer { buffer.deallocate() }
      var count: UInt64 = 0
      var bytes: UInt64 = 0
      while !failed.load(ordering: .relaxed) {
        let c = nextChunk.wrappingAdd(1, ordering: .relaxed).oldValue
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
                if StreamWriter.isZero(UnsafeRawBufferPointer(rebasing: run[i * ps..<(i + 1) * ps])) {
                  i += 1
                  continue
                }
                var j = i + 1
                while j < n && !StreamWriter.isZero(UnsafeRawBufferPointer(rebasing: run[j * ps..<(j + 1) * ps])) { j += 1 }
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
          failure.withLock { if $0 == nil { $0 = error } }
          failed.store(true, ordering: .relaxed)
        }
        counter.add((max(last, lastReported) - lastReported) * pageSize)
      }
      pagesCopied.wrappingAdd(count, ordering: .relaxed)
      bytesCopied.wrappingAdd(bytes, ordering: .relaxed)
    }
    if let e = failure.withLock({ $0 }) { throw e }
    var out = [UInt8](repeating: 0, count: words * 8)
    for w in 0..<words {
      let v = bitmap[w]
      for i in 0..<8 { out[w * 8 + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }
    return Result(bitmap: out, pages: pagesCopied.load(ordering: .relaxed), bytes: bytesCopied.load(ordering: .relaxed))
  }

}

/// A pointer shared by worker threads that write disjoint parts of it.
struct SendablePointer: @unchecked Sendable {
  let pointer: UnsafeMutablePointer<UInt64>
  init(_ p: UnsafeMutablePointer<UInt64>) { pointer = p }
}

/// Counts progress across threads and reports it at most five times a second.
final class ProgressCounter: Sendable {
  let total: UInt64
  let report: (@Sendable (UInt64, UInt64) -> Void)?
  private let state = Mutex<(done: UInt64, lastReport: UInt64)>((0, 0))

  init(total: UInt64, report: (@Sendable (UInt64, UInt64) -> Void)?) {
    self.total = total
    self.report = report
  }

  func add(_ n: UInt64) {
    guard let report else { return }
    let now = DispatchTime.now().uptimeNanoseconds
    let due: UInt64? = state.withLock { s in
      s.done += n
      guard now - s.lastReport > 200_000_000 else { return nil }
      s.lastReport = now
      return s.done
    }
    if let d = due { report(min(d, total), total) }
  }

  func finish() { report?(total, total) }
}

import Foundation
import MigrationFormat
import MigrationFormatTestSupport
import Testing

#if canImport(Glibc)
  import Glibc
#endif

@Suite("Writing from raw files")
struct WriterLibraryTests {
  /// A raw input of `pages` pages (the last one partial): data runs longer than one
  /// 1 MiB batch, pages of explicit zeros inside runs, and real holes (never written).
  static func makeInput(pages: Int) throws -> (path: String, bytes: [UInt8]) {
    let path = try temporaryFile([], name: "raw.bin")
    let fd = open(path, O_WRONLY)
    defer { close(fd) }
    var bytes = [UInt8](repeating: 0, count: pages * 4096 - 1000)
    for p in 0..<pages {
      let inHole = (300..<560).contains(p) || p % 97 == 5
      let explicitZero = p % 13 == 0
      guard !inHole else { continue }
      let start = p * 4096
      let end = min(bytes.count, start + 4096)
      if !explicitZero {
        for i in start..<end { bytes[i] = UInt8(truncatingIfNeeded: p &* 31 &+ (i - start) | 1) }
      }
      _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + start, end - start, off_t(start)) }
    }
    _ = ftruncate(fd, off_t(bytes.count))
    return (path, bytes)
  }

  @Test("create: holes, zero pages and a partial last page, in runs across batch edges", arguments: [1, 2, 3])
  func rawRoundTrip(threads: Int) throws {
    let (input, bytes) = try Self.makeInput(pages: 1100)
    let raw = try ImageFile(path: input)
    var plan = StreamPlan(machineType: "pc-i440fx-10.0")
    plan.threads = threads
    let length = (raw.size + 4095) / 4096 * 4096
    plan.blocks = [
      BlockPlan(
        name: BlockName("pc.ram"), length: length,
        source: RawFileSource(file: raw, segments: [.init(blockOffset: 0, fileOffset: 0, length: raw.size)]))
    ]
    let out = input + ".mapped"
    let summary = try StreamWriter.write(plan, to: try OutputFile(path: out, overwrite: false))
    let file = try MigrationFile(path: out)
    let block = file.blocks[0]
    let expectedPopulated = (0..<1100).filter { p in
      let s = p * 4096
      return bytes[s..<min(bytes.count, s + 4096)].contains { $0 != 0 }
    }
    #expect(summary.populatedPages == UInt64(expectedPopulated.count))
    #expect(block.populatedPages == UInt64(expectedPopulated.count))
    for p in 0..<1100 { #expect(block.isPresent(page: UInt64(p)) == expectedPopulated.contains(p), "page \(p)") }
    var got = try readAll(file, 0)
    #expect(got.count == Int(length))
    got.removeLast(got.count - bytes.count)
    #expect(got == bytes)
  }
}

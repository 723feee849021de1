/// A forward reader over an ``ImageFile`` with a small buffer.
///
/// Verbs follow SwiftNIO's `ByteBuffer`: `read…` advances, and the byte
/// order is part of each method's name. Every read is bounds-checked against
/// the file size and reports the structure it was reading.
struct StreamCursor {
  let file: ImageFile
  /// Absolute offset of the next byte.
  private(set) var offset: UInt64
  private var buffer: [UInt8] = []
  private var bufferStart: UInt64 = 0
  private static let chunk = 64 * 1024
  private static let smallChunk = 512

  init(file: ImageFile, offset: UInt64) {
    self.file = file
    self.offset = offset
  }

  /// Bytes left between the cursor and end of file.
  var remaining: UInt64 { file.size > offset ? file.size - offset : 0 }

  var atEnd: Bool { offset >= file.size }

  mutating func seek(to newOffset: UInt64) {
    offset = newOffset
  }

  mutating func skip(_ count: UInt64, _ structure: @autoclosure () -> String) throws(FormatError) {
    let (end, o) = offset.addingReportingOverflow(count)
    guard !o, end <= file.size else {
      throw FormatError.truncated(structure(), at: offset, needed: count, fileSize: file.size)
    }
    offset = end
  }

  /// Makes sure `count` bytes at the cursor are in the buffer.
  private mutating func fill(_ count: Int, _ structure: () -> String) throws(FormatError) {
    let have = bufferStart + UInt64(buffer.count)
    if offset >= bufferStart && offset + UInt64(count) <= have { return }
    guard UInt64(count) <= remaining else {
      throw FormatError.truncated(structure(), at: offset, needed: UInt64(count), fileSize: file.size)
    }
    // After a skip past the buffer (over a page's data, say) the next record is most
    // likely a small header followed by another skip: read a little, not a chunk.
    let skippedAhead = !buffer.isEmpty && offset > have
    let want = UInt64(max(count, skippedAhead ? Self.smallChunk : Self.chunk))
    let take = min(want, remaining)
    buffer = try file.bytes(at: offset, count: take, structure())
    bufferStart = offset
  }

  mutating func peekUInt8(_ structure: @autoclosure () -> String) throws(FormatError) -> UInt8 {
    try fill(1, structure)
    return buffer[Int(offset - bufferStart)]
  }

  mutating func readUInt8(_ structure: @autoclosure () -> String) throws(FormatError) -> UInt8 {
    let v = try peekUInt8(structure())
    offset += 1
    return v
  }

  mutating func readUInt16BE(_ structure: @autoclosure () -> String) throws(FormatError) -> UInt16 {
    UInt16(truncatingIfNeeded: try readBE(2, structure))
  }

  mutating func readUInt32BE(_ structure: @autoclosure () -> String) throws(FormatError) -> UInt32 {
    UInt32(truncatingIfNeeded: try readBE(4, structure))
  }

  mutating func readUInt64BE(_ structure: @autoclosure () -> String) throws(FormatError) -> UInt64 {
    try readBE(8, structure)
  }

  mutating func peekUInt64BE(_ structure: @autoclosure () -> String) throws(FormatError) -> UInt64 {
    let start = offset
    let v = try readBE(8, structure)
    offset = start
    return v
  }

  private mutating func readBE(_ n: Int, _ structure: () -> String) throws(FormatError) -> UInt64 {
    try fill(n, structure)
    var v: UInt64 = 0
    let base = Int(offset - bufferStart)
    for i in 0..<n { v = v << 8 | UInt64(buffer[base + i]) }
    offset += UInt64(n)
    return v
  }

  /// Reads `count` bytes; `count` must already be bounded (it is at most 255 or checked by the caller).
  mutating func readBytes(_ count: Int, _ structure: @autoclosure () -> String) throws(FormatError) -> [UInt8] {
    if count <= Self.chunk {
      try fill(count, structure)
      let base = Int(offset - bufferStart)
      offset += UInt64(count)
      return Array(buffer[base..<base + count])
    }
    let r = try file.bytes(at: offset, count: UInt64(count), structure())
    offset += UInt64(count)
    return r
  }
}

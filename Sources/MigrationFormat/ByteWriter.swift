/// Appends integers and bytes to a byte array, with the byte order in every method's name.
///
/// The one encoder of the package: QEMU's stream is big-endian (``appendUInt32BE(_:)``), ELF
/// cores and bitmaps of x86 hosts are little-endian (``appendUInt32LE(_:)``). Reading goes the
/// other way through ``StreamCursor`` (`readUInt32BE`), with the same naming.
public struct ByteWriter: Sendable {
  /// The bytes written so far.
  public private(set) var bytes: [UInt8] = []

  /// An empty writer.
  public init() {}

  /// The number of bytes written so far.
  public var count: Int { bytes.count }

  /// Appends one byte.
  public mutating func appendUInt8(_ v: UInt8) { bytes.append(v) }

  /// Appends `v` as 2 big-endian bytes.
  public mutating func appendUInt16BE(_ v: UInt16) { appendBE(UInt64(v), 2) }
  /// Appends `v` as 4 big-endian bytes.
  public mutating func appendUInt32BE(_ v: UInt32) { appendBE(UInt64(v), 4) }
  /// Appends `v` as 8 big-endian bytes.
  public mutating func appendUInt64BE(_ v: UInt64) { appendBE(v, 8) }

  /// Appends `v` as 2 little-endian bytes.
  public mutating func appendUInt16LE(_ v: UInt16) { appendLE(UInt64(v), 2) }
  /// Appends `v` as 4 little-endian bytes.
  public mutating func appendUInt32LE(_ v: UInt32) { appendLE(UInt64(v), 4) }
  /// Appends `v` as 8 little-endian bytes.
  public mutating func appendUInt64LE(_ v: UInt64) { appendLE(v, 8) }

  /// Appends raw bytes.
  public mutating func append(_ b: some Sequence<UInt8>) { bytes.append(contentsOf: b) }

  /// Appends `n` zero bytes.
  public mutating func appendZeros(_ n: Int) { bytes.append(contentsOf: repeatElement(0, count: n)) }

  /// Appends a QEMU counted name: one length byte, then the bytes (at most 255 of them).
  public mutating func appendCountedName(_ b: [UInt8]) {
    precondition(b.count <= 255, "a counted name holds at most 255 bytes")
    appendUInt8(UInt8(b.count))
    append(b)
  }

  /// Appends an ELF note: namesz, descsz and type (little-endian u32), the NUL-terminated name
  /// and the descriptor, each padded to 4 bytes.
  public mutating func appendELFNote(name: String, type: UInt32, desc: [UInt8]) {
    let n = Array(name.utf8) + [0]
    appendUInt32LE(UInt32(n.count))
    appendUInt32LE(UInt32(desc.count))
    appendUInt32LE(type)
    append(n)
    appendZeros((4 - n.count % 4) % 4)
    append(desc)
    appendZeros((4 - desc.count % 4) % 4)
  }

  private mutating func appendBE(_ v: UInt64, _ n: Int) {
    for i in stride(from: n - 1, through: 0, by: -1) { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) }
  }

  private mutating func appendLE(_ v: UInt64, _ n: Int) {
    for i in 0..<n { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) }
  }
}

extension Array where Element == UInt8 {
  /// The little-endian integer of `count` (at most 8) bytes at `offset`; nil when they are not all there.
  public func loadLE(_ offset: Int, _ count: Int) -> UInt64? {
    guard offset >= 0, count >= 0, count <= 8, offset <= self.count - count else { return nil }
    var v: UInt64 = 0
    for i in stride(from: count - 1, through: 0, by: -1) { v = v << 8 | UInt64(self[offset + i]) }
    return v
  }

  /// The big-endian integer of `count` (at most 8) bytes at `offset`; nil when they are not all there.
  public func loadBE(_ offset: Int, _ count: Int) -> UInt64? {
    guard offset >= 0, count >= 0, count <= 8, offset <= self.count - count else { return nil }
    var v: UInt64 = 0
    for i in 0..<count { v = v << 8 | UInt64(self[offset + i]) }
    return v
  }
}

/// One RAM page record of a classic stream (FORMAT.md §2.8).
struct ClassicRecord: Sendable {
  /// What the record carries.
  enum Payload: Sendable {
    /// A ZERO record: the whole page is `fill` (QEMU only sends 0).
    case zero(fill: UInt8)
    /// A PAGE record: the page's bytes at file offset `dataOffset`.
    case page(dataOffset: UInt64)
  }
  /// Absolute offset of the record's flags-and-address word.
  var offset: UInt64
  /// The block the record writes (an index into the stream's blocks).
  var block: Int
  /// The page's byte offset in its block.
  var address: UInt64
  var payload: Payload
}

/// Reads the page records of a classic `ram` section body, one at a time, up to its EOS.
///
/// The one reader of classic records: the stream walk (to check them and step over them)
/// and the converter (to index where each page's last write is) both use it. A record that
/// does not name its block (CONTINUE) refers to the block of the record before it, which may
/// be in an earlier section (QEMU keeps it across iterations), so the state lives in
/// ``lastBlock`` and is handed from one section's reader to the next.
struct ClassicRecordReader {
  /// Where the next record starts.
  var cursor: StreamCursor
  /// The stream's blocks, for names and lengths.
  let blocks: [RAMBlock]
  /// The target page size: the low bits of each record word are its flags.
  let pageSize: UInt64
  /// The block of the last record that named one.
  var lastBlock: Int?

  init(file: ImageFile, at offset: UInt64, blocks: [RAMBlock], pageSize: UInt64, lastBlock: Int?) {
    cursor = StreamCursor(file: file, offset: offset)
    self.blocks = blocks
    self.pageSize = pageSize
    self.lastBlock = lastBlock
  }

  /// The next record, or nil after the body's EOS (the cursor is then right after it).
  mutating func next() throws(FormatError) -> ClassicRecord? {
    let mask = pageSize - 1
    while true {
      let at = cursor.offset
      let w = try cursor.readUInt64BE("ram page record")
      let flags = w & mask
      if flags & RAMFlag.eos != 0 { return nil }
      if flags == RAMFlag.multifdFlush { continue }
      if flags & (RAMFlag.xbzrle | RAMFlag.hook | RAMFlag.compressPage) != 0 {
        let what =
          flags & RAMFlag.xbzrle != 0 ? "XBZRLE" : flags & RAMFlag.hook != 0 ? "RDMA hook" : "compressed page"
        throw FormatError(.unsupported, "ram page record", at: at, "\(what) record (flags \(hex(flags)))")
      }
      guard flags & (RAMFlag.zero | RAMFlag.page) != 0 else {
        throw FormatError(.badValue, "ram page record", at: at, "flags \(hex(flags)), expected ZERO, PAGE or EOS")
      }
      if flags & RAMFlag.continue == 0 {
        let len = try cursor.readUInt8("ram page record")
        let name = try cursor.readBytes(Int(len), "ram page record")
        lastBlock = blocks.firstIndex { $0.name.bytes == name }
        if lastBlock == nil {
          throw FormatError(.badValue, "ram page record", at: at, "unknown block \(quoted(name))")
        }
      }
      guard let b = lastBlock else {
        throw FormatError(.badValue, "ram page record", at: at, "CONTINUE with no block before it")
      }
      let address = w & ~mask
      guard address < blocks[b].length else {
        throw FormatError(
          .badValue, "ram page record", at: at,
          "offset \(hex(address)) is past the end of block \(blocks[b].name) (\(hex(blocks[b].length)))")
      }
      if flags & RAMFlag.zero != 0 {
        let fill = try cursor.readUInt8("ram zero-page record")
        return ClassicRecord(offset: at, block: b, address: address, payload: .zero(fill: fill))
      }
      let data = cursor.offset
      try cursor.skip(pageSize, "ram page record")
      return ClassicRecord(offset: at, block: b, address: address, payload: .page(dataOffset: data))
    }
  }
}

// The `ram` section's START: MEM_SIZE, the block list, and each block's mapped-ram,
// fixed-ram or RFC v1 fixed-ram header and bitmap (FORMAT.md §2-§4).

extension StreamParser {
  mutating func parseRAMStart(_ c: inout StreamCursor, at: UInt64) throws(FormatError) {
    let mask = targetPageSize - 1
    let wAt = c.offset
    let w = try c.readUInt64BE("ram MEM_SIZE record")
    guard w & mask == RAMFlag.memSize else {
      throw FormatError(
        .badValue, "ram MEM_SIZE record", at: wAt, "flags \(hex(w & mask)), expected 0x4 (MEM_SIZE)")
    }
    memorySize = w & ~mask
    if capabilities.contains("mapped-ram") {
      format = .mappedRAM
    } else if capabilities.contains("fixed-ram") {
      format = .fixedRAM  // refined to .fixedRAMRFC1 at the first block (FORMAT.md §3.4)
    } else if sawConfiguration {
      format = .classic
    }
    let hasMRAddr = capabilities.contains("x-ignore-shared")
    var remaining = memorySize
    var names = Set<[UInt8]>()
    var first = true
    while remaining > 0 {
      guard blocks.count < Limits.blockCount else {
        throw FormatError(
          .limitExceeded, "ram block list", at: c.offset, "more than \(Limits.blockCount) blocks")
      }
      let entryAt = c.offset
      let len = try c.readUInt8("ram block entry")
      guard len > 0 else {
        throw FormatError(.badValue, "ram block entry", at: entryAt, "block name length 0")
      }
      let nameBytes = try c.readBytes(Int(len), "ram block entry")
      let name = BlockName(bytes: nameBytes)
      let s = "ram block entry \(quoted(nameBytes))"
      if nameBytes.contains(0) {
        throw FormatError(.badValue, s, at: entryAt + 1, "block name contains a NUL byte")
      }
      if name.string == nil {
        throw FormatError(.badValue, s, at: entryAt + 1, "block name is not valid UTF-8")
      }
      guard names.insert(nameBytes).inserted else {
        throw FormatError(.duplicate, s, at: entryAt, "a second block with this name")
      }
      let lengthAt = c.offset
      let used = try c.readUInt64BE(s)
      guard used <= Limits.blockLength else {
        throw FormatError(
          .limitExceeded, s, at: lengthAt, "used_length \(hex(used)) is above the limit of 64 TiB")
      }
      guard used <= remaining else {
        throw FormatError(
          .badValue, s, at: lengthAt,
          "used_length \(hex(used)) overshoots the MEM_SIZE total \(hex(memorySize)) (\(hex(remaining)) left)")
      }
      let mrAddr = hasMRAddr ? try c.readUInt64BE(s) : nil
      if first && !sawConfiguration {
        format = try detectWithoutConfiguration(&c)
      }
      if first && format == .fixedRAM {
        // Generation B starts with version 1; generation A with a bitmap size that is never 1.
        let v = try c.peekUInt64BE("fixed-ram header of block \(quoted(name.bytes))") >> 32
        if v != 1 { format = .fixedRAMRFC1 }
      }
      first = false
      let block: RAMBlock
      switch format {
      case .mappedRAM, .fixedRAM:
        block = try parseMappedRAMHeader(&c, name: name, entryAt: entryAt, length: used, mrAddr: mrAddr)
      case .fixedRAMRFC1:
        block = try parseRFC1Header(&c, name: name, entryAt: entryAt, length: used, mrAddr: mrAddr)
      case .classic:
        guard used % targetPageSize == 0 else {
          throw FormatError(
            .badValue, s, at: lengthAt, "used_length \(hex(used)) is not a multiple of the page size")
        }
        block = RAMBlock(
          name: name, length: used, pageSize: targetPageSize, entryOffset: entryAt, headerOffset: nil,
          mrAddr: mrAddr, bitmapOffset: 0, bitmapSize: 0, pagesOffset: 0, bitmap: nil)
      }
      blocks.append(block)
      remaining -= used
      if format.isPositional {
        let next = block.pagesOffset + block.length  // checked in the header parser
        if next > file.size {
          if options.force {
            cutShort = true
            warnings.append(
              "block \(name): pages region ends at \(hex(next)), past the end of the file; blocks after it are missing")
            return
          }
          throw FormatError(
            .incomplete, "pages region of block \(quoted(name.bytes))", at: block.pagesOffset,
            "ends at \(hex(next)), past the end of the file (size \(hex(file.size))): the file is cut short or the offset is damaged; use --force to read what is there")
        }
        c.seek(to: next)
      }
    }
    // After the list: EOS (positional), or page records up to EOS (classic).
    if format.isPositional {
      let eosAt = c.offset
      let w2 = try c.readUInt64BE("ram section after the block list")
      guard w2 == RAMFlag.eos else {
        throw FormatError(
          .badValue, "ram section after the block list", at: eosAt,
          "word \(hex(w2)), expected EOS (0x10): the blocks' lengths add up to the MEM_SIZE total \(hex(memorySize)) but more data follows")
      }
    } else {
      ramListEnd = c.offset
      try skipClassicRecords(&c)
    }
    try expectFooter(&c, id: ramSectionID, "ram section footer")
  }

  /// FORMAT.md §4.2: with no configuration record, a mapped-ram header is recognised by its shape.
  mutating func detectWithoutConfiguration(_ c: inout StreamCursor) throws(FormatError) -> StreamFormat {
    let h = c.offset
    guard file.size >= h + 28 else { return .classic }
    let b = try file.bytes(at: h, count: 28, "block header")
    func be(_ at: Int, _ n: Int) -> UInt64 { b[at..<at + n].reduce(0) { $0 << 8 | UInt64($1) } }
    if be(0, 4) == 1, be(4, 8) == targetPageSize, be(12, 8) == h + 28, be(20, 8) % targetPageSize == 0 {
      warnings.append("no configuration record: mapped-ram recognised from the first block's header")
      return .mappedRAM
    }
    return .classic
  }

  mutating func parseMappedRAMHeader(
    _ c: inout StreamCursor, name: BlockName, entryAt: UInt64, length: UInt64, mrAddr: UInt64?
  ) throws(FormatError) -> RAMBlock {
    let label = format == .fixedRAM ? "fixed-ram" : "mapped-ram"
    let s = "\(label) header of block \(quoted(name.bytes))"
    let h = c.offset
    let version = try c.readUInt32BE(s)
    guard version == 1 else {
      throw FormatError(.badVersion, s, at: h, "version \(version), expected 1")
    }
    let pageSize = try c.readUInt64BE(s)
    guard pageSize == targetPageSize else {
      throw FormatError(.badValue, s, at: h + 4, "page_size \(pageSize), expected \(targetPageSize)")
    }
    let bitmapOffset = try c.readUInt64BE(s)
    let pagesOffset = try c.readUInt64BE(s)
    try checkWholePages(length, pageSize: pageSize, name: name, entryAt: entryAt)
    let pages = length / pageSize
    let bitmapSize = (pages + 63) / 64 * 8
    let headerEnd = h + RawMappedRAMHeader.size
    guard bitmapOffset >= headerEnd else {
      throw FormatError(
        .overlap, s, at: h + 12,
        "bitmap_offset \(hex(bitmapOffset)) overlaps the header or the stream before it (expected at least \(hex(headerEnd)))")
    }
    if bitmapOffset != headerEnd {
      warnings.append("block \(name): bitmap_offset \(hex(bitmapOffset)) is not right after its header (\(hex(headerEnd)))")
    }
    let bitmapEnd = try bitmapOffset.adding(bitmapSize, s, at: h + 12, "bitmap_offset + bitmap size")
    try checkPagesRegion(pagesOffset, after: bitmapEnd, length: length, pageSize: pageSize, s, fieldAt: h + 20)
    let bitmap = try loadBitmap(
      name: name, pages: pages, at: bitmapOffset, size: bitmapSize, s)
    return RAMBlock(
      name: name, length: length, pageSize: pageSize, entryOffset: entryAt, headerOffset: h, mrAddr: mrAddr,
      bitmapOffset: bitmapOffset, bitmapSize: bitmapSize, pagesOffset: pagesOffset, bitmap: bitmap)
  }

  /// A block's used length must be whole pages.
  func checkWholePages(_ length: UInt64, pageSize: UInt64, name: BlockName, entryAt: UInt64) throws(FormatError) {
    guard length % pageSize == 0 else {
      throw FormatError(
        .badValue, "ram block entry \(quoted(name.bytes))", at: entryAt,
        "used_length \(hex(length)) is not a multiple of the page size \(pageSize)")
    }
  }

  /// The pages region of a positional header (field `pages_offset` at `fieldAt`): page-aligned,
  /// after the bitmap, and ending within a signed file offset (pread takes an `off_t`).
  func checkPagesRegion(
    _ pagesOffset: UInt64, after bitmapEnd: UInt64, length: UInt64, pageSize: UInt64, _ s: String, fieldAt: UInt64
  ) throws(FormatError) {
    guard pagesOffset % pageSize == 0 else {
      throw FormatError(
        .badValue, s, at: fieldAt, "pages_offset \(hex(pagesOffset)) is not a multiple of the page size \(pageSize)")
    }
    guard pagesOffset >= bitmapEnd else {
      throw FormatError(
        .overlap, s, at: fieldAt, "pages_offset \(hex(pagesOffset)) overlaps the bitmap, which ends at \(hex(bitmapEnd))")
    }
    let pagesEnd = try pagesOffset.adding(length, s, at: fieldAt, "pages_offset + used_length")
    guard pagesEnd <= UInt64(Int64.max) else {
      throw FormatError(
        .badValue, s, at: fieldAt, "pages_offset + used_length \(hex(pagesEnd)) is past the largest file offset 2^63 - 1")
    }
  }

  mutating func parseRFC1Header(
    _ c: inout StreamCursor, name: BlockName, entryAt: UInt64, length: UInt64, mrAddr: UInt64?
  ) throws(FormatError) -> RAMBlock {
    let s = "fixed-ram (RFC v1) header of block \(quoted(name.bytes))"
    let h = c.offset
    let bitmapSize = UInt64(try c.readUInt32BE(s))
    let pagesOffset = try c.readUInt64BE(s)
    let pageSize = targetPageSize
    try checkWholePages(length, pageSize: pageSize, name: name, entryAt: entryAt)
    let pages = length / pageSize
    let size64 = (pages + 63) / 64 * 8
    let size32 = (pages + 31) / 32 * 4
    guard bitmapSize == size64 || bitmapSize == size32 else {
      throw FormatError(
        .badValue, s, at: h, "bitmap_size \(bitmapSize), expected \(size64) (64-bit writer) or \(size32) (32-bit writer)")
    }
    let bitmapOffset = h + 12
    let bitmapEnd = bitmapOffset + bitmapSize
    try checkPagesRegion(pagesOffset, after: bitmapEnd, length: length, pageSize: pageSize, s, fieldAt: h + 4)
    let bitmap = try loadBitmap(name: name, pages: pages, at: bitmapOffset, size: bitmapSize, s)
    return RAMBlock(
      name: name, length: length, pageSize: pageSize, entryOffset: entryAt, headerOffset: h, mrAddr: mrAddr,
      bitmapOffset: bitmapOffset, bitmapSize: bitmapSize, pagesOffset: pagesOffset, bitmap: bitmap)
  }

  mutating func loadBitmap(
    name: BlockName, pages: UInt64, at offset: UInt64, size: UInt64, _ s: String
  ) throws(FormatError) -> PageBitmap {
    let end = offset + size  // checked by the caller
    if end > file.size {
      if options.force {
        warnings.append("block \(name): bitmap at \(hex(offset)) lies past the end of the file; reading it as empty")
        return PageBitmap(allClear: pages)
      }
      throw FormatError(
        .truncated, "bitmap of block \(quoted(name.bytes))", at: offset,
        "needs \(size) bytes up to \(hex(end)), past the end of the file (size \(hex(file.size)))")
    }
    let file = self.file
    return try PageBitmap(pageCount: pages, byteCount: Int(size), layout: options.bitmapLayout) {
      (raw) throws(FormatError) in
      try file.read(into: raw, at: offset, "bitmap of block \(quoted(name.bytes))")
    }
  }

  /// Steps over classic page records up to and including EOS, checking each one (FORMAT.md §2.8).
  mutating func skipClassicRecords(_ c: inout StreamCursor) throws(FormatError) {
    var reader = ClassicRecordReader(
      file: file, at: c.offset, blocks: blocks, pageSize: targetPageSize, lastBlock: classicLastBlock)
    while try reader.next() != nil {}
    classicLastBlock = reader.lastBlock
    c.seek(to: reader.cursor.offset)
  }
}

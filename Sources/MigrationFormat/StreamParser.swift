/// Record type bytes of the top-level stream (QEMU `migration/savevm.h`).
enum RecordType {
  static let eof: UInt8 = 0x00
  static let sectionStart: UInt8 = 0x01
  static let sectionPart: UInt8 = 0x02
  static let sectionEnd: UInt8 = 0x03
  static let sectionFull: UInt8 = 0x04
  static let subsection: UInt8 = 0x05
  static let vmDescription: UInt8 = 0x06
  static let configuration: UInt8 = 0x07
  static let command: UInt8 = 0x08
  static let footer: UInt8 = 0x7e
}

/// Flags in the low bits of a `ram` section record word (QEMU `migration/ram.c`).
public enum RAMFlag {
  public static let zero: UInt64 = 0x002
  public static let memSize: UInt64 = 0x004
  public static let page: UInt64 = 0x008
  public static let eos: UInt64 = 0x010
  public static let `continue`: UInt64 = 0x020
  public static let xbzrle: UInt64 = 0x040
  public static let hook: UInt64 = 0x080
  public static let compressPage: UInt64 = 0x100
  public static let multifdFlush: UInt64 = 0x200
}

/// The stream magic, `QEVM`, and the only version QEMU still reads.
let streamMagic: UInt32 = 0x5145_564d
let streamVersion: UInt32 = 3

/// Walks a stream once, filling in what ``MigrationFile`` exposes.
struct StreamParser {
  let file: ImageFile
  let options: OpenOptions

  var libvirt: LibvirtHeader? = nil
  var streamOffset: UInt64 = 0
  var machineType: String? = nil
  var capabilities: [String] = []
  var uuid: [UInt8]? = nil
  var targetPageBits: UInt32? = nil
  var format: StreamFormat = .classic
  var memorySize: UInt64 = 0
  var blocks: [RAMBlock] = []
  var ramSectionID: UInt32 = 0
  var records: [StreamRecord] = []
  var devices: [DeviceSection] = []
  var vmDescription: VMDescription? = nil
  var vmDescriptionOffset: UInt64? = nil
  var devicesUnavailableReason: String? = nil
  var isComplete = false
  var warnings: [String] = []
  /// Offset right after the block list of a classic START, where page records may follow.
  var ramListEnd: UInt64? = nil

  /// Section ids seen in START/FULL records, with their names.
  private var sectionNames: [UInt32: String] = [:]
  private var ramEnded = false
  private var sawConfiguration = false
  /// Set when the block list stopped early on a cut file opened with `force`.
  private var cutShort = false
  /// The block of the last classic page record that named one: a CONTINUE record
  /// may refer to it from a later section (QEMU keeps it across iterations).
  private var classicLastBlock: Int? = nil

  init(file: ImageFile, options: OpenOptions) {
    self.file = file
    self.options = options
  }

  var targetPageSize: UInt64 { 1 << UInt64(targetPageBits ?? 12) }

  mutating func parse() throws(FormatError) {
    try parsePrefix()
    var c = StreamCursor(file: file, offset: streamOffset)
    try parseHeader(&c)
    try parseConfiguration(&c)
    try findRAM(&c)
    if cutShort {
      isComplete = false
      return
    }
    if !options.skipDevices {
      locateVMDescription()
    }
    try walkRest(&c)
    if let e = incompleteError { throw e }
    if !isComplete {
      if options.force {
        warnings.append(
          "the stream stops before its end marker (an interrupted or unfinished save); showing what is there")
      }
    }
    if format.isPositional, !blocks.isEmpty, blocks.allSatisfy({ ($0.populatedPages ?? 0) == 0 }) {
      warnings.append("every bitmap is empty: QEMU writes bitmaps last, so this may be an interrupted save")
    }
  }

  // MARK: - Prefix, header, configuration

  private mutating func parsePrefix() throws(FormatError) {
    if let given = options.streamOffset {
      // Checked here, once: every later offset is the stream offset plus what the file holds.
      guard given <= file.size, file.size - given >= 8 else {
        throw FormatError.truncated("stream header", at: given, needed: 8, fileSize: file.size)
      }
      streamOffset = given
      return
    }
    guard file.size >= 8 else {
      throw FormatError.truncated("stream header", at: 0, needed: 8, fileSize: file.size)
    }
    let head = try file.bytes(at: 0, count: min(16, file.size), "stream header")
    if head.count == 16, let magic = String(validating: head, as: UTF8.self),
      magic == LibvirtHeader.completeMagic || magic == LibvirtHeader.partialMagic
    {
      try parseLibvirt(magic: magic)
      return
    }
    if head.starts(with: [0x51, 0x45, 0x56, 0x4d]) {
      streamOffset = 0
      return
    }
    throw FormatError(
      .badMagic, "stream header", at: 0,
      "found \(quoted(Array(head.prefix(8)))), expected \"QEVM\" (a QEMU migration stream) or a libvirt save header"
        + "; if the stream sits behind another prefix, give its offset with --offset")
  }

  private mutating func parseLibvirt(magic: String) throws(FormatError) {
    let s = "libvirt save header"
    let raw = try file.bytes(at: 0, count: LibvirtHeader.size, s)
    func u32(_ at: Int, swap: Bool) -> UInt32 {
      let v = UInt32(raw[at]) | UInt32(raw[at + 1]) << 8 | UInt32(raw[at + 2]) << 16 | UInt32(raw[at + 3]) << 24
      return swap ? v.byteSwapped : v
    }
    let swap = u32(16, swap: false) > 2
    let version = u32(16, swap: swap)
    guard version == 2 || version == 1 else {
      throw FormatError(.badVersion, s, at: 16, "version \(version), expected 2")
    }
    let dataLength = u32(20, swap: swap)
    let wasRunning = u32(24, swap: swap)
    let format = u32(28, swap: swap)
    let cookieOffset = u32(32, swap: swap)
    guard UInt64(dataLength) <= Limits.libvirtDataLength else {
      throw FormatError(
        .limitExceeded, s, at: 20, "data_len \(dataLength) is above the limit of \(Limits.libvirtDataLength)")
    }
    let start = LibvirtHeader.size + UInt64(dataLength)
    guard start + 8 <= file.size else {
      throw FormatError(
        .truncated, s, at: 20,
        "data_len \(dataLength) puts the stream at \(hex(start)), past the end of the file (size \(file.size))")
    }
    if magic == LibvirtHeader.partialMagic && !options.force {
      throw FormatError(
        .incomplete, s, at: 0,
        "magic \"LibvirtQemudPart\": this save never finished (libvirt rewrites it to \"LibvirtQemudSave\" when QEMU is done); use --force to read what is there")
    }
    guard format == 0 || format == 6 else {
      let names = ["raw", "gzip", "bzip2", "xz", "lzop", "zstd", "sparse"]
      let name = Int(format) < names.count ? names[Int(format)] : "unknown"
      throw FormatError(
        .unsupported, s, at: 28,
        "image format \(format) (\(name)): the stream is compressed; decompress it (or save with --image-format sparse) first")
    }
    let data = try file.bytes(at: LibvirtHeader.size, count: UInt64(dataLength), s)
    let xmlEnd = cookieOffset > 0 ? min(Int(cookieOffset), data.count) : data.count
    let xmlBytes = data[0..<xmlEnd].prefix { $0 != 0 }
    var cookie: String? = nil
    if cookieOffset > 0 && Int(cookieOffset) < data.count {
      cookie = String(decoding: data[Int(cookieOffset)...].prefix { $0 != 0 }, as: UTF8.self)
    }
    libvirt = LibvirtHeader(
      magic: magic, version: version, dataLength: dataLength, wasRunning: wasRunning != 0, format: format,
      xml: String(decoding: xmlBytes, as: UTF8.self), cookie: cookie)
    if magic == LibvirtHeader.partialMagic {
      warnings.append("libvirt header says \"LibvirtQemudPart\": the save never finished")
    }
    streamOffset = start
  }

  private mutating func parseHeader(_ c: inout StreamCursor) throws(FormatError) {
    let at = c.offset
    let magic = try c.readUInt32BE("stream header")
    guard magic == streamMagic else {
      throw FormatError(
        .badMagic, "stream header", at: at, "magic \(hex(magic)), expected 0x5145564d (\"QEVM\")")
    }
    let version = try c.readUInt32BE("stream header")
    guard version == streamVersion else {
      throw FormatError(.badVersion, "stream header", at: at + 4, "version \(version), expected 3")
    }
  }

  private mutating func parseConfiguration(_ c: inout StreamCursor) throws(FormatError) {
    let at = c.offset
    guard try c.peekUInt8("configuration record") == RecordType.configuration else { return }
    sawConfiguration = true
    _ = try c.readUInt8("configuration record")
    let s = "configuration record"
    let nameLength = try c.readUInt32BE(s)
    guard nameLength > 0, nameLength <= Limits.machineNameLength else {
      throw FormatError(
        .badValue, s, at: at + 1, "machine name length \(nameLength), expected 1 to \(Limits.machineNameLength)")
    }
    let nameBytes = try c.readBytes(Int(nameLength), s)
    guard let name = String(validating: nameBytes, as: UTF8.self), !nameBytes.contains(0) else {
      throw FormatError(.badValue, s, at: at + 5, "machine name \(quoted(nameBytes)) is not printable UTF-8")
    }
    machineType = name
    while !c.atEnd, try c.peekUInt8(s) == RecordType.subsection {
      let subAt = c.offset
      _ = try c.readUInt8(s)
      let len = try c.readUInt8(s)
      let subBytes = try c.readBytes(Int(len), s)
      let subName = String(decoding: subBytes, as: UTF8.self)
      let sub = "configuration subsection \(quoted(subBytes))"
      let version = try c.readUInt32BE(sub)
      guard version == 1 else {
        throw FormatError(.badVersion, sub, at: subAt + 2 + UInt64(len), "version \(version), expected 1")
      }
      switch subName {
      case "configuration/capabilities":
        let countAt = c.offset
        let count = try c.readUInt32BE(sub)
        guard count <= Limits.capabilityCount else {
          throw FormatError(
            .limitExceeded, sub, at: countAt, "\(count) capabilities, at most \(Limits.capabilityCount) accepted")
        }
        for _ in 0..<count {
          let capAt = c.offset
          let l = try c.readUInt8(sub)
          let bytes = try c.readBytes(Int(l), sub)
          guard l > 0, let cap = String(validating: bytes, as: UTF8.self) else {
            throw FormatError(.badValue, sub, at: capAt, "capability name \(quoted(bytes)) is empty or not UTF-8")
          }
          if !["mapped-ram", "fixed-ram", "x-ignore-shared"].contains(cap) {
            warnings.append("unknown capability \(quoted(bytes)) in the configuration record")
          }
          capabilities.append(cap)
        }
      case "configuration/uuid":
        uuid = try c.readBytes(16, sub)
      case "configuration/target-page-bits":
        let bitsAt = c.offset
        let bits = try c.readUInt32BE(sub)
        guard bits >= 10, bits <= 21 else {
          throw FormatError(.badValue, sub, at: bitsAt, "target page bits \(bits), expected 10 to 21")
        }
        targetPageBits = bits
      default:
        throw FormatError(
          .unsupported, sub, at: subAt, "unknown configuration subsection; its length is not known to mramfs")
      }
    }
  }

  // MARK: - The ram section

  private mutating func findRAM(_ c: inout StreamCursor) throws(FormatError) {
    while true {
      let at = c.offset
      if c.atEnd {
        throw FormatError(
          .incomplete, "stream", at: at, "the file ends before the ram section (an interrupted save?)")
      }
      let type = try c.readUInt8("record type")
      switch type {
      case RecordType.command:
        try skipCommand(&c, at: at)
      case RecordType.sectionStart:
        let h = try readSectionHeader(&c, at: at)
        guard h.name == "ram" else {
          throw FormatError(
            .unsupported, "section \(h.quotedName)", at: at,
            "an iterative section before ram; mramfs cannot skip it")
        }
        records.append(StreamRecord(kind: .sectionStart, offset: at, sectionID: h.id, name: h.name))
        guard h.version == 4 else {
          throw FormatError(.badVersion, "ram section", at: at, "version \(h.version), expected 4")
        }
        ramSectionID = h.id
        sectionNames[h.id] = "ram"
        try parseRAMStart(&c, at: at)
        return
      case RecordType.sectionFull:
        let h = try readSectionHeader(&c, at: at)
        throw FormatError(
          .unsupported, "section \(h.quotedName)", at: at, "a device section before ram; mramfs cannot skip it")
      case RecordType.eof:
        throw FormatError(.badValue, "stream", at: at, "EOF record before any ram section")
      default:
        throw FormatError(
          .badValue, "stream", at: at, "record type \(hex(type)), expected a section or command")
      }
    }
  }

  private struct SectionHeader {
    var id: UInt32
    var name: String
    var instance: UInt32
    var version: UInt32
    /// The name for messages: quoted, with control bytes escaped, so a message stays one line.
    var quotedName: String { quoted(Array(name.utf8)) }
  }

  private func readSectionHeader(_ c: inout StreamCursor, at: UInt64) throws(FormatError) -> SectionHeader {
    let s = "section header"
    let id = try c.readUInt32BE(s)
    let len = try c.readUInt8(s)
    let nameBytes = try c.readBytes(Int(len), s)
    guard len > 0, let name = String(validating: nameBytes, as: UTF8.self) else {
      throw FormatError(.badValue, s, at: at + 5, "section name \(quoted(nameBytes)) is empty or not UTF-8")
    }
    let instance = try c.readUInt32BE(s)
    let version = try c.readUInt32BE(s)
    return SectionHeader(id: id, name: name, instance: instance, version: version)
  }

  private mutating func skipCommand(_ c: inout StreamCursor, at: UInt64) throws(FormatError) {
    let cmd = try c.readUInt16BE("command record")
    let len = try c.readUInt16BE("command record")
    if cmd == 7 {
      throw FormatError(
        .unsupported, "command record", at: at,
        "PACKAGED (postcopy) command; a nested stream is not followed")
    }
    try c.skip(UInt64(len), "command record")
    records.append(StreamRecord(kind: .command, offset: at, sectionID: nil, name: "\(cmd)"))
  }

  private func expectFooter(_ c: inout StreamCursor, id: UInt32, _ s: String) throws(FormatError) {
    let at = c.offset
    let b = try c.readUInt8(s)
    guard b == RecordType.footer else {
      throw FormatError(.badValue, s, at: at, "byte \(hex(b)), expected a section footer (0x7e)")
    }
    let fid = try c.readUInt32BE(s)
    guard fid == id else {
      throw FormatError(.badValue, s, at: at + 1, "footer for section id \(fid), expected \(id)")
    }
  }

  private mutating func parseRAMStart(_ c: inout StreamCursor, at: UInt64) throws(FormatError) {
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
  private mutating func detectWithoutConfiguration(_ c: inout StreamCursor) throws(FormatError) -> StreamFormat {
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

  private mutating func parseMappedRAMHeader(
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
    guard length % pageSize == 0 else {
      throw FormatError(
        .badValue, "ram block entry \(quoted(name.bytes))", at: entryAt, "used_length \(hex(length)) is not a multiple of the page size \(pageSize)")
    }
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
    guard pagesOffset % pageSize == 0 else {
      throw FormatError(
        .badValue, s, at: h + 20, "pages_offset \(hex(pagesOffset)) is not a multiple of the page size \(pageSize)")
    }
    guard pagesOffset >= bitmapEnd else {
      throw FormatError(
        .overlap, s, at: h + 20,
        "pages_offset \(hex(pagesOffset)) overlaps the bitmap, which ends at \(hex(bitmapEnd))")
    }
    let pagesEnd = try pagesOffset.adding(length, s, at: h + 20, "pages_offset + used_length")
    // pread takes a signed off_t: a pages region past 2^63 - 1 cannot be in any file.
    guard pagesEnd <= UInt64(Int64.max) else {
      throw FormatError(
        .badValue, s, at: h + 20, "pages_offset + used_length \(hex(pagesEnd)) is past the largest file offset 2^63 - 1")
    }
    let bitmap = try loadBitmap(
      name: name, pages: pages, at: bitmapOffset, size: bitmapSize, s)
    return RAMBlock(
      name: name, length: length, pageSize: pageSize, entryOffset: entryAt, headerOffset: h, mrAddr: mrAddr,
      bitmapOffset: bitmapOffset, bitmapSize: bitmapSize, pagesOffset: pagesOffset, bitmap: bitmap)
  }

  private mutating func parseRFC1Header(
    _ c: inout StreamCursor, name: BlockName, entryAt: UInt64, length: UInt64, mrAddr: UInt64?
  ) throws(FormatError) -> RAMBlock {
    let s = "fixed-ram (RFC v1) header of block \(quoted(name.bytes))"
    let h = c.offset
    let bitmapSize = UInt64(try c.readUInt32BE(s))
    let pagesOffset = try c.readUInt64BE(s)
    let pageSize = targetPageSize
    guard length % pageSize == 0 else {
      throw FormatError(
        .badValue, "ram block entry \(quoted(name.bytes))", at: entryAt, "used_length \(hex(length)) is not a multiple of the page size \(pageSize)")
    }
    let pages = length / pageSize
    let size64 = (pages + 63) / 64 * 8
    let size32 = (pages + 31) / 32 * 4
    guard bitmapSize == size64 || bitmapSize == size32 else {
      throw FormatError(
        .badValue, s, at: h, "bitmap_size \(bitmapSize), expected \(size64) (64-bit writer) or \(size32) (32-bit writer)")
    }
    let bitmapOffset = h + 12
    let bitmapEnd = bitmapOffset + bitmapSize
    guard pagesOffset % pageSize == 0 else {
      throw FormatError(
        .badValue, s, at: h + 4, "pages_offset \(hex(pagesOffset)) is not a multiple of the page size \(pageSize)")
    }
    guard pagesOffset >= bitmapEnd else {
      throw FormatError(
        .overlap, s, at: h + 4,
        "pages_offset \(hex(pagesOffset)) overlaps the bitmap, which ends at \(hex(bitmapEnd))")
    }
    let pagesEnd = try pagesOffset.adding(length, s, at: h + 4, "pages_offset + used_length")
    // pread takes a signed off_t: a pages region past 2^63 - 1 cannot be in any file.
    guard pagesEnd <= UInt64(Int64.max) else {
      throw FormatError(
        .badValue, s, at: h + 4, "pages_offset + used_length \(hex(pagesEnd)) is past the largest file offset 2^63 - 1")
    }
    let bitmap = try loadBitmap(name: name, pages: pages, at: bitmapOffset, size: bitmapSize, s)
    return RAMBlock(
      name: name, length: length, pageSize: pageSize, entryOffset: entryAt, headerOffset: h, mrAddr: mrAddr,
      bitmapOffset: bitmapOffset, bitmapSize: bitmapSize, pagesOffset: pagesOffset, bitmap: bitmap)
  }

  private mutating func loadBitmap(
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

  /// Skips classic page records up to and including EOS (FORMAT.md §2.8).
  private mutating func skipClassicRecords(_ c: inout StreamCursor) throws(FormatError) {
    let mask = targetPageSize - 1
    while true {
      let at = c.offset
      let w = try c.readUInt64BE("ram page record")
      let flags = w & mask
      if flags & RAMFlag.eos != 0 { return }
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
        let len = try c.readUInt8("ram page record")
        let name = try c.readBytes(Int(len), "ram page record")
        classicLastBlock = blocks.firstIndex { $0.name.bytes == name }
        if classicLastBlock == nil {
          throw FormatError(
            .badValue, "ram page record", at: at, "unknown block \(quoted(name))")
        }
      }
      guard let b = classicLastBlock else {
        throw FormatError(.badValue, "ram page record", at: at, "CONTINUE with no block before it")
      }
      let addr = w & ~mask
      guard addr < blocks[b].length else {
        throw FormatError(
          .badValue, "ram page record", at: at,
          "offset \(hex(addr)) is past the end of block \(blocks[b].name) (\(hex(blocks[b].length)))")
      }
      if flags & RAMFlag.zero != 0 {
        try c.skip(1, "ram zero-page record")
      } else {
        try c.skip(targetPageSize, "ram page record")
      }
    }
  }

  // MARK: - The rest of the stream

  /// Walks the records after the ram START up to EOF, to check completeness and to locate device sections.
  private mutating func walkRest(_ c: inout StreamCursor) throws(FormatError) {
    var deviceCursor = 0
    var deviceWalkOK = true
    while true {
      let at = c.offset
      if c.atEnd {
        isComplete = false
        if !options.force {
          throw FormatError(
            .incomplete, "stream", at: at,
            ramEnded
              ? "the file ends before the EOF record (an interrupted save?); use --force to read what is there"
              : "the file ends before the ram END section (an interrupted or still-running save?); use --force to read what is there")
        }
        return
      }
      let type = try c.readUInt8("record type")
      switch type {
      case RecordType.sectionPart, RecordType.sectionEnd:
        let id = try c.readUInt32BE("section record")
        let isEnd = type == RecordType.sectionEnd
        records.append(
          StreamRecord(
            kind: isEnd ? .sectionEnd : .sectionPart, offset: at, sectionID: id, name: sectionNames[id] ?? "?"))
        guard id == ramSectionID else {
          guard let other = sectionNames[id] else {
            throw FormatError(.badValue, "section record", at: at + 1, "section id \(id) was never started")
          }
          return stopWalk(at: at, "section \(quoted(Array(other.utf8))) has a private format mramfs does not walk")
        }
        try skipRAMBody(&c)
        try expectFooter(&c, id: id, "ram section footer")
        if isEnd { ramEnded = true }
      case RecordType.command:
        try skipCommand(&c, at: at)
      case RecordType.sectionStart:
        let h = try readSectionHeader(&c, at: at)
        sectionNames[h.id] = h.name
        records.append(StreamRecord(kind: .sectionStart, offset: at, sectionID: h.id, name: h.name))
        return stopWalk(at: at, "iterative section \(h.quotedName) has a private format mramfs does not walk")
      case RecordType.sectionFull:
        let h = try readSectionHeader(&c, at: at)
        sectionNames[h.id] = h.name
        records.append(StreamRecord(kind: .sectionFull, offset: at, sectionID: h.id, name: h.name))
        guard deviceWalkOK, let desc = vmDescription else {
          return stopWalk(
            at: at, vmDescription == nil ? "the file has no VM description" : "device sections could not be walked")
        }
        guard let index = desc.devices[deviceCursor...].firstIndex(where: {
          $0.name == h.name && $0.instanceID == h.instance
        }) else {
          deviceWalkOK = false
          return stopWalk(at: at, "section \(h.quotedName) \(h.instance) is not in the VM description")
        }
        let body = c.offset
        let size = desc.devices[index].bodySize
        guard let end = body.addingReportingOverflow(size).partialValue as UInt64?, size < file.size,
          end + 5 <= file.size
        else {
          return stopWalk(at: at, "section \(h.quotedName) would end past the end of the file")
        }
        c.seek(to: end)
        do {
          try expectFooter(&c, id: h.id, "footer of section \(h.quotedName)")
        } catch {
          return stopWalk(
            at: at, "section \(h.quotedName) does not end where its VM description says (\(error.problem))")
        }
        guard devices.count < Limits.deviceSectionCount else {
          return stopWalk(at: at, "more than \(Limits.deviceSectionCount) device sections")
        }
        devices.append(
          DeviceSection(
            name: h.name, instanceID: h.instance, version: h.version, offset: at, size: c.offset - at,
            bodyOffset: body, descriptionIndex: index))
        deviceCursor = index + 1
      case RecordType.eof:
        records.append(StreamRecord(kind: .eof, offset: at, sectionID: nil, name: "EOF"))
        try finishAtEOF(at: at)
        return
      default:
        throw FormatError(
          .badValue, "stream", at: at, "record type \(hex(type)), expected a section, command or EOF")
      }
    }
  }

  /// The ram PART/END body: EOS only for positional formats (none for RFC v1), page records for classic.
  private mutating func skipRAMBody(_ c: inout StreamCursor) throws(FormatError) {
    switch format {
    case .classic:
      try skipClassicRecords(&c)
    case .fixedRAMRFC1:
      // RFC v1 sends empty PART/END bodies; tolerate an EOS too.
      if try c.peekUInt8("ram section") != RecordType.footer {
        _ = try skipPositionalBody(&c)
      }
    case .mappedRAM, .fixedRAM:
      _ = try skipPositionalBody(&c)
    }
  }

  private mutating func skipPositionalBody(_ c: inout StreamCursor) throws(FormatError) -> Bool {
    while true {
      let at = c.offset
      let w = try c.readUInt64BE("ram section")
      if w == RAMFlag.eos { return true }
      if w & (targetPageSize - 1) == RAMFlag.multifdFlush && w & ~(targetPageSize - 1) == 0 { continue }
      throw FormatError(
        .badValue, "ram section", at: at,
        "word \(hex(w)), expected EOS (0x10); \(format.rawValue) streams carry no page records in the stream")
    }
  }

  /// Device sections could not be walked further: decide completeness from the tail.
  private mutating func stopWalk(at: UInt64, _ reason: String) {
    if devicesUnavailableReason == nil && !options.skipDevices {
      devicesUnavailableReason = reason
    }
    if let vmdAt = vmDescriptionOffset {
      // A well-formed VM description right after an EOF byte marks a finished save.
      isComplete = ramEnded && vmdAt > 0 && ((try? file.bytes(at: vmdAt - 1, count: 1, "EOF"))?.first == 0)
    } else {
      let last = try? file.bytes(at: file.size - 1, count: 1, "EOF")
      isComplete = ramEnded && last?.first == 0
      if !isComplete {
        devicesUnavailableReason = devicesUnavailableReason ?? reason
      }
    }
    if !isComplete && !options.force {
      incompleteError = FormatError(
        .incomplete, "stream", at: at,
        "cannot find the end of the stream (no ram END or no EOF record after \(reason)); use --force to read what is there")
    }
  }

  var incompleteError: FormatError? = nil

  private mutating func finishAtEOF(at: UInt64) throws(FormatError) {
    guard ramEnded else {
      isComplete = false
      if !options.force {
        throw FormatError(
          .incomplete, "stream", at: at, "EOF record before the ram END section; use --force to read what is there")
      }
      return
    }
    isComplete = true
    let after = at + 1
    if after == file.size {
      if vmDescription == nil && !options.skipDevices {
        devicesUnavailableReason = devicesUnavailableReason ?? "the file has no VM description (suppress-vmdesc)"
      }
      return
    }
    if let vmdAt = vmDescriptionOffset, vmdAt == after {
      records.append(StreamRecord(kind: .vmDescription, offset: vmdAt, sectionID: nil, name: "vmdesc"))
      return
    }
    if vmDescriptionOffset == nil, !options.skipDevices {
      let b = try file.bytes(at: after, count: 1, "VM description record")
      if b[0] == RecordType.vmDescription {
        warnings.append("the VM description after EOF is damaged; device state is not available")
        devicesUnavailableReason = "the VM description after EOF is damaged"
        return
      }
    }
    warnings.append("\(file.size - after) bytes after the EOF record that are not a VM description")
  }

  // MARK: - VM description

  /// Finds and parses the VMDESCRIPTION record at the tail (FORMAT.md §1.8). Problems become warnings.
  private mutating func locateVMDescription() {
    guard file.size > streamOffset + 16 else { return }
    guard let last = try? file.bytes(at: file.size - 1, count: 1, "tail"), last[0] == UInt8(ascii: "}") else {
      return
    }
    // JSON holds no raw control bytes, so scan back to the first one: the record header is within 5 bytes of it.
    let maxScan = min(file.size - streamOffset, Limits.vmDescriptionBytes + 5)
    var pos = file.size
    var control: UInt64? = nil
    let chunk: UInt64 = 1 << 20
    scan: while pos > file.size - maxScan {
      let start = max(pos >= chunk ? pos - chunk : 0, file.size - maxScan)
      guard let bytes = try? file.bytes(at: start, count: pos - start, "VM description") else { return }
      for i in stride(from: bytes.count - 1, through: 0, by: -1) {
        let b = bytes[i]
        if b < 0x20 && b != 9 && b != 10 && b != 13 {
          control = start + UInt64(i)
          break scan
        }
      }
      pos = start
    }
    guard let q = control else {
      warnings.append("the file ends like JSON but no VM description record was found")
      return
    }
    for x in stride(from: q, through: q >= 4 ? q - 4 : 0, by: -1) {
      guard let h = try? file.bytes(at: x, count: 6, "VM description record"), h[0] == RecordType.vmDescription
      else { continue }
      let len = UInt64(h[1]) << 24 | UInt64(h[2]) << 16 | UInt64(h[3]) << 8 | UInt64(h[4])
      guard x + 5 + len == file.size, h[5] == UInt8(ascii: "{") else { continue }
      guard len <= Limits.vmDescriptionBytes else {
        warnings.append("VM description of \(len) bytes is above the limit of \(Limits.vmDescriptionBytes)")
        devicesUnavailableReason = "the VM description is larger than \(Limits.vmDescriptionBytes) bytes"
        return
      }
      vmDescriptionOffset = x
      do {
        let json = try file.bytes(at: x + 5, count: len, "VM description")
        vmDescription = try VMDescription(json: json, at: x + 5)
      } catch {
        warnings.append("VM description: \(error)")
        devicesUnavailableReason = "the VM description could not be parsed: \(error.problem)"
      }
      return
    }
  }
}

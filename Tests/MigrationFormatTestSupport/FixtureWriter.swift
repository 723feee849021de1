import MigrationFormat

/// A RAM block for a synthetic migration file.
public struct FixtureBlock: Sendable {
  /// The block name's bytes.
  public var name: [UInt8]
  /// used_length in bytes.
  public var length: UInt64
  /// Pages whose bit is set, with their contents (shorter contents are zero-padded).
  public var present: [UInt64: [UInt8]] = [:]
  /// Pages whose bytes are written in the pages region but whose bit is clear (stale data of a live save).
  public var stale: [UInt64: [UInt8]] = [:]
  /// Header version to write.
  public var version: UInt32 = 1
  /// page_size to write in the header (nil: 4096).
  public var pageSizeField: UInt64? = nil
  /// bitmap_offset to write instead of the real one (the bitmap is still written at the real place).
  public var bitmapOffsetField: UInt64? = nil
  /// pages_offset to write instead of the real one.
  public var pagesOffsetField: UInt64? = nil
  /// mr_addr, written when the stream lists x-ignore-shared.
  public var mrAddr: UInt64 = 0

  /// Creates a block.
  public init(name: String, length: UInt64, present: [UInt64: [UInt8]] = [:]) {
    self.name = Array(name.utf8)
    self.length = length
    self.present = present
  }

  /// Creates a block with a raw byte name.
  public init(nameBytes: [UInt8], length: UInt64, present: [UInt64: [UInt8]] = [:]) {
    self.name = nameBytes
    self.length = length
    self.present = present
  }

  /// A page whose bytes say which block and page they belong to, so a misplaced page is visible.
  public static func pattern(block: String, page: UInt64, pageSize: Int = 4096) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: pageSize)
    let tag = Array("\(block)#\(page);".utf8)
    for i in 0..<pageSize { out[i] = tag[i % tag.count] }
    return out
  }
}

/// A device section for a synthetic file, described the way QEMU's VM description does.
public struct FixtureDevice: Sendable {
  /// One field: name, type and its bytes.
  public struct Field: Sendable {
    public var name: String
    public var type: String
    public var bytes: [UInt8]
    public init(_ name: String, _ type: String, _ bytes: [UInt8]) {
      self.name = name
      self.type = type
      self.bytes = bytes
    }
  }
  public var name: String
  public var instance: UInt32
  public var version: UInt32
  public var fields: [Field]

  /// The device's whole VM description object as JSON text, replacing the one made from ``fields``.
  public var json: String? = nil
  /// The section body, replacing the bytes of ``fields``.
  public var body: [UInt8]? = nil

  public init(name: String, instance: UInt32 = 0, version: UInt32 = 1, fields: [Field]) {
    self.name = name
    self.instance = instance
    self.version = version
    self.fields = fields
  }

  /// A device described by hand: `json` is its VM description object (with nested structs,
  /// subsections, arrays…), `body` the bytes between its section header and footer.
  public init(name: String, instance: UInt32 = 0, version: UInt32 = 1, json: String, body: [UInt8]) {
    self.init(name: name, instance: instance, version: version, fields: [])
    self.json = json
    self.body = body
  }

  /// A `timer` section like QEMU's.
  public static let timer = FixtureDevice(
    name: "timer", version: 2,
    fields: [
      .init("cpu_ticks_offset", "int64", be(0x1234, 8)),
      .init("unused", "unused_buffer", [UInt8](repeating: 0, count: 8)),
      .init("cpu_clock_offset", "int64", be(0x5678, 8)),
    ])
}

/// Encodes `value` big-endian in `count` bytes.
public func be(_ value: UInt64, _ count: Int) -> [UInt8] {
  (0..<count).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64(count - 1 - $0))) }
}

/// Builds synthetic migration files byte by byte, for tests.
///
/// Every knob defaults to what QEMU 10 writes; tests change one to make a
/// boundary case or a damaged file. ``Built/marks`` names the offset of each
/// structure so that tests can cut or patch the file at any of them.
public struct FixtureStream: Sendable {
  public var prefix: [UInt8] = []
  public var machine: String? = "pc-i440fx-10.0"
  public var capabilities: [String] = ["mapped-ram"]
  public var uuid: [UInt8]? = nil
  public var format: StreamFormat = .mappedRAM
  /// Alignment of pages regions (QEMU: 1 MiB).
  public var alignment: UInt64 = 1 << 20
  public var blocks: [FixtureBlock] = []
  /// MEM_SIZE total to write instead of the real sum.
  public var memSizeField: UInt64? = nil
  public var ramSectionID: UInt32 = 1
  public var parts = 1
  public var switchover = true
  public var devices: [FixtureDevice] = [.timer]
  public var vmDescription = true
  /// Whether to write the ram END section and everything after it.
  public var finished = true

  public init(blocks: [FixtureBlock] = []) {
    self.blocks = blocks
  }

  /// The bytes and the offsets of their structures.
  public struct Built: Sendable {
    public var bytes: [UInt8]
    /// Named structure offsets, in file order (`header`, `block[0].entry`, `block[0].bitmap`, `eof`, …).
    public var marks: [(name: String, offset: UInt64)]
    public func mark(_ name: String) -> UInt64? { marks.first { $0.name == name }?.offset }
  }

  /// Builds the file in memory.
  public func build() -> Built {
    var out = prefix
    var marks: [(String, UInt64)] = []
    func mark(_ n: String) { marks.append((n, UInt64(out.count))) }
    func put(_ b: [UInt8]) { out += b }
    func put8(_ v: UInt8) { out.append(v) }
    func put32(_ v: UInt32) { out += be(UInt64(v), 4) }
    func put64(_ v: UInt64) { out += be(v, 8) }
    func putAt(_ off: UInt64, _ b: [UInt8]) {
      let end = Int(off) + b.count
      if out.count < end { out += [UInt8](repeating: 0, count: end - out.count) }
      out.replaceSubrange(Int(off)..<end, with: b)
    }
    func alignUp(_ v: UInt64, _ a: UInt64) -> UInt64 { (v + a - 1) / a * a }

    mark("header")
    put([0x51, 0x45, 0x56, 0x4d, 0, 0, 0, 3])
    if let machine {
      mark("configuration")
      put8(0x07)
      put32(UInt32(machine.utf8.count))
      put(Array(machine.utf8))
      if !capabilities.isEmpty {
        mark("capabilities")
        let n = "configuration/capabilities"
        put8(0x05); put8(UInt8(n.utf8.count)); put(Array(n.utf8)); put32(1)
        put32(UInt32(capabilities.count))
        for c in capabilities { put8(UInt8(c.utf8.count)); put(Array(c.utf8)) }
      }
      if let uuid {
        let n = "configuration/uuid"
        put8(0x05); put8(UInt8(n.utf8.count)); put(Array(n.utf8)); put32(1); put(uuid)
      }
    }
    mark("ram.start")
    put8(0x01); put32(ramSectionID); put8(3); put(Array("ram".utf8)); put32(0); put32(4)
    let total = memSizeField ?? blocks.reduce(0) { $0 + $1.length }
    mark("ram.memsize")
    put64(total | 0x4)
    let ignoreShared = capabilities.contains("x-ignore-shared")
    for (i, b) in blocks.enumerated() {
      mark("block[\(i)].entry")
      put8(UInt8(truncatingIfNeeded: b.name.count)); put(b.name); put64(b.length)
      if ignoreShared { put64(b.mrAddr) }
      let pageSize = UInt64(4096)
      let pages = b.length / pageSize
      switch format {
      case .mappedRAM, .fixedRAM:
        let h = UInt64(out.count)
        mark("block[\(i)].header")
        let bitmapOffset = h + 28
        let bitmapSize = (pages + 63) / 64 * 8
        let pagesOffset = alignUp(bitmapOffset + bitmapSize, alignment)
        put32(b.version); put64(b.pageSizeField ?? pageSize)
        put64(b.bitmapOffsetField ?? bitmapOffset); put64(b.pagesOffsetField ?? pagesOffset)
        marks.append(("block[\(i)].bitmap", bitmapOffset))
        var bitmap = [UInt8](repeating: 0, count: Int(bitmapSize))
        for p in b.present.keys where p < pages { bitmap[Int(p / 8)] |= 1 << (p % 8) }
        putAt(bitmapOffset, bitmap)
        marks.append(("block[\(i)].pages", pagesOffset))
        writePages(b, pagesOffset: pagesOffset, into: &out)
        let next = pagesOffset + b.length
        if out.count < Int(next) { out += [UInt8](repeating: 0, count: Int(next) - out.count) }
      case .fixedRAMRFC1:
        mark("block[\(i)].header")
        let h = UInt64(out.count)
        let bitmapSize = (pages + 63) / 64 * 8
        let bitmapOffset = h + 12
        let pagesOffset = alignUp(bitmapOffset + bitmapSize, alignment)
        put32(UInt32(bitmapSize)); put64(b.pagesOffsetField ?? pagesOffset)
        marks.append(("block[\(i)].bitmap", bitmapOffset))
        var bitmap = [UInt8](repeating: 0, count: Int(bitmapSize))
        for p in b.present.keys where p < pages { bitmap[Int(p / 8)] |= 1 << (p % 8) }
        putAt(bitmapOffset, bitmap)
        marks.append(("block[\(i)].pages", pagesOffset))
        writePages(b, pagesOffset: pagesOffset, into: &out)
        let next = pagesOffset + b.length
        if out.count < Int(next) { out += [UInt8](repeating: 0, count: Int(next) - out.count) }
      case .classic:
        break
      }
    }
    mark("ram.eos")
    put64(0x10)
    put8(0x7e); put32(ramSectionID)
    // Classic page records, spread evenly over the parts. As QEMU does, a record
    // whose block is the previous record's carries CONTINUE, even across sections.
    var records: [(block: Int, page: UInt64)] = []
    if format == .classic {
      for (i, b) in blocks.enumerated() { records += b.present.keys.sorted().map { (i, $0) } }
    }
    var lastBlock: Int? = nil
    let recordCount = records.count
    for k in 0..<parts {
      mark("ram.part[\(k)]")
      put8(0x02); put32(ramSectionID)
      let share = recordCount / parts + (k < recordCount % parts ? 1 : 0)
      for (i, p) in records.prefix(share) {
        let b = blocks[i]
        put64(p * 4096 | (lastBlock == i ? 0x28 : 0x8))
        if lastBlock != i { put8(UInt8(b.name.count)); put(b.name) }
        var content = b.present[p]!
        content += [UInt8](repeating: 0, count: max(0, 4096 - content.count))
        put(Array(content.prefix(4096)))
        lastBlock = i
      }
      records.removeFirst(share)
      if format != .fixedRAMRFC1 { put64(0x10) }
      put8(0x7e); put32(ramSectionID)
    }
    guard finished else { return Built(bytes: out, marks: marks) }
    if switchover {
      mark("command")
      put8(0x08); put(be(11, 2)); put(be(0, 2))
    }
    mark("ram.end")
    put8(0x03); put32(ramSectionID)
    if format != .fixedRAMRFC1 { put64(0x10) }
    put8(0x7e); put32(ramSectionID)
    var json = "{\"page_size\": 4096, \"devices\": ["
    for (i, d) in devices.enumerated() {
      let id = ramSectionID + 1 + UInt32(i)
      mark("device[\(i)]")
      put8(0x04); put32(id); put8(UInt8(d.name.utf8.count)); put(Array(d.name.utf8)); put32(d.instance); put32(d.version)
      if let body = d.body { put(body) } else { for f in d.fields { put(f.bytes) } }
      put8(0x7e); put32(id)
      if i > 0 { json += ", " }
      if let custom = d.json {
        json += custom
        continue
      }
      json += "{\"name\": \"\(d.name)\", \"instance_id\": \(d.instance), \"vmsd_name\": \"\(d.name)\", \"version\": \(d.version), \"fields\": ["
      json += d.fields.map { "{\"name\": \"\($0.name)\", \"type\": \"\($0.type)\", \"size\": \($0.bytes.count)}" }.joined(
        separator: ", ")
      json += "]}"
    }
    json += "]}"
    mark("eof")
    put8(0x00)
    if vmDescription {
      mark("vmdesc")
      put8(0x06); put32(UInt32(json.utf8.count)); put(Array(json.utf8))
    }
    mark("end")
    return Built(bytes: out, marks: marks)
  }

  private func writePages(_ b: FixtureBlock, pagesOffset: UInt64, into out: inout [UInt8]) {
    let pages = b.length / 4096
    for (p, content) in b.present.merging(b.stale, uniquingKeysWith: { a, _ in a }) where p < pages {
      let off = Int(pagesOffset + p * 4096)
      var page = Array(content.prefix(4096))
      page += [UInt8](repeating: 0, count: 4096 - page.count)
      if out.count < off + 4096 { out += [UInt8](repeating: 0, count: off + 4096 - out.count) }
      out.replaceSubrange(off..<off + 4096, with: page)
    }
  }
}

/// A 92-byte libvirt save header plus XML and padding, to put in front of a stream.
public func libvirtPrefix(xml: String, magic: String = "LibvirtQemudSave", format: UInt32 = 6, padding: Int = 4000)
  -> [UInt8]
{
  var data = Array(xml.utf8) + [0]
  data += [UInt8](repeating: 0, count: padding)
  func le(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * UInt32($0))) } }
  var out = Array(magic.utf8)
  out += le(2) + le(UInt32(data.count)) + le(0) + le(format) + le(0)
  out += [UInt8](repeating: 0, count: 56)
  return out + data
}

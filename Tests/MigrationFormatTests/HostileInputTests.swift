import Foundation
import MigrationFormat
import MigrationFormatTestSupport
import Testing

/// Damaged and hostile files: each must give a specific one-line error, never a crash.
@Suite("Hostile input")
struct HostileInputTests {
  /// Patches `bytes` at `offset` with `value` big-endian in `count` bytes.
  func patched(_ bytes: [UInt8], at offset: UInt64?, _ value: UInt64, _ count: Int) -> [UInt8] {
    var b = bytes
    let o = Int(offset!)
    b.replaceSubrange(o..<o + count, with: be(value, count))
    return b
  }

  func expectError(
    _ bytes: [UInt8], _ kind: FormatError.Kind, _ words: String..., sourceLocation: SourceLocation = #_sourceLocation
  ) throws {
    let e = try openError(bytes)
    #expect(e != nil, "opened a damaged file", sourceLocation: sourceLocation)
    guard let e else { return }
    #expect(e.kind == kind, "\(e)", sourceLocation: sourceLocation)
    for w in words {
      #expect(e.description.contains(w), "\(e) lacks \(w)", sourceLocation: sourceLocation)
    }
    #expect(!e.description.contains("\n"), sourceLocation: sourceLocation)
    #expect(e.description.contains("at offset 0x"), sourceLocation: sourceLocation)
  }

  @Test("truncation at every structure boundary, and one byte after it")
  func truncationEverywhere() throws {
    let built = typicalStream().build()
    // A cut exactly before the VM description leaves a valid file that ends with EOF (as with suppress-vmdesc).
    for (name, offset) in built.marks where name != "end" && name != "vmdesc" {
      // One byte past "eof" keeps the EOF record: that too is a valid file without a VM description.
      for cut in [offset, offset + 1] where cut < UInt64(built.bytes.count) && !(name == "eof" && cut > offset) {
        let e = try openError(Array(built.bytes.prefix(Int(cut))))
        #expect(e != nil, "cut at \(name) (\(cut)) opened")
        if let e {
          #expect([.truncated, .incomplete, .badMagic].contains(e.kind), "cut at \(name): \(e)")
        }
      }
    }
  }

  @Test("every single-byte cut of the header and configuration")
  func truncationEveryByte() throws {
    let built = typicalStream().build()
    let stop = Int(built.mark("block[0].bitmap")!) + 8
    for cut in 0..<stop {
      let e = try openError(Array(built.bytes.prefix(cut)))
      #expect(e != nil, "cut at \(cut) opened")
    }
  }

  @Test("wrong magic and versions")
  func magicAndVersions() throws {
    let bytes = typicalStream().build().bytes
    try expectError(patched(bytes, at: 0, 0x5145_564e, 4), .badMagic, "stream header", "QEVM")
    try expectError(patched(bytes, at: 4, 2, 4), .badVersion, "stream header", "version 2, expected 3")
    var s = typicalStream()
    s.blocks[1].version = 2
    try expectError(s.build().bytes, .badVersion, "mapped-ram header of block \"pc.ram\"", "version 2, expected 1")
    var l = typicalStream()
    l.prefix = libvirtPrefix(xml: "<domain/>")
    var lb = l.build().bytes
    lb.replaceSubrange(16..<20, with: [7, 0, 0, 0])
    try expectError(lb, .badVersion, "libvirt save header")
  }

  @Test("page sizes 0, 3000, 8192 and 2^63", arguments: [UInt64(0), 3000, 8192, 1 << 63])
  func pageSize(size: UInt64) throws {
    var s = typicalStream()
    s.blocks[1].pageSizeField = size
    try expectError(s.build().bytes, .badValue, "pc.ram", "page_size \(size), expected 4096")
  }

  @Test("a bitmap past end of file")
  func bitmapPastEOF() throws {
    var s = typicalStream()
    s.blocks[3].bitmapOffsetField = 1 << 40
    s.blocks[3].pagesOffsetField = (1 << 40) + (1 << 20)
    let e = try #require(try openError(s.build().bytes))
    #expect([.truncated, .incomplete].contains(e.kind), "\(e)")
    #expect(e.description.contains("pc.bios"))
  }

  @Test("pages past end of file")
  func pagesPastEOF() throws {
    var s = typicalStream()
    s.blocks[3].pagesOffsetField = 1 << 40
    try expectError(s.build().bytes, .incomplete, "pages region of block", "past the end of the file")
  }

  @Test("offsets that overflow 64 bits")
  func overflow() throws {
    var s = typicalStream()
    s.blocks[1].pagesOffsetField = UInt64.max - 4095
    try expectError(s.build().bytes, .overflow, "pc.ram", "passes 2^64")
    var t = typicalStream()
    t.blocks[1].bitmapOffsetField = UInt64.max - 3
    try expectError(t.build().bytes, .overflow, "pc.ram", "passes 2^64")
  }

  @Test("overlapping regions")
  func overlaps() throws {
    let built = typicalStream().build()
    let h = built.mark("block[1].header")!
    // bitmap_offset pointing into the header
    try expectError(patched(built.bytes, at: h + 12, h + 4, 8), .overlap, "bitmap_offset", "overlaps the header")
    // pages_offset = 0, which would alias the file header
    try expectError(patched(built.bytes, at: h + 20, 0, 8), .overlap, "pages_offset 0x0 overlaps the bitmap")
    // pages region starting inside the bitmap
    let bm = built.mark("block[1].bitmap")!
    try expectError(patched(built.bytes, at: h + 20, bm / 4096 * 4096, 8), .overlap, "overlaps the bitmap")
  }

  @Test("misaligned pages_offset")
  func misaligned() throws {
    let built = typicalStream().build()
    let h = built.mark("block[1].header")!
    let pages = built.mark("block[1].pages")!
    try expectError(patched(built.bytes, at: h + 20, pages + 512, 8), .badValue, "not a multiple of the page size")
  }

  @Test("block sizes that disagree with the MEM_SIZE total")
  func memSize() throws {
    var under = typicalStream()
    under.memSizeField = 65 * 4096 + 70 * 4096 - 4096
    try expectError(under.build().bytes, .badValue, "overshoots the MEM_SIZE total")
    var over = typicalStream()
    over.memSizeField = over.blocks.reduce(0) { $0 + $1.length } + 4096
    let e = try #require(try openError(over.build().bytes))
    #expect([.badValue, .truncated].contains(e.kind), "\(e)")
    var extra = typicalStream()
    extra.memSizeField = 70 * 4096 + 65 * 4096 + 32 * 4096
    try expectError(extra.build().bytes, .badValue, "expected EOS")
  }

  @Test("used_length not a multiple of the page size")
  func oddLength() throws {
    var s = typicalStream()
    s.blocks[1].length = 65 * 4096 + 100
    s.memSizeField = (s.blocks.reduce(0) { $0 + $1.length } + 4095) / 4096 * 4096
    try expectError(s.build().bytes, .badValue, "pc.ram", "not a multiple of the page size")
  }

  @Test("names of length 0, with NUL, not UTF-8, or repeated")
  func names() throws {
    var empty = typicalStream()
    empty.blocks[1].name = []
    try expectError(empty.build().bytes, .badValue, "block name length 0")
    var nul = typicalStream()
    nul.blocks[1].name = Array("pc\0ram".utf8)
    try expectError(nul.build().bytes, .badValue, "pc\\x00ram", "NUL")
    var bad = typicalStream()
    bad.blocks[1].name = [0x70, 0xff, 0xfe]
    try expectError(bad.build().bytes, .badValue, "\\xff", "not valid UTF-8")
    var dup = typicalStream()
    dup.blocks[2].name = dup.blocks[1].name
    try expectError(dup.build().bytes, .duplicate, "pc.ram")
  }

  @Test("a huge block length is refused before anything is sized by it")
  func hugeLength() throws {
    var s = FixtureStream(blocks: [FixtureBlock(name: "pc.ram", length: 4096)])
    s.memSizeField = 1 << 62
    var b = s.build().bytes
    let entry = Int(s.build().mark("block[0].entry")!)
    b.replaceSubrange(entry + 7..<entry + 15, with: be(1 << 62, 8))
    try expectError(b, .limitExceeded, "pc.ram", "limit")
  }

  @Test("too many capabilities, and a machine name too long")
  func configurationLimits() throws {
    let built = typicalStream().build()
    let caps = built.mark("capabilities")!
    let countAt = caps + 1 + 1 + 26 + 4
    try expectError(patched(built.bytes, at: countAt, 100_000, 4), .limitExceeded, "capabilities")
    try expectError(patched(built.bytes, at: 9, 1 << 30, 4), .badValue, "machine name length")
  }

  @Test("an unknown record type after ram, and a footer for the wrong section")
  func records() throws {
    let built = typicalStream().build()
    let end = built.mark("ram.end")!
    try expectError(patched(built.bytes, at: end, 0x42, 1), .badValue, "record type 0x42")
    let eos = built.mark("ram.eos")!
    try expectError(patched(built.bytes, at: eos + 9, 99, 4), .badValue, "footer for section id 99, expected 1")
  }

  @Test("a PACKAGED command (a nested postcopy stream) is refused, not followed")
  func packagedCommand() throws {
    let built = typicalStream().build()
    let command = try #require(built.mark("command"))
    try expectError(patched(built.bytes, at: command + 1, 7, 2), .unsupported, "PACKAGED", "not followed")
  }

  @Test("more than 4096 RAM blocks are refused at the block list")
  func tooManyBlocks() throws {
    var s = FixtureStream(blocks: (0...Limits.blockCount).map { FixtureBlock(name: "b\($0)", length: 4096) })
    s.alignment = 4096
    try expectError(s.build().bytes, .limitExceeded, "ram block list", "more than 4096 blocks")
  }

  @Test("a VM description above the 64 MiB limit is not read: refused, and --force opens the RAM")
  func hugeVMDescription() throws {
    var s = typicalStream()
    s.vmDescription = false
    let length = Int(Limits.vmDescriptionBytes) + 2
    var bytes = s.build().bytes
    bytes += [0x06] + be(UInt64(length), 4) + Array("{".utf8)
    bytes += [UInt8](repeating: UInt8(ascii: " "), count: length - 2) + Array("}".utf8)
    let path = try temporaryFile(bytes)
    // Without the description the device sections cannot be walked to the EOF record.
    let e = try openError(bytes)
    #expect(e?.description.contains("cannot find the end of the stream") == true, "\(String(describing: e))")
    var options = OpenOptions()
    options.force = true
    let file = try MigrationFile(path: path, options: options)
    #expect(file.vmDescription == nil)
    #expect(file.devicesUnavailableReason != nil)
    #expect(file.warnings.contains { $0.contains("VM description") }, "\(file.warnings)")
    #expect(try readAll(file, 1) == expected(s.blocks[1]))
  }

  @Test("a compressed libvirt image is refused with what to do")
  func compressedLibvirt() throws {
    var s = typicalStream()
    s.prefix = libvirtPrefix(xml: "<domain/>", format: 5)
    try expectError(s.build().bytes, .unsupported, "zstd", "decompress")
  }

  @Test("not a migration stream at all")
  func notAStream() throws {
    try expectError(Array("hello, this is not QEMU".utf8), .badMagic, "expected \"QEVM\"")
    try expectError([], .truncated)
  }

  @Test("a VM description nested too deep is ignored with a warning, RAM still opens")
  func deepJSON() throws {
    var bytes = typicalStream().build().bytes
    let eof = bytes.lastIndex(of: 0x06)!
    let json = Array("{\"devices\": ".utf8) + Array(String(repeating: "[", count: 100).utf8)
      + Array(String(repeating: "]", count: 100).utf8) + Array("}".utf8)
    bytes = Array(bytes.prefix(eof)) + [0x06] + be(UInt64(json.count), 4) + json
    let path = try temporaryFile(bytes)
    let file = try MigrationFile(path: path)
    #expect(file.isComplete)
    #expect(file.vmDescription == nil)
    #expect(file.devicesUnavailableReason != nil)
    let deep = Array("{\"devices\": ".utf8) + Array(String(repeating: "[", count: 100).utf8)
      + Array(String(repeating: "]", count: 100).utf8) + Array("}".utf8)
    #expect(throws: FormatError.self) { try VMDescription.init(json: deep, at: 0) }
  }

  @Test("a forced open's missing bitmap costs no memory, whatever size the block claims")
  func allClearBitmap() {
    // 2^40 pages would be 128 GiB of words: this only passes if nothing is allocated.
    let b = PageBitmap(allClear: 1 << 40)
    #expect(b.populated == 0)
    #expect(!b.isSet(0) && !b.isSet((1 << 40) - 1) && !b.isSet(1 << 40))
    #expect(b.nextSet(from: 0) == nil)
    #expect(b.nextClear(from: 12345) == 12345)
    #expect(b.nextClear(from: 1 << 40) == nil)
    #expect(b.runs().isEmpty)
  }
}

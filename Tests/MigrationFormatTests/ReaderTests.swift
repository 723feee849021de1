import Foundation
import MigrationFormat
import MigrationFormatTestSupport
import Testing

@Suite("Reading well-formed files")
struct ReaderTests {
  @Test("a typical file: blocks, offsets, populated counts and bytes")
  func typical() throws {
    let stream = typicalStream()
    let built = stream.build()
    let file = try open(built)
    #expect(file.machineType == "pc-i440fx-10.0")
    #expect(file.capabilities == ["mapped-ram"])
    #expect(file.format == .mappedRAM)
    #expect(file.streamOffset == 0)
    #expect(file.isComplete)
    #expect(file.blocks.map(\.name.description) == stream.blocks.map { String(decoding: $0.name, as: UTF8.self) })
    #expect(file.memorySize == stream.blocks.reduce(0) { $0 + $1.length })
    for (i, b) in stream.blocks.enumerated() {
      let m = file.blocks[i]
      #expect(m.length == b.length)
      #expect(m.pageSize == 4096)
      #expect(m.populatedPages == UInt64(b.present.count))
      #expect(m.bitmapOffset == built.mark("block[\(i)].bitmap"))
      #expect(m.pagesOffset == built.mark("block[\(i)].pages"))
      #expect(m.pagesOffset % (1 << 20) == 0)
      #expect(try readAll(file, i) == expected(b))
    }
    #expect(file.block(named: "pc.ram")?.length == 65 * 4096)
    #expect(file.devices.map(\.name) == ["timer"])
    #expect(file.devices.first?.offset == built.mark("device[0]"))
    #expect(file.vmDescription?.devices.count == 1)
  }

  @Test("page counts at word boundaries", arguments: [UInt64(0), 1, 63, 64, 65, 128, 129])
  func pageCounts(pages: UInt64) throws {
    // A zero-length block is only possible before the end of the list (MEM_SIZE counts down).
    var stream = FixtureStream(blocks: [
      patternBlock("edge", pages: pages, every: 1), patternBlock("after", pages: 2, every: 1),
    ])
    if pages > 0 { stream.blocks[0].present.removeValue(forKey: pages / 2) }
    let file = try open(stream.build())
    #expect(file.blocks[0].pageCount == pages)
    #expect(file.blocks[0].populatedPages == UInt64(stream.blocks[0].present.count))
    #expect(try readAll(file, 0) == expected(stream.blocks[0]))
    #expect(try readAll(file, 1) == expected(stream.blocks[1]))
  }

  @Test("4 KiB-aligned pages regions as well as 1 MiB ones", arguments: [UInt64(4096), 1 << 20])
  func alignment(align: UInt64) throws {
    var stream = typicalStream()
    stream.alignment = align
    let file = try open(stream.build())
    for (i, b) in stream.blocks.enumerated() {
      #expect(file.blocks[i].pagesOffset % align == 0)
      #expect(try readAll(file, i) == expected(b))
    }
  }

  @Test("a clear bit reads as zeros whatever bytes the file holds")
  func staleBytes() throws {
    var b = patternBlock("pc.ram", pages: 16, every: 2)
    for p in stride(from: UInt64(1), to: 16, by: 2) { b.stale[p] = [UInt8](repeating: 0xA5, count: 4096) }
    let built = FixtureStream(blocks: [b]).build()
    // The stale bytes really are in the file.
    let pages = Int(built.mark("block[0].pages")!)
    #expect(built.bytes[pages + 4096] == 0xA5)
    let file = try open(built)
    let got = try readAll(file, 0)
    #expect(got == expected(b))
    #expect(!got.contains(0xA5))
  }

  @Test("reads at any offset and size, short at the end")
  func unalignedReads() throws {
    let stream = typicalStream()
    let file = try open(stream.build())
    let whole = expected(stream.blocks[1])
    var rng = SystemRandomNumberGenerator()
    for _ in 0..<300 {
      let off = Int.random(in: 0..<whole.count + 10, using: &rng)
      let size = Int.random(in: 1...20000, using: &rng)
      var buf = [UInt8](repeating: 0xEE, count: size)
      let n = try buf.withUnsafeMutableBytes { raw in try file.read(block: 1, at: UInt64(off), into: raw) }
      let want = off < whole.count ? Array(whole[off..<min(whole.count, off + size)]) : []
      #expect(n == want.count)
      #expect(Array(buf.prefix(n)) == want)
    }
  }

  @Test("data and hole queries follow the bitmap's runs")
  func dataAndHoles() throws {
    var b = FixtureBlock(name: "pc.ram", length: 300 * 4096)
    for p: UInt64 in [0, 1, 2, 63, 64, 65, 127, 128, 200, 299] { b.present[p] = [1] }
    let file = try open(FixtureStream(blocks: [b]).build())
    var runs: [Range<UInt64>] = []
    var pos: UInt64 = 0
    while let d = file.nextData(block: 0, from: pos) {
      let h = file.nextHole(block: 0, from: d)!
      runs.append(d..<h)
      pos = h
      if h >= b.length { break }
    }
    #expect(runs.map { ($0.lowerBound / 4096)..<($0.upperBound / 4096) } == file.blocks[0].bitmap!.runs())
    #expect(runs.map { ($0.lowerBound / 4096)..<($0.upperBound / 4096) } == [0..<3, 63..<66, 127..<129, 200..<201, 299..<300])
    #expect(file.nextData(block: 0, from: 3 * 4096 + 5) == 63 * 4096)
    #expect(file.nextData(block: 0, from: 4096 + 5) == 4096 + 5)
    #expect(file.nextHole(block: 0, from: 299 * 4096) == 300 * 4096)
    #expect(file.nextData(block: 0, from: 300 * 4096) == nil)
    #expect(file.nextHole(block: 0, from: 300 * 4096) == nil)
  }

  @Test("a libvirt header in front: absolute offsets, XML exposed")
  func libvirt() throws {
    var stream = typicalStream()
    stream.prefix = libvirtPrefix(xml: "<domain type='kvm'><name>t</name></domain>", padding: 65000)
    let built = stream.build()
    let file = try open(built)
    #expect(file.streamOffset == UInt64(stream.prefix.count))
    #expect(file.libvirt?.xml == "<domain type='kvm'><name>t</name></domain>")
    #expect(file.libvirt?.formatName == "sparse")
    #expect(file.blocks[0].pagesOffset == 0x100000 || file.blocks[0].pagesOffset % 0x100000 == 0)
    for (i, b) in stream.blocks.enumerated() { #expect(try readAll(file, i) == expected(b)) }
  }

  @Test("an unfinished libvirt save is refused, and opens with force")
  func libvirtPart() throws {
    var stream = typicalStream()
    stream.prefix = libvirtPrefix(xml: "<domain/>", magic: "LibvirtQemudPart")
    let bytes = stream.build().bytes
    let e = try #require(try openError(bytes))
    #expect(e.kind == .incomplete)
    #expect(e.description.contains("LibvirtQemudPart"))
    var forced = OpenOptions()
    forced.force = true
    let path = try temporaryFile(bytes)
    let file = try MigrationFile(path: path, options: forced)
    #expect(file.warnings.contains { $0.contains("never finished") })
  }

  @Test("the RFC v1 fixed-ram layout")
  func rfc1() throws {
    var stream = typicalStream()
    stream.format = .fixedRAMRFC1
    stream.capabilities = ["fixed-ram"]
    let file = try open(stream.build())
    #expect(file.format == .fixedRAMRFC1)
    #expect(file.isComplete)
    for (i, b) in stream.blocks.enumerated() { #expect(try readAll(file, i) == expected(b)) }
  }

  @Test("fixed-ram with the mapped-ram header (late patches)")
  func fixedRAMGenB() throws {
    var stream = typicalStream()
    stream.capabilities = ["fixed-ram"]
    stream.format = .fixedRAM
    let file = try open(stream.build())
    #expect(file.format == .fixedRAM)
    for (i, b) in stream.blocks.enumerated() { #expect(try readAll(file, i) == expected(b)) }
  }

  @Test("x-ignore-shared adds mr_addr before the header")
  func ignoreShared() throws {
    var stream = typicalStream()
    stream.capabilities = ["x-ignore-shared", "mapped-ram"]
    stream.blocks[1].mrAddr = 0xc0000
    let file = try open(stream.build())
    #expect(file.blocks[1].mrAddr == 0xc0000)
    for (i, b) in stream.blocks.enumerated() { #expect(try readAll(file, i) == expected(b)) }
  }

  @Test("classic streams are recognised and their blocks listed")
  func classic() throws {
    var stream = typicalStream()
    stream.format = .classic
    stream.capabilities = []
    let file = try open(stream.build())
    #expect(file.format == .classic)
    #expect(file.isComplete)
    #expect(file.blocks.map(\.length) == stream.blocks.map(\.length))
    #expect(file.blocks[0].populatedPages == nil)
  }

  @Test("classic records continue a block named in an earlier section", arguments: [1, 3, 7])
  func classicAcrossSections(parts: Int) throws {
    var stream = typicalStream()
    stream.format = .classic
    stream.capabilities = []
    stream.parts = parts
    let file = try open(stream.build())
    #expect(file.isComplete)
    let index = try ClassicPageIndex(file: file)
    for (i, b) in stream.blocks.enumerated() {
      #expect(index.pages[i] == b.present.keys.sorted(), "block \(i)")
      for (page, offset) in zip(index.pages[i], index.offsets[i]) {
        let got = try file.file.bytes(at: offset, count: 4096, "page")
        #expect(got == Array(b.present[page]!.prefix(4096)) + [UInt8](repeating: 0, count: max(0, 4096 - b.present[page]!.count)))
      }
    }
    // Converted to mapped-ram (runs of consecutive records are fetched with one preadv),
    // every block reads as the fixture says.
    let out = file.file.path + ".mapped"
    _ = try StreamWriter.write(try Converter.plan(file, to: .mappedRAM), to: try OutputFile(path: out, overwrite: false))
    let converted = try MigrationFile(path: out)
    for (i, b) in stream.blocks.enumerated() { #expect(try readAll(converted, i) == expected(b), "block \(i)") }
  }

  @Test("no VM description: still opens, and says why devices are missing")
  func noVMDescription() throws {
    var stream = typicalStream()
    stream.vmDescription = false
    let file = try open(stream.build())
    #expect(file.isComplete)
    #expect(file.vmDescription == nil)
    #expect(file.devicesUnavailableReason?.contains("no VM description") == true)
  }

  @Test("an interrupted save is refused, and opens with force")
  func interrupted() throws {
    var stream = typicalStream()
    stream.finished = false
    let bytes = stream.build().bytes
    let e = try #require(try openError(bytes))
    #expect(e.kind == .incomplete)
    #expect(e.description.contains("--force"))
    var forced = OpenOptions()
    forced.force = true
    let file = try MigrationFile(path: try temporaryFile(bytes), options: forced)
    #expect(!file.isComplete)
    #expect(file.blocks.count == 4)
    #expect(try readAll(file, 1) == expected(stream.blocks[1]))
  }

  @Test("big-endian bitmap layout override")
  func bigEndianBitmap() throws {
    let bytes: [UInt8] = [0x01, 0, 0, 0, 0, 0, 0, 0x80]
    let le = PageBitmap.from(pageCount: 64, bytes: bytes, layout: .littleEndian64)
    let be = PageBitmap.from(pageCount: 64, bytes: bytes, layout: .bigEndian64)
    #expect(le.isSet(0) && le.isSet(63) && le.populated == 2)
    #expect(be.isSet(56) && be.isSet(7) && be.populated == 2)
  }
}

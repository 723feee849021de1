// The format library (and `mramfs info`) against files written by a real QEMU
// 10 (scripts/make-fixtures.py), checked against ground truth taken from the
// same QEMU process: `info ramblock`, pmemsave of guest RAM (.pcram), the
// guest's own markers, and the generator's independent reader (file_info).

import Foundation
import GuestViews
import MigrationFormat
import SaveFilesystem
import QEMUFixtures
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// Opens a scenario's file with the library (`force` for the unfinished libvirt save).
func openScenario(_ s: FixtureManifest.Scenario, _ fixtures: Fixtures) throws -> MigrationFile {
  var options = OpenOptions()
  options.force = s.kind == "libvirt-part"
  return try MigrationFile(path: fixtures.path(s.file), options: options)
}

@Suite("real QEMU files, read by the library")
struct RealQEMUTests {
  // MARK: The fixtures themselves

  @Test("the manifest lists every scenario and its files exist")
  func manifestIsComplete() throws {
    let fixtures = try Fixtures.load()
    #expect(fixtures.manifest.format == 1)
    #expect(fixtures.manifest.qemuVersion.contains("QEMU emulator version 10."))
    #expect(Set(fixtures.manifest.scenarios.map(\.name)) == Set(ScenarioName.all))
    for s in fixtures.manifest.scenarios {
      for f in [s.file, s.pcram] {
        var st = stat()
        #expect(stat(fixtures.path(f), &st) == 0, "\(s.name): \(f) is missing")
        if f == s.file { #expect(UInt64(st.st_size) == s.fileSize, "\(s.name): \(f) size") }
        if f == s.pcram { #expect(UInt64(st.st_size) == s.ramBytes, "\(s.name): \(f) size") }
      }
    }
  }

  // MARK: Headers

  @Test("machine, capabilities, stream offset and libvirt header equal the manifest", arguments: ScenarioName.mappedRAM)
  func headerFacts(_ name: String) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let file = try openScenario(s, fixtures)
    #expect(file.format == .mappedRAM)
    #expect(file.machineType == s.machineType)
    #expect(file.machineType == s.fileInfo.machineType)
    #expect(file.capabilities.contains("mapped-ram"))
    #expect(file.capabilities == s.fileInfo.capabilities)
    #expect(file.streamOffset == s.streamOffset)
    #expect(file.streamOffset == s.fileInfo.streamOffset)
    if s.kind.hasPrefix("libvirt") { #expect(file.streamOffset == 65713) } else { #expect(file.streamOffset == 0) }
    #expect(file.isComplete)
    #expect(file.memorySize == s.fileInfo.memSizeTotal)
    #expect(file.file.size == s.fileSize)
    if let lv = s.libvirt {
      let header = try #require(file.libvirt, "\(name): the library found no libvirt header")
      #expect(header.magic == lv.magic)
      #expect(header.version == lv.version)
      #expect(header.dataLength == lv.dataLen)
      #expect(header.format == lv.format)
      #expect(header.formatName == "sparse")
      #expect(header.wasRunning == (lv.wasRunning != 0))
      #expect(header.xml == lv.xml)
      #expect(header.isComplete == (s.kind == "libvirt"))
    } else {
      #expect(file.libvirt == nil)
    }
    // Device sections come from the VM description (QEMU's JSON after the stream).
    if let vmdesc = s.fileInfo.vmdesc {
      #expect(file.devicesUnavailableReason == nil)
      #expect(file.vmDescription != nil)
      #expect(file.devices.count == vmdesc.devices, "\(name): device sections vs the VM description's devices")
      #expect(file.devices.contains { $0.name == "cpu" })
    } else {
      #expect(file.devicesUnavailableReason != nil)
    }
  }

  // MARK: Blocks

  @Test("block names and lengths equal QEMU's `info ramblock`", arguments: ScenarioName.all)
  func blocksMatchInfoRamblock(_ name: String) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let file = try openScenario(s, fixtures)
    let library = Dictionary(file.blocks.map { ($0.name.description, $0.length) }, uniquingKeysWith: { a, _ in a })
    let qemu = Dictionary(s.ramblocks.map { ($0.name, $0.usedLength) }, uniquingKeysWith: { a, _ in a })
    #expect(file.blocks.count == s.ramblocks.count)
    #expect(Set(library.keys) == Set(qemu.keys))
    #expect(library == qemu)
    for b in file.blocks {
      #expect(b.name.string == b.name.description, "block names are plain UTF-8")
      let q = s.ramblocks.first { $0.name == b.name.description }
      #expect(b.pageSize == q?.pageSize, "\(b.name): page size")
    }
    // A classic save of the same guest, when there is one, lists the same blocks.
    if let classic = s.classicFile {
      let c = try MigrationFile(path: fixtures.path(classic))
      #expect(c.format == .classic)
      #expect(c.blocks.map(\.name.description) == file.blocks.map(\.name.description))
      #expect(c.blocks.map(\.length) == file.blocks.map(\.length))
    }
    // The generator's own reader agrees on where everything is.
    #expect(file.blocks.map(\.name.description) == s.fileInfo.blocks.map(\.name))
    for (b, f) in zip(file.blocks, s.fileInfo.blocks) {
      #expect(b.length == f.usedLength)
      #expect(b.entryOffset == f.entryOffset, "\(b.name): entry offset")
      if s.kind == "classic" {
        #expect(b.bitmap == nil)
        #expect(b.populatedPages == nil)
        continue
      }
      #expect(b.headerOffset == f.headerOffset, "\(b.name): header offset")
      #expect(b.bitmapOffset == f.bitmapOffset, "\(b.name): bitmap offset")
      #expect(b.bitmapSize == f.bitmapSize, "\(b.name): bitmap size")
      #expect(b.pagesOffset == f.pagesOffset, "\(b.name): pages offset")
      #expect(b.populatedPages == f.bitsSet, "\(b.name): populated pages vs bits set")
      #expect(b.pagesOffset % 0x100000 == 0, "\(b.name): QEMU aligns the pages region to 1 MiB")
      #expect(b.bitmap?.pageCount == b.length / b.pageSize)
    }
  }

  // MARK: Contents against pmemsave

  @Test(
    "pc.ram equals pmemsave outside compare_exclude; clear bits read as zero inside it; populated pages are the non-zero ones",
    arguments: ScenarioName.mappedRAM)
  func pcRAMMatchesPmemsave(_ name: String) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let file = try openScenario(s, fixtures)
    let index = try #require(file.blockIndex(named: "pc.ram"))
    let block = file.blocks[index]
    let bitmap = try #require(block.bitmap)
    let length = block.length
    #expect(length == s.ramBytes)
    let excluded = s.excludedBlockRanges
    #expect(excluded.count == s.compareExclude.count, "every compare_exclude range lies in pc.ram")

    let pcram = fixtures.path(s.pcram)
    let fd = open(pcram, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else {
      Issue.record("cannot open \(pcram): \(String(cString: strerror(errno)))")
      return
    }
    defer { close(fd) }
    var st = stat()
    fstat(fd, &st)
    #expect(UInt64(st.st_size) == length, "\(s.pcram) has the size of pc.ram")

    let chunk = 1 << 20
    let lib = Buffer(chunk, fill: 0xEE)
    defer { withExtendedLifetime(lib) {} }  // its memory is used through raw pointers
    let ref = Buffer(chunk)
    defer { withExtendedLifetime(ref) {} }  // its memory is used through raw pointers
    let ps = Int(block.pageSize)
    var nonZeroRefPages = Set<UInt64>()  // outside the window
    var nextRefData = seekData(fd, 0)
    var clearInWindowChecked = 0
    var off: UInt64 = 0
    while off < length {
      let n = Int(min(UInt64(chunk), length - off))
      let got = try file.read(block: index, at: off, into: lib.slice(n))
      guard got == n else {
        Issue.record("\(name): library read of pc.ram at \(hex(off)) returned \(got) bytes, expected \(n)")
        return
      }
      if let d = nextRefData, d < off { nextRefData = seekData(fd, off) }
      let refHasData = nextRefData.map { $0 < off + UInt64(n) } ?? false
      let refBase: UnsafeRawPointer
      if refHasData {
        guard preadFully(fd, ref.base, n, off) == n else {
          Issue.record("\(name): short read of \(s.pcram) at \(hex(off))")
          return
        }
        refBase = UnsafeRawPointer(ref.base)
      } else {
        refBase = UnsafeRawPointer(zeros.base)  // a hole of the sparse .pcram: zeros
      }
      for part in split(off, UInt64(n), by: excluded) {
        let at = Int(part.range.lowerBound - off)
        let count = Int(part.range.upperBound - part.range.lowerBound)
        if part.excluded {
          // pmemsave may differ here (the VGA window); the library must still serve zeros for clear bits.
          var p = part.range.lowerBound / block.pageSize
          while p * block.pageSize < part.range.upperBound {
            if !bitmap.isSet(p) {
              let pageAt = Int(p * block.pageSize - off)
              if !isZero(lib.base + pageAt, ps) {
                Issue.record("\(name): page \(p) of pc.ram (in compare_exclude) has a clear bit but reads non-zero")
                return
              }
              clearInWindowChecked += 1
            }
            p += 1
          }
          continue
        }
        if let d = firstDifference(lib.base + at, refBase + at, count) {
          let where_ = part.range.lowerBound + UInt64(d)
          Issue.record(
            """
            \(name): pc.ram read through the library differs from \(s.pcram) first at offset \(hex(where_)) \
            (library \(lib.raw[at + d]), pmemsave \(refBase.load(fromByteOffset: at + d, as: UInt8.self)), \
            bitmap bit of page \(where_ / block.pageSize): \(bitmap.isSet(where_ / block.pageSize)))
            """)
          return
        }
        if refHasData {
          var p = part.range.lowerBound
          while p < part.range.upperBound {
            if !isZero(refBase + Int(p - off), ps) { nonZeroRefPages.insert(p / block.pageSize) }
            p += block.pageSize
          }
        }
      }
      off += UInt64(n)
    }
    #expect(clearInWindowChecked > 0, "the excluded window holds pages with clear bits, and they were checked")

    // Populated pages: exactly the pages pmemsave found non-zero, outside the window.
    func inWindow(_ page: UInt64) -> Bool { excluded.contains { $0.contains(page * block.pageSize) } }
    var setOutside = Set<UInt64>()
    var setInside = 0
    for run in bitmap.runs() {
      for p in run { if inWindow(p) { setInside += 1 } else { setOutside.insert(p) } }
    }
    #expect(UInt64(setOutside.count + setInside) == bitmap.populated)
    #expect(
      setOutside.count == nonZeroRefPages.count,
      "\(name): populated pages of pc.ram outside the window (\(setOutside.count)) vs non-zero 4 KiB pages of \(s.pcram) there (\(nonZeroRefPages.count))"
    )
    let onlySet = setOutside.subtracting(nonZeroRefPages).sorted().prefix(8)
    let onlyRef = nonZeroRefPages.subtracting(setOutside).sorted().prefix(8)
    #expect(onlySet.isEmpty, "\(name): set bits whose pmemsave page is zero: \(onlySet.map { hex($0) })")
    #expect(onlyRef.isEmpty, "\(name): non-zero pmemsave pages with a clear bit: \(onlyRef.map { hex($0) })")
  }

  @Test("the guest's markers and patterns are where it wrote them", arguments: ScenarioName.mappedRAM)
  func guestMarkers(_ name: String) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let guest = fixtures.manifest.guest
    let file = try openScenario(s, fixtures)
    let index = try #require(file.blockIndex(named: "pc.ram"))
    func read(gpa: UInt64, count: Int) throws -> [UInt8] {
      let at = try #require(s.blockOffset(ofGPA: gpa), "\(name): GPA \(hex(gpa)) is not RAM")
      var out = [UInt8](repeating: 0xEE, count: count)
      let n = try out.withUnsafeMutableBytes { try file.read(block: index, at: at, into: $0) }
      #expect(n == count)
      return out
    }
    #expect(try read(gpa: guest.readyGPA, count: 8) == Array(s.readyMarkerAtSave.utf8))
    var checked = 0
    for (marker, text) in guest.markerStrings {
      guard let gpa = s.markers[marker] else { continue }
      let want = Array(text.utf8)
      #expect(try read(gpa: gpa, count: want.count) == want, "\(name): marker \(marker) at \(hex(gpa))")
      checked += 1
    }
    #expect(checked >= 3, "\(name): low, virt and banner markers at least")
    if s.ramBytes > 4 << 30 { #expect(s.markers["high_marker"] != nil) }
    for pattern in guest.patterns {
      guard s.blockOffset(ofGPA: pattern.gpa) != nil else {
        #expect(pattern.onlyIfHighRAM, "\(name): pattern at \(hex(pattern.gpa)) is not in RAM")
        continue
      }
      let bytes = try read(gpa: pattern.gpa, count: Int(pattern.length))
      for i in 0..<Int(pattern.length / 4096) {
        let gpaPage = pattern.gpa + UInt64(i) * 4096
        var want = [UInt8](repeating: 0, count: 4096)
        if i % 7 != 6 {
          want.withUnsafeMutableBytes { raw in
            for w in 0..<512 { raw.storeBytes(of: (gpaPage | 1).littleEndian, toByteOffset: w * 8, as: UInt64.self) }
          }
        }
        let ok = bytes.withUnsafeBytes { b in want.withUnsafeBytes { memcmp(b.baseAddress! + i * 4096, $0.baseAddress!, 4096) == 0 } }
        if !ok {
          Issue.record("\(name): pattern page \(i) at GPA \(hex(gpaPage)) does not hold the guest's pattern")
          break
        }
      }
    }
    // The stale region holds the guest's fill, except in the live save where the guest zeroed it.
    let stale = guest.stale
    let region = try read(gpa: stale.gpa, count: Int(stale.length))
    let want: UInt8 = s.live ? 0 : stale.fill
    #expect(region.allSatisfy { $0 == want }, "\(name): stale region should read as \(want)")
  }

  // MARK: The live save

  @Test("live save: 0xA5 pages under clear bits are in the file, and read as zeros")
  func liveSaveStaleRegion() throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario("pc-256-live")
    let stale = try #require(s.staleRegion, "pc-256-live has no stale_region in the manifest")
    #expect(stale.bits == "clear")
    #expect(stale.fillInPagesRegion == 0xA5)
    let file = try openScenario(s, fixtures)
    let index = try #require(file.blockIndex(named: "pc.ram"))
    let block = file.blocks[index]
    let bitmap = try #require(block.bitmap)
    let start = try #require(s.blockOffset(ofGPA: stale.gpa))
    let count = Int(stale.length)
    #expect(start % block.pageSize == 0 && stale.length % block.pageSize == 0)

    // Raw bytes in the file, where page i of pc.ram would be.
    let handle = try #require(FileHandle(forReadingAtPath: fixtures.path(s.file)))
    defer { try? handle.close() }
    let raw = Buffer(count)
    defer { withExtendedLifetime(raw) {} }  // its memory is used through raw pointers
    #expect(preadFully(handle.fileDescriptor, raw.base, count, block.pagesOffset + start) == count)
    let fill = Buffer(count, fill: stale.fillInPagesRegion)
    defer { withExtendedLifetime(fill) {} }  // its memory is used through raw pointers
    #expect(memcmp(raw.base, fill.base, count) == 0, "the file holds 0xA5 at pagesOffset + \(hex(start))")

    // Every bit of the region is clear.
    let first = start / block.pageSize
    let last = first + stale.length / block.pageSize
    #expect(bitmap.nextSet(from: first, limit: last) == nil)
    for p in [first, first + 1, last - 1] { #expect(!bitmap.isSet(p)) }

    // The library serves zeros, for the whole region and for reads that start inside it.
    let lib = Buffer(count, fill: 0xEE)
    defer { withExtendedLifetime(lib) {} }  // its memory is used through raw pointers
    #expect(try file.read(block: index, at: start, into: lib.raw) == count)
    #expect(isZero(lib.base, count), "the library must not serve the stale 0xA5 bytes")
    let small = Buffer(100, fill: 0xEE)
    defer { withExtendedLifetime(small) {} }  // its memory is used through raw pointers
    #expect(try file.read(block: index, at: start + 4000, into: small.raw) == 100)
    #expect(isZero(small.base, 100))
    // SEEK_DATA semantics: the stale region is a hole.
    #expect(file.nextHole(block: index, from: start) == start)
    if let d = file.nextData(block: index, from: start) { #expect(d >= start + stale.length) }
  }

  // MARK: Special files

  @Test("an unfinished libvirt save (LibvirtQemudPart) is refused, and opens with force")
  func libvirtPartIsRefused() throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario("pc-256-libvirt-part")
    #expect(s.libvirt?.magic == "LibvirtQemudPart")
    let path = fixtures.path(s.file)
    var caught: FormatError?
    do {
      _ = try MigrationFile(path: path)
    } catch {
      caught = error
    }
    let error = try #require(caught, "the LibvirtQemudPart file opened without force")
    #expect(error.kind == .incomplete)
    #expect(error.description.contains("LibvirtQemudPart"))
    #expect(error.description.contains("offset 0x"))

    var options = OpenOptions()
    options.force = true
    let file = try MigrationFile(path: path, options: options)
    #expect(file.libvirt?.magic == "LibvirtQemudPart")
    #expect(file.libvirt?.isComplete == false)
    #expect(file.warnings.contains { $0.contains("LibvirtQemudPart") })
    #expect(file.streamOffset == s.streamOffset)
    #expect(file.block(named: "pc.ram")?.populatedPages == s.fileInfo.blocks.first { $0.name == "pc.ram" }?.bitsSet)

    // The CLI: refused with one line (exit 1), shown with --force and a warning.
    let mramfs = try CLI.mramfs()
    let refused = try CLI.run(mramfs, ["info", path])
    #expect(refused.status == 1)
    #expect(refused.stderrLines.count == 1 && refused.stderr.contains("LibvirtQemudPart"), "stderr: \(refused.stderr)")
    let forced = try CLI.run(mramfs, ["info", "--force", path])
    #expect(forced.status == 0, "stderr: \(forced.stderr)")
    #expect(forced.stderr.contains("warning"))
  }

  @Test("a classic stream is recognised, lists QEMU's blocks, and `mramfs info` says to convert it")
  func classicIsRecognised() throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario("pc-256-classic")
    let file = try MigrationFile(path: fixtures.path(s.file))
    #expect(file.format == .classic)
    #expect(!file.format.isPositional)
    #expect(file.isComplete)
    #expect(file.machineType == s.machineType)
    #expect(!file.capabilities.contains("mapped-ram"))
    #expect(file.blocks.map(\.name.description) == s.ramblocks.map(\.name))
    #expect(file.blocks.map(\.length) == s.ramblocks.map(\.usedLength))
    #expect(file.blocks.allSatisfy { $0.bitmap == nil })

    let result = try CLI.run(try CLI.mramfs(), ["info", fixtures.path(s.file)])
    #expect(result.status == 0, "stderr: \(result.stderr)")
    #expect(result.stdout.contains("mramfs convert"), "stdout:\n\(result.stdout)")
    for b in s.ramblocks { #expect(result.stdout.contains(b.name)) }
  }

  @Test("a file saved with suppress-vmdesc opens, is complete, and says why devices are unavailable")
  func noVMDescription() throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario("pc-256-novmdesc")
    #expect(!s.vmdesc)
    let file = try MigrationFile(path: fixtures.path(s.file))
    #expect(file.isComplete)
    #expect(file.format == .mappedRAM)
    #expect(file.vmDescription == nil)
    #expect(file.vmDescriptionOffset == nil)
    let reason = try #require(file.devicesUnavailableReason)
    #expect(!reason.isEmpty)
    let result = try CLI.run(try CLI.mramfs(), ["info", "--devices", fixtures.path(s.file)])
    #expect(result.status == 0, "stderr: \(result.stderr)")
    #expect(result.stdout.contains(reason))
  }

  // MARK: mramfs info --json

  @Test("`mramfs info --json` parses and its values equal the library's", arguments: ScenarioName.all)
  func infoJSON(_ name: String) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let file = try openScenario(s, fixtures)
    let path = fixtures.path(s.file)
    var args = ["info", "--json", path]
    if s.kind == "libvirt-part" { args.insert("--force", at: 2) }
    let result = try CLI.run(try CLI.mramfs(), args)
    #expect(result.status == 0, "stderr: \(result.stderr)")
    #expect(result.stdout == InfoDocument.lookingUpKernel(file).json(), "the CLI prints the library's InfoDocument")
    let object = try JSONSerialization.jsonObject(with: result.stdoutData)
    let doc = try #require(object as? [String: Any], "top level is an object")
    func u64(_ any: Any?) -> UInt64? { (any as? NSNumber)?.uint64Value }
    #expect(doc["machine"] as? String == file.machineType)
    #expect(doc["capabilities"] as? [String] == file.capabilities)
    #expect(u64(doc["streamOffset"]) == file.streamOffset)
    #expect(doc["format"] as? String == file.format.rawValue)
    #expect(doc["complete"] as? Bool == file.isComplete)
    #expect(doc["mountable"] as? Bool == file.format.isPositional)
    #expect(u64(doc["memorySize"]) == file.memorySize)
    #expect(doc["file"] as? String == path)
    if let lv = file.libvirt {
      let l = try #require(doc["libvirt"] as? [String: Any])
      #expect(l["magic"] as? String == lv.magic)
      #expect(l["xml"] as? String == lv.xml)
    } else {
      #expect(doc["libvirt"] == nil)
    }
    let blocks = try #require(doc["blocks"] as? [[String: Any]])
    #expect(blocks.count == file.blocks.count)
    let positional = file.format.isPositional
    let paths = BlockPaths.assign(file.blocks.map(\.name))
    for (i, (j, b)) in zip(blocks, file.blocks).enumerated() {
      #expect(j["name"] as? String == b.name.description)
      #expect(j["path"] as? String == paths[i].joined(separator: "/"))
      #expect(u64(j["length"]) == b.length)
      #expect(u64(j["pageSize"]) == b.pageSize)
      #expect(u64(j["entryOffset"]) == b.entryOffset)
      if positional {
        #expect(u64(j["populatedPages"]) == b.populatedPages)
        #expect(u64(j["bitmapOffset"]) == b.bitmapOffset)
        #expect(u64(j["pagesOffset"]) == b.pagesOffset)
      } else {
        #expect(j["populatedPages"] == nil && j["bitmapOffset"] == nil && j["pagesOffset"] == nil)
      }
    }
    if positional {
      #expect(u64(doc["populatedPages"]) == file.blocks.reduce(0) { $0 + ($1.populatedPages ?? 0) })
    }
    #expect((doc["devices"] as? [Any])?.count == file.devices.count)
  }

  // MARK: Damaged files and bad usage

  enum Damage: String, CaseIterable, CustomTestStringConvertible {
    case cutInPagesRegion = "cut in the middle of pc.ram's pages region"
    case headerVersion2 = "pc.ram's mapped-ram header version patched to 2"
    case missingFile = "a path that does not exist"
    var testDescription: String { rawValue }
  }

  @Test("a damaged file: the library names the structure and offset; `mramfs info` exits 1 with one line", arguments: Damage.allCases)
  func damagedFile(_ damage: Damage) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario("pc-256")
    let pcram = try #require(s.fileInfo.blocks.first { $0.name == "pc.ram" })
    let scratch = try ScratchDirectory()
    let path: String
    let kind: FormatError.Kind
    let structure: String
    let offset: UInt64
    switch damage {
    case .cutInPagesRegion:
      let pages = try #require(pcram.pagesOffset)
      path = try scratch.copy(fixtures.path(s.file), as: "cut.mapped", length: pages + s.ramBytes / 2)
      (kind, structure, offset) = (.incomplete, "pages region of block \"pc.ram\"", pages)
    case .headerVersion2:
      let header = try #require(pcram.headerOffset)
      path = try scratch.copy(fixtures.path(s.file), as: "v2.mapped")
      try scratch.patch(path, at: header, with: [0, 0, 0, 2])
      (kind, structure, offset) = (.badVersion, "mapped-ram header of block \"pc.ram\"", header)
    case .missingFile:
      path = "\(scratch.path)/no-such-file.mapped"
      (kind, structure, offset) = (.io, "file \"\(path)\"", 0)
    }
    var caught: FormatError?
    do { _ = try MigrationFile(path: path) } catch { caught = error }
    let error = try #require(caught, "the damaged file opened")
    #expect(error.kind == kind)
    #expect(error.structure == structure)
    #expect(error.offset == offset)

    let result = try CLI.run(try CLI.mramfs(), ["info", path])
    #expect(result.exitedNormally && result.status == 1, "exit status \(result.status)")
    #expect(result.stdout.isEmpty, "nothing on stdout: \(result.stdout)")
    let lines = result.stderrLines
    #expect(lines.count == 1, "exactly one line on stderr: \(result.stderr)")
    let line = lines.first ?? ""
    #expect(line.contains(structure), "\(line)")
    #expect(line.contains("offset \(hex(offset))"), "\(line)")
    #expect(line.contains(error.description), "the line is the library's message: \(line)")
  }

  @Test("bad usage of `mramfs info` exits 2")
  func badUsage() throws {
    let fixtures = try Fixtures.load()
    let file = fixtures.path(try fixtures.scenario("pc-256").file)
    let mramfs = try CLI.mramfs()
    for args in [["info"], ["info", "--no-such-flag", file], ["info", file, "--bitmap-layout", "middle-endian"], ["info", file, "extra"]] {
      let result = try CLI.run(mramfs, args)
      #expect(result.exitedNormally && result.status == 2, "mramfs \(args.joined(separator: " ")) exited \(result.status)")
      #expect(!result.stderr.isEmpty, "mramfs \(args.joined(separator: " ")) says what is wrong")
      #expect(result.stdout.isEmpty)
    }
  }
}

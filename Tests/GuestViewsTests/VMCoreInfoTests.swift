// The VMCOREINFO finder on guests built in code: a note found through the vmcoreinfo device
// and by the search, a stale copy refused in favour of the one init_uts_ns confirms through
// the page tables (also behind page-table isolation's user PGD), notes whose sizes or text
// lie, a device that points at a page the file does not hold, no note at all, and the limits.

import GuestViews
import MigrationFormat
import MigrationFormatTestSupport
import Testing

private let page: UInt64 = 4096

/// An x86 `cpu` section with 16 general registers, rip and the control registers given.
func controlRegistersCPU(cr0: UInt64 = 0x8005_0033, cr3: UInt64, cr4: UInt64 = 0x6f0, efer: UInt64 = 0xd01) -> FixtureDevice {
  var fields: [FixtureDevice.Field] = []
  fields.append(.init("env.eip", "uint64", be(0xffff_ffff_8100_0000, 8)))
  fields.append(.init("env.cr[0]", "uint64", be(cr0, 8)))
  fields.append(.init("env.cr[3]", "uint64", be(cr3, 8)))
  fields.append(.init("env.cr[4]", "uint64", be(cr4, 8)))
  fields.append(.init("env.efer", "uint64", be(efer, 8)))
  var d = FixtureDevice(name: "cpu", version: 12, fields: fields)
  let regs = "{\"name\": \"env.regs\", \"array_len\": 16, \"type\": \"uint64\", \"size\": 8}"
  let rest = fields.map { "{\"name\": \"\($0.name)\", \"type\": \"\($0.type)\", \"size\": 8}" }.joined(separator: ", ")
  d.json = "{\"name\": \"cpu\", \"instance_id\": 0, \"vmsd_name\": \"cpu\", \"version\": 12, \"fields\": [\(regs), \(rest)]}"
  d.body = [UInt8](repeating: 0, count: 16 * 8) + fields.flatMap(\.bytes)
  return d
}

/// A pc guest of `pages` pages of pc.ram holding `present` pages, with `devices` after the timer.
func guest(pages: UInt64 = 64, _ present: [UInt64: [UInt8]], devices: [FixtureDevice] = []) throws -> MigrationFile {
  var s = FixtureStream(blocks: [FixtureBlock(name: "pc.ram", length: pages * page, present: present)])
  s.devices = [.timer] + devices
  return try open(s.build())
}

func find(_ file: MigrationFile, limits: VMCoreInfoSearch.Limits = VMCoreInfoSearch.Limits()) throws
  -> Result<KernelInfo, KernelInfo.Unavailable>
{
  let layout = try PhysicalLayout(file)
  return VMCoreInfoSearch.find(file, layout: layout, registers: (try? file.x86Registers().get()) ?? [], limits: limits)
}

/// Page tables mapping the 4 KiB page of VA `va` to page `target`: PML4 at page 16, an empty
/// "user" PGD at page 17 (page-table isolation's pair), PDPT 18, PD 19, PT 20.
func pageTables(va: UInt64, target: UInt64) -> [UInt64: [UInt8]] {
  func table(_ index: UInt64, _ entry: UInt64) -> [UInt8] {
    var t = [UInt8](repeating: 0, count: Int(page))
    for i in 0..<8 { t[Int(index) * 8 + i] = UInt8(truncatingIfNeeded: entry >> (8 * UInt64(i))) }
    return t
  }
  func idx(_ level: UInt64) -> UInt64 { (va >> (12 + 9 * level)) & 0x1ff }
  return [
    16: table(idx(3), 18 * page | 0x63), 17: [1],  // page 17 is present but maps nothing
    18: table(idx(2), 19 * page | 0x63), 19: table(idx(1), 20 * page | 0x63), 20: table(idx(0), target * page | 0x63),
  ]
}

/// The page holding `release` where struct new_utsname's release sits for init_uts_ns at VA 0xffffffff82000100.
func utsPage(_ release: String) -> [UInt8] {
  var p = [UInt8](repeating: 0, count: Int(page))
  let at = 0x100 + 130
  for (i, b) in Array("Linux".utf8).enumerated() { p[0x100 + i] = b }
  for (i, b) in Array(release.utf8).enumerated() { p[at + i] = b }
  return p
}

@Suite("VMCOREINFO: the kernel's note, found and checked")
struct VMCoreInfoTests {
  @Test("the search finds a page-aligned note in populated memory; without registers only the text is checked")
  func search() throws {
    let text = vmcoreinfoText(release: "6.1.0-57-cloud-amd64")
    let file = try guest([3: [0xaa], 25: vmcoreinfoNote(text), 40: [1, 2, 3]])
    let k = try find(file).get()
    #expect(k.source == .search && k.gpa == 25 * page && k.text == text)
    #expect(k.release == "6.1.0-57-cloud-amd64" && k.buildID == "01d2640d3a13145ee314eb05b155f141b7b7058b")
    #expect(k.kaslrOffset == 0x1b80_0000 && k.pageSize == 4096)
    #expect(k.validation == .text)
    #expect(k.pagesSearched == 3, "a note that cannot be checked does not stop the search")
    #expect(k.value("SYMBOL(swapper_pg_dir)") == "ffffffff82010000")
  }

  @Test("the device's address is read first; nothing is searched")
  func device() throws {
    let text = vmcoreinfoText(release: "6.1.0-dev")
    let file = try guest([30: vmcoreinfoNote(text), 31: [0]], devices: [vmcoreinfoDevice(paddr: 30 * page)])
    let k = try find(file).get()
    #expect(k.source == .device && k.gpa == 30 * page && k.text == text && k.pagesSearched == 0)
    #expect(k.rejected.isEmpty)
  }

  @Test("a device pointing at a page the file does not hold: refused, and the search finds the note")
  func deviceAtClearPage() throws {
    let text = vmcoreinfoText(release: "6.1.0-dev")
    var s = FixtureStream(blocks: [FixtureBlock(name: "pc.ram", length: 64 * page, present: [33: vmcoreinfoNote(text)])])
    // The note's bytes are in the pages region at page 30, but its bit is clear: it reads as zeros.
    s.blocks[0].stale[30] = vmcoreinfoNote(text)
    s.devices = [.timer, vmcoreinfoDevice(paddr: 30 * page)]
    let k = try find(try open(s.build())).get()
    #expect(k.source == .search && k.gpa == 33 * page)
    #expect(k.rejected.first?.gpa == 30 * page)
    #expect(k.rejected.first?.reason.contains("vmcoreinfo device") == true)
  }

  @Test("a device the guest never wrote (qemu_fw_cfg not loaded) says so; the search still finds the note")
  func deviceNeverWritten() throws {
    let file = try guest([12: vmcoreinfoNote(vmcoreinfoText(release: "6.1.0-x"))], devices: [vmcoreinfoDevice(has: false, size: 0, paddr: 0)])
    #expect(try find(file).get().source == .search)
    let none = try guest([:], devices: [vmcoreinfoDevice(has: false, size: 0, paddr: 0)])
    guard case .failure(let why) = try find(none) else { Issue.record("found a note in an empty guest"); return }
    #expect(why.reason.contains("qemu_fw_cfg"))
  }

  @Test("a stale copy whose release init_uts_ns contradicts is refused for the one it confirms, through PTI's kernel PGD")
  func staleCopy() throws {
    let va: UInt64 = 0xffff_ffff_8200_0100
    var present = pageTables(va: va, target: 21)
    present[21] = utsPage("6.1.0-57-cloud-amd64")
    present[8] = vmcoreinfoNote(vmcoreinfoText(release: "5.10.0-30-amd64"))  // an earlier kernel's, lower in memory
    present[12] = vmcoreinfoNote(vmcoreinfoText(release: "6.1.0-57-cloud-amd64"))
    present[13] = vmcoreinfoNote(vmcoreinfoText(release: "6.1.0-57-cloud-amd64", extra: "AFTER=1\n"))
    // CR3 is the user PGD (page 17) of a guest stopped in user mode; the kernel's is the page before.
    let file = try guest(present, devices: [controlRegistersCPU(cr3: 17 * page)])
    let k = try find(file).get()
    #expect(k.gpa == 12 * page && k.validation == .initUTSNamespace && k.release == "6.1.0-57-cloud-amd64")
    #expect(k.rejected.map(\.gpa) == [8 * page])
    #expect(k.rejected.first?.reason.contains("5.10.0-30-amd64") == true)
    #expect(k.rejected.first?.reason.contains("holds release \"6.1.0-57-cloud-amd64\"") == true)
    #expect(k.value("AFTER") == nil, "the search stops at the first confirmed note")
  }

  @Test("notes whose sizes or text lie are refused, never read past their populated run or 1 MiB")
  func lyingNotes() throws {
    let good = vmcoreinfoText(release: "6.1.0-x")
    var huge = vmcoreinfoNote(good, descsz: 0xffff_fff0)
    huge.removeLast(good.count - 20)
    let present: [UInt64: [UInt8]] = [
      4: huge,  // 4 GiB of text claimed
      6: vmcoreinfoNote(good, descsz: UInt32(2 * page)),  // runs past page 7, which the file does not hold
      9: vmcoreinfoNote(Array("OSRELEASE=6.1.0-x\nPAGESIZE=4096\n\u{1}\n".utf8)),  // not printable
      11: vmcoreinfoNote(vmcoreinfoText(release: "6.1.0-x", pageSize: 65536)),  // another page size
      14: vmcoreinfoNote(Array("OSRELEASE=6.1.0-x\nPAGESIZE=4096\nKERNELOFFSET=zz\n".utf8)),
      16: vmcoreinfoNote(Array("OSRELEASE=\nPAGESIZE=4096\n".utf8)),
    ]
    guard case .failure(let why) = try find(try guest(present)) else { Issue.record("a lying note was taken"); return }
    #expect(why.rejected.map(\.gpa) == [4, 6, 9, 11, 14, 16].map { $0 * page })
    #expect(why.rejected[0].reason.contains("4294967280-byte text"))
    #expect(why.rejected[2].reason.contains("not printable"))
    #expect(why.rejected[3].reason.contains("PAGESIZE=65536"))
    #expect(why.reason.contains("6 notes refused"))
  }

  @Test("a device whose address or size lies: past the end of RAM, near 2^64, or smaller than the note")
  func lyingDevice() throws {
    let text = vmcoreinfoText(release: "6.1.0-x")
    for (paddr, size) in [(UInt64.max - 3, UInt64(UInt32.max)), (1 << 40, 4132), (UInt64(30 * page), 100)] {
      let file = try guest([30: vmcoreinfoNote(text)], devices: [vmcoreinfoDevice(size: size, paddr: paddr)])
      let k = try find(file).get()
      #expect(k.source == .search && k.gpa == 30 * page, "device at \(hex(paddr)), \(size) bytes")
      #expect(k.rejected.first?.gpa == paddr && k.rejected.count == 1)
    }
  }

  @Test("no note at all: not a Linux guest, with the pages searched")
  func none() throws {
    guard case .failure(let why) = try find(try guest([0: [1], 5: [2], 63: [3]])) else { Issue.record("found"); return }
    #expect(why.reason.contains("not a Linux guest"))
    #expect(why.pagesSearched == 3 && why.rejected.isEmpty)
  }

  @Test("the search stops at its page limit, and says so")
  func limits() throws {
    var l = VMCoreInfoSearch.Limits()
    l.maxPages = 2
    guard case .failure(let why) = try find(try guest([0: [1], 5: [2], 20: vmcoreinfoNote(vmcoreinfoText(release: "x"))]), limits: l)
    else { Issue.record("found beyond the limit"); return }
    #expect(why.reason.contains("limit of 2 pages") && why.pagesSearched == 2)
  }

  @Test("the text checks, one by one")
  func textChecks() {
    #expect((try? VMCoreInfoText.check(vmcoreinfoText(release: "r"), pageSize: 4096).get())?.kaslrOffset == 0x1b80_0000)
    for (bad, what) in [
      ("", "empty"), ("PAGESIZE=4096\nOSRELEASE=r\n", "OSRELEASE="), ("OSRELEASE=r\n", "no PAGESIZE"),
      ("OSRELEASE=r\nPAGESIZE=4096\r\n", "not printable"),
    ] {
      guard case .failure(let p) = VMCoreInfoText.check(Array(bad.utf8), pageSize: 4096) else {
        Issue.record("\(bad) passed")
        continue
      }
      #expect(p.reason.contains(what), "\(bad): \(p.reason)")
    }
  }
}

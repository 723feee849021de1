// The vmcore view through the handlers, over synthetic files with a cpu section: an
// ELF64 core whose PT_LOAD segments are physmem's RAM ranges at page-aligned offsets,
// whose bytes are physmem's, with an NT_PRSTATUS and a QEMU note per vCPU. No kernel;
// VmcoreRealQEMUTests checks the same through a mount against QEMU's dump-guest-memory.
import FUSE
import Foundation
import GuestViews
import MigrationFormat
import MigrationFormatTestSupport
import SaveFilesystem
import Testing

/// A QEMU `segment` vmsd, and a cut-down x86 `cpu` vmsd (16 general registers, rip, rflags, segments).
private let segmentJSON = """
  {"vmsd_name": "segment", "version": 1, "fields": [{"name": "selector", "type": "uint32", "size": 4}, \
  {"name": "base", "type": "uint64", "size": 8}, {"name": "limit", "type": "uint32", "size": 4}, \
  {"name": "flags", "type": "uint32", "size": 4}]}
  """
private let cpuJSON = """
  {"name": "cpu", "instance_id": 0, "vmsd_name": "cpu", "version": 12, "fields": [\
  {"name": "env.regs", "array_len": 16, "type": "uint64", "size": 8}, \
  {"name": "env.eip", "type": "uint64", "size": 8}, {"name": "env.eflags", "type": "uint64", "size": 8}, \
  {"name": "env.segs", "array_len": 6, "type": "struct", "struct": \(segmentJSON), "size": 20}, \
  {"name": "env.cr[3]", "type": "uint64", "size": 8}]}
  """

/// rax…r15 (QEMU's order) are 0x1000 + i, rip 0x100212, rflags 0x46, selectors 0x10 + i (es, cs, ss, ds, fs, gs),
/// fs base 0x7000, cr3 0x200000.
func cpuDevice() -> FixtureDevice {
  var b: [UInt8] = []
  for i in 0..<16 { b += be(0x1000 + UInt64(i), 8) }
  b += be(0x100212, 8) + be(0x46, 8)
  for i in 0..<6 { b += be(0x10 + UInt64(i), 4) + be(i == 4 ? 0x7000 : 0, 8) + be(0xffff_ffff, 4) + be(0xcf9300, 4) }
  b += be(0x20_0000, 8)
  return FixtureDevice(name: "cpu", instance: 0, version: 12, json: cpuJSON, body: b)
}

private func le(_ b: [UInt8], _ at: Int, _ width: Int) -> UInt64 {
  (0..<width).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) }
}

extension PhysmemFixture {
  func inode(_ name: String) throws -> INode { try #require(lookup(name), "no \(name)").inode }

  func read(_ name: String, _ offset: UInt64, _ size: Int) throws -> [UInt8]? {
    let r = ReplyRecorder()
    fs.read(
      Request(), inode: try inode(name), handle: .none, offset: Int64(offset), size: size,
      reply: ReplyData(recordingInto: r, size: size))
    guard case .data(let bytes) = r.last else { return nil }
    return bytes
  }

  func seek(_ name: String, _ offset: UInt64, _ whence: SeekWhence) throws -> Int64? {
    let r = ReplyRecorder()
    fs.lseek(
      Request(), inode: try inode(name), handle: .none, offset: Int64(offset), whence: whence,
      reply: ReplyLseek(recordingInto: r))
    guard case .lseek(let o) = r.last else { return nil }
    return o
  }
}

/// The PT_LOAD headers of an ELF image's first bytes: (p_offset, p_vaddr, p_paddr, p_filesz, p_memsz).
private func loads(_ h: [UInt8]) -> [(offset: UInt64, vaddr: UInt64, paddr: UInt64, filesz: UInt64, memsz: UInt64)] {
  let phoff = Int(le(h, 0x20, 8))
  let phnum = Int(le(h, 0x38, 2))
  return (0..<phnum).compactMap { i in
    let p = phoff + 56 * i
    guard le(h, p, 4) == 1 else { return nil }
    return (le(h, p + 8, 8), le(h, p + 16, 8), le(h, p + 24, 8), le(h, p + 32, 8), le(h, p + 40, 8))
  }
}

@Suite("vmcore through the handlers")
struct VmcoreTests {
  /// smallPC (130 pages of pc.ram at 0) plus a pc.bios of 4 pages, with a cpu section.
  func fixture() throws -> PhysmemFixture {
    var s = smallPC()
    var bios = FixtureBlock(name: "pc.bios", length: 4 * 4096)
    bios.present[3] = FixtureBlock.pattern(block: "bios", page: 3)
    s.blocks.append(bios)
    s.devices = [.timer, cpuDevice()]
    return try PhysmemFixture(s)
  }

  @Test("the ELF header, program headers and notes parse; PT_LOADs are page-aligned RAM ranges")
  func headers() throws {
    let f = try fixture()
    #expect(f.rootNames().contains("vmcore"))
    let attrs = try #require(f.lookup("vmcore"))
    let h = try #require(try f.read("vmcore", 0, 8192))
    #expect(h[0..<8] == [0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0])
    #expect(le(h, 0x10, 2) == 4 && le(h, 0x12, 2) == 62, "ET_CORE, EM_X86_64")
    #expect(le(h, 0x34, 2) == 64 && le(h, 0x36, 2) == 56)
    let phoff = Int(le(h, 0x20, 8))
    #expect(le(h, phoff, 4) == 4, "the first program header is PT_NOTE")
    let l = loads(h)
    #expect(Int(le(h, 0x38, 2)) == 1 + l.count)
    // pc.ram at 0 (no VGA device, so no window cut), then pc.bios just below 4 GiB.
    #expect(l.map { [$0.paddr, $0.filesz] } == [[0, 130 * page], [fourGiB - 4 * page, 4 * page]])
    for s in l {
      #expect(s.offset % page == 0 && s.vaddr == s.paddr && s.memsz == s.filesz)
    }
    #expect(UInt64(attrs.size) == l.last!.offset + l.last!.filesz)
    // st_blocks: the header page, pc.ram's 68 present pages, pc.bios's one.
    #expect(UInt64(attrs.blocks) * 512 == l[0].offset + (68 + 1) * page)

    // Notes: NT_PRSTATUS ("CORE", 336 bytes) then the QEMU note (type 0, 440 bytes).
    let noteOffset = Int(le(h, phoff + 8, 8))
    #expect(le(h, noteOffset, 4) == 5 && le(h, noteOffset + 4, 4) == 336 && le(h, noteOffset + 8, 4) == 1)
    #expect(Array(h[(noteOffset + 12)..<(noteOffset + 17)]) == Array("CORE\0".utf8))
    let pr = noteOffset + 20
    #expect(le(h, pr + 32, 4) == 1, "pr_pid is the vCPU index + 1")
    let reg = pr + 112
    // user_regs_struct: r15, r14, …, rax (10), rcx, rdx, rsi, rdi, orig_rax, rip (16), cs, eflags, rsp, ss, fs_base.
    #expect(le(h, reg, 8) == 0x100f, "r15")
    #expect(le(h, reg + 10 * 8, 8) == 0x1000, "rax")
    #expect(le(h, reg + 5 * 8, 8) == 0x1003, "rbx")
    #expect(le(h, reg + 16 * 8, 8) == 0x100212, "rip")
    #expect(le(h, reg + 17 * 8, 8) == 0x11, "cs")
    #expect(le(h, reg + 18 * 8, 8) == 0x46, "eflags")
    #expect(le(h, reg + 19 * 8, 8) == 0x1004, "rsp")
    #expect(le(h, reg + 21 * 8, 8) == 0x7000, "fs_base")
    let q = pr + 336
    #expect(le(h, q, 4) == 5 && le(h, q + 4, 4) == 440 && le(h, q + 8, 4) == 0)
    #expect(Array(h[(q + 12)..<(q + 17)]) == Array("QEMU\0".utf8))
    #expect(le(h, q + 20, 4) == 1 && le(h, q + 24, 4) == 440, "QEMUCPUState version and size")
    #expect(le(h, q + 28, 8) == 0x1000 && le(h, q + 28 + 16 * 8, 8) == 0x100212, "rax and rip")
    #expect(le(h, 0x40 + 32, 8) == UInt64(2 * (12 + 8) + 336 + 440), "PT_NOTE p_filesz")
  }

  @Test("reads of each segment equal physmem (or the block) at p_paddr; seeks follow the pages")
  func dataMatchesPhysmem() throws {
    for strategy: MountConfiguration.ReadStrategy in [.pread, .splice] {
      let f = try PhysmemFixture(path: try fixture().path, strategy: strategy)
      let l = loads(try #require(try f.read("vmcore", 0, 8192)))
      let ram = l[0]
      // In odd-sized pieces, across page and segment boundaries.
      var at: UInt64 = 0
      while at < ram.filesz {
        let n = Int(min(12345, ram.filesz - at))
        #expect(try f.read("vmcore", ram.offset + at, n) == f.read(ram.paddr + at, n), "at \(at)")
        at += UInt64(n)
      }
      let bios = try #require(try f.read("pc.bios", 0, 4 * 4096))
      #expect(try f.read("vmcore", l[1].offset, 4 * 4096) == bios)
      // A read across the end of the RAM segment continues with the BIOS segment's bytes.
      #expect(try f.read("vmcore", ram.offset + ram.filesz - 10, 20) == Array(try f.read(ram.filesz - 10, 10)! + bios[0..<10]))
      #expect(try f.read("vmcore", l[1].offset + l[1].filesz, 100) == [])

      // SEEK_DATA/SEEK_HOLE: the header is data; in the segment, physmem's data and holes moved to the file offset.
      #expect(try f.seek("vmcore", 0, .nextData) == 0)
      #expect(try f.seek("vmcore", 0, .nextHole) == Int64(ram.offset + 0))  // pc.ram page 0 is a hole
      for gpa: UInt64 in [0, 3 * page, 21 * page + 5, 59 * page, 100 * page] {
        let d = try f.seek("physmem", gpa, .nextData)
        let h = try f.seek("physmem", gpa, .nextHole)
        #expect(try f.seek("vmcore", ram.offset + gpa, .nextData) == d.map { $0 + Int64(ram.offset) }, "data from \(gpa)")
        #expect(try f.seek("vmcore", ram.offset + gpa, .nextHole) == h.map { $0 + Int64(ram.offset) }, "hole from \(gpa)")
      }
      #expect(try f.seek("vmcore", ram.offset + 124 * page, .nextData) == Int64(l[1].offset + 3 * page), "on to the BIOS page")
      #expect(try f.seek("vmcore", l[1].offset + l[1].filesz, .nextData) == nil)
    }
  }

  @Test("a VGA device cuts the legacy window [0xa0000, 0xc0000) out of main RAM, as QEMU's dump does")
  func vgaWindow() throws {
    var s = FixtureStream(blocks: [FixtureBlock(name: "pc.ram", length: 1 << 20)])
    s.devices = [.timer, cpuDevice(), FixtureDevice(name: "0000:00:02.0/vga", fields: [.init("latch", "uint32", be(0, 4))])]
    let f = try PhysmemFixture(s)
    let l = loads(try #require(try f.read("vmcore", 0, 8192)))
    #expect(l.map { [$0.paddr, $0.filesz] } == [[0, 0xa0000], [0xc0000, 0x40000]])
    #expect(l[1].offset == l[0].offset + 0xa0000)
  }

  @Test("no vmcore without registers (no cpu section) or without physmem")
  func absent() throws {
    let noCPU = try PhysmemFixture(smallPC())
    #expect(noCPU.rootNames().contains("physmem"))
    #expect(!noCPU.rootNames().contains("vmcore"))
    #expect(noCPU.lookup("vmcore") == nil)
    #expect(noCPU.info.cpusUnavailable != nil, "info says why there are no registers")

    var s = smallPC(machine: "virt-10.0")
    s.devices = [.timer, cpuDevice()]
    let noPhysmem = try PhysmemFixture(s)
    #expect(!noPhysmem.rootNames().contains("physmem") && !noPhysmem.rootNames().contains("vmcore"))
    #expect(noPhysmem.info.physmemUnavailable != nil)
  }
}

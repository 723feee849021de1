#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif
import MigrationFormat

/// The layout and header bytes of a mount's `vmcore`: an ELF64 core file of the guest, shaped the
/// way QEMU's `dump-guest-memory` (paging=false, format elf) shapes one, built from the saved file.
///
/// The file is the ELF header (`ET_CORE`, `EM_X86_64`), the program headers (one `PT_NOTE`, then
/// one `PT_LOAD` per guest-physical range, in address order), the notes, zeros up to the next
/// page boundary, and then each segment's bytes back to back. Segments are whole pages, so every
/// `PT_LOAD` starts at a page-aligned file offset (QEMU packs the first one right after the notes).
///
/// Segments are the ranges of ``PhysicalLayout``, which are the ones QEMU's dump has: main RAM
/// (less the legacy VGA window when the file has a VGA device), `pc.bios` below 4 GiB and VGA
/// RAM at its BAR; so `vmcore` and `physmem` show the same bytes at the same addresses.
///
/// The notes are one `NT_PRSTATUS` per vCPU (`pr_pid` = index + 1, as QEMU writes them), then
/// one `QEMU` note per vCPU (QEMU's CPU state: version 1, 440 bytes), from ``X86Registers``.
/// Registers the file does not give (and `kernel_gs_base`, which mramfs does not decode) are zero.
/// When the guest's kernel VMCOREINFO is known (``KernelInfo``), a `VMCOREINFO` note follows.
public struct ELFCore: Sendable, Equatable {
  /// One `PT_LOAD`: `length` bytes of block `block` from `blockOffset`, at guest-physical `gpa`.
  public struct Segment: Sendable, Equatable {
    /// The guest-physical address (`p_paddr` and `p_vaddr`).
    public var gpa: UInt64
    /// Where the segment's bytes start in the core file (`p_offset`); page-aligned.
    public var fileOffset: UInt64
    /// The index of the block in ``MigrationFile/blocks``.
    public var block: Int
    /// Where the segment starts in its block.
    public var blockOffset: UInt64
    /// Bytes (`p_filesz` = `p_memsz`), a whole number of pages.
    public var length: UInt64
    /// One past the last byte in the core file.
    public var fileEnd: UInt64 { fileOffset + length }
  }

  /// Why a file has no `vmcore`.
  public struct Unavailable: Error, Sendable, Equatable, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
  }

  /// The ELF header, program headers and notes.
  public let header: [UInt8]
  /// Where the first segment starts: ``header``'s size rounded up to a page.
  public let dataOffset: UInt64
  /// The `PT_LOAD` segments in address order (and file order).
  public let segments: [Segment]
  /// The size of the core file.
  public let size: UInt64
  /// Bytes of the core file that hold data: the header pages plus the segments' populated pages (for `st_blocks`).
  public let populatedBytes: UInt64
  /// The page size, and alignment of every segment.
  public let pageSize: UInt64

  /// Builds the core file's layout for `file`, whose memory `layout` places, with the vCPUs' `registers`,
  /// and a `VMCOREINFO` note holding `vmcoreinfo` when given (the notes' size sets where the segments start).
  public init(_ file: MigrationFile, layout: PhysicalLayout, registers: [X86Registers], vmcoreinfo: [UInt8]? = nil)
    throws(Unavailable)
  {
    guard !registers.isEmpty else { throw Unavailable("the file gives no vCPU registers") }
    let ps = layout.pageSize
    let pieces = layout.ranges
    let notes = ELFCore.notes(registers, vmcoreinfo: vmcoreinfo)
    let phnum = 1 + pieces.count
    guard phnum < 0xffff else { throw Unavailable("\(pieces.count) RAM ranges are more than an ELF header can count") }
    let notesOffset = 64 + 56 * phnum
    let headerSize = notesOffset + notes.count
    let dataOffset = (UInt64(headerSize) + ps - 1) / ps * ps
    var segments: [Segment] = []
    var at = dataOffset
    var populated = dataOffset
    for p in pieces {
      segments.append(Segment(gpa: p.gpa, fileOffset: at, block: p.block, blockOffset: p.blockOffset, length: p.length))
      at += p.length
      populated += PhysicalLayout.populatedBytes(file.blocks[p.block], from: p.blockOffset, length: p.length)
    }

    var h = ByteWriter()
    // ELF header.
    h.append([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0])  // ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_NONE
    h.appendZeros(8)
    h.appendUInt16LE(4)  // ET_CORE
    h.appendUInt16LE(62)  // EM_X86_64
    h.appendUInt32LE(1)  // e_version
    h.appendUInt64LE(0)  // e_entry
    h.appendUInt64LE(64)  // e_phoff
    h.appendUInt64LE(0)  // e_shoff
    h.appendUInt32LE(0)  // e_flags
    h.appendUInt16LE(64)  // e_ehsize
    h.appendUInt16LE(56)  // e_phentsize
    h.appendUInt16LE(UInt16(phnum))
    h.appendUInt16LE(64)  // e_shentsize
    h.appendUInt16LE(0)  // e_shnum
    h.appendUInt16LE(0)  // e_shstrndx
    // PT_NOTE.
    h.appendUInt32LE(4)
    h.appendUInt32LE(0)
    h.appendUInt64LE(UInt64(notesOffset))
    h.appendUInt64LE(0)
    h.appendUInt64LE(0)
    h.appendUInt64LE(UInt64(notes.count))
    h.appendUInt64LE(UInt64(notes.count))
    h.appendUInt64LE(0)
    // PT_LOADs: flags 0 and align 0, and virtual address = physical address, as QEMU writes them.
    for s in segments {
      h.appendUInt32LE(1)
      h.appendUInt32LE(0)
      h.appendUInt64LE(s.fileOffset)
      h.appendUInt64LE(s.gpa)
      h.appendUInt64LE(s.gpa)
      h.appendUInt64LE(s.length)
      h.appendUInt64LE(s.length)
      h.appendUInt64LE(0)
    }
    h.append(notes)
    header = h.bytes
    self.dataOffset = dataOffset
    self.segments = segments
    size = at
    populatedBytes = populated
    pageSize = ps
  }

  /// The core file of `file`, or why there is none; with a `VMCOREINFO` note holding `vmcoreinfo` when given.
  public static func resolve(_ file: MigrationFile, layout: PhysicalLayout?, vmcoreinfo: [UInt8]? = nil)
    -> Result<ELFCore, Unavailable>
  {
    guard let layout else { return .failure(Unavailable("there is no physmem view")) }
    switch file.x86Registers() {
    case .failure(let why): return .failure(Unavailable(why.reason))
    case .success(let regs):
      do {
        return .success(try ELFCore(file, layout: layout, registers: regs, vmcoreinfo: vmcoreinfo))
      } catch {
        return .failure(error)
      }
    }
  }

  // MARK: - Notes

  /// `NT_PRSTATUS` for each vCPU, then QEMU's CPU-state note for each vCPU, then the kernel's
  /// `VMCOREINFO` note (type 0, the text as descriptor) when given: QEMU's dump-guest-memory order.
  static func notes(_ registers: [X86Registers], vmcoreinfo: [UInt8]? = nil) -> [UInt8] {
    var n = ByteWriter()
    for (i, r) in registers.enumerated() { n.appendELFNote(name: "CORE", type: 1, desc: prstatus(r, pid: UInt32(i + 1))) }
    for r in registers { n.appendELFNote(name: "QEMU", type: 0, desc: qemuCPUState(r)) }
    if let vmcoreinfo { n.appendVMCoreInfoNote(vmcoreinfo) }
    return n.bytes
  }

  /// struct elf_prstatus for x86-64 (336 bytes): signal info, pids, times, then pr_reg
  /// (user_regs_struct: r15 … gs), then pr_fpvalid.
  static func prstatus(_ r: X86Registers, pid: UInt32) -> [UInt8] {
    var d = ByteWriter()
    d.appendZeros(32)  // pr_info (12), pr_cursig (2), padding (2), pr_sigpend, pr_sighold
    d.appendUInt32LE(pid)  // pr_pid
    d.appendZeros(12)  // pr_ppid, pr_pgrp, pr_sid
    d.appendZeros(64)  // pr_utime, pr_stime, pr_cutime, pr_cstime
    let regs: [UInt64?] = [
      r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx, r.rdx, r.rsi, r.rdi,
      0,  // orig_rax: QEMU writes 0
      r.rip, r.cs?.selector, r.rflags, r.rsp, r.ss?.selector, r.fs?.base, r.gs?.base,
      r.ds?.selector, r.es?.selector, r.fs?.selector, r.gs?.selector,
    ]
    for v in regs { d.appendUInt64LE(v ?? 0) }
    d.appendZeros(8)  // pr_fpvalid and padding
    return d.bytes
  }

  /// QEMU's CPU-state note (QEMUCPUState, version 1, 440 bytes): version, size, the general
  /// registers rax…r15, rip, rflags, ten segments (cs, ds, es, fs, gs, ss, ldt, tr, gdt, idt: each
  /// u32 selector, u32 limit, u32 flags, u32 padding, u64 base), cr[0…4], kernel_gs_base.
  static func qemuCPUState(_ r: X86Registers) -> [UInt8] {
    var d = ByteWriter()
    d.appendUInt32LE(1)
    d.appendUInt32LE(440)
    let regs: [UInt64?] = [
      r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15,
      r.rip, r.rflags,
    ]
    for v in regs { d.appendUInt64LE(v ?? 0) }
    for s in [r.cs, r.ds, r.es, r.fs, r.gs, r.ss, r.ldtr, r.tr] {
      d.appendUInt32LE(UInt32(truncatingIfNeeded: s?.selector ?? 0))
      d.appendUInt32LE(UInt32(truncatingIfNeeded: s?.limit ?? 0))
      d.appendUInt32LE(UInt32(truncatingIfNeeded: s?.attributes ?? 0))
      d.appendUInt32LE(0)
      d.appendUInt64LE(s?.base ?? 0)
    }
    for t in [r.gdt, r.idt] {
      d.appendUInt32LE(0)
      d.appendUInt32LE(UInt32(truncatingIfNeeded: t?.limit ?? 0))
      d.appendUInt32LE(0)
      d.appendUInt32LE(0)
      d.appendUInt64LE(t?.base ?? 0)
    }
    for v in [r.cr0, 0, r.cr2, r.cr3, r.cr4] { d.appendUInt64LE(v ?? 0) }
    d.appendUInt64LE(0)  // kernel_gs_base: not decoded by mramfs
    return d.bytes
  }
}

extension MigrationFile {
  /// Reads the core file's bytes from `offset` on into `buffer`: the header, zeros to the first page,
  /// then each segment through ``read(block:at:into:)``, the same bytes `physmem` serves at its
  /// address. Short at the end; allocates nothing, takes no lock.
  public func read(core: ELFCore, layout: PhysicalLayout, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer)
    throws(FormatError) -> Int
  {
    guard offset < core.size, buffer.count > 0, let base = buffer.baseAddress else { return 0 }
    let count = Int(min(UInt64(buffer.count), core.size - offset))
    let end = offset + UInt64(count)
    var pos = offset
    if pos < core.dataOffset {
      let stop = min(end, core.dataOffset)
      let headerEnd = UInt64(core.header.count)
      if pos < headerEnd {
        let n = Int(min(stop, headerEnd) - pos)
        core.header.withUnsafeBytes { h in
          base.copyMemory(from: h.baseAddress! + Int(pos), byteCount: n)  // pos == offset here
        }
        pos += UInt64(n)
      }
      if pos < stop { memset(base + Int(pos - offset), 0, Int(stop - pos)) }
      pos = stop
    }
    var i = core.segment(endingAfter: pos)
    while pos < end, i < core.segments.count {
      let s = core.segments[i]
      let want = Int(min(end, s.fileEnd) - pos)
      let into = UnsafeMutableRawBufferPointer(start: base + Int(pos - offset), count: want)
      let inSegment = pos - s.fileOffset
      let got = try read(block: s.block, at: s.blockOffset + inSegment, into: into)
      if got < want { memset(into.baseAddress! + got, 0, want - got) }
      pos += UInt64(want)
      i += 1
    }
    return count
  }

  /// The first offset of the core file at or after `offset` that holds data (the header pages count
  /// as data), or nil past the last data.
  public func nextData(core: ELFCore, from offset: UInt64) -> UInt64? {
    guard offset < core.size else { return nil }
    if offset < core.dataOffset { return offset }
    var i = core.segment(endingAfter: offset)
    while i < core.segments.count {
      let s = core.segments[i]
      let from = max(offset, s.fileOffset) - s.fileOffset
      if let d = nextData(block: s.block, from: s.blockOffset + from), d < s.blockOffset + s.length {
        return s.fileOffset + (d - s.blockOffset)
      }
      i += 1
    }
    return nil
  }

  /// The first offset of the core file at or after `offset` that is a hole; the end counts as one.
  /// Returns nil past the end.
  public func nextHole(core: ELFCore, from offset: UInt64) -> UInt64? {
    guard offset < core.size else { return nil }
    var pos = max(offset, core.dataOffset)
    var i = core.segment(endingAfter: pos)
    while i < core.segments.count {
      let s = core.segments[i]
      let blockEnd = s.blockOffset + s.length
      let h = nextHole(block: s.block, from: s.blockOffset + (pos - s.fileOffset)) ?? blockEnd
      if h < blockEnd { return s.fileOffset + (h - s.blockOffset) }
      pos = s.fileEnd
      i += 1
    }
    return core.size
  }
}

extension ELFCore {
  /// The index of the first segment whose bytes end after file offset `offset`; O(log segments).
  @inlinable
  public func segment(endingAfter offset: UInt64) -> Int {
    var lo = 0
    var hi = segments.count
    while lo < hi {
      let mid = (lo + hi) / 2
      if segments[mid].fileEnd <= offset { lo = mid + 1 } else { hi = mid }
    }
    return lo
  }
}

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif
import MigrationFormat

/// Where a machine's main RAM sits in guest-physical address space: the map
/// behind a mount's `physmem` file, whose byte N is guest-physical address N
/// (FORMAT.md §6).
///
/// Main RAM is the block `pc.ram`; on a NUMA guest whose nodes have memory
/// backends (`-numa node,memdev=…`) there is no `pc.ram`, and main RAM is the
/// node blocks back to back in node order: QEMU's machine RAM container adds
/// each node's backend at the running offset, node 0 first, whatever order
/// the stream lists the blocks in (it lists them by size). A backend's block
/// is named after its id, and only libvirt's convention ties an id to a node:
/// node N's backend is `ram-nodeN` (`/objects/ram-nodeN` for a
/// memory-backend-file on machine types 3.1 and older, which name its block by
/// canonical path: seen with QEMU 10). Main RAM is then split
/// at `lowmem` as ``X86Layout`` says: `[0, lowmem)` at address 0, the rest
/// from 4 GiB up.
///
/// Only RAM is placed. Everything else reads as zeros: the PCI hole
/// `[lowmem, 4 GiB)` with the BIOS (`pc.bios`) and device memory (VGA RAM,
/// option ROMs) QEMU maps there, as every block keeps its own file. In the
/// legacy window `[0xa0000, 0xc0000)` the file serves main RAM's bytes,
/// which a guest with a VGA device does not see there.
public struct PhysicalLayout: Sendable, Equatable {
  /// One piece of main RAM: bytes `[blockOffset, blockOffset + length)` of block `block` at guest-physical `gpa`.
  public struct Range: Sendable, Equatable {
    /// The guest-physical address of the first byte.
    public var gpa: UInt64
    /// The index of the block in ``MigrationFile/blocks``.
    public var block: Int
    /// Where the piece starts in its block.
    public var blockOffset: UInt64
    /// The piece's length in bytes (a whole number of pages).
    public var length: UInt64
    /// One past the piece's last guest-physical address.
    public var end: UInt64 { gpa + length }
  }

  /// Why a file's main RAM cannot be placed; the `physmem` view is then absent.
  public struct Unavailable: Error, Sendable, Equatable, CustomStringConvertible {
    /// The reason, for `mramfs info` and info.json.
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
  }

  /// The chipset the machine type names.
  public let chipset: X86Layout.Chipset
  /// Bytes of main RAM below 4 GiB (from the machine type, or the override).
  public let lowmem: UInt64
  /// The blocks that make main RAM, in node order (one for `pc.ram`).
  public let mainBlocks: [Int]
  /// The pieces of main RAM in address order; they cover every byte of ``mainBlocks`` once.
  public let ranges: [Range]
  /// The size of the view: one past the highest address of RAM.
  public let size: UInt64
  /// The page size of main RAM.
  public let pageSize: UInt64
  /// Bytes of main RAM whose pages the file holds (for `st_blocks`).
  public let populatedBytes: UInt64

  /// QEMU 7.1+ moves RAM above 4 GiB to 1 TiB on AMD CPUs once it (or the device
  /// memory after it) would reach this address (FORMAT.md §6.1); the file does not say the CPU vendor.
  static let amdRelocationLimit: UInt64 = 0xfd_0000_0000

  /// Places `file`'s main RAM; `lowmem` overrides the machine type's split
  /// (QEMU's `max-ram-below-4g`, which the file does not record).
  ///
  /// Throws ``Unavailable`` with the reason for machines it cannot place: no
  /// machine type, a machine other than pc or q35, no main RAM block it
  /// recognises, node blocks with a gap, sizes that are not whole pages, or
  /// RAM reaching the address where AMD guests relocate it.
  public init(_ file: MigrationFile, lowmem override: UInt64? = nil) throws(Unavailable) {
    guard let machine = file.machineType else {
      throw Unavailable("the file has no configuration record, so the machine type is unknown")
    }
    guard let chipset = X86Layout.chipset(of: machine) else {
      throw Unavailable(
        "machine type \"\(machine)\" is not pc (i440fx) or q35, the only machines whose RAM layout mramfs knows")
    }
    let main = try PhysicalLayout.mainRAMBlocks(file)
    let pageSize = file.blocks[main[0]].pageSize
    var total: UInt64 = 0
    var populated: UInt64 = 0
    for i in main {
      let b = file.blocks[i]
      guard b.pageSize == pageSize, b.length % pageSize == 0 else {
        throw Unavailable(
          "main RAM block \(b.name) is \(b.length) bytes in \(b.pageSize)-byte pages: not whole pages of one size")
      }
      let (sum, overflow) = total.addingReportingOverflow(b.length)
      guard !overflow else { throw Unavailable("main RAM is larger than the 64-bit address space") }
      total = sum
      populated += (b.populatedPages ?? 0) * b.pageSize
    }
    if let override {
      guard override > 0, override <= 1 << 32, override % pageSize == 0 else {
        throw Unavailable("lowmem \(hex(override)) is not a whole number of \(pageSize)-byte pages from 1 page to 4 GiB")
      }
    }
    let x86: X86Layout
    do {
      x86 = try X86Layout(machineType: machine, ramSize: total, lowmem: override)
    } catch {
      throw Unavailable("\(error)")
    }
    guard x86.end < PhysicalLayout.amdRelocationLimit else {
      throw Unavailable(
        "RAM above 4 GiB would reach \(hex(PhysicalLayout.amdRelocationLimit)), where QEMU 7.1 and later move it "
          + "to 1 TiB on AMD CPUs; the file does not record the CPU vendor")
    }
    // Cut each piece of main RAM at the node blocks' boundaries.
    var ranges: [Range] = []
    for piece in x86.ranges {
      var mainOffset: UInt64 = 0
      for i in main {
        let length = file.blocks[i].length
        let lo = max(piece.blockOffset, mainOffset)
        let hi = min(piece.blockOffset + piece.length, mainOffset + length)
        if lo < hi {
          ranges.append(Range(gpa: piece.gpa + (lo - piece.blockOffset), block: i, blockOffset: lo - mainOffset, length: hi - lo))
        }
        mainOffset += length
      }
    }
    self.chipset = chipset
    self.lowmem = x86.lowmem
    self.mainBlocks = main
    self.ranges = ranges
    self.size = x86.end
    self.pageSize = pageSize
    self.populatedBytes = populated
  }

  /// The layout of `file`, or why there is none.
  public static func resolve(_ file: MigrationFile, lowmem: UInt64? = nil) -> Result<PhysicalLayout, Unavailable> {
    do {
      return .success(try PhysicalLayout(file, lowmem: lowmem))
    } catch {
      return .failure(error)
    }
  }

  /// The main RAM blocks: `pc.ram`, or the NUMA node blocks in node order.
  static func mainRAMBlocks(_ file: MigrationFile) throws(Unavailable) -> [Int] {
    if let i = file.blockIndex(named: "pc.ram") { return [i] }
    var nodes: [Int: Int] = [:]
    for (i, b) in file.blocks.enumerated() {
      guard let node = numaNode(b.name) else { continue }
      if let other = nodes[node] {
        throw Unavailable("two blocks name NUMA node \(node): \(file.blocks[other].name) and \(b.name)")
      }
      nodes[node] = i
    }
    guard !nodes.isEmpty else {
      throw Unavailable(
        "no pc.ram block and no NUMA node blocks (ram-node0, ram-node1, …): main RAM is in a block "
          + "mramfs cannot tell apart (a memory backend with another id?)")
    }
    var ordered: [Int] = []
    for node in 0..<nodes.count {
      guard let i = nodes[node] else {
        let names = nodes.sorted { $0.key < $1.key }.map { "\(file.blocks[$0.value].name)" }.joined(separator: ", ")
        throw Unavailable("NUMA node blocks \(names) leave out node \(node), so their order in RAM is unknown")
      }
      ordered.append(i)
    }
    return ordered
  }

  /// The node number of a block named `ram-nodeN` or `/objects/ram-nodeN` (N in plain decimal), or nil.
  static func numaNode(_ name: BlockName) -> Int? {
    guard var s = name.string else { return nil }
    if s.hasPrefix("/objects/") { s.removeFirst("/objects/".count) }
    guard s.hasPrefix("ram-node") else { return nil }
    let digits = s.dropFirst("ram-node".count)
    guard let n = Int(digits), n >= 0, n < 4096, String(n) == digits else { return nil }
    return n
  }

  /// The index of the first range that ends after `address` (``ranges``'s count if none); O(log ranges).
  @inlinable
  public func firstRange(endingAfter address: UInt64) -> Int {
    var lo = 0
    var hi = ranges.count
    while lo < hi {
      let mid = (lo + hi) / 2
      if ranges[mid].end <= address { lo = mid + 1 } else { hi = mid }
    }
    return lo
  }
}

extension MigrationFile {
  /// Reads the guest-physical bytes from `address` on into `buffer`, as the
  /// `physmem` file serves them: main RAM through ``read(block:at:into:)`` (so
  /// masked by the bitmap), zeros where there is no RAM. Reads stop at the
  /// layout's size, so the result may be short; returns the number of bytes written.
  ///
  /// It allocates nothing and takes no lock.
  public func read(physical layout: PhysicalLayout, at address: UInt64, into buffer: UnsafeMutableRawBufferPointer)
    throws(FormatError) -> Int
  {
    guard address < layout.size, buffer.count > 0, let base = buffer.baseAddress else { return 0 }
    let count = Int(min(UInt64(buffer.count), layout.size - address))
    let end = address + UInt64(count)
    var pos = address
    var i = layout.firstRange(endingAfter: pos)
    while pos < end {
      let into = base + Int(pos - address)
      if i < layout.ranges.count, layout.ranges[i].gpa <= pos {
        let r = layout.ranges[i]
        let want = Int(min(end, r.end) - pos)
        let got = try read(block: r.block, at: r.blockOffset + (pos - r.gpa), into: UnsafeMutableRawBufferPointer(start: into, count: want))
        if got < want { memset(into + got, 0, want - got) }
        pos += UInt64(want)
        i += 1
      } else {
        let stop = i < layout.ranges.count ? min(end, layout.ranges[i].gpa) : end
        memset(into, 0, Int(stop - pos))
        pos = stop
      }
    }
    return count
  }

  /// The first guest-physical address at or after `address` that holds data, or nil past the last data.
  ///
  /// Costs O(bitmap words scanned) per range of the layout, never O(pages).
  public func nextData(physical layout: PhysicalLayout, from address: UInt64) -> UInt64? {
    guard address < layout.size else { return nil }
    var i = layout.firstRange(endingAfter: address)
    while i < layout.ranges.count {
      let r = layout.ranges[i]
      let from = max(address, r.gpa)
      if let d = nextData(block: r.block, from: r.blockOffset + (from - r.gpa)), d < r.blockOffset + r.length {
        return r.gpa + (d - r.blockOffset)
      }
      i += 1
    }
    return nil
  }

  /// The first guest-physical address at or after `address` that is a hole; like `SEEK_HOLE`, the
  /// end of the view counts as one. Returns nil when `address` is past the end.
  ///
  /// Costs O(bitmap words scanned) per range of the layout, never O(pages).
  public func nextHole(physical layout: PhysicalLayout, from address: UInt64) -> UInt64? {
    guard address < layout.size else { return nil }
    var pos = address
    var i = layout.firstRange(endingAfter: address)
    while i < layout.ranges.count {
      let r = layout.ranges[i]
      if pos < r.gpa { return pos }
      let blockEnd = r.blockOffset + r.length
      let h = nextHole(block: r.block, from: r.blockOffset + (pos - r.gpa)) ?? blockEnd
      if h < blockEnd { return r.gpa + (h - r.blockOffset) }
      pos = r.end
      i += 1
    }
    return pos
  }
}

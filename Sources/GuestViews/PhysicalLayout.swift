#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif
import MigrationFormat

/// What a CPU in normal mode sees in guest-physical address space: the map behind a mount's
/// `physmem` file, whose byte N is guest-physical address N, and behind `vmcore`'s `PT_LOAD`s,
/// which are exactly these ranges (FORMAT.md §6).
///
/// The ranges are those QEMU's `dump-guest-memory` writes for pc and q35 machines:
/// - main RAM: `pc.ram`, or on a NUMA guest whose nodes have memory backends
///   (`-numa node,memdev=…`) the node blocks back to back in node order (QEMU's machine RAM
///   container adds each node's backend at the running offset, node 0 first, whatever order
///   the stream lists the blocks in). A backend's block is named after its id, and only
///   libvirt's convention ties an id to a node: node N's backend is `ram-nodeN`
///   (`/objects/ram-nodeN` for a memory-backend-file on machine types 3.1 and older). Main
///   RAM is split at `lowmem` as ``X86Layout`` says: `[0, lowmem)` at address 0, the rest
///   from 4 GiB up. The legacy VGA window `[0xa0000, 0xc0000)` is left out when the file has
///   a VGA device section: the CPU sees the VGA device there, not the RAM under it (whose
///   bytes the block file `pc.ram` still serves);
/// - `pc.bios` at `4 GiB − size`, where pc and q35 map it;
/// - a standard VGA's `vga.vram` at the address in its PCI BAR 0, read from the device's
///   saved config space, when memory decoding is on.
///
/// Everything else reads as zeros: the PCI hole, MMIO, option ROMs and fw_cfg blobs (which
/// keep their own block files).
public struct PhysicalLayout: Sendable, Equatable {
  /// One range: bytes `[blockOffset, blockOffset + length)` of block `block` at guest-physical `gpa`.
  public struct Range: Sendable, Equatable {
    /// What the range holds.
    public enum Kind: String, Sendable, Equatable {
      /// Main RAM (`pc.ram` or a NUMA node).
      case mainRAM = "ram"
      /// The BIOS ROM below 4 GiB.
      case bios
      /// VGA RAM at its BAR.
      case vgaRAM = "vram"
    }
    /// The guest-physical address of the first byte.
    public var gpa: UInt64
    /// The index of the block in ``MigrationFile/blocks``.
    public var block: Int
    /// Where the range starts in its block.
    public var blockOffset: UInt64
    /// The range's length in bytes (a whole number of pages).
    public var length: UInt64
    /// What the range holds.
    public var kind: Kind = .mainRAM
    /// One past the range's last guest-physical address.
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
  /// Every range in address order, non-overlapping: main RAM, the BIOS, VGA RAM.
  public let ranges: [Range]
  /// The size of the view: one past the highest address of any range.
  public let size: UInt64
  /// The page size of main RAM, and of every range.
  public let pageSize: UInt64
  /// Bytes of the ranges whose pages the file holds (for `st_blocks`).
  public let populatedBytes: UInt64

  /// QEMU 7.1+ moves RAM above 4 GiB to 1 TiB on AMD CPUs once it (or the device
  /// memory after it) would reach this address (FORMAT.md §6.1); the file does not say the CPU vendor.
  static let amdRelocationLimit: UInt64 = 0xfd_0000_0000

  /// The legacy VGA window, which a VGA device's MMIO covers.
  public static let legacyVGA: Swift.Range<UInt64> = 0xa0000..<0xc0000

  /// Places `file`'s RAM and ROM; `lowmem` overrides the machine type's split
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
    for i in main {
      let b = file.blocks[i]
      guard b.pageSize == pageSize, b.length % pageSize == 0 else {
        throw Unavailable(
          "main RAM block \(b.name) is \(b.length) bytes in \(b.pageSize)-byte pages: not whole pages of one size")
      }
      let (sum, overflow) = total.addingReportingOverflow(b.length)
      guard !overflow else { throw Unavailable("main RAM is larger than the 64-bit address space") }
      total = sum
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
    // Cut each piece of main RAM at the node blocks' boundaries, and out of the VGA window.
    let cutVGA = file.devices.contains { PhysicalLayout.isVGA($0.name) }
    var ranges: [Range] = []
    for piece in x86.ranges {
      var mainOffset: UInt64 = 0
      for i in main {
        let length = file.blocks[i].length
        let lo = max(piece.blockOffset, mainOffset)
        let hi = min(piece.blockOffset + piece.length, mainOffset + length)
        if lo < hi {
          let r = Range(gpa: piece.gpa + (lo - piece.blockOffset), block: i, blockOffset: lo - mainOffset, length: hi - lo)
          ranges += cutVGA ? PhysicalLayout.cutting(PhysicalLayout.legacyVGA, out: r) : [r]
        }
        mainOffset += length
      }
    }
    ranges += PhysicalLayout.deviceMemory(file, pageSize: pageSize, avoiding: ranges)
    ranges.sort { $0.gpa < $1.gpa }
    self.chipset = chipset
    self.lowmem = x86.lowmem
    self.mainBlocks = main
    self.ranges = ranges
    self.size = ranges.map(\.end).max() ?? 0
    self.pageSize = pageSize
    self.populatedBytes = ranges.reduce(0) {
      $0 + PhysicalLayout.populatedBytes(file.blocks[$1.block], from: $1.blockOffset, length: $1.length)
    }
  }

  /// `r` without the addresses in `window`: nothing, one piece, or two.
  static func cutting(_ window: Swift.Range<UInt64>, out r: Range) -> [Range] {
    guard r.gpa < window.upperBound, r.end > window.lowerBound else { return [r] }
    var out: [Range] = []
    if r.gpa < window.lowerBound {
      out.append(Range(gpa: r.gpa, block: r.block, blockOffset: r.blockOffset, length: window.lowerBound - r.gpa))
    }
    if r.end > window.upperBound {
      let lo = window.upperBound
      out.append(Range(gpa: lo, block: r.block, blockOffset: r.blockOffset + (lo - r.gpa), length: r.end - lo))
    }
    return out
  }

  /// Bytes of `block`'s data pages (``RAMBlock/dataPages``: the pages the file holds, or a delta
  /// view's changed pages) in `[offset, offset + length)`; O(bitmap words).
  public static func populatedBytes(_ b: RAMBlock, from offset: UInt64, length: UInt64) -> UInt64 {
    guard let bitmap = b.dataPages, length > 0 else { return 0 }
    let first = offset / b.pageSize
    let limit = (offset + length + b.pageSize - 1) / b.pageSize
    var pages: UInt64 = 0
    var p = first
    while p < limit, let set = bitmap.nextSet(from: p, limit: limit) {
      let clear = bitmap.nextClear(from: set, limit: limit) ?? limit
      pages += clear - set
      p = clear
    }
    return pages * b.pageSize
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

extension PhysicalLayout {
  /// The block and offset holding guest-physical address `gpa`, or nil where no range is.
  public func locate(_ gpa: UInt64) -> (block: Int, blockOffset: UInt64)? {
    let i = firstRange(endingAfter: gpa)
    guard i < ranges.count, ranges[i].gpa <= gpa else { return nil }
    return (ranges[i].block, ranges[i].blockOffset + (gpa - ranges[i].gpa))
  }
}

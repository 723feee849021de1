import Foundation
import GuestViews
import MigrationFormat

/// What `mramfs info --json` prints and a mount's `info.json` holds: one
/// document describing a migration file. The schema is in the README.
public struct InfoDocument: Codable, Sendable {
  /// The libvirt header, when there is one.
  public struct Libvirt: Codable, Sendable {
    public var magic: String
    public var version: UInt32
    public var format: String
    public var wasRunning: Bool
    public var xml: String
    public var cookie: String?
  }

  /// One RAM block.
  public struct Block: Codable, Sendable {
    public var name: String
    /// Where the block appears in a mount, relative to the mount point.
    public var path: String
    public var length: UInt64
    public var pageSize: UInt64
    public var pageCount: UInt64
    public var populatedPages: UInt64?
    public var populatedPercent: Double?
    public var entryOffset: UInt64
    public var headerOffset: UInt64?
    public var bitmapOffset: UInt64?
    public var bitmapSize: UInt64?
    public var pagesOffset: UInt64?
    public var mrAddr: UInt64?
  }

  /// One device section.
  public struct Device: Codable, Sendable {
    public var name: String
    public var instance: UInt32
    public var version: UInt32
    public var offset: UInt64
    public var size: UInt64
  }

  public var file: String
  public var fileSize: UInt64
  public var streamOffset: UInt64
  public var libvirt: Libvirt?
  public var machine: String?
  public var capabilities: [String]
  public var uuid: String?
  public var format: String
  public var mountable: Bool
  public var complete: Bool
  public var memorySize: UInt64
  public var populatedPages: UInt64?
  public var populatedBytes: UInt64?
  public var blocks: [Block]
  public var devices: [Device]
  public var devicesUnavailable: String?
  /// Each vCPU's registers, from its `cpu` device section (a mount's `cpu/N/registers.json`).
  public var cpus: [X86Registers]?
  /// Why there are no ``cpus``, when there are none.
  public var cpusUnavailable: String?
  /// The mount's `physmem` view (guest-physical address N at offset N), when main RAM can be placed.
  public var physmem: Physmem?
  /// Why there is no `physmem` view, when there is none.
  public var physmemUnavailable: String?
  /// The guest kernel's VMCOREINFO (release, build ID, KASLR offset, where it was found), when found.
  public var kernel: Kernel?
  /// Why there is no ``kernel``, when it was looked for and not found.
  public var kernelUnavailable: String?
  public var warnings: [String]
  /// In a delta mount (`-o base=`), the base it serves the changes since.
  public var base: Base?

  /// Describes `file`; `lowmem` overrides the machine's RAM split below 4 GiB for ``physmem``;
  /// `kernel` is the result of ``KernelInfo/resolve(_:layout:limits:)``, when it was looked for; `base` is
  /// what a delta mount of `file` was taken against.
  public init(
    _ file: MigrationFile, lowmem: UInt64? = nil, kernel: Result<KernelInfo, KernelInfo.Unavailable>? = nil,
    base: Base? = nil
  ) {
    self.file = file.path
    fileSize = file.file.size
    streamOffset = file.streamOffset
    libvirt = file.libvirt.map {
      Libvirt(
        magic: $0.magic, version: $0.version, format: $0.formatName, wasRunning: $0.wasRunning, xml: $0.xml,
        cookie: $0.cookie)
    }
    machine = file.machineType
    capabilities = file.capabilities
    uuid = file.uuid.map(formatUUID)
    format = file.format.rawValue
    mountable = file.format.isPositional
    complete = file.isComplete
    memorySize = file.memorySize
    let positional = file.format.isPositional
    let paths = BlockPaths.assign(file.blocks.map(\.name))
    blocks = zip(file.blocks, paths).map { b, path in
      Block(
        name: b.name.description, path: path.joined(separator: "/"), length: b.length, pageSize: b.pageSize, pageCount: b.pageCount,
        populatedPages: b.populatedPages,
        populatedPercent: b.populatedPages.map { b.pageCount == 0 ? 0 : (Double($0) * 1000 / Double(b.pageCount)).rounded() / 10 },
        entryOffset: b.entryOffset, headerOffset: b.headerOffset,
        bitmapOffset: positional ? b.bitmapOffset : nil, bitmapSize: positional ? b.bitmapSize : nil,
        pagesOffset: positional ? b.pagesOffset : nil, mrAddr: b.mrAddr)
    }
    if positional {
      let pages = file.blocks.reduce(UInt64(0)) { $0 + ($1.populatedPages ?? 0) }
      populatedPages = pages
      populatedBytes = file.blocks.reduce(UInt64(0)) { $0 + ($1.populatedPages ?? 0) * $1.pageSize }
    }
    devices = file.devices.map {
      Device(name: $0.name, instance: $0.instanceID, version: $0.version, offset: $0.offset, size: $0.size)
    }
    devicesUnavailable = file.devicesUnavailableReason
    switch file.x86Registers() {
    case .success(let regs): cpus = regs
    case .failure(let why): cpusUnavailable = why.reason
    }
    switch PhysicalLayout.resolve(file, lowmem: lowmem) {
    case .success(let layout): physmem = Physmem(layout, file)
    case .failure(let why): physmemUnavailable = why.reason
    }
    warnings = file.warnings
    self.base = base
    if let kernel { setKernel(kernel) }
  }

  /// The document as pretty-printed JSON with sorted keys, ending in a newline.
  public func json() -> String { JSONText.encode(self) }
}

extension InfoDocument {
  /// Where main RAM sits in the `physmem` file (``PhysicalLayout``).
  public struct Physmem: Codable, Sendable {
    /// One piece of main RAM: `length` bytes of block `block` from `blockOffset`, at guest-physical `gpa`.
    public struct Range: Codable, Sendable {
      public var gpa: UInt64
      public var block: String
      public var blockOffset: UInt64
      public var length: UInt64
    }
    /// The file's size: one past the highest address of RAM.
    public var size: UInt64
    /// Bytes of main RAM below 4 GiB.
    public var lowmem: UInt64
    /// The pieces of main RAM in address order; everything else reads as zeros.
    public var ranges: [Range]

    init(_ layout: PhysicalLayout, _ file: MigrationFile) {
      size = layout.size
      lowmem = layout.lowmem
      ranges = layout.ranges.map {
        Range(gpa: $0.gpa, block: file.blocks[$0.block].name.description, blockOffset: $0.blockOffset, length: $0.length)
      }
    }
  }
}

extension InfoDocument {
  /// What a delta mount (`-o base=`) was taken against: its blocks serve the pages that
  /// changed since the base (``SaveDiff/delta()``). In such a mount `populatedPages` counts
  /// those pages.
  public struct Base: Codable, Sendable {
    /// A block left out of the mount: the two files do not both have it at one size.
    public struct Mismatch: Codable, Sendable {
      /// The block's name.
      public var name: String
      /// `onlyInA` (only in the base), `onlyInB` (only in the mounted file) or `sizeDiffers`,
      /// as `mramfs diff BASE FILE` says.
      public var status: SaveDiff.Status
      /// Its length in the base, if the base has it.
      public var lengthInA: UInt64?
      /// Its length in the mounted file, if that has it.
      public var lengthInB: UInt64?
    }
    /// The base file, as given.
    public var file: String
    /// The base file's size in bytes.
    public var fileSize: UInt64
    /// Pages that changed since the base, over the blocks mounted: the mount's data pages.
    public var changedPages: UInt64
    /// Bytes in those pages.
    public var changedBytes: UInt64
    /// Blocks left out (`-o base-mismatch=ok`); empty when every block matched.
    public var mismatchedBlocks: [Mismatch]

    /// Describes the base of `diff` (A, the base; B, the mounted file).
    public init(_ diff: SaveDiff) {
      file = diff.a.path
      fileSize = diff.a.file.size
      changedPages = diff.changedPages
      changedBytes = diff.changedBytes
      mismatchedBlocks = diff.mismatchedBlocks.map {
        Mismatch(name: $0.name.description, status: $0.status, lengthInA: $0.lengthInA, lengthInB: $0.lengthInB)
      }
    }
  }
}

/// Formats 16 bytes as a UUID string.
func formatUUID(_ b: [UInt8]) -> String {
  let h = b.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }
  guard h.count == 16 else { return h.joined() }
  return [h[0..<4], h[4..<6], h[6..<8], h[8..<10], h[10..<16]].map { $0.joined() }.joined(separator: "-")
}

import MigrationFormat

/// Where an x86 `pc` or `q35` machine puts its main RAM in guest-physical
/// address space (FORMAT.md §6): the first `lowmem` bytes at address 0, the
/// rest from 4 GiB up.
public struct X86Layout: Sendable, Equatable {
  /// One piece of RAM: block bytes `[blockOffset, blockOffset + length)` at guest-physical `gpa`.
  public struct Range: Sendable, Equatable {
    public var gpa: UInt64
    public var blockOffset: UInt64
    public var length: UInt64
  }

  /// Which chipset the machine type names.
  public enum Chipset: String, Sendable { case i440fx = "pc", q35 }

  public let chipset: Chipset
  /// Bytes of RAM below 4 GiB.
  public let lowmem: UInt64
  /// The RAM's pieces, in address order.
  public let ranges: [Range]
  /// One past the highest guest-physical address of RAM.
  public var end: UInt64 { ranges.last.map { $0.gpa + $0.length } ?? 0 }

  static let fourGiB: UInt64 = 1 << 32

  /// The chipset a machine type names, or nil (isapc, microvm, non-x86 machines).
  public static func chipset(of machineType: String) -> Chipset? {
    if machineType == "q35" || machineType.hasPrefix("pc-q35") { return .q35 }
    if machineType == "pc" || machineType.hasPrefix("pc-i440fx") { return .i440fx }
    return nil
  }

  /// The layout for `ramSize` bytes of main RAM; `lowmem` overrides the rule (`max-ram-below-4g`).
  public init(machineType: String, ramSize: UInt64, lowmem override: UInt64? = nil) throws(FormatError) {
    guard let chipset = X86Layout.chipset(of: machineType) else {
      throw FormatError(
        .unsupported, "machine type \"\(machineType)\"", at: 0,
        "mramfs knows the RAM layout of pc (i440fx) and q35 machines only; give the split with -o lowmem=SIZE")
    }
    self.chipset = chipset
    var low: UInt64
    if let override {
      low = min(override, X86Layout.fourGiB)
    } else {
      switch chipset {
      case .i440fx:
        low = 0xe000_0000
        if ramSize >= low && low > 0xc000_0000 { low = 0xc000_0000 }
      case .q35:
        low = ramSize >= 0xb000_0000 ? 0x8000_0000 : 0xb000_0000
      }
    }
    if ramSize <= low { low = ramSize }
    lowmem = low
    var ranges = [Range(gpa: 0, blockOffset: 0, length: low)]
    if ramSize > low {
      ranges.append(Range(gpa: X86Layout.fourGiB, blockOffset: low, length: ramSize - low))
    }
    self.ranges = ranges.filter { $0.length > 0 }
  }
}

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif
import MigrationFormat

/// Translates a guest virtual address to a guest-physical one by walking the
/// x86 page tables from CR3, the way the MMU would (FORMAT.md §9).
///
/// Supported: paging disabled (CR0.PG = 0: the address is physical), and
/// long-mode 4-level and 5-level paging (EFER.LMA = 1, CR4.LA57 selects 5
/// levels) with 4 KiB, 2 MiB and 1 GiB pages. 32-bit paging (CR4.PAE = 0)
/// and PAE paging outside long mode are reported as unsupported.
///
/// Entries are read through a closure, so the walk can read a migration
/// file's guest-physical memory (``MigrationFile/read(physical:at:into:)``:
/// a table page whose bitmap bit is clear reads as zeros, so its entries are
/// not present) or, in tests, tables built in code.
public enum PageWalk {
  /// How the CPU translates addresses.
  public enum Mode: String, Sendable, Codable {
    /// CR0.PG = 0: virtual = physical.
    case disabled = "paging disabled"
    /// 32-bit paging (CR4.PAE = 0).
    case legacy32 = "32-bit paging"
    /// PAE paging outside long mode.
    case pae = "PAE paging"
    /// Long mode, 4-level paging.
    case fourLevel = "4-level paging"
    /// Long mode, 5-level paging (CR4.LA57).
    case fiveLevel = "5-level paging"
  }

  /// One entry read during a walk.
  public struct Step: Sendable, Equatable, Codable {
    /// The entry's kind: `PML5E`, `PML4E`, `PDPTE`, `PDE` or `PTE`.
    public var level: String
    /// The guest-physical address of the entry.
    public var entryGPA: UInt64
    /// The entry's value (little-endian u64).
    public var entry: UInt64
    public init(level: String, entryGPA: UInt64, entry: UInt64) {
      self.level = level
      self.entryGPA = entryGPA
      self.entry = entry
    }
  }

  /// The result of a walk.
  public enum Outcome: Sendable, Equatable {
    /// The address maps to `gpa`, inside a page of `pageSize` bytes.
    case mapped(gpa: UInt64, pageSize: UInt64, steps: [Step])
    /// The last step's entry has its present bit clear.
    case notPresent(steps: [Step])
    /// The address is not canonical for the paging mode (`bits` significant bits).
    case nonCanonical(bits: Int)
    /// The paging mode is one mramfs does not walk.
    case unsupported(Mode)
  }

  static let cr0PG: UInt64 = 1 << 31
  static let cr4PAE: UInt64 = 1 << 5
  static let cr4LA57: UInt64 = 1 << 12
  static let eferLMA: UInt64 = 1 << 10
  /// Bits 51:12 of an entry or of CR3: the next table's (or page's) address.
  static let addressMask: UInt64 = 0x000f_ffff_ffff_f000
  static let present: UInt64 = 1
  static let pageSizeBit: UInt64 = 1 << 7

  /// The paging mode control registers select.
  public static func mode(cr0: UInt64, cr4: UInt64, efer: UInt64) -> Mode {
    if cr0 & cr0PG == 0 { return .disabled }
    if cr4 & cr4PAE == 0 { return .legacy32 }
    if efer & eferLMA == 0 { return .pae }
    return cr4 & cr4LA57 != 0 ? .fiveLevel : .fourLevel
  }

  /// Walks the tables for `va`; `read` returns the little-endian u64 at a guest-physical address.
  public static func translate<E: Error>(
    _ va: UInt64, cr0: UInt64, cr3: UInt64, cr4: UInt64, efer: UInt64, read: (UInt64) throws(E) -> UInt64
  ) throws(E) -> Outcome {
    let m = mode(cr0: cr0, cr4: cr4, efer: efer)
    let levels: Int
    switch m {
    case .disabled: return .mapped(gpa: va, pageSize: 0, steps: [])
    case .legacy32, .pae: return .unsupported(m)
    case .fourLevel: levels = 4
    case .fiveLevel: levels = 5
    }
    let bits = 12 + 9 * levels
    // Canonical: bits 63..bits-1 all equal.
    let top = va >> UInt64(bits - 1)
    guard top == 0 || top == (UInt64.max >> UInt64(bits - 1)) else { return .nonCanonical(bits: bits) }
    let names = ["PTE", "PDE", "PDPTE", "PML4E", "PML5E"]
    var table = cr3 & addressMask
    var steps: [Step] = []
    for level in stride(from: levels - 1, through: 0, by: -1) {
      let shift = UInt64(12 + 9 * level)
      let index = (va >> shift) & 0x1ff
      let at = table + index * 8
      let entry = try read(at)
      steps.append(Step(level: names[level], entryGPA: at, entry: entry))
      guard entry & present != 0 else { return .notPresent(steps: steps) }
      // PS in a PDPTE (1 GiB) or PDE (2 MiB) ends the walk early.
      if (level == 1 || level == 2) && entry & pageSizeBit != 0 {
        let size: UInt64 = 1 << shift
        let base = entry & addressMask & ~(size - 1)
        return .mapped(gpa: base | (va & (size - 1)), pageSize: size, steps: steps)
      }
      table = entry & addressMask
    }
    return .mapped(gpa: table | (va & 0xfff), pageSize: 4096, steps: steps)
  }
}

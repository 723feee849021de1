// SaveDiff's changed pages mapped onto guest-physical addresses through PhysicalLayout:
// the split at lowmem, NUMA node blocks back to back, and files whose main RAM lies differently.

import GuestViews
import MigrationFormat
import MigrationFormatTestSupport
import Testing

/// A 4 KiB page of `byte`.
private func page(_ byte: UInt8) -> [UInt8] { [UInt8](repeating: byte, count: 4096) }

@Suite("changed pages as guest-physical ranges")
struct PhysicalDiffTests {
  static let k4: UInt64 = 4096

  /// pc.ram of 64 pages, every page present in A; B changes pages `changed`.
  static func pair(_ changed: [UInt64], machineB: String = "pc-i440fx-10.0", pagesB: UInt64 = 64) throws -> SaveDiff {
    let a = FixtureStream(blocks: [patternBlock("pc.ram", pages: 64, every: 1)])
    var b = FixtureStream(blocks: [patternBlock("pc.ram", pages: pagesB, every: 1)])
    b.machine = machineB
    for p in changed { b.blocks[0].present[p] = page(0xC3) }
    return try SaveDiff(open(a.build()), open(b.build()))
  }

  @Test("all of pc.ram below lowmem: block offset = address, runs merged")
  func low() throws {
    let d = try Self.pair([0, 31, 32, 40])
    #expect(try d.physicalRanges().get() == [0..<Self.k4, 31 * Self.k4..<33 * Self.k4, 40 * Self.k4..<41 * Self.k4])
  }

  @Test("split at lowmem: a run across the split is two ranges, the high one from 4 GiB")
  func split() throws {
    let d = try Self.pair([0, 31, 32, 40])
    let fourG: UInt64 = 1 << 32
    #expect(
      try d.physicalRanges(lowmem: 32 * Self.k4).get() == [
        0..<Self.k4, 31 * Self.k4..<32 * Self.k4, fourG..<fourG + Self.k4, fourG + 8 * Self.k4..<fourG + 9 * Self.k4,
      ])
  }

  @Test("NUMA node blocks back to back in node order: a run across nodes is one range")
  func numa() throws {
    // The stream lists node 1 first, as QEMU does (by size); node 0 is at address 0.
    let a = FixtureStream(blocks: [patternBlock("ram-node1", pages: 16, every: 1), patternBlock("ram-node0", pages: 8, every: 1)])
    var b = a
    b.blocks[1].present[7] = page(1)  // node 0's last page
    b.blocks[0].present[0] = page(2)  // node 1's first page
    b.blocks[0].present[5] = page(3)
    let d = try SaveDiff(open(a.build()), open(b.build()))
    #expect(try d.physicalRanges().get() == [7 * Self.k4..<9 * Self.k4, 13 * Self.k4..<14 * Self.k4])
  }

  @Test("no physical ranges when main RAM lies differently or cannot be placed")
  func unavailable() throws {
    let resized = try Self.pair([], pagesB: 128)
    guard case .failure(let why) = resized.physicalRanges() else {
      Issue.record("pc.ram of 64 and 128 pages placed alike")
      return
    }
    #expect(why.reason.hasPrefix("the two files lay out guest-physical memory differently: pc.ram [0x0, 0x40000) at 0x0 in "))
    let arm = try Self.pair([3], machineB: "virt-10.0")
    guard case .failure(let other) = arm.physicalRanges() else {
      Issue.record("an arm machine's RAM placed")
      return
    }
    #expect(other.reason.hasPrefix(arm.b.path + ": machine type \"virt-10.0\" is not pc"))
    // The block ranges are there all the same.
    #expect(arm.blocks[0].changedRanges == [3 * Self.k4..<4 * Self.k4])
  }
}

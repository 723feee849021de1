// The page-table walker against tables built in code: 4-level and 5-level
// paging, 4 KiB, 2 MiB and 1 GiB pages, a clear present bit at every level,
// and the modes it does not walk.

import GuestViews
import MigrationFormat
import Testing

/// Guest-physical memory as a sparse map of u64 words; anything unset reads as zero.
struct WordMemory {
  var words: [UInt64: UInt64] = [:]
  func read(_ gpa: UInt64) -> UInt64 { words[gpa] ?? 0 }
  /// Sets entry `index` of the table at `table`.
  mutating func set(_ table: UInt64, _ index: UInt64, _ value: UInt64) { words[table + index * 8] = value }
}

/// The 9-bit table index of `va` at `level` (0 = PT … 4 = PML5).
func index(_ va: UInt64, _ level: Int) -> UInt64 { (va >> UInt64(12 + 9 * level)) & 0x1ff }

let longMode = (cr0: UInt64(0x8000_0011), cr4: UInt64(0x20), efer: UInt64(0x500))
let la57: UInt64 = 1 << 12

func walk(_ m: WordMemory, _ va: UInt64, cr3: UInt64, cr4: UInt64 = longMode.cr4) -> PageWalk.Outcome {
  PageWalk.translate(va, cr0: longMode.cr0, cr3: cr3, cr4: cr4, efer: longMode.efer) { (a: UInt64) -> UInt64 in m.read(a) }
}

@Suite("page-table walk")
struct PageWalkTests {
  /// 4-level tables mapping `va` to a 4 KiB page at 0x7_6543_2000 (PML4 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000).
  static func fourLevel(_ va: UInt64) -> WordMemory {
    var m = WordMemory()
    m.set(0x1000, index(va, 3), 0x2000 | 0x23)
    m.set(0x2000, index(va, 2), 0x3000 | 0x3)
    m.set(0x3000, index(va, 1), 0x4000 | 0x7)
    m.set(0x4000, index(va, 0), 0x8000_0007_6543_2000 | 0x63)  // NX bit 63 is not part of the address
    return m
  }

  @Test("4-level paging with a 4 KiB page, in the low and the high half")
  func fourKiB() {
    for va: UInt64 in [0x0000_1234_5678_9abc, 0xffff_ffff_8030_0abc] {
      let outcome = walk(Self.fourLevel(va), va, cr3: 0x1000 | 0x18)  // PCD/PWT bits in CR3 are ignored
      guard case .mapped(let gpa, let size, let steps) = outcome else {
        Issue.record("\(outcome)")
        continue
      }
      #expect(gpa == 0x7_6543_2000 | (va & 0xfff))
      #expect(size == 4096)
      #expect(steps.map(\.level) == ["PML4E", "PDPTE", "PDE", "PTE"])
      #expect(steps[0].entryGPA == 0x1000 + index(va, 3) * 8)
    }
  }

  @Test("a 2 MiB page (PS in the PDE; the PAT bit 12 is not part of the address)")
  func twoMiB() {
    let va: UInt64 = 0xffff_ffff_8030_0008
    var m = WordMemory()
    m.set(0x200000, 511, 0x202023)
    m.set(0x202000, 510, 0x203023)
    m.set(0x203000, 1, 0x0000_0001_4020_1000 | 0xe3)
    let outcome = walk(m, va, cr3: 0x200000)
    #expect(outcome == .mapped(gpa: 0x1_4030_0008, pageSize: 2 << 20, steps: [
      .init(level: "PML4E", entryGPA: 0x200ff8, entry: 0x202023),
      .init(level: "PDPTE", entryGPA: 0x202ff0, entry: 0x203023),
      .init(level: "PDE", entryGPA: 0x203008, entry: 0x1_4020_10e3),
    ]))
  }

  @Test("a 1 GiB page (PS in the PDPTE)")
  func oneGiB() {
    let va: UInt64 = 0x0000_0000_4123_4567
    var m = WordMemory()
    m.set(0x1000, 0, 0x2003)
    m.set(0x2000, 1, 0x0000_0003_4000_0000 | 0x83)
    guard case .mapped(let gpa, let size, let steps) = walk(m, va, cr3: 0x1000) else {
      Issue.record("not mapped")
      return
    }
    #expect(gpa == 0x3_4000_0000 + 0x0123_4567)
    #expect(size == 1 << 30)
    #expect(steps.count == 2)
  }

  @Test("5-level paging (CR4.LA57) walks a PML5 first and accepts 57-bit addresses")
  func fiveLevel() {
    let va: UInt64 = 0xff12_3456_789a_bcde
    var m = WordMemory()
    m.set(0x9000, index(va, 4), 0x1000 | 3)
    for (table, level, next) in [(UInt64(0x1000), 3, UInt64(0x2000)), (0x2000, 2, 0x3000), (0x3000, 1, 0x4000)] {
      m.set(table, index(va, level), next | 3)
    }
    m.set(0x4000, index(va, 0), 0x5000 | 3)
    guard case .mapped(let gpa, _, let steps) = walk(m, va, cr3: 0x9000, cr4: longMode.cr4 | la57) else {
      Issue.record("not mapped")
      return
    }
    #expect(gpa == 0x5000 | 0xcde)
    #expect(steps.map(\.level) == ["PML5E", "PML4E", "PDPTE", "PDE", "PTE"])
    // Not canonical with 4 levels, canonical with 5.
    #expect(walk(m, va, cr3: 0x9000) == .nonCanonical(bits: 48))
    #expect(walk(m, 0x0100_0000_0000_0000, cr3: 0x9000, cr4: longMode.cr4 | la57) == .nonCanonical(bits: 57))
  }

  @Test("an entry whose present bit is clear ends the walk at that level", arguments: 0..<4)
  func notPresent(_ level: Int) {
    let va: UInt64 = 0x0000_1234_5678_9abc
    var m = Self.fourLevel(va)
    let tables: [UInt64] = [0x4000, 0x3000, 0x2000, 0x1000]
    let at = tables[level] + index(va, level) * 8
    m.words[at] = m.words[at]! & ~1  // the address stays; only P is cleared
    guard case .notPresent(let steps) = walk(m, va, cr3: 0x1000) else {
      Issue.record("mapped")
      return
    }
    #expect(steps.last?.level == ["PTE", "PDE", "PDPTE", "PML4E"][level])
    #expect(steps.last?.entryGPA == at)
    #expect(steps.count == 4 - level)
  }

  @Test("a not-present PML5E")
  func notPresentPML5() {
    let outcome = walk(WordMemory(), 0x1000, cr3: 0x9000, cr4: longMode.cr4 | la57)
    #expect(outcome == .notPresent(steps: [.init(level: "PML5E", entryGPA: 0x9000, entry: 0)]))
  }

  @Test("paging off maps an address to itself; 32-bit and PAE paging are not walked")
  func modes() {
    let read = { (_: UInt64) -> UInt64 in 0 }
    #expect(PageWalk.translate(0x12345, cr0: 0x11, cr3: 0, cr4: 0, efer: 0, read: read) == .mapped(gpa: 0x12345, pageSize: 0, steps: []))
    #expect(PageWalk.translate(0x12345, cr0: 0x8000_0011, cr3: 0, cr4: 0, efer: 0, read: read) == .unsupported(.legacy32))
    #expect(PageWalk.translate(0x12345, cr0: 0x8000_0011, cr3: 0, cr4: 0x20, efer: 0x100, read: read) == .unsupported(.pae))
  }
}

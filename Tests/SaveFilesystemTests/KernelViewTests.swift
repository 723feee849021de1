// The views that depend on the guest kernel's VMCOREINFO, through the handlers: the
// `vmcoreinfo` file (there only when a note is found), the `VMCOREINFO` note at the end of
// vmcore's PT_NOTE (segments then start after the longer notes), info.json's `kernel` key,
// all computed once even when many threads ask at once. No kernel; LinuxGuestTests checks the
// same through a mount with drgn and crash on a real Linux guest.
import FUSE
import Foundation
import GuestViews
import MigrationFormat
import MigrationFormatTestSupport
import SaveFilesystem
import Synchronization
import Testing

/// The notes of an ELF core's PT_NOTE (its first program header), from the core's first bytes.
private func notes(_ h: [UInt8]) -> [(name: String, type: UInt64, desc: [UInt8])] {
  guard let phoff = h.loadLE(0x20, 8), let off = h.loadLE(Int(phoff) + 8, 8), let size = h.loadLE(Int(phoff) + 32, 8) else { return [] }
  var out: [(String, UInt64, [UInt8])] = []
  var p = Int(off)
  let end = Int(off + size)
  while p + 12 <= end, let nsz = h.loadLE(p, 4), let dsz = h.loadLE(p + 4, 4), let type = h.loadLE(p + 8, 4) {
    let name = String(decoding: h[(p + 12)..<(p + 12 + Int(nsz))].prefix { $0 != 0 }, as: UTF8.self)
    let d = p + 12 + (Int(nsz) + 3) / 4 * 4
    out.append((name, type, Array(h[d..<(d + Int(dsz))])))
    p = d + (Int(dsz) + 3) / 4 * 4
  }
  return out
}

@Suite("kernel views through the handlers")
struct KernelViewTests {
  static let text = vmcoreinfoText(release: "6.1.0-57-cloud-amd64")

  /// smallPC with a cpu section, and the note at page 30 when `note`.
  func fixture(note: Bool) throws -> PhysmemFixture {
    var s = smallPC()
    if note { s.blocks[1].present[30] = vmcoreinfoNote(Self.text) }
    s.devices = [.timer, cpuDevice()]
    return try PhysmemFixture(s)
  }

  @Test("with a note: vmcoreinfo holds its text, vmcore ends its notes with it, info.json has the kernel")
  func withNote() throws {
    let f = try fixture(note: true)
    #expect(f.rootNames().contains("vmcoreinfo"))
    let attrs = try #require(f.lookup("vmcoreinfo"))
    #expect(attrs.size == Int64(Self.text.count) && attrs.mode.permissions.rawValue == 0o444)
    #expect(try f.read("vmcoreinfo", 0, 1 << 16) == Self.text)
    #expect(try f.read("vmcoreinfo", 10, 5) == Array(Self.text[10..<15]))
    #expect(try f.seek("vmcoreinfo", 0, .nextHole) == Int64(Self.text.count))

    let h = try #require(try f.read("vmcore", 0, 16384))
    let n = notes(h)
    #expect(n.map(\.name) == ["CORE", "QEMU", "VMCOREINFO"])
    #expect(n.last?.type == 0 && n.last?.desc == Self.text)
    // The first PT_LOAD starts on the page after the (longer) notes.
    let phoff = Int(h.loadLE(0x20, 8) ?? 0)
    let noteEnd = (h.loadLE(phoff + 8, 8) ?? 0) + (h.loadLE(phoff + 32, 8) ?? 0)
    let firstLoad = h.loadLE(phoff + 56 + 8, 8) ?? 0
    #expect(firstLoad == (noteEnd + page - 1) / page * page)
    #expect(try f.read("vmcore", firstLoad + 30 * page + 24, Self.text.count) == Self.text, "the note's page in RAM")

    let k = try f.fs.kernel.get()
    #expect(k.gpa == 30 * page && k.source == .search)
    let doc = f.info
    #expect(doc.kernel?.release == "6.1.0-57-cloud-amd64" && doc.kernel?.kaslrOffset == 0x1b80_0000)
    #expect(doc.kernel?.gpa == 30 * page && doc.kernel?.size == UInt64(Self.text.count) && doc.kernelUnavailable == nil)
    #expect(try f.read("info.json", 0, 1 << 20) == Array(doc.json().utf8))
    #expect(doc.json().contains("\"kaslrOffset\" : 461373440"))
  }

  @Test("without a note: no vmcoreinfo, the reason in info.json, vmcore as before")
  func withoutNote() throws {
    let f = try fixture(note: false)
    #expect(!f.rootNames().contains("vmcoreinfo"))
    #expect(f.lookup("vmcoreinfo") == nil)
    #expect(f.info.kernel == nil)
    #expect(f.info.kernelUnavailable?.contains("no VMCOREINFO note") == true)
    let before = try ELFCore.resolve(f.file, layout: PhysicalLayout(f.file)).get()
    #expect(try f.read("vmcore", 0, before.header.count) == before.header)
    #expect(notes(before.header).map(\.name) == ["CORE", "QEMU"])
    #expect(UInt64(try #require(f.lookup("vmcore")).size) == before.size)
  }

  @Test("the look-up runs once, whichever of 16 threads asks first")
  func once() throws {
    let f = try fixture(note: true)
    let sizes = Mutex<[Int64]>([])
    DispatchQueue.concurrentPerform(iterations: 16) { i in
      let name = ["vmcore", "vmcoreinfo", "info.json"][i % 3]
      let size = f.lookup(name)?.size ?? -1
      sizes.withLock { $0.append(i % 3 == 1 ? size : 0) }
    }
    #expect(sizes.withLock { $0.allSatisfy { $0 == 0 || $0 == Int64(Self.text.count) } })
    #expect(f.rootNames().contains("vmcoreinfo"))
  }
}

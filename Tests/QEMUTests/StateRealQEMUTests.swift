// CPU and device state of real QEMU 10 files: the registers decoded from each
// cpu section against QEMU's own HMP `info registers` of the same stopped guest,
// every device section decoded to exactly its body, and `mramfs translate` of the
// virtual address the test guest wrote its marker through.

import Foundation
import GuestViews
import MigrationFormat
import SaveFilesystem
import QEMUFixtures
import Testing

/// The four scenarios whose guest state the generator recorded and checks.
let registerScenarios = ["pc-256", "q35-256-mfd", "pc-5g", "q35-5g-mfd"]

/// `mramfs translate --json`, as far as the tests read it.
struct TranslateAnswer: Decodable {
  var mapped: Bool
  var reason: String?
  var gpa: UInt64?
  var block: String?
  var blockOffset: UInt64?
  var fileOffset: UInt64?
  var inFile: Bool?
}

/// Expects `regs` to equal QEMU's `info registers` recorded in the manifest for `s`.
func expectRegistersMatchHMP(_ regs: X86Registers, _ s: FixtureManifest.Scenario) throws {
  let hex = try #require(s.registersHex, "\(s.name): the manifest has no registers_hex")
  func hmp(_ k: String) -> UInt64? { hex[k].flatMap { UInt64($0.dropFirst(2), radix: 16) } }
  let pairs: [(String, UInt64?)] = [
    ("RAX", regs.rax), ("RBX", regs.rbx), ("RCX", regs.rcx), ("RDX", regs.rdx), ("RSI", regs.rsi),
    ("RDI", regs.rdi), ("RBP", regs.rbp), ("RSP", regs.rsp), ("R8", regs.r8), ("R9", regs.r9), ("R10", regs.r10),
    ("R11", regs.r11), ("R12", regs.r12), ("R13", regs.r13), ("R14", regs.r14), ("R15", regs.r15),
    ("RIP", regs.rip), ("RFL", regs.rflags), ("CR0", regs.cr0), ("CR2", regs.cr2), ("CR3", regs.cr3),
    ("CR4", regs.cr4), ("EFER", regs.efer), ("DR0", regs.dr0), ("DR1", regs.dr1), ("DR2", regs.dr2),
    ("DR3", regs.dr3), ("DR6", regs.dr6), ("DR7", regs.dr7),
  ]
  for (k, mine) in pairs {
    let theirs = try #require(hmp(k), "\(s.name): no \(k) in info registers")
    #expect(mine == theirs, "\(s.name): \(k) is \(mine.map { hexString($0) } ?? "absent"), QEMU says \(hexString(theirs))")
  }
  let segs = try #require(s.registers?.segments, "\(s.name): no segments in info registers")
  let named: [(String, X86Registers.Segment?)] = [
    ("ES", regs.es), ("CS", regs.cs), ("SS", regs.ss), ("DS", regs.ds), ("FS", regs.fs), ("GS", regs.gs),
    ("LDT", regs.ldtr), ("TR", regs.tr),
  ]
  for (k, mine) in named {
    let q = try #require(segs[k], "\(s.name): no \(k) in info registers")
    let expected = X86Registers.Segment(
      selector: q["selector"] ?? .max, base: q["base"] ?? .max, limit: q["limit"] ?? .max, attributes: q["flags"] ?? .max)
    #expect(mine == expected, "\(s.name): \(k)")
  }
  for (k, mine) in [("GDT", regs.gdt), ("IDT", regs.idt)] {
    let q = try #require(segs[k], "\(s.name): no \(k) in info registers")
    #expect(mine == X86Registers.Table(base: q["base"] ?? .max, limit: q["limit"] ?? .max), "\(s.name): \(k)")
  }
}

func hexString(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }

@Suite("CPU and device state of real QEMU files")
struct StateRealQEMUTests {
  @Test("cpu 0's registers equal QEMU's info registers of the same stopped guest", arguments: registerScenarios)
  func registersMatchHMP(_ name: String) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let file = try openScenario(s, fixtures)
    let regs = try file.x86Registers().get()
    #expect(regs.map(\.cpu) == [0])
    try expectRegistersMatchHMP(regs[0], s)
  }

  @Test("`info --registers --json` carries the same registers, exactly; the table shows them", arguments: registerScenarios)
  func infoRegisters(_ name: String) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let mramfs = try CLI.mramfs()
    let json = try CLI.run(mramfs, ["info", "--registers", "--json", fixtures.path(s.file)])
    #expect(json.status == 0, "\(json.stderr)")
    let doc = try JSONDecoder().decode(InfoDocument.self, from: json.stdoutData)
    let cpus = try #require(doc.cpus, "\(name): no cpus in info --json (\(doc.cpusUnavailable ?? ""))")
    #expect(cpus.count == 1)
    try expectRegistersMatchHMP(cpus[0], s)
    #expect(json.stdout.contains("\"r15\" : 18369614221190020847"))
    let table = try CLI.run(mramfs, ["info", "--registers", fixtures.path(s.file)])
    #expect(table.status == 0)
    #expect(table.stdout.contains("CPU 0"))
    #expect(table.stdout.contains("r15   = feedfacecafebeef"))
    #expect(table.stdout.contains("cr3   = 0000000000200000"))
  }

  @Test("every device section decodes to exactly its body, with no field left undecoded", arguments: ScenarioName.complete)
  func devicesDecode(_ name: String) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let file = try openScenario(s, fixtures)
    guard s.vmdesc else {
      #expect(file.deviceStates().isEmpty)
      return
    }
    let states = file.deviceStates()
    #expect(states.count == s.fileInfo.vmdesc?.devices, "\(name): one decoded state per device section")
    #expect(states.contains { $0.section.name == "cpu" })
    var names = Set<String>()
    for d in states {
      let what = "\(name): \(d.section.name) \(d.section.instanceID)"
      #expect(d.problem == nil, "\(what): \(d.problem ?? "")")
      #expect(d.decodedBytes == d.bodySize, "\(what)")
      #expect(d.section.bodyOffset + d.bodySize + 5 == d.section.offset + d.section.size, "\(what): body ends at the footer")
      #expect(names.insert(d.fileName).inserted, "\(what): file name \(d.fileName) twice")
      func walk(_ v: DeviceValue, _ path: String) {
        switch v {
        case .undecoded(_, let why): Issue.record("\(what): \(path) undecoded: \(why)")
        case .array(let a): for (i, e) in a.enumerated() { walk(e, "\(path)[\(i)]") }
        case .structure(let st): walkVMSD(st, path)
        default: break
        }
      }
      func walkVMSD(_ st: DecodedVMSD, _ path: String) {
        for f in st.fields { walk(f.value, "\(path).\(f.name)") }
        for sub in st.subsections { walkVMSD(sub, "\(path)/\(sub.vmsdName)") }
      }
      if let st = d.state { walkVMSD(st, d.section.name) }
      #expect((try? JSONSerialization.jsonObject(with: Data(d.json().utf8))) != nil, "\(what): JSON parses")
    }
  }

  @Test("a file without the VM description has no registers, and info says why")
  func noVMDescription() throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario("pc-256-novmdesc")
    let file = try openScenario(s, fixtures)
    let doc = InfoDocument(file)
    #expect(doc.cpus == nil)
    #expect(doc.cpusUnavailable?.contains("VM description") == true, "\(doc.cpusUnavailable ?? "")")
    #expect(doc.devicesUnavailable != nil)
    let out = try CLI.run(try CLI.mramfs(), ["info", "--registers", fixtures.path(s.file)])
    #expect(out.status == 0)
    #expect(out.stdout.contains("registers: not available ("))
    let t = try CLI.run(try CLI.mramfs(), ["translate", fixtures.path(s.file), "0xffffffff80300000"])
    #expect(t.status == 1)
    #expect(t.stderr.contains("no CPU registers"))
  }

  @Test("translate lands the guest's virtual marker address on the marker string", arguments: registerScenarios)
  func translateMarker(_ name: String) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let marker = try #require(fixtures.manifest.guest.virtualMarkers?["virt_marker"])
    let text = try #require(fixtures.manifest.guest.markerStrings["virt_marker"])
    let mramfs = try CLI.mramfs()
    let out = try CLI.run(mramfs, ["translate", "--json", fixtures.path(s.file), marker.vaHex])
    #expect(out.status == 0, "\(out.stderr)")
    let answer = try JSONDecoder().decode(TranslateAnswer.self, from: out.stdoutData)
    #expect(answer.mapped)
    #expect(answer.gpa == marker.gpa)
    #expect(answer.block == "pc.ram")
    #expect(answer.inFile == true)
    let fileOffset = try #require(answer.fileOffset)
    let file = try openScenario(s, fixtures)
    let bytes = try file.file.bytes(at: fileOffset, count: UInt64(text.utf8.count), "marker")
    #expect(bytes == Array(text.utf8), "\(name): the file at the printed offset holds the marker")
    // The library's physmem read agrees.
    let layout = try PhysicalLayout(file)
    var buffer = [UInt8](repeating: 0, count: text.utf8.count)
    _ = try buffer.withUnsafeMutableBytes { try file.read(physical: layout, at: marker.gpa, into: $0) }
    #expect(buffer == Array(text.utf8))
    // And the text form says the same.
    let plain = try CLI.run(mramfs, ["translate", fixtures.path(s.file), marker.vaHex])
    #expect(plain.status == 0)
    #expect(plain.stdout.contains("physical      \(hexString(marker.gpa))"))
    #expect(plain.stdout.contains("file offset   \(hexString(fileOffset)) (\(fileOffset))"))
  }

  @Test("an unmapped address answers which entry is not present and exits 1; bad VADDR exits 2")
  func translateUnmapped() throws {
    let fixtures = try Fixtures.load()
    let path = fixtures.path(try fixtures.scenario("pc-256").file)
    let mramfs = try CLI.mramfs()
    let pml4 = try CLI.run(mramfs, ["translate", path, "0x8000000000"])
    #expect(pml4.status == 1)
    #expect(pml4.stdout.contains("not mapped: PML4E at GPA 0x200008 is not present"), "\(pml4.stdout)")
    let pdpt = try CLI.run(mramfs, ["translate", "--json", path, "0x200000000"])
    #expect(pdpt.status == 1)
    let answer = try JSONDecoder().decode(TranslateAnswer.self, from: pdpt.stdoutData)
    #expect(!answer.mapped)
    #expect(answer.reason == "not mapped: PDPTE at GPA 0x201040 is not present (entry 0x0)")
    let canonical = try CLI.run(mramfs, ["translate", path, "0x800000000000"])
    #expect(canonical.status == 1)
    #expect(canonical.stdout.contains("not canonical"))
    for bad in ["0xzz", "12abc", "", "0x1ffffffffffffffff", "--cpu"] {
      let r = try CLI.run(mramfs, ["translate", path, bad])
      #expect(r.status == 2, "VADDR \(bad): \(r.stderr)")
    }
    let noCPU = try CLI.run(mramfs, ["translate", path, "0x1000", "--cpu", "3"])
    #expect(noCPU.status == 1)
    #expect(noCPU.stderr.contains("there is no vCPU 3"))
  }
}

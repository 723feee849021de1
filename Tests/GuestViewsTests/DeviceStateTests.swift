// Device sections decoded from VM description JSON written in code: nested
// structs, arrays of structs, `tmp` fields, subsections, `index` elements,
// buffers, and descriptions that do not add up (kept as hex, never guessed).

import Foundation
import GuestViews
import MigrationFormat
import SaveFilesystem
import MigrationFormatTestSupport
import Testing

/// A QEMU `segment` vmsd.
let segmentJSON = """
  {"vmsd_name": "segment", "version": 1, "fields": [{"name": "selector", "type": "uint32", "size": 4}, \
  {"name": "base", "type": "uint64", "size": 8}, {"name": "limit", "type": "uint32", "size": 4}, \
  {"name": "flags", "type": "uint32", "size": 4}]}
  """

/// A cut-down x86 `cpu` description in QEMU's shape, with EFER in a subsection.
let cpuJSON = """
  {"name": "cpu", "instance_id": 1, "vmsd_name": "cpu", "version": 12, "fields": [\
  {"name": "env.regs", "array_len": 16, "type": "uint64", "size": 8}, \
  {"name": "env.eip", "type": "uint64", "size": 8}, {"name": "env.eflags", "type": "uint64", "size": 8}, \
  {"name": "env.fpregs", "array_len": 2, "type": "struct", "struct": {"vmsd_name": "fpreg", "version": 0, "fields": [\
  {"name": "tmp", "type": "tmp", "vmsd_name": "fpreg_tmp", "version": 0, "fields": [\
  {"name": "tmp_mant", "type": "uint64", "size": 8}, {"name": "tmp_exp", "type": "uint16", "size": 2}], "size": 10}]}, "size": 10}, \
  {"name": "env.segs", "array_len": 6, "type": "struct", "struct": \(segmentJSON), "size": 20}, \
  {"name": "env.ldt", "type": "struct", "struct": \(segmentJSON), "size": 20}, \
  {"name": "env.tr", "type": "struct", "struct": \(segmentJSON), "size": 20}, \
  {"name": "env.gdt", "type": "struct", "struct": \(segmentJSON), "size": 20}, \
  {"name": "env.idt", "type": "struct", "struct": \(segmentJSON), "size": 20}, \
  {"name": "env.cr[0]", "type": "uint64", "size": 8}, {"name": "env.cr[2]", "type": "uint64", "size": 8}, \
  {"name": "env.cr[3]", "type": "uint64", "size": 8}, {"name": "env.cr[4]", "type": "uint64", "size": 8}, \
  {"name": "env.a20_mask", "type": "int32 le", "size": 4}, {"name": "env.halted", "type": "bool", "size": 1}, \
  {"name": "unused", "type": "unused_buffer", "size": 3}, \
  {"name": "env.dr", "index": 0, "type": "uint64", "size": 8}, {"name": "env.dr", "index": 1, "type": "uint64", "size": 8}], \
  "subsections": [{"vmsd_name": "cpu/efer", "version": 2, "fields": [{"name": "env.efer", "type": "uint64", "size": 8}]}]}
  """

/// Appends big-endian integers and raw bytes.
struct Body {
  var bytes: [UInt8] = []
  mutating func u(_ v: UInt64, _ n: Int) { bytes += be(v, n) }
  mutating func raw(_ b: [UInt8]) { bytes += b }
  mutating func segment(_ sel: UInt64, _ base: UInt64, _ limit: UInt64, _ flags: UInt64) {
    u(sel, 4); u(base, 8); u(limit, 4); u(flags, 4)
  }
  mutating func subsection(_ name: String, version: UInt32) {
    raw([0x05, UInt8(name.utf8.count)] + Array(name.utf8)); u(UInt64(version), 4)
  }
}

/// The body matching ``cpuJSON``; rax…r15 are 0x1000+i except r15 = 0xfeedfacecafebeef.
func cpuBody() -> [UInt8] {
  var b = Body()
  for i in 0..<15 { b.u(0x1000 + UInt64(i), 8) }
  b.u(0xfeed_face_cafe_beef, 8)
  b.u(0xffff_ffff_8010_0212, 8)  // eip
  b.u(0x46, 8)
  for _ in 0..<2 { b.u(0x8000_0000_0000_0000, 8); b.u(0x3fff, 2) }
  for i in 0..<6 { b.segment(0x10 + UInt64(i), 0, 0xffff_ffff, 0xcf9300) }
  b.segment(0, 0, 0xffff, 0x8200)
  b.segment(0x28, 0x1000, 0x67, 0x8b00)
  b.segment(0, 0x1002e8, 0x1f, 0)
  b.segment(0, 0, 0x3ff, 0)
  for cr: UInt64 in [0x8000_0011, 0x1234, 0x20_0000, 0x1020] { b.u(cr, 8) }
  b.u(0xffff_ffff, 4)  // a20 mask -1
  b.u(1, 1)
  b.raw([0, 0, 0])
  b.u(0xaa, 8); b.u(0xbb, 8)
  b.subsection("cpu/efer", version: 3)
  b.u(0xd01, 8)
  return b.bytes
}

/// Opens a synthetic file with `devices` after the timer.
func openWithDevices(_ devices: [FixtureDevice]) throws -> MigrationFile {
  var s = FixtureStream(blocks: [FixtureBlock(name: "pc.ram", length: 4096)])
  s.devices = [.timer] + devices
  return try open(s.build())
}

@Suite("device state from the VM description")
struct DeviceStateTests {
  @Test("a cpu section decodes field by field, and gives the registers")
  func cpuSection() throws {
    let file = try openWithDevices([FixtureDevice(name: "cpu", instance: 1, version: 12, json: cpuJSON, body: cpuBody())])
    let states = file.deviceStates()
    #expect(states.map(\.section.name) == ["timer", "cpu"])
    for d in states {
      #expect(d.problem == nil, "\(d.section.name): \(d.problem ?? "")")
      #expect(d.decodedBytes == d.bodySize)
    }
    let cpu = states[1]
    let state = try #require(cpu.state)
    #expect(state.field("env.regs")?.value.elements?.count == 16)
    #expect(state.field("env.a20_mask")?.value.integer == UInt64(bitPattern: -1))
    guard case .bool(true) = state.field("env.halted")?.value else {
      Issue.record("env.halted is not true")
      return
    }
    guard case .bytes([0, 0, 0]) = state.field("unused")?.value else {
      Issue.record("unused_buffer is not 3 raw bytes")
      return
    }
    #expect(state.fields.filter { $0.name == "env.dr" }.map(\.index) == [0, 1])
    let fp = try #require(state.field("env.fpregs")?.value.elements?.first?.structure?.field("tmp")?.value.structure)
    #expect(fp.field("tmp_exp")?.value.integer == 0x3fff)
    #expect(state.subsections.map(\.vmsdName) == ["cpu/efer"])
    #expect(state.subsections.first?.version == 3)
    // Offsets are absolute file offsets.
    #expect(state.fields.first?.offset == cpu.section.bodyOffset)
    #expect(state.field("env.eip")?.offset == cpu.section.bodyOffset + 128)

    let regs = try file.x86Registers().get()
    #expect(regs.count == 1)
    let r = regs[0]
    #expect(r.cpu == 1)
    #expect(r.rax == 0x1000 && r.rcx == 0x1001 && r.rdx == 0x1002 && r.rbx == 0x1003 && r.rsp == 0x1004)
    #expect(r.r14 == 0x100e && r.r15 == 0xfeed_face_cafe_beef)
    #expect(r.rip == 0xffff_ffff_8010_0212 && r.rflags == 0x46)
    #expect(r.cr0 == 0x8000_0011 && r.cr2 == 0x1234 && r.cr3 == 0x20_0000 && r.cr4 == 0x1020)
    #expect(r.efer == 0xd01)
    #expect(r.es == .init(selector: 0x10, base: 0, limit: 0xffff_ffff, attributes: 0xcf9300))
    #expect(r.cs?.selector == 0x11 && r.ss?.selector == 0x12 && r.ds?.selector == 0x13 && r.gs?.selector == 0x15)
    #expect(r.tr == .init(selector: 0x28, base: 0x1000, limit: 0x67, attributes: 0x8b00))
    #expect(r.gdt == .init(base: 0x1002e8, limit: 0x1f))
    #expect(r.idt == .init(base: 0, limit: 0x3ff))
    #expect(r.dr0 == nil)  // env.dr is not an 8-element array here

    // Integers above 2^53 are exact in both JSON documents.
    #expect(r.json().contains("\"r15\" : 18369614221190020847"))
    #expect(r.json().contains("\"rip\" : 18446744071563117074"))
    let text = cpu.json()
    #expect(text.contains("18369614221190020847"))
    let parsed = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    #expect(parsed["decodedBytes"] as? Int == cpuBody().count)
    #expect(cpu.fileName == "cpu.1.json")
  }

  @Test("descriptions that do not add up are kept as hex with the reason")
  func undecodable() throws {
    let json = """
      {"name": "odd", "instance_id": 0, "vmsd_name": "odd", "version": 1, "fields": [\
      {"name": "short", "type": "uint32", "size": 2}, \
      {"name": "mystery", "type": "fancy new type", "size": 3}, \
      {"name": "s", "type": "struct", "struct": {"vmsd_name": "s", "version": 1, "fields": [\
      {"name": "a", "type": "uint32", "size": 4}]}, "size": 6}, \
      {"name": "flag", "type": "bool", "size": 1}, \
      {"name": "cfg", "type": "pci config", "size": 4}, \
      {"name": "irq", "type": "pci irq state", "size": 16}]}
      """
    var b = Body()
    b.u(0xabcd, 2); b.raw([1, 2, 3]); b.raw([9, 8, 7, 6, 5, 4]); b.u(7, 1); b.raw([0x86, 0x80, 0x37, 0x12])
    for v: UInt64 in [0, 1, 0xffff_ffff, 2] { b.u(v, 4) }
    let file = try openWithDevices([FixtureDevice(name: "odd", json: json, body: b.bytes)])
    let d = try #require(file.deviceStates().last)
    #expect(d.problem == nil)
    #expect(d.decodedBytes == UInt64(b.bytes.count))
    let s = try #require(d.state)
    func undecoded(_ name: String) -> [UInt8]? {
      if case .undecoded(let raw, _) = s.field(name)?.value { return raw }
      return nil
    }
    #expect(undecoded("short") == [0xab, 0xcd])
    #expect(undecoded("mystery") == [1, 2, 3])
    #expect(undecoded("s") == [9, 8, 7, 6, 5, 4])
    #expect(undecoded("flag") == [7])
    guard case .bytes([0x86, 0x80, 0x37, 0x12]) = s.field("cfg")?.value else {
      Issue.record("pci config is not raw bytes")
      return
    }
    #expect(s.field("irq")?.value.elements?.map(\.integer) == [0, 1, UInt64(bitPattern: -1), 2])
    let text = d.json()
    #expect(text.contains("\"hex\": \"090807060504\""))
    #expect(text.contains("\"undecoded\": \"mramfs does not decode type fancy new type\""))
    #expect((try? JSONSerialization.jsonObject(with: Data(text.utf8))) != nil)
  }

  @Test("a subsection that is not the one described stops the decoding, with the reason")
  func wrongSubsection() throws {
    let json = """
      {"name": "dev", "instance_id": 0, "vmsd_name": "dev", "version": 1, "fields": [\
      {"name": "a", "type": "uint8", "size": 1}], "subsections": [\
      {"vmsd_name": "dev/sub", "version": 1, "fields": [{"name": "b", "type": "uint8", "size": 1}]}]}
      """
    var b = Body()
    b.u(1, 1); b.subsection("dev/xyz", version: 1); b.u(2, 1)
    let file = try openWithDevices([FixtureDevice(name: "dev", json: json, body: b.bytes)])
    let d = try #require(file.deviceStates().last)
    #expect(d.state == nil)
    #expect(d.problem?.contains("is not \"dev/sub\"") == true, "\(d.problem ?? "")")
  }

  @Test("an array of 2^40 zero-byte elements is refused at once, not walked (found by the fuzzer)")
  func zeroSizeArray() throws {
    let json = """
      {"name": "dev", "instance_id": 0, "vmsd_name": "dev", "version": 1, "fields": [\
      {"name": "a", "type": "uint8", "size": 1}, \
      {"name": "many", "type": "uint8", "size": 0, "array_len": 1099511627776}]}
      """
    var b = Body()
    b.u(1, 1)
    let file = try openWithDevices([FixtureDevice(name: "dev", json: json, body: b.bytes)])
    let d = try #require(file.deviceStates().last)
    #expect(d.state == nil)
    #expect(d.problem?.contains("1099511627776 elements of 0 bytes") == true, "\(d.problem ?? "")")
  }

  @Test("device file names escape / and % and keep name and instance apart")
  func fileNames() {
    #expect(DeviceState.fileName(name: "0000:00:01.3/piix4_pm", instance: 0) == "0000:00:01.3%2Fpiix4_pm.json")
    #expect(DeviceState.fileName(name: "dma", instance: 1) == "dma.1.json")
    #expect(DeviceState.fileName(name: "dma.1", instance: 0) == "dma%2E1.json")
    #expect(DeviceState.fileName(name: "a%b c", instance: 2) == "a%25b%20c.2.json")
  }

  @Test("a file without a VM description has no device state and says why")
  func noDescription() throws {
    var s = FixtureStream(blocks: [FixtureBlock(name: "pc.ram", length: 4096)])
    s.vmDescription = false
    let file = try open(s.build())
    #expect(file.deviceStates().isEmpty)
    guard case .failure(let why) = file.x86Registers() else {
      Issue.record("registers without a VM description")
      return
    }
    #expect(why.reason.contains("VM description"))
    let doc = InfoDocument(file)
    #expect(doc.cpus == nil)
    #expect(doc.cpusUnavailable != nil)
  }
}

// The mount's cpu/ and devices/ views of real QEMU files.

import Foundation
import GuestViews
import MigrationFormat
import SaveFilesystem
import QEMUFixtures
import Testing

#if canImport(Glibc)
  import Glibc
#endif

@Suite("cpu and devices views, mounted", .serialized)
struct StateMountTests {
  @Test("cpu/0/registers.json and devices/*.json are listed and hold the decoded state", arguments: ["pc-256", "q35-5g-mfd"])
  func views(_ name: String) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let file = try MigrationFile(path: fixtures.path(s.file))
    let mount = try QEMUMount(fixtures.path(s.file))
    defer { mount.cleanup() }

    func list(_ path: String) throws -> [String] {
      try MountSupport.listDirectory(path).filter { $0 != "." && $0 != ".." }.sorted()
    }
    let top = try list(mount.mountpoint)
    #expect(top.contains("cpu") && top.contains("devices"))
    #expect(try list(mount.path("cpu")) == ["0"])
    #expect(try list(mount.path("cpu/0")) == ["registers.json"])
    let regs = try file.x86Registers().get()
    let bytes = try MountSupport.readFile(mount.path("cpu/0/registers.json"))
    #expect(bytes == Array(regs[0].json().utf8))
    let decoded = try JSONDecoder().decode(X86Registers.self, from: Data(bytes))
    #expect(decoded.r15 == 0xfeed_face_cafe_beef)
    #expect(decoded.cr3 == 0x200000)
    // info.json carries the same registers.
    let info = try JSONDecoder().decode(InfoDocument.self, from: Data(try MountSupport.readFile(mount.path("info.json"))))
    #expect(info.cpus == regs)

    let states = file.deviceStates()
    let listed = try list(mount.path("devices"))
    #expect(listed == states.map(\.fileName).sorted())
    #expect(listed.contains("cpu.json") && listed.contains("dma.1.json"))
    for d in states {
      let content = try MountSupport.readFile(mount.path("devices/\(d.fileName)"))
      #expect(content == Array(d.json().utf8), "\(d.fileName)")
      let obj = try #require(try JSONSerialization.jsonObject(with: Data(content)) as? [String: Any])
      #expect(obj["name"] as? String == d.section.name)
      #expect((obj["decodedBytes"] as? NSNumber)?.uint64Value == d.bodySize, "\(d.fileName)")
    }
    // The marker found by translate reads back through physmem.
    let marker = try #require(fixtures.manifest.guest.virtualMarkers?["virt_marker"])
    let text = Array(try #require(fixtures.manifest.guest.markerStrings["virt_marker"]).utf8)
    let fd = open(mount.path("physmem"), O_RDONLY)
    try #require(fd >= 0)
    defer { close(fd) }
    var buffer = [UInt8](repeating: 0, count: text.count)
    let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, text.count, off_t(marker.gpa)) }
    #expect(n == text.count)
    #expect(buffer == text)
  }

  @Test("a file without the VM description mounts without cpu/ and devices/")
  func withoutDescription() throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario("pc-256-novmdesc")
    let mount = try QEMUMount(fixtures.path(s.file))
    defer { mount.cleanup() }
    let top = try MountSupport.listDirectory(mount.mountpoint)
    #expect(!top.contains("cpu") && !top.contains("devices"))
    #expect(top.contains("pc.ram") && top.contains("info.json"))
    #expect(MountSupport.openError(mount.path("cpu/0/registers.json"), flags: O_RDONLY) == .ENOENT)
  }
}

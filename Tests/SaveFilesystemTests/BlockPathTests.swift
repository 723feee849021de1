import GuestViews
import MigrationFormat
import SaveFilesystem
import Testing

@Suite("Block names as paths")
struct BlockPathTests {
  func assign(_ names: [[UInt8]]) -> [String] {
    BlockPaths.assign(names.map { BlockName(bytes: $0) }).map { $0.joined(separator: "/") }
  }

  @Test("QEMU's names nest as directories")
  func qemuNames() {
    let names = ["pc.ram", "0000:00:02.0/vga.vram", "/rom@etc/acpi/tables", "pc.bios", "/rom@etc/table-loader"]
    #expect(
      assign(names.map { Array($0.utf8) }) == [
        "pc.ram", "0000:00:02.0/vga.vram", "rom@etc/acpi/tables", "pc.bios", "rom@etc/table-loader",
      ])
  }

  @Test("names that cannot be paths are percent-encoded, reversibly")
  func unsafeNames() {
    let names: [[UInt8]] = [
      Array("a//b".utf8), Array(".".utf8), Array("..".utf8), Array("x/../y".utf8), [0x61, 0x00, 0x62],
      [0x70, 0xff], Array("50%".utf8), Array("/".utf8), Array("trail/".utf8), Array("sp ace".utf8),
    ]
    let paths = assign(names)
    for (n, p) in zip(names, paths) {
      #expect(!p.contains("/"), "\(p)")
      #expect(p != "." && p != ".." && !p.isEmpty)
      #expect(BlockPaths.decode(p) == n, "\(p)")
    }
    #expect(Set(paths).count == paths.count)
  }

  @Test("collisions never share a path")
  func collisions() {
    let names = ["a", "a/b", "/x", "x", "info.json", "cpu/0", "a/b/c"].map { Array($0.utf8) }
    let paths = assign(names)
    #expect(Set(paths).count == paths.count)
    #expect(paths[0] == "a")
    #expect(paths[1] == "a%2Fb")
    #expect(paths[2] == "x")
    #expect(paths[3] == "%78")
    #expect(!paths[4].hasPrefix("info.json"))
    #expect(!paths[5].hasPrefix("cpu/"))
    for (n, p) in zip(names, paths) where p.contains("%") {
      #expect(BlockPaths.decode(p) == n)
    }
    // A file can never also be a directory.
    for p in paths { #expect(!paths.contains { $0.hasPrefix(p + "/") }, "\(p)") }
  }

  @Test("the views' names (physmem, and vmcore, cpu, devices for later) are never a block's path")
  func reservedViews() {
    #expect(BlockPaths.reserved.isSuperset(of: ["info.json", "physmem", "vmcore", "cpu", "devices"]))
    let names = ["physmem", "vmcore", "cpu", "devices/0", "physmem/x"].map { Array($0.utf8) }
    let paths = assign(names)
    #expect(paths == ["%70hysmem", "%76mcore", "%63pu", "devices%2F0", "physmem%2Fx"])
    for (n, p) in zip(names, paths) { #expect(BlockPaths.decode(p) == n) }
  }

  @Test("flat names longer than NAME_MAX are shortened with a hash, and never collide")
  func longNames() {
    // Same 200-byte prefix, different tails; and 255 slashes (765 bytes encoded).
    let a = Array(String(repeating: "../", count: 85).utf8)
    var b = a
    b[b.count - 1] = UInt8(ascii: "x")
    let c = [UInt8](repeating: UInt8(ascii: "/"), count: 255)
    let paths = assign([a, b, c, a])
    #expect(Set(paths).count == 4)
    for p in paths {
      #expect(p.utf8.count <= BlockPaths.maximumNameLength, "\(p)")
      #expect(!p.contains("/"))
    }
    #expect(paths[0].hasPrefix(String(repeating: "..%2F", count: 40)))
    #expect(paths[3].hasSuffix("~2"))
  }
}

import MigrationFormat

// Memory a pc or q35 machine maps besides RAM, as QEMU's dump-guest-memory sees it: the BIOS
// ROM at the top of the first 4 GiB, and a VGA device's RAM at its BAR. A new machine type
// gets its own placement rules here and in X86Layout.swift.

extension PhysicalLayout {
  /// The BIOS and VGA RAM ranges of `file`, where they fit without overlapping `taken`.
  static func deviceMemory(_ file: MigrationFile, pageSize ps: UInt64, avoiding taken: [Range]) -> [Range] {
    var placed = taken
    var out: [Range] = []
    func free(_ gpa: UInt64, _ length: UInt64) -> Bool {
      let (end, overflow) = gpa.addingReportingOverflow(length)
      return !overflow && length > 0 && length % ps == 0 && gpa % ps == 0
        && !placed.contains { $0.gpa < end && gpa < $0.end }
    }
    for (i, b) in file.blocks.enumerated() where b.pageSize == ps && b.bitmap != nil {
      var range: Range? = nil
      if b.name.string == "pc.bios", b.length <= 1 << 32, free((1 << 32) - b.length, b.length) {
        range = Range(gpa: (1 << 32) - b.length, block: i, blockOffset: 0, length: b.length, kind: .bios)
      } else if let s = b.name.string, s.hasSuffix("/vga.vram"),
        let bar = vgaBAR(file, device: String(s.dropLast(".vram".count))), free(bar, b.length)
      {
        range = Range(gpa: bar, block: i, blockOffset: 0, length: b.length, kind: .vgaRAM)
      }
      if let range {
        out.append(range)
        placed.append(range)
      }
    }
    return out
  }

  /// Whether a device section name is a VGA device with the legacy window (`vga`, `cirrus_vga`, `vmware_vga`…).
  static func isVGA(_ name: String) -> Bool {
    let last = name.split(separator: "/").last.map(String.init) ?? name
    return last == "vga" || last.hasSuffix("_vga") || last.hasSuffix("-vga")
  }

  /// The guest-physical address of BAR 0 of the PCI device whose section is `device` (`0000:00:02.0/vga`),
  /// from the `pci config` field of its state; nil when memory decoding is off or the BAR is unset.
  static func vgaBAR(_ file: MigrationFile, device: String) -> UInt64? {
    guard let desc = file.vmDescription, let section = file.devices.first(where: { $0.name == device }) else { return nil }
    let state = DeviceState(section: section, description: desc.devices[section.descriptionIndex], file: file)
    guard let top = state.state else { return nil }
    var config: [UInt8]? = nil
    for f in top.fields {
      if f.type == "pci config", case .bytes(let b) = f.value { config = b }
      if let s = f.value.structure, let c = s.fields.first(where: { $0.type == "pci config" }), case .bytes(let b) = c.value {
        config = b
      }
      if config != nil { break }
    }
    guard let c = config, let command = c.loadLE(0x04, 2), let bar = c.loadLE(0x10, 4) else { return nil }
    guard command & 0x2 != 0, bar & 1 == 0 else { return nil }  // memory decoding on, a memory BAR
    var address = bar & ~0xf
    if bar & 0x6 == 0x4 {  // 64-bit BAR
      guard let high = c.loadLE(0x14, 4) else { return nil }
      address |= high << 32
    }
    guard address != 0, address != 0xffff_fff0 else { return nil }
    return address
  }
}

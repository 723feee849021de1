// What a Linux guest keeps for crash tools, built in code: its VMCOREINFO text, the ELF note
// it keeps the text in (page-aligned, in `vmcoreinfo_note`), and QEMU's `vmcoreinfo` device
// section that records where the guest put it.

import MigrationFormat

/// A VMCOREINFO text as Linux writes it (keys in the kernel's order, trailing newline).
public func vmcoreinfoText(release: String, initUTS: UInt64 = 0xffff_ffff_8200_0100, pageSize: Int = 4096, extra: String = "")
  -> [UInt8]
{
  Array(
    ("OSRELEASE=\(release)\nBUILD-ID=01d2640d3a13145ee314eb05b155f141b7b7058b\nPAGESIZE=\(pageSize)\n"
      + "SYMBOL(init_uts_ns)=\(String(initUTS, radix: 16))\nOFFSET(uts_namespace.name)=0\n"
      + "SYMBOL(swapper_pg_dir)=ffffffff82010000\nNUMBER(phys_base)=-400556032\nKERNELOFFSET=1b800000\n" + extra).utf8)
}

/// `text` as the ELF note Linux keeps in `vmcoreinfo_note`; `descsz` overrides the length field.
public func vmcoreinfoNote(_ text: [UInt8], descsz: UInt32? = nil) -> [UInt8] {
  var w = ByteWriter()
  w.appendUInt32LE(11)
  w.appendUInt32LE(descsz ?? UInt32(text.count))
  w.appendUInt32LE(0)
  w.append(Array("VMCOREINFO\0\0".utf8))
  w.append(text)
  return w.bytes
}

/// A `vmcoreinfo` device section as QEMU 10 describes and writes it (big-endian values).
public func vmcoreinfoDevice(has: Bool = true, format: UInt64 = 1, size: UInt64 = 4132, paddr: UInt64) -> FixtureDevice {
  FixtureDevice(
    name: "vmcoreinfo",
    fields: [
      .init("has_vmcoreinfo", "bool", [has ? 1 : 0]),
      .init("vmcoreinfo.host_format", "uint16", be(0, 2)),
      .init("vmcoreinfo.guest_format", "uint16", be(format, 2)),
      .init("vmcoreinfo.size", "uint32", be(size, 4)),
      .init("vmcoreinfo.paddr", "uint64", be(paddr, 8)),
    ])
}


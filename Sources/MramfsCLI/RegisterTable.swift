import GuestViews
import MigrationFormat
import SaveFilesystem

/// Renders the vCPUs' registers of an ``InfoDocument`` for `mramfs info --registers`,
/// laid out like QEMU's `info registers`.
struct RegisterTable {
  var doc: InfoDocument

  func render() -> String {
    guard let cpus = doc.cpus else {
      return "registers: not available (\(doc.cpusUnavailable ?? "unknown reason"))\n"
    }
    var out = ""
    for c in cpus {
      out += "CPU \(c.cpu)\n"
      let general = c.generalRegisters
      for row in stride(from: 0, to: general.count, by: 4) {
        out += general[row..<min(row + 4, general.count)].map { cell($0.0, $0.1) }.joined(separator: "  ") + "\n"
      }
      out += [("rip", c.rip), ("rflags", c.rflags), ("efer", c.efer)].map { cell($0.0, $0.1) }.joined(separator: "  ") + "\n"
      out += [("cr0", c.cr0), ("cr2", c.cr2), ("cr3", c.cr3), ("cr4", c.cr4)].map { cell($0.0, $0.1) }.joined(separator: "  ")
        + "\n"
      var rows: [[String]] = [["SEG", "SELECTOR", "BASE", "LIMIT", "ATTRIBUTES"]]
      for (name, s) in c.segments {
        guard let s else { continue }
        rows.append([name, hex4(s.selector), hex16(s.base), hex8(s.limit), hex8(s.attributes)])
      }
      for (name, t) in [("gdt", c.gdt), ("idt", c.idt)] {
        guard let t else { continue }
        rows.append([name, "", hex16(t.base), hex8(t.limit), ""])
      }
      out += table(rows)
      out += "\n"
    }
    return out
  }

  private func cell(_ name: String, _ v: UInt64?) -> String {
    name.padding(toLength: 6, withPad: " ", startingAt: 0) + "= " + (v.map(hex16) ?? "(absent)         ")
  }
}

private func pad(_ v: UInt64, _ width: Int) -> String {
  let s = String(v, radix: 16)
  return String(repeating: "0", count: max(0, width - s.count)) + s
}
private func hex16(_ v: UInt64) -> String { pad(v, 16) }
private func hex8(_ v: UInt64) -> String { pad(v, 8) }
private func hex4(_ v: UInt64) -> String { pad(v, 4) }

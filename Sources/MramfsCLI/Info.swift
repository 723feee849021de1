import ArgumentParser
import Foundation
import GuestViews
import MigrationFormat
import SaveFilesystem

extension Mramfs {
  /// `mramfs info`: what is in a migration file.
  struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Show the machine, capabilities and RAM blocks of a QEMU migration file.",
      discussion: """
        Reads the file's headers, block list and bitmaps; never mounts anything and never \
        reads the pages themselves, so it is quick even for huge guests.

        The table shows each RAM block's size, page size, populated pages (pages whose bytes \
        are in the file; the rest are zero) and where its bitmap and pages region start. \
        --json prints the same as a JSON document (schema in the README); a mount's info.json \
        holds the same document.

        The physmem line says where main RAM sits in a mount's physmem file (offset = \
        guest-physical address), or why the file has none. --lowmem gives the RAM below 4 GiB \
        as `mount -o lowmem=` does, so that --json matches that mount's info.json.

        The kernel line shows a Linux guest's release, build ID and KASLR offset from its \
        VMCOREINFO note: read where the vmcoreinfo device says, or searched for in the populated \
        pages of main RAM (the only part of info that reads pages; it says how long it took).

        Classic (non-mapped-ram) streams are listed too; mount them after `mramfs convert`.
        """)

    @Argument(help: "A QEMU migration file (mapped-ram, fixed-ram or classic), bare or behind a libvirt header.")
    var file: String

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    @Flag(help: "Also list the device sections (from the VM description).")
    var devices = false

    @Flag(help: "Also print each vCPU's registers (from its cpu device section); --json always includes them.")
    var registers = false

    @Option(
      help: ArgumentHelp("RAM below 4 GiB for the physmem layout, as mount -o lowmem= (3G, 0xc0000000).", valueName: "SIZE"),
      transform: ArgumentValue.lowmem)
    var lowmem: UInt64?

    @OptionGroup var options: FileOptions

    func run() throws {
      let migration = try openMigrationFile(file, options)
      // The one part of info that reads guest memory: the kernel's VMCOREINFO note (bounded search).
      let layout = try? PhysicalLayout.resolve(migration, lowmem: lowmem).get()
      let kernel = KernelInfo.resolve(migration, layout: layout)
      let doc = InfoDocument(migration, lowmem: lowmem, kernel: kernel)
      if json {
        print(doc.json(), terminator: "")
      } else {
        print(
          InfoTable(doc: doc, file: migration, devices: devices, registers: registers, kernel: kernel).render(),
          terminator: "")
      }
    }
  }
}

/// Renders an ``InfoDocument`` as the human-readable `info` table.
struct InfoTable {
  var doc: InfoDocument
  var file: MigrationFile
  var devices: Bool
  var registers = false
  /// The kernel look-up the document was made with, for the time it took (not in the document).
  var kernel: Result<KernelInfo, KernelInfo.Unavailable>? = nil

  func render() -> String {
    var out = ""
    func line(_ k: String, _ v: String) { out += k.padding(toLength: 16, withPad: " ", startingAt: 0) + v + "\n" }
    line("file", "\(doc.file) (\(formatSize(doc.fileSize)) apparent)")
    if let lv = doc.libvirt {
      line("libvirt", "\(lv.magic) v\(lv.version), format \(lv.format), XML \(lv.xml.utf8.count) bytes")
    }
    line("stream offset", "\(hex(doc.streamOffset)) (\(doc.streamOffset))")
    line("machine", doc.machine ?? "(no configuration record)")
    line("capabilities", doc.capabilities.isEmpty ? "(none recorded)" : doc.capabilities.joined(separator: ", "))
    if let uuid = doc.uuid { line("uuid", uuid) }
    let formatNote: String
    switch file.format {
    case .mappedRAM: formatNote = "mapped-ram (QEMU 9.0 and later)"
    case .fixedRAM: formatNote = "fixed-ram (late patches; mapped-ram layout)"
    case .fixedRAMRFC1: formatNote = "fixed-ram RFC v1 (2022-23 patches)"
    case .classic: formatNote = "classic sequential stream: not mountable as is; run `mramfs convert` first"
    }
    line("format", formatNote)
    line("complete", doc.complete ? "yes" : "NO: the stream stops before its end marker")
    var ram = "\(formatSize(doc.memorySize)) in \(doc.blocks.count) block\(doc.blocks.count == 1 ? "" : "s")"
    if let pages = doc.populatedPages {
      let total = doc.blocks.reduce(UInt64(0)) { $0 + $1.pageCount }
      ram += ", \(pages) of \(total) pages populated (\(percent(pages, total)))"
    }
    line("RAM", ram)
    if let p = doc.physmem {
      let pieces = p.ranges.map {
        "\($0.block) [\(hex($0.blockOffset)), \(hex($0.blockOffset + $0.length))) at \(hex($0.gpa))"
      }
      line("physmem", "\(formatSize(p.size)), lowmem \(hex(p.lowmem)): " + pieces.joined(separator: "; "))
    } else {
      line("physmem", "none (\(doc.physmemUnavailable ?? "unknown reason"))")
    }
    var took = ""
    switch kernel {
    case .success(let k): took = String(format: ", in %.3f s", KernelInfo.seconds(k.duration))
    case .failure(let why): took = String(format: ", searched in %.3f s", KernelInfo.seconds(why.duration))
    case nil: break
    }
    if let k = doc.kernel {
      var parts = [k.release]
      if let b = k.buildID { parts.append("build ID \(b)") }
      if let o = k.kaslrOffset { parts.append("KASLR offset \(hex(o))") }
      let source = k.source == "device" ? "the vmcoreinfo device's address" : "a search of \(k.pagesSearched) populated pages"
      let checked = k.validation == "init_uts_ns" ? "checked against init_uts_ns" : "text checked only"
      line(
        "kernel",
        parts.joined(separator: ", ")
          + "; VMCOREINFO at GPA \(hex(k.gpa)) (\(k.size) bytes) from \(source), \(checked)\(took)")
    } else if let why = doc.kernelUnavailable {
      line("kernel", "none (\(why))\(took)")
    }
    out += "\n"
    var rows: [[String]] = [["BLOCK", "SIZE", "PAGE", "POPULATED", "%", "BITMAP", "PAGES"]]
    for b in doc.blocks {
      rows.append([
        b.name, formatSize(b.length), "\(b.pageSize)",
        b.populatedPages.map { "\($0)/\(b.pageCount)" } ?? "-",
        b.populatedPages.map { percent($0, b.pageCount) } ?? "-",
        b.bitmapOffset.map(hex) ?? "-", b.pagesOffset.map(hex) ?? "-",
      ])
    }
    out += table(rows, rightAligned: [1, 2, 3, 4])
    if devices {
      out += "\n"
      if doc.devices.isEmpty {
        out += "device sections: none listed (\(doc.devicesUnavailable ?? "no VM description"))\n"
      } else {
        var d: [[String]] = [["SECTION", "INSTANCE", "VERSION", "OFFSET", "SIZE"]]
        for s in doc.devices {
          d.append([s.name, "\(s.instance)", "\(s.version)", hex(s.offset), "\(s.size)"])
        }
        out += table(d, rightAligned: [1, 2, 4])
        if let why = doc.devicesUnavailable { out += "(list stops early: \(why))\n" }
      }
    } else if let why = doc.devicesUnavailable {
      out += "\ndevice state: not available (\(why))\n"
    }
    if registers {
      out += "\n" + RegisterTable(doc: doc).render()
    }
    return out
  }
}

/// Formats rows as aligned columns.
func table(_ rows: [[String]], rightAligned: Set<Int> = []) -> String {
  guard let first = rows.first else { return "" }
  var widths = [Int](repeating: 0, count: first.count)
  for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
  var out = ""
  for r in rows {
    var cells: [String] = []
    for (i, c) in r.enumerated() {
      let pad = String(repeating: " ", count: max(0, widths[i] - c.count))
      cells.append(rightAligned.contains(i) ? pad + c : (i == r.count - 1 ? c : c + pad))
    }
    out += cells.joined(separator: "  ") + "\n"
  }
  return out
}

/// `part` as a percentage of `whole`, with one decimal.
func percent(_ part: UInt64, _ whole: UInt64) -> String {
  guard whole > 0 else { return "0%" }
  return String(format: "%.1f%%", Double(part) * 100 / Double(whole))
}

/// A byte count in binary units: `256 MiB`, `4 KiB`, `1.5 GiB`.
func formatSize(_ bytes: UInt64) -> String {
  let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
  var v = Double(bytes)
  var u = 0
  while v >= 1024 && u < units.count - 1 {
    v /= 1024
    u += 1
  }
  if u == 0 { return "\(bytes) B" }
  return v == v.rounded() ? "\(Int(v)) \(units[u])" : String(format: "%.1f", v) + " " + units[u]
}

import ArgumentParser
import GuestViews
import MigrationFormat

extension Mramfs {
  /// `mramfs create`: a mapped-ram file from raw memory dumps.
  struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Write a mapped-ram file whose RAM blocks hold the bytes of raw files.",
      discussion: """
        Each --block NAME=RAWFILE becomes a RAM block of the file's size (rounded up to 4 KiB). \
        Zero pages are not written and their bits stay clear, so the result is sparse. \
        --from-physmem takes a flat guest-physical dump (offset N = address N) and builds pc.ram \
        with the x86 split below/above 4 GiB for --machine pc or q35.

        For QEMU to load the result, the blocks must match the destination VM's RAM blocks \
        (names and sizes, as `info ramblock` shows) and --machine must be its machine type.

        Examples:
          mramfs create -o vm.mapped --machine pc-i440fx-10.0 --block pc.ram=ram.raw
          mramfs create -o vm.mapped --machine pc-q35-10.0 --from-physmem physmem.raw
        """)

    @OptionGroup var out: OutputOptions

    @Option(
      help: ArgumentHelp("Machine type recorded in the file (pc, q35, or a full name such as pc-i440fx-10.0).", valueName: "TYPE"),
      transform: ArgumentValue.machine)
    var machine: String = "pc-i440fx-10.0"

    @Option(help: "Layout to write.")
    var format: OutputFormat = .mappedRAM

    @Option(
      name: .customLong("block"),
      help: ArgumentHelp(
        "A RAM block from a raw file; NAME is QEMU's block name (1 to 255 bytes, no control characters).",
        valueName: "NAME=RAWFILE"),
      transform: BlockSpec.parse)
    var blocks: [BlockSpec] = []

    @Option(help: ArgumentHelp("A flat guest-physical memory dump to turn into pc.ram.", valueName: "DUMP"))
    var fromPhysmem: String?

    @Option(
      help: ArgumentHelp("RAM size for --from-physmem when the dump is shorter than the RAM (e.g. 5G).", valueName: "SIZE"),
      transform: ArgumentValue.ramSize)
    var ram: UInt64?

    func validate() throws {
      guard out.output != nil else { throw ValidationError("give the file to write with -o OUT") }
      if blocks.isEmpty && fromPhysmem == nil { throw ValidationError("give at least one --block NAME=RAWFILE, or --from-physmem DUMP") }
      if ram != nil && fromPhysmem == nil { throw ValidationError("--ram sizes the RAM of --from-physmem; give --from-physmem DUMP too") }
      var names = Set<String>(fromPhysmem == nil ? [] : ["pc.ram"])
      for b in blocks where !names.insert(b.name).inserted {
        throw ValidationError("--block \(quoted(Array(b.name.utf8))): a block of that name is given twice")
      }
    }

    func run() throws {
      let machineType = resolveMachine(machine)
      var plan = StreamPlan(machineType: machineType)
      plan.format = format.streamFormat
      plan.alignment = out.align.bytes
      plan.threads = out.threads
      do {
        if let dump = fromPhysmem {
          let f = try ImageFile(path: dump)
          guard f.size > 0 || ram != nil else {
            throw FormatError(
              .badValue, "input \(quoted(Array(dump.utf8)))", at: 0, "is empty; give a dump, or the RAM size with --ram")
          }
          let ramSize = try ram ?? physmemRAMSize(dumpSize: f.size, machine: machineType)
          let layout = try X86Layout(machineType: machineType, ramSize: ramSize)
          let segs = layout.ranges.map { RawFileSource.Segment(blockOffset: $0.blockOffset, fileOffset: $0.gpa, length: $0.length) }
          plan.blocks.append(BlockPlan(name: BlockName("pc.ram"), length: ramSize, source: RawFileSource(file: f, segments: segs)))
        }
        for spec in blocks {
          let f = try ImageFile(path: spec.file)
          guard f.size > 0 else {
            throw FormatError(.badValue, "input \(quoted(Array(spec.file.utf8)))", at: 0, "is empty; a RAM block needs at least one page")
          }
          let length = (f.size + 4095) / 4096 * 4096
          plan.blocks.append(
            BlockPlan(
              name: BlockName(spec.name), length: length,
              source: RawFileSource(file: f, segments: [.init(blockOffset: 0, fileOffset: 0, length: f.size)])))
        }
      } catch let e as FormatError {
        printError("error: \(e)")
        throw Failure(code: 1)
      }
      _ = try writeStream(plan, to: out.output ?? "", out, what: "create")
    }
  }
}

/// `--block NAME=RAWFILE`, split at the first `=`.
struct BlockSpec: Sendable {
  var name: String
  var file: String

  static func parse(_ text: String) throws(InvalidValue) -> BlockSpec {
    guard let eq = text.firstIndex(of: "=") else {
      throw InvalidValue("expected NAME=RAWFILE, such as pc.ram=ram.raw")
    }
    let name = String(text[..<eq])
    let file = String(text[text.index(after: eq)...])
    let bytes = Array(name.utf8)
    guard !bytes.isEmpty, bytes.count <= 255 else {
      throw InvalidValue("the block name must be 1 to 255 bytes (QEMU's limit), not \(bytes.count)")
    }
    guard !bytes.contains(where: { $0 < 0x20 || $0 == 0x7f }) else {
      throw InvalidValue("the block name holds a control character")
    }
    guard !file.isEmpty else { throw InvalidValue("no RAWFILE after '='; expected NAME=RAWFILE") }
    return BlockSpec(name: name, file: file)
  }
}

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

    @Option(help: ArgumentHelp("Machine type recorded in the file (pc, q35, or a full name such as pc-i440fx-10.0).", valueName: "TYPE"))
    var machine: String = "pc-i440fx-10.0"

    @Option(help: "Layout to write.")
    var format: OutputFormat = .mappedRAM

    @Option(name: .customLong("block"), help: ArgumentHelp("A RAM block from a raw file.", valueName: "NAME=RAWFILE"))
    var blocks: [String] = []

    @Option(help: ArgumentHelp("A flat guest-physical memory dump to turn into pc.ram.", valueName: "DUMP"))
    var fromPhysmem: String?

    @Option(help: ArgumentHelp("RAM size for --from-physmem when the dump is shorter than the RAM (e.g. 5G).", valueName: "SIZE"))
    var ram: String?

    func validate() throws {
      if blocks.isEmpty && fromPhysmem == nil { throw ValidationError("give at least one --block NAME=RAWFILE, or --from-physmem DUMP") }
      for b in blocks where !b.contains("=") { throw ValidationError("--block \(b): expected NAME=RAWFILE") }
      if let r = ram, parseSize(r) == nil { throw ValidationError("--ram \(r): expected a size such as 256M or 5G") }
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
          let ramSize = try ram.flatMap(parseSize) ?? physmemRAMSize(dumpSize: f.size, machine: machineType)
          let layout = try X86Layout(machineType: machineType, ramSize: ramSize)
          let segs = layout.ranges.map { RawFileSource.Segment(blockOffset: $0.blockOffset, fileOffset: $0.gpa, length: $0.length) }
          plan.blocks.append(BlockPlan(name: BlockName("pc.ram"), length: ramSize, source: RawFileSource(file: f, segments: segs)))
        }
        for spec in blocks {
          let parts = spec.split(separator: "=", maxSplits: 1).map(String.init)
          let f = try ImageFile(path: parts[1])
          let length = (f.size + 4095) / 4096 * 4096
          plan.blocks.append(
            BlockPlan(
              name: BlockName(parts[0]), length: length,
              source: RawFileSource(file: f, segments: [.init(blockOffset: 0, fileOffset: 0, length: f.size)])))
        }
      } catch let e as FormatError {
        printError("error: \(e)")
        throw Failure(code: 1)
      }
      _ = try writeStream(plan, out, what: "create")
    }
  }
}

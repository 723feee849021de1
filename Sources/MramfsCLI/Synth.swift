import ArgumentParser
import MigrationFormat

extension Mramfs {
  /// `mramfs synth`: a synthetic guest.
  struct Synth: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Write a synthetic guest of any size, for tests and benchmarks.",
      discussion: """
        Each populated page carries its block name and offset, so a page served from the wrong \
        place is easy to spot. The file is sparse: a 1 TiB guest at low density takes little disk.

        --dirty-passes N models a running guest that re-dirties a quarter of its pages on each \
        pass: a classic stream grows with every pass, a mapped-ram file does not. Both sizes \
        are printed.

        Examples:
          mramfs synth -o big.mapped --ram 1T --density 0.0001
          mramfs synth -o busy.classic --ram 1G --format classic --dirty-passes 3
        """)

    @OptionGroup var out: OutputOptions

    @Option(
      help: ArgumentHelp("Size of pc.ram, such as 256M, 5G or 1T (whole 4 KiB pages, at most 64T).", valueName: "SIZE"),
      transform: ArgumentValue.ramSize)
    var ram: UInt64

    @Option(help: "Machine type recorded in the file.", transform: ArgumentValue.machine)
    var machine: String = "pc-i440fx-10.0"

    @Option(
      help: ArgumentHelp("Fraction of pages that hold data: 0 to 1 with at most 6 decimals (0.0001), or a percentage (5%).", valueName: "P"),
      transform: ArgumentValue.fraction)
    var density = Fraction(ppm: 50_000)

    @Option(
      help: "Passes of re-dirtied pages, as a running guest's save would hold (0 to 100).",
      transform: { (text: String) throws(InvalidValue) -> Int in try ArgumentValue.integer(text, in: 0...100, "a number of passes") })
    var dirtyPasses: Int = 0

    @Option(help: "Layout to write.")
    var format: OutputFormat = .mappedRAM

    @Option(
      help: "Seed for which pages are populated (a 64-bit number).",
      transform: { (text: String) throws(InvalidValue) -> UInt64 in try ArgumentValue.integer(text, in: 0...UInt64.max, "a seed") })
    var seed: UInt64 = 0x6d72_616d_6673

    func validate() throws {
      guard out.output != nil else { throw ValidationError("give the file to write with -o OUT") }
    }

    func run() throws {
      let size = ram
      let src = SyntheticSource(name: "pc.ram", pages: size / 4096, densityPPM: density.ppm, seed: seed)
      var plan = StreamPlan(machineType: resolveMachine(machine))
      plan.format = format.streamFormat
      plan.alignment = out.align.bytes
      plan.threads = out.threads
      var block = BlockPlan(name: BlockName("pc.ram"), length: size, source: src)
      let passes = dirtyPasses
      let seed = self.seed
      block.classicRepeats = { p in
        var n = 1
        for k in 0..<passes where SyntheticSource.mix(p &* 31 &+ UInt64(k) ^ seed) % 4 == 0 { n += 1 }
        return n
      }
      plan.blocks = [block]
      let summary = try writeStream(plan, to: out.output ?? "", out, what: "synth")
      if !out.json {
        // The other layout's size, from the same page counts: a mapped-ram file holds each page once at
        // its fixed place; a classic stream holds one record (8 + name + 4096 bytes) per page per pass.
        let populated = summary.populatedPages
        if format == .classic {
          print("the same guest as mapped-ram: about \(formatSize(size + (1 << 20) + size / 4096 / 8)) apparent, \(formatSize(populated * 4096)) of data, whatever the passes")
        } else {
          var sends: UInt64 = 0
          if passes > 0 || populated > 0 {
            var p = src.nextCandidate(from: 0)
            while let q = p {
              sends += UInt64(block.classicRepeats(q))
              p = src.nextCandidate(from: q + 1)
            }
          }
          print("the same guest as a classic stream with \(passes) dirty pass\(passes == 1 ? "" : "es"): about \(formatSize(sends * (8 + 4096)))")
        }
      }
    }
  }
}

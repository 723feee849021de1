import ArgumentParser
import MigrationFormat

extension Mramfs {
  /// `mramfs convert`: classic ↔ mapped-ram.
  struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Convert a classic QEMU save into a mapped-ram file, or back.",
      discussion: """
        classic -> mapped-ram replays every RAM record (the last write of a page wins; ZERO \
        records and zero pages leave the bit clear), copies every device section and command \
        unchanged, adds mapped-ram to the configuration, and keeps a libvirt header (marked \
        sparse). The result is bounded by the guest's RAM however many passes the classic \
        stream holds, mounts with `mramfs mount`, and QEMU 9.0+ restores it with the \
        mapped-ram capability on.

        mapped-ram -> classic (--to classic) writes a stream that QEMU older than 9.0, or one \
        without mapped-ram, can load.

        XBZRLE, compressed or RDMA records cannot be carried and are refused.

        The output is the second argument, as `qemu-img convert` takes it; `-o OUT` says the \
        same (give one of the two).

        Examples:
          mramfs convert vm.classic vm.mapped
          mramfs convert vm.mapped vm.classic --to classic
        """)

    @Argument(help: "The input migration file.")
    var input: String

    @Argument(help: ArgumentHelp("The file to write (or give it with -o OUT).", valueName: "OUT"))
    var outputArgument: String?

    @Option(name: .customLong("to"), help: "The layout to write.")
    var to: OutputFormat = .mappedRAM

    @OptionGroup var out: OutputOptions

    @Flag(help: "Open an interrupted input anyway (not recommended: the result would be partial).")
    var forceInput = false

    func validate() throws {
      switch (outputArgument, out.output) {
      case (nil, nil): throw ValidationError("give the file to write: mramfs convert IN OUT")
      case (.some, .some): throw ValidationError("the output is given twice (OUT and -o OUT); give one")
      default: break
      }
    }

    /// OUT, from the argument or `-o`.
    var outputPath: String { outputArgument ?? out.output ?? "" }

    func run() throws {
      var opts = OpenOptions()
      opts.force = forceInput
      let file: MigrationFile
      do {
        file = try MigrationFile(path: input, options: opts)
      } catch {
        printError("error: \(error)")
        throw Failure(code: 1)
      }
      if (to == .classic) == (file.format == .classic) {
        printError("error: \(input) is already \(file.format.rawValue); nothing to convert")
        throw Failure(code: 1)
      }
      let plan: StreamPlan
      do {
        plan = try Converter.plan(file, to: to.streamFormat, alignment: out.align.bytes, threads: out.threads)
      } catch {
        printError("error: \(error)")
        throw Failure(code: 1)
      }
      _ = try writeStream(plan, to: outputPath, out, what: "convert")
    }
  }
}

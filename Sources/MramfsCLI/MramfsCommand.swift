import ArgumentParser
import Foundation
import MigrationFormat

#if canImport(Glibc)
  import Glibc
#endif

/// The `mramfs` command.
struct Mramfs: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "mramfs",
    abstract: "Open a saved QEMU virtual machine's memory as a folder of ordinary files.",
    discussion: """
      QEMU 9.0 and later can save a VM with the mapped-ram capability (libvirt's "sparse" \
      format): each RAM block gets a bitmap of written pages and a region where page i \
      always sits at the same offset. mramfs reads such files directly.

      Examples:
        mramfs info vm.sav                     what is in the file
        mramfs info --json vm.sav | jq .blocks
        mramfs mount vm.sav /mnt/vm            one sparse file per RAM block
        strings /mnt/vm/pc.ram | grep -i password
        mramfs unmount /mnt/vm
        mramfs diff before.sav after.sav        which pages changed between two saves

      `mramfs FILE DIR -o OPTIONS` (no subcommand) mounts too, so that \
      `mount -t fuse.mramfs FILE DIR` and fstab lines work through mount.fuse3.

      Exit status: 0 on success, 1 when the file is damaged or cannot be read, \
      2 for a usage error; `diff` exits as cmp does: 0 identical, 1 different, 2 trouble.
      """,
    version: mramfsVersion,
    subcommands: [
      Mount.self, Info.self, Diff.self, Translate.self, Unmount.self, Create.self, Convert.self, Synth.self,
    ],
    defaultSubcommand: Mount.self
  )
}

/// The version printed by `--version`.
let mramfsVersion = "0.1.0"

/// Options every command that opens a migration file shares.
struct FileOptions: ParsableArguments {
  @Flag(
    help: ArgumentHelp(
      "Open a stream that stops before its end marker (an interrupted save), with a warning.",
      discussion: "Without it such files are refused, since their bitmaps are usually still empty."))
  var force = false

  @Option(
    name: .customLong("offset"),
    help: ArgumentHelp(
      "Byte offset where the QEMU stream starts, for files behind a prefix mramfs does not know.",
      valueName: "BYTES"),
    transform: ArgumentValue.size)
  var streamOffset: UInt64?

  @Option(
    help: ArgumentHelp(
      "Word layout of the page bitmaps: le64 (x86-64, aarch64; the default) or be64 (s390x, ppc64).",
      valueName: "LAYOUT"))
  var bitmapLayout: BitmapLayout = .littleEndian64

  @Flag(help: "Refuse to open FILE if it is a symbolic link.")
  var nofollow = false

  var openOptions: OpenOptions {
    var o = OpenOptions()
    o.force = force
    o.streamOffset = streamOffset
    o.bitmapLayout = bitmapLayout
    o.noFollow = nofollow
    return o
  }
}

extension BitmapLayout: ExpressibleByArgument {}

/// An error already reported to the user; the command only needs to exit with `code`.
struct Failure: Error {
  var code: Int32
}

/// Prints `message` to standard error as one line, prefixed with `mramfs: `.
///
/// Control characters (a newline in a file name or an argument, an escape sequence) are
/// shown as `\n`, `\u{1b}`…, so a message is always exactly one line and never drives the terminal.
func printError(_ message: String) {
  writeStderr("mramfs: \(oneLine(message))\n")
}

/// `text` with every control character escaped, so it prints as one line.
func oneLine(_ text: String) -> String {
  var out = ""
  for u in text.unicodeScalars {
    switch u {
    case "\n": out += "\\n"
    case "\r": out += "\\r"
    case "\t": out += "\\t"
    default:
      if u.value < 0x20 || u.value == 0x7f || (u.value >= 0x80 && u.value < 0xa0) {
        out += "\\u{\(String(u.value, radix: 16))}"
      } else {
        out.unicodeScalars.append(u)
      }
    }
  }
  return out
}

/// Writes to standard error without touching the global `stderr` stream.
func writeStderr(_ s: String) {
  var bytes = Array(s.utf8)
  bytes.withUnsafeMutableBytes { raw in
    var off = 0
    while off < raw.count {
      let n = write(2, raw.baseAddress! + off, raw.count - off)
      if n <= 0 { break }
      off += n
    }
  }
}

/// Opens a migration file for a command, reporting a damaged file in one line.
func openMigrationFile(_ path: String, _ options: FileOptions) throws -> MigrationFile {
  do {
    let file = try MigrationFile(path: path, options: options.openOptions)
    for w in file.warnings { printError("warning: \(w)") }
    return file
  } catch {
    printError("error: \(error)")
    throw Failure(code: 1)
  }
}

/// Parses the command line, runs the command, and exits with 0, 1 (bad input) or 2 (bad usage).
///
/// Every error is one line on standard error: a usage error names the option or argument, the
/// value and what is accepted, and points at the subcommand's `--help`.
func runMramfs() {
  var args = Array(CommandLine.arguments.dropFirst())
  args = MountHelperArguments.normalise(args)
  do {
    var command = try Mramfs.parseAsRoot(args)
    try command.run()
    exit(0)
  } catch let failure as Failure {
    exit(failure.code)
  } catch {
    let code = Mramfs.exitCode(for: error)
    if code == .success {
      Mramfs.exit(withError: error)
    }
    if let e = error as? FormatError {
      printError("error: \(e)")
      exit(1)
    }
    let message = Mramfs.message(for: error).trimmingCharacters(in: .whitespacesAndNewlines)
    let sub = args.first.flatMap { first in
      Mramfs.configuration.subcommands.first { $0._commandName == first }
    }?._commandName
    printError("error: \(message) (see 'mramfs \(sub.map { "\($0) " } ?? "")--help')")
    exit(code == .failure ? 1 : 2)
  }
}
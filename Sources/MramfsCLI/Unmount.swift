import ArgumentParser
import SaveFilesystem

extension Mramfs {
  /// `mramfs unmount`: undo a mount, including one whose daemon died.
  struct Unmount: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Unmount an mramfs mount (also clears a stale mount whose daemon was killed).",
      discussion: "Same as `fusermount3 -u DIR`; a stale mount (\"Transport endpoint is not connected\") is detached lazily.")

    @Argument(help: "The mount point.")
    var mountpoint: String

    @Flag(name: .shortAndLong, help: "Detach even while files are open (lazy unmount).")
    var lazy = false

    func run() throws {
      do {
        try Mounter.unmount(mountpoint, lazy: lazy)
      } catch {
        printError("error: \(error)")
        throw Failure(code: error.exitCode)
      }
    }
  }
}

/// Argument fix-ups for the ways mount(8) calls mramfs.
enum MountHelperArguments {
  /// mount.fuse3 runs `mramfs SOURCE MOUNTPOINT -o OPTS`, which the default subcommand takes as is.
  static func normalise(_ args: [String]) -> [String] { args }
}

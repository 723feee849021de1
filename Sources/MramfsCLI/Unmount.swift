import ArgumentParser
import Foundation
import SystemPackage

#if canImport(Glibc)
  import Glibc
#endif

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
      let stale = isStaleMount(mountpoint)
      var args = ["-u"]
      if lazy || stale { args.append("-z") }
      args.append(mountpoint)
      let p = Process()
      p.executableURL = URL(fileURLWithPath: "/bin/fusermount3")
      if !FileManager.default.fileExists(atPath: "/bin/fusermount3") {
        p.executableURL = URL(fileURLWithPath: "/usr/bin/fusermount3")
      }
      p.arguments = args
      do {
        try p.run()
      } catch {
        printError("error: cannot run fusermount3 (install the fuse3 package): \(error)")
        throw Failure(code: 1)
      }
      p.waitUntilExit()
      if p.terminationStatus != 0 {
        printError("error: fusermount3 could not unmount \(mountpoint); if files are still open, try `mramfs unmount --lazy \(mountpoint)`")
        throw Failure(code: 1)
      }
    }
  }
}

/// Argument fix-ups for the ways mount(8) calls mramfs.
enum MountHelperArguments {
  /// mount.fuse3 runs `mramfs SOURCE MOUNTPOINT -o OPTS`, which the default subcommand takes as is.
  static func normalise(_ args: [String]) -> [String] { args }
}

/// Whether `path` is a FUSE mount whose daemon is gone ("Transport endpoint is not connected").
///
/// `statfs` always asks the daemon; `stat` may be answered from the kernel's attribute cache.
func isStaleMount(_ path: String) -> Bool {
  var sv = statvfs()
  return statvfs(path, &sv) != 0 && errno == ENOTCONN
}

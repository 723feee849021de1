import ArgumentParser
import MigrationFormat
import SaveFilesystem
import SystemPackage

#if canImport(Glibc)
  import Glibc
#endif

extension Mramfs {
  /// `mramfs mount`: serve a migration file's RAM blocks as files.
  struct Mount: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Mount a mapped-ram migration file: one read-only sparse file per RAM block.",
      discussion: """
        Each RAM block becomes a file whose size is the block's length; pages the file does \
        not hold read as zeros, and SEEK_DATA/SEEK_HOLE follow the bitmap, so `cp --sparse`, \
        `grep` and `tar --sparse` skip the holes. Block names with '/' become directories \
        (0000:00:02.0/vga.vram, rom@etc/acpi/tables). info.json at the top is `mramfs info --json`.

        physmem at the top is the guest's physical memory as one sparse file: offset N is \
        guest-physical address N, holding what the guest's CPU reads there, as QEMU's \
        dump-guest-memory does. Main RAM (pc.ram, or the NUMA node blocks ram-node0, \
        ram-node1, ... in node order) is placed as QEMU's pc and q35 machines do: the first \
        lowmem bytes at 0, the rest from 4 GiB, less the VGA window [0xa0000, 0xc0000) when \
        there is a VGA device; the BIOS sits just below 4 GiB and VGA RAM at its BAR. \
        Everything else (the PCI hole, MMIO, option ROMs) reads as zeros. vmcore at the top is \
        the same memory as an ELF core file for gdb, crash and Volatility. Both are absent for \
        other machines; `mramfs info` says why.

        The command returns once the mount is ready and keeps serving in the background; \
        unmount with `mramfs unmount DIR` or `fusermount3 -u DIR`. With -f it stays in the \
        foreground, and Ctrl-C unmounts.

        The file is opened once, when mounting. Renaming another file over it, or deleting \
        it, changes nothing for the mount: it keeps serving the file it opened (mount again \
        to see the new one). If that file is truncated, the pages it no longer holds read as \
        EIO, and the first such error is logged.

        Mount options (-o, comma-separated):
          uid=N,gid=N          owner of the files (default: the image's owner)
          allow_other          let other users in (non-root: user_allow_other
                               in /etc/fuse.conf)
          default_permissions  let the kernel check the mode bits
          direct_io            bypass the page cache: fastest for one pass
                               (cp, dd), slower for re-reads and small reads
          read=pread|splice    how pages reach the kernel (default: pread)
          threads=N            worker threads (default: 8)
          lowmem=SIZE          RAM below 4 GiB in physmem (3G, 0xc0000000), for a
                               guest started with -machine max-ram-below-4g=SIZE
                               (default: the machine type's rule)
          base=FILE            a delta mount: serve only the pages that changed
                               since the save FILE (see mramfs diff); the rest
                               is holes; info.json names the base
          base-mismatch=ok     with base=, mount the blocks that match the base's
                               (name and size) instead of refusing
          nofollow             refuse an image path that is a symlink
          force                open an interrupted save (as --force)
          ro, rw, dev, suid, exec, atime, _netdev, nofail, defaults, x-*:
                               accepted from mount(8) and fstab, no effect

        In /etc/fstab (mount.fuse3 runs `mramfs FILE DIR -o OPTIONS`):
          /srv/vm.save  /mnt/vm  fuse.mramfs  ro,allow_other,nofail  0 0
        """)

    @Argument(help: "A mapped-ram (or fixed-ram) migration file, bare or behind a libvirt header.")
    var file: String

    @Argument(help: "An existing directory to mount on.")
    var mountpoint: String

    @Flag(name: .shortAndLong, help: "Stay in the foreground; Ctrl-C unmounts.")
    var foreground = false

    @Flag(name: .short, help: "Debug: log every FUSE request (implies -f).")
    var debug = false

    @Option(name: .short, parsing: .singleValue, help: ArgumentHelp("Mount options, see above.", valueName: "OPTIONS"))
    var o: [String] = []

    @OptionGroup var options: FileOptions

    /// Internal: the pipe on which a daemon started by `mount` reports readiness (always 3).
    @Option(
      name: .customLong("ready-fd"), help: .hidden,
      transform: { (text: String) throws(InvalidValue) -> Int32 in try ArgumentValue.integer(text, in: 0...Int32.max, "a descriptor") })
    var readyFD: Int32?

    func validate() throws {
      _ = try MountOptions(o)
      if let readyFD {
        var st = stat()
        guard readyFD == Mounter.readyDescriptor, fstat(readyFD, &st) == 0, (st.st_mode & S_IFMT) == S_IFIFO else {
          throw ValidationError("--ready-fd is for the daemon `mramfs mount` starts; leave it out")
        }
      }
      let shown = quoted(Array(mountpoint.utf8))
      guard !mountpoint.isEmpty else { throw ValidationError("the mount point is empty; give an existing directory") }
      if Mounter.isStale(mountpoint) {
        throw ValidationError(
          "\(shown) is a stale mount (its daemon is gone); run `mramfs unmount \(mountpoint)` first")
      }
      var st = stat()
      if stat(mountpoint, &st) != 0 {
        throw ValidationError("mount point \(shown): \(Errno(rawValue: errno))")
      }
      if (st.st_mode & S_IFMT) != S_IFDIR {
        throw ValidationError("mount point \(shown) is not a directory")
      }
      if let real = realpath(mountpoint, nil) {
        defer { free(real) }
        if String(cString: real) == "/" { throw ValidationError("mramfs does not mount over the root directory") }
      }
    }

    func run() throws {
      if readyFD == Mounter.readyDescriptor { Mounter.closeInheritedDescriptors() }
      let mountOptions = try MountOptions(o)
      do {
        // The daemon opens and checks the file itself, printing any error on our standard
        // error before it reports ready, and its exit status becomes ours: opening it here
        // too would parse the file (and read every bitmap) twice.
        if !(foreground || debug || readyFD != nil) {
          return try Mounter.startDaemon(arguments: daemonArguments())
        }
        try Mounter.serve(request(mountOptions), readyDescriptor: readyFD) { printError("warning: \($0)") }
      } catch {
        if !error.alreadyReported { printError("error: \(error)") }
        throw Failure(code: error.exitCode)
      }
    }

    /// This command again, to serve in the foreground and report on the ready descriptor.
    func daemonArguments() -> [String] {
      var args = ["mramfs", "mount", file, mountpoint, "--ready-fd", "\(Mounter.readyDescriptor)"]
      for opt in o { args += ["-o", opt] }
      if options.force { args.append("--force") }
      if options.nofollow { args.append("--nofollow") }
      if let off = options.streamOffset { args += ["--offset", "\(off)"] }
      args += ["--bitmap-layout", options.bitmapLayout.rawValue]
      return args
    }

    /// What to mount, from the arguments and the -o options.
    func request(_ mountOptions: MountOptions) -> MountRequest {
      var request = MountRequest(image: file, mountpoint: mountpoint)
      request.openOptions = options.openOptions
      if mountOptions.force { request.openOptions.force = true }
      if mountOptions.nofollow { request.openOptions.noFollow = true }
      request.configuration.uid = mountOptions.uid
      request.configuration.gid = mountOptions.gid
      request.configuration.directIO = mountOptions.directIO
      request.configuration.readStrategy = mountOptions.readStrategy
      request.configuration.lowmem = mountOptions.lowmem
      if mountOptions.readStrategy == .splice {
        // A spliced 1 MiB reply needs a pipe larger than fs.pipe-max-size allows without
        // CAP_SYS_RESOURCE; 252 pages keep every reply spliced (see the README's figures).
        request.configuration.maxRead = 1_032_192
      }
      request.fuseOptions = mountOptions.fuseOptions
      request.threads = mountOptions.threads
      request.debug = debug
      request.base = mountOptions.base
      request.baseMismatchOK = mountOptions.baseMismatchOK
      return request
    }
  }
}

/// Options given with `-o`, split into mramfs's own and libfuse's.
struct MountOptions {
  var uid: UInt32?
  var gid: UInt32?
  var directIO = false
  var readStrategy = MountConfiguration.ReadStrategy.pread
  var threads = 8
  var nofollow = false
  var force = false
  /// `lowmem=SIZE`: main RAM below 4 GiB in physmem.
  var lowmem: UInt64?
  /// Options passed to libfuse unchanged.
  var fuseOptions: [String] = []
  /// `base=FILE`: a delta mount against FILE.
  var base: String?
  /// `base-mismatch=ok`: with a base, mount the matching blocks only.
  var baseMismatchOK = false

  /// Options mount(8) and fstab add that mean nothing to a read-only FUSE mount.
  static let ignored: Set<String> = [
    "ro", "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime", "strictatime",
    "nodiratime", "auto", "noauto", "user", "users", "nouser", "_netdev", "nofail", "defaults", "async", "sync",
    "loop",
  ]

  /// Options that are flags: they take no value.
  static let flags: Set<String> = [
    "direct_io", "nofollow", "force", "allow_other", "allow_root", "default_permissions", "auto_unmount",
  ]

  init(_ raw: [String]) throws {
    for group in raw {
      for part in group.split(separator: ",", omittingEmptySubsequences: true).map(String.init) {
        let key: String
        let value: String?
        if let eq = part.firstIndex(of: "=") {
          key = String(part[..<eq])
          value = String(part[part.index(after: eq)...])
        } else {
          key = part
          value = nil
        }
        guard !key.isEmpty else {
          throw ValidationError("-o \(quoted(Array(part.utf8))): an option needs a name before '='")
        }
        if MountOptions.flags.contains(key), value != nil {
          throw ValidationError("-o \(quoted(Array(part.utf8))): \(key) takes no value")
        }
        try apply(key, value, part)
      }
    }
    if baseMismatchOK && base == nil {
      throw ValidationError("-o base-mismatch=ok applies to a delta mount: give base=FILE too")
    }
  }

  /// The value of `key=VALUE`, or a usage error saying it is missing.
  private func required(_ key: String, _ value: String?, _ forms: String) throws -> String {
    guard let value, !value.isEmpty else { throw ValidationError("-o \(key) needs a value: \(key)=\(forms)") }
    return value
  }

  private mutating func apply(_ key: String, _ value: String?, _ part: String) throws {
    func invalid(_ why: String) -> ValidationError {
      ValidationError("-o \(quoted(Array(part.utf8))): \(why)")
    }
    switch key {
    case "uid", "gid":
      let v = try required(key, value, "N")
      guard let n = ArgumentValue.parseDecimal(v), let id = UInt32(exactly: n), id != UInt32.max else {
        throw invalid("expected a user or group ID from 0 to 4294967294")
      }
      if key == "uid" { uid = id } else { gid = id }
    case "direct_io": directIO = true
    case "read":
      let v = try required(key, value, "pread|splice")
      guard let strategy = MountConfiguration.ReadStrategy(rawValue: v) else { throw invalid("expected pread or splice") }
      readStrategy = strategy
    case "threads":
      let v = try required(key, value, "N")
      guard let n = ArgumentValue.parseDecimal(v), n >= 1, n <= 256 else { throw invalid("expected a number from 1 to 256") }
      threads = Int(n)
    case "nofollow": nofollow = true
    case "force": force = true
    case "lowmem":
      let v = try required(key, value, "SIZE")
      do {
        lowmem = try ArgumentValue.lowmem(v)
      } catch {
        throw invalid(error.description)
      }
    case "base":
      base = try required(key, value, "FILE")
    case "base-mismatch":
      guard try required(key, value, "ok") == "ok" else { throw invalid("expected ok") }
      baseMismatchOK = true
    case "allow_other", "allow_root", "default_permissions", "auto_unmount":
      fuseOptions.append(key)
    case "fsname", "subtype", "max_read":
      throw ValidationError("-o \(key) is set by mramfs itself")
    default:
      if MountOptions.ignored.contains(key) && value == nil { return }
      if key.hasPrefix("x-") || key == "comment" { return }
      throw ValidationError(
        "unknown mount option \(quoted(Array(part.utf8))); see `mramfs mount --help` for the options mramfs takes")
    }
  }
}

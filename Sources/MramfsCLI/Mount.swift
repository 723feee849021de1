import ArgumentParser
import FUSE
import Foundation
import Logging
import MappedRAM
import MramFS
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
        guest-physical address N. Main RAM (pc.ram, or the NUMA node blocks ram-node0, \
        ram-node1, ... in node order) is placed as QEMU's pc and q35 machines do: the first \
        lowmem bytes at 0, the rest from 4 GiB; everything else (the PCI hole, the BIOS, device \
        memory) reads as zeros. It is absent for other machines; `mramfs info` says why.

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

    @Option(name: .customLong("ready-fd"), help: .hidden)
    var readyFD: Int32?

    func validate() throws {
      _ = try MountOptions(o)
      if isStaleMount(mountpoint) {
        throw ValidationError(
          "\(mountpoint) is a stale mount (its daemon is gone); run `mramfs unmount \(mountpoint)` first")
      }
      var st = stat()
      if stat(mountpoint, &st) != 0 {
        throw ValidationError("mount point \(mountpoint): \(Errno(rawValue: errno))")
      }
      if (st.st_mode & S_IFMT) != S_IFDIR {
        throw ValidationError("mount point \(mountpoint) is not a directory")
      }
    }

    func run() throws {
      // The daemon keeps only its standard streams and the ready pipe: descriptors
      // the caller leaked to us (pipes of a test harness, a shell's) would otherwise
      // stay open for the life of the mount and keep their readers waiting.
      if readyFD == daemonReadyFD { closeDescriptors(from: daemonReadyFD + 1) }
      let mountOptions = try MountOptions(o)
      // The daemon opens and checks the file itself, printing any error on our standard
      // error before it reports ready, and its exit status becomes ours: opening it here
      // too would parse the file (and read every bitmap) twice.
      if !(foreground || debug || readyFD != nil) { return try daemonize() }
      var fileOptions = options
      if mountOptions.force { fileOptions.force = true }
      if mountOptions.nofollow { fileOptions.nofollow = true }
      // O_NOFOLLOW alone fails with ELOOP, "Too many levels of symbolic links"; say what happened.
      // (The check is for the message only: the open itself still refuses a link.)
      if fileOptions.nofollow, isSymbolicLink(file) {
        printError("error: \(file) is a symbolic link, and nofollow refuses to follow it; give the link's target instead")
        throw Failure(code: 1)
      }
      // A damaged file is refused here, before anything is mounted, with the same message as `info`.
      let migration = try openMigrationFile(file, fileOptions)
      guard migration.format.isPositional else {
        printError(
          "error: \(file) is a classic (sequential) stream; its pages are not at fixed offsets. "
            + "Convert it first: mramfs convert \(file) OUT.mapped, then mount OUT.mapped")
        throw Failure(code: 1)
      }
      try serve(migration, mountOptions)
    }

    /// Starts this program again in the foreground, detached, and waits until it reports the mount ready.
    func daemonize() throws {
      var fds: [Int32] = [0, 0]
      guard pipe(&fds) == 0 else {
        printError("error: pipe: \(Errno(rawValue: errno))")
        throw Failure(code: 1)
      }
      let (readEnd, writeEnd) = (fds[0], fds[1])
      var args = ["mramfs", "mount", file, mountpoint, "--ready-fd", "\(daemonReadyFD)"]
      for opt in o { args += ["-o", opt] }
      if options.force { args.append("--force") }
      if options.nofollow { args.append("--nofollow") }
      if let off = options.streamOffset { args += ["--offset", "\(off)"] }
      args += ["--bitmap-layout", options.bitmapLayout.rawValue]
      let pid = try spawnSelf(args, readyPipe: writeEnd)
      close(writeEnd)
      var line = [UInt8](repeating: 0, count: 64)
      var got = 0
      while got < line.count {
        let n = line.withUnsafeMutableBytes { read(readEnd, $0.baseAddress! + got, $0.count - got) }
        if n > 0 { got += n } else if n == 0 || errno != EINTR { break }
        if line[0..<got].contains(UInt8(ascii: "\n")) { break }
      }
      close(readEnd)
      if String(decoding: line[0..<got], as: UTF8.self).hasPrefix("ready") {
        return
      }
      var status: Int32 = 0
      while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
      let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 1
      throw Failure(code: code == 0 ? 1 : code)
    }

    /// Mounts and serves until unmounted or signalled.
    func serve(_ migration: MigrationFile, _ mountOptions: MountOptions) throws {
      var logger = Logger(label: "mramfs")
      logger.logLevel = debug ? .debug : .info
      var config = MountConfiguration()
      config.uid = mountOptions.uid
      config.gid = mountOptions.gid
      config.directIO = mountOptions.directIO
      config.readStrategy = mountOptions.readStrategy
      config.lowmem = mountOptions.lowmem
      if config.readStrategy == .splice {
        // A spliced 1 MiB reply needs a pipe larger than fs.pipe-max-size allows without
        // CAP_SYS_RESOURCE; 252 pages keep every reply spliced (see the README's figures).
        config.maxRead = 1_032_192
      }
      let fs = MramFileSystem(file: migration, configuration: config, logger: logger)
      var fuseOptions = ["ro", "fsname=\(fsname(file))", "subtype=mramfs", "max_read=\(config.maxRead)"]
      fuseOptions += mountOptions.fuseOptions
      // Resolved now: once mounted, a stat of the mount point would wait on our own workers.
      let realMountpoint = URL(fileURLWithPath: mountpoint).resolvingSymlinksInPath().path
      let session: FUSESession
      do {
        session = try FUSESession(fileSystem: fs, mountpoint: mountpoint, options: fuseOptions, debug: debug, logger: logger)
        try session.mount()
      } catch {
        printError("error: cannot mount on \(mountpoint): \(error)")
        throw Failure(code: 1)
      }
      do {
        try session.installSignalHandlers()
      } catch {
        printError("warning: cannot install signal handlers: \(error)")
      }
      // The kernel sets the readahead when it sees our INIT reply, and a stat
      // answers only once workers run: so a helper thread waits for the mount to
      // answer, then raises the readahead and tells a waiting parent we are ready.
      let readyFD = self.readyFD
      let keepStderr = debug
      Thread.detachNewThread {
        var st = stat()
        _ = stat(realMountpoint, &st)
        raiseReadahead(realMountpoint)
        if let fd = readyFD {
          _ = "ready\n".withCString { write(fd, $0, 6) }
          close(fd)
          detachStandardStreams(keepStderr: keepStderr)
        }
      }
      let exit: SessionExit
      do {
        exit = try session.run(threads: mountOptions.threads)
      } catch {
        session.close()
        printError("error: FUSE session ended: \(error)")
        throw Failure(code: 1)
      }
      session.close()
      _ = exit
    }
  }
}

/// Whether `path` itself (not what it points to) is a symbolic link.
func isSymbolicLink(_ path: String) -> Bool {
  var st = stat()
  return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFLNK
}

/// The `fsname` a mount shows in /proc/mounts: the image path, with characters mount tables cannot hold replaced.
func fsname(_ path: String) -> String {
  String(path.map { $0 == "," || $0 == " " || $0 == "\t" || $0 == "\n" ? "_" : $0 })
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

  /// Options mount(8) and fstab add that mean nothing to a read-only FUSE mount.
  static let ignored: Set<String> = [
    "ro", "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime", "strictatime",
    "nodiratime", "auto", "noauto", "user", "users", "nouser", "_netdev", "nofail", "defaults", "async", "sync",
    "loop",
  ]

  init(_ raw: [String]) throws {
    for group in raw {
      for part in group.split(separator: ",").map(String.init) where !part.isEmpty {
        let kv = part.split(separator: "=", maxSplits: 1).map(String.init)
        let key = kv[0]
        let value = kv.count > 1 ? kv[1] : nil
        switch key {
        case "uid", "gid":
          guard let v = value.flatMap(UInt32.init) else { throw ValidationError("-o \(key)= needs a number") }
          if key == "uid" { uid = v } else { gid = v }
        case "direct_io": directIO = true
        case "read":
          guard let v = value.flatMap(MountConfiguration.ReadStrategy.init(rawValue:)) else {
            throw ValidationError("-o read= takes pread or splice")
          }
          readStrategy = v
        case "threads":
          guard let v = value.flatMap(Int.init), v >= 1, v <= 256 else {
            throw ValidationError("-o threads= needs a number from 1 to 256")
          }
          threads = v
        case "nofollow": nofollow = true
        case "force": force = true
        case "lowmem":
          guard let v = value.flatMap(parseLowmem) else {
            throw ValidationError(
              "-o lowmem= needs a size from 4K to 4G in whole 4 KiB pages, such as 3G, 2560M or 0xc0000000")
          }
          lowmem = v
        case "allow_other", "allow_root", "default_permissions", "auto_unmount":
          fuseOptions.append(part)
        case "fsname", "subtype", "max_read":
          throw ValidationError("-o \(key) is set by mramfs itself")
        default:
          if MountOptions.ignored.contains(key) || key.hasPrefix("x-") || key.hasPrefix("comment=") { continue }
          if key == "comment" { continue }
          throw ValidationError(
            "unknown mount option '\(part)'; see `mramfs mount --help` for the options mramfs takes")
        }
      }
    }
  }
}

/// Parses the size of RAM below 4 GiB: `3G`, `2560M`, `0xc0000000` or plain bytes; nil unless it is
/// a whole number of 4 KiB pages from one page to 4 GiB (QEMU's `max-ram-below-4g` range).
func parseLowmem(_ text: String) -> UInt64? {
  let t = text.lowercased()
  let value = t.hasPrefix("0x") ? UInt64(t.dropFirst(2), radix: 16) : parseSize(text)
  guard let v = value, v > 0, v <= 1 << 32, v % 4096 == 0 else { return nil }
  return v
}

/// Lets the kernel send 1 MiB reads through the page cache (it defaults to 128 KiB readahead for FUSE).
///
/// The mount's device number comes from /proc/self/mountinfo: a `stat` of the
/// mount point would wait for a GETATTR answer that no worker is serving yet.
/// Needs root; does nothing otherwise.
/// `realMountpoint` must be resolved before mounting, for the same reason.
func raiseReadahead(_ realMountpoint: String) {
  guard let info = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return }
  let real = realMountpoint
  var device: Substring? = nil
  for line in info.split(separator: "\n") {
    let f = line.split(separator: " ")
    // Fields: id parent major:minor root mountpoint ...; the last match is the newest mount.
    if f.count > 4, f[4] == real { device = f[2] }
  }
  guard let device else { return }
  let fd = Glibc.open("/sys/class/bdi/\(device)/read_ahead_kb", O_WRONLY)
  guard fd >= 0 else { return }
  _ = "1024\n".withCString { write(fd, $0, 5) }
  close(fd)
}

/// Points standard input, output and error at /dev/null once the parent has gone.
func detachStandardStreams(keepStderr: Bool) {
  let null = Glibc.open("/dev/null", O_RDWR)
  guard null >= 0 else { return }
  dup2(null, 0)
  dup2(null, 1)
  if !keepStderr { dup2(null, 2) }
  if null > 2 { close(null) }
}

/// The descriptor on which a daemon started by ``spawnSelf(_:readyPipe:)`` reports readiness.
let daemonReadyFD: Int32 = 3

/// Closes every descriptor from `first` on.
func closeDescriptors(from first: Int32) {
  closefrom(first)  // glibc 2.34+: close_range(2), or a walk of /proc/self/fd
}

/// Starts this executable with `args` (argv[0] first) in a new session, with `readyPipe`
/// as its descriptor ``daemonReadyFD``.
func spawnSelf(_ args: [String], readyPipe: Int32) throws -> pid_t {
  var attr = posix_spawnattr_t()
  posix_spawnattr_init(&attr)
  defer { posix_spawnattr_destroy(&attr) }
  // POSIX_SPAWN_SETSID (glibc, 0x80) is behind _GNU_SOURCE and does not import.
  // POSIX_SPAWN_SETSIGMASK (0x08) with an empty mask: the daemon must see SIGTERM.
  var empty = sigset_t()
  sigemptyset(&empty)
  posix_spawnattr_setsigmask(&attr, &empty)
  posix_spawnattr_setflags(&attr, 0x80 | 0x08)
  var actions = posix_spawn_file_actions_t()
  posix_spawn_file_actions_init(&actions)
  defer { posix_spawn_file_actions_destroy(&actions) }
  posix_spawn_file_actions_adddup2(&actions, readyPipe, daemonReadyFD)
  let cargs = args.map { strdup($0) } + [nil]
  defer { for p in cargs { free(p) } }
  var pid: pid_t = 0
  let rc = posix_spawn(&pid, "/proc/self/exe", &actions, &attr, cargs, environ)
  guard rc == 0 else {
    printError("error: cannot start the mount daemon: \(Errno(rawValue: rc))")
    throw Failure(code: 1)
  }
  return pid
}

import FUSE
import GuestViews
import Logging
import MigrationFormat
import SystemPackage

#if canImport(Glibc)
  import Glibc
#endif

/// What to mount, and how.
public struct MountRequest: Sendable {
  /// The migration file.
  public var image: String
  /// The directory to mount on.
  public var mountpoint: String
  /// How to open the file.
  public var openOptions = OpenOptions()
  /// How the mount presents its files.
  public var configuration = MountConfiguration()
  /// Options handed to libfuse unchanged (`allow_other`, `default_permissions`, `auto_unmount`).
  public var fuseOptions: [String] = []
  /// libfuse worker threads.
  public var threads = 8
  /// Log every FUSE request (libfuse's `-d`) and keep standard error open.
  public var debug = false
  /// A delta mount's base (`-o base=`): the mount serves only what changed since this file
  /// (``DeltaMount``); nil for a plain mount.
  public var base: String? = nil
  /// Mount the blocks that match the base's when some do not (`-o base-mismatch=ok`), instead of refusing.
  public var baseMismatchOK = false

  /// A request to mount `image` on `mountpoint` with the defaults.
  public init(image: String, mountpoint: String) {
    self.image = image
    self.mountpoint = mountpoint
  }
}

/// Why a mount could not be made or served: one line for the user, and the exit status.
public struct MountFailure: Error, CustomStringConvertible, Sendable {
  /// The message, without the `mramfs: error:` prefix.
  public var description: String
  /// The exit status to leave with (1: the file or the system refused; 2: a usage error).
  public var exitCode: Int32
  /// Whether the message was already printed (by a daemon, on the caller's standard error).
  public var alreadyReported = false

  /// A failure with `message` and `exitCode`.
  public init(_ message: String, exitCode: Int32 = 1) {
    description = message
    self.exitCode = exitCode
  }
}

/// Starts, serves and stops mramfs mounts: the session's life cycle, readahead tuning,
/// readiness reporting and the background daemon, so that the command line only parses.
///
/// Background mounts never fork a running Swift process: ``startDaemon(arguments:)`` starts
/// this executable again (`/proc/self/exe`) in a new session with a pipe on descriptor
/// ``readyDescriptor``; the daemon opens the file, mounts, and when the mount answers writes
/// `ready` there (``FUSESession/reportReady(to:)``). The caller returns 0 on `ready`, or the
/// daemon's own exit status when it ends without (its error is already on the caller's
/// standard error, which the daemon shares until it is ready).
public enum Mounter {
  /// The descriptor on which a daemon started by ``startDaemon(arguments:)`` reports readiness.
  public static let readyDescriptor: Int32 = 3

  /// Starts `arguments` (argv[0] first; they must make this executable serve the mount in the
  /// foreground and report on ``readyDescriptor``) and waits until the mount is ready.
  public static func startDaemon(arguments: [String]) throws(MountFailure) {
    var fds: [Int32] = [0, 0]
    guard pipe(&fds) == 0 else { throw MountFailure("pipe: \(Errno(rawValue: errno))") }
    let (readEnd, writeEnd) = (fds[0], fds[1])
    let pid: pid_t
    do {
      pid = try spawnSelf(arguments, readyPipe: writeEnd)
    } catch {
      close(readEnd)
      close(writeEnd)
      throw error
    }
    close(writeEnd)
    var line = [UInt8](repeating: 0, count: 64)
    var got = 0
    while got < line.count {
      let n = line.withUnsafeMutableBytes { read(readEnd, $0.baseAddress! + got, $0.count - got) }
      if n > 0 { got += n } else if n == 0 || errno != EINTR { break }
      if line[0..<got].contains(UInt8(ascii: "\n")) { break }
    }
    close(readEnd)
    if String(decoding: line[0..<got], as: UTF8.self).hasPrefix("ready") { return }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    let exited = (status & 0x7f) == 0
    let code = exited ? (status >> 8) & 0xff : 1
    var failure = MountFailure(
      exited ? "the mount daemon exited with status \(code)" : "the mount daemon was killed by signal \(status & 0x7f)",
      exitCode: code == 0 ? 1 : code)
    failure.alreadyReported = exited && code != 0
    throw failure
  }

  /// Opens the file, mounts it and serves it in this process until it is unmounted or a
  /// SIGINT, SIGTERM or SIGHUP arrives (then unmounts cleanly).
  ///
  /// - Parameters:
  ///   - readyDescriptor: Where to report readiness, for a daemon; the standard streams are
  ///     then pointed at /dev/null (standard error too, unless `debug`).
  ///   - warn: Receives the file's warnings, before anything is mounted.
  public static func serve(
    _ request: MountRequest, readyDescriptor: Int32?, warn: (String) -> Void
  ) throws(MountFailure) {
    if request.openOptions.noFollow, isSymbolicLink(request.image) {
      // O_NOFOLLOW alone fails with ELOOP, "Too many levels of symbolic links"; say what happened.
      throw MountFailure(
        "\(request.image) is a symbolic link, and nofollow refuses to follow it; give the link's target instead")
    }
    // A damaged file is refused here, before anything is mounted, with the same message as `info`.
    let migration: MigrationFile
    do {
      migration = try MigrationFile(path: request.image, options: request.openOptions)
    } catch {
      throw MountFailure("\(error)")
    }
    for w in migration.warnings { warn(w) }
    guard migration.format.isPositional else {
      throw MountFailure(
        "\(request.image) is a classic (sequential) stream; its pages are not at fixed offsets. "
          + "Convert it first: mramfs convert \(request.image) OUT.mapped, then mount OUT.mapped")
    }
    // A delta mount serves a view of the file, built here once: reads cost what they cost without a base.
    var served = migration
    var base: InfoDocument.Base? = nil
    if let basePath = request.base {
      (served, base) = try DeltaMount.view(of: migration, base: basePath, request)
    }
    var logger = Logger(label: "mramfs")
    logger.logLevel = request.debug ? .debug : .info
    let fs = MramFileSystem(file: served, configuration: request.configuration, logger: logger, base: base)
    var fuseOptions = [
      "ro", "fsname=\(fsname(request.image))", "subtype=mramfs", "max_read=\(request.configuration.maxRead)",
    ]
    fuseOptions += request.fuseOptions
    let session: FUSESession
    do {
      session = try FUSESession(
        fileSystem: fs, mountpoint: request.mountpoint, options: fuseOptions, debug: request.debug, logger: logger)
      try session.mount()
    } catch {
      throw MountFailure("cannot mount on \(request.mountpoint): \(error)")
    }
    do {
      try session.installSignalHandlers()
    } catch {
      warn("cannot install signal handlers: \(error)")
    }
    let keepStderr = request.debug
    // Runs once the mount answers: the kernel sets the readahead when it sees our INIT
    // reply, so it is raised now, before a waiting parent hears that we are ready.
    let ready: @Sendable (MountedDevice) -> Void = { mounted in
      raiseReadahead(device: mounted.device)
      if let fd = readyDescriptor {
        try? FUSESession.reportReady(to: FileDescriptor(rawValue: fd))
        detachStandardStreams(keepStderr: keepStderr)
      }
    }
    do {
      _ = try session.run(threads: request.threads, whenReady: ready)
    } catch {
      session.close()
      throw MountFailure("FUSE session ended: \(error)")
    }
    session.close()
  }

  /// Unmounts `mountpoint` with `fusermount3 -u` (`-z` when `lazy`, or when the mount is stale).
  ///
  /// Only an mramfs mount (type `fuse.mramfs` in `/proc/self/mountinfo`) is touched: run as
  /// root, `fusermount3 -u` would unmount any file system it is given.
  public static func unmount(_ mountpoint: String, lazy: Bool) throws(MountFailure) {
    let shown = quoted(Array(mountpoint.utf8))
    guard !mountpoint.isEmpty else { throw MountFailure("the mount point is empty; give the directory of an mramfs mount") }
    guard let real = resolvedPath(mountpoint) else {
      throw MountFailure("\(shown): \(Errno(rawValue: errno)); give the directory of an mramfs mount")
    }
    guard let type = MountTable.entry(at: real)?.type else {
      throw MountFailure("\(shown) is not a mount point; nothing to unmount")
    }
    guard type == "fuse.mramfs" else {
      throw MountFailure("\(shown) is a \(type) mount, not an mramfs one; mramfs unmounts only its own mounts")
    }
    let stale = isStale(mountpoint)
    var args = ["fusermount3", "-u"]
    if lazy || stale { args.append("-z") }
    args.append(real)
    let candidates: [String] = ["/bin/fusermount3", "/usr/bin/fusermount3"]
    guard let tool = candidates.first(where: { access($0, X_OK) == 0 }) else {
      throw MountFailure("cannot find fusermount3; install the fuse3 package")
    }
    let (status, message) = runTool(tool, args)
    guard status == 0 else {
      let said = message.split(separator: "\n").first.map { " (fusermount3: \($0))" } ?? ""
      throw MountFailure(
        "fusermount3 could not unmount \(shown)\(said); if files are still open, try `mramfs unmount --lazy \(mountpoint)`")
    }
  }

  /// `path` with symbolic links resolved, or nil (errno set). A stale mount point fails `realpath`
  /// with ENOTCONN; its path is then taken as given, made absolute.
  static func resolvedPath(_ path: String) -> String? {
    if let real = realpath(path, nil) {
      defer { free(real) }
      return String(cString: real)
    }
    guard errno == ENOTCONN else { return nil }
    if path.hasPrefix("/") { return path }
    guard let cwd = getcwd(nil, 0) else { return nil }
    defer { free(cwd) }
    return String(cString: cwd) + "/" + path
  }

  /// Whether `path` is a FUSE mount whose daemon is gone ("Transport endpoint is not connected").
  ///
  /// `statfs` always asks the daemon; `stat` may be answered from the kernel's attribute cache.
  public static func isStale(_ path: String) -> Bool {
    var sv = statvfs()
    return statvfs(path, &sv) != 0 && errno == ENOTCONN
  }

  /// Closes every descriptor above ``readyDescriptor``: descriptors the caller leaked to a
  /// daemon (pipes of a test harness, a shell's) would otherwise stay open for the life of
  /// the mount and keep their readers waiting.
  public static func closeInheritedDescriptors() {
    closefrom(readyDescriptor + 1)  // glibc 2.34+: close_range(2), or a walk of /proc/self/fd
  }

  /// Whether `path` itself (not what it points to) is a symbolic link.
  public static func isSymbolicLink(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFLNK
  }

  /// The `fsname` a mount shows in /proc/mounts: the image path, with characters mount tables cannot hold replaced.
  static func fsname(_ path: String) -> String {
    String(path.map { $0 == "," || $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\\" ? "_" : $0 })
  }

  /// Lets the kernel send 1 MiB reads through the page cache (it defaults to 128 KiB readahead
  /// for FUSE). Needs root; does nothing otherwise.
  static func raiseReadahead(device: String) {
    let fd = open("/sys/class/bdi/\(device)/read_ahead_kb", O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return }
    _ = "1024\n".withCString { write(fd, $0, 5) }
    close(fd)
  }

  /// Points standard input, output and error at /dev/null once the parent has gone.
  static func detachStandardStreams(keepStderr: Bool) {
    let null = open("/dev/null", O_RDWR)
    guard null >= 0 else { return }
    dup2(null, 0)
    dup2(null, 1)
    if !keepStderr { dup2(null, 2) }
    if null > 2 { close(null) }
  }

  /// Starts this executable with `args` (argv[0] first) in a new session, with `readyPipe`
  /// as its descriptor ``readyDescriptor`` and an empty signal mask (it must see SIGTERM).
  static func spawnSelf(_ args: [String], readyPipe: Int32) throws(MountFailure) -> pid_t {
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    // POSIX_SPAWN_SETSID (glibc, 0x80) is behind _GNU_SOURCE and does not import.
    var empty = sigset_t()
    sigemptyset(&empty)
    posix_spawnattr_setsigmask(&attr, &empty)
    posix_spawnattr_setflags(&attr, 0x80 | Int16(POSIX_SPAWN_SETSIGMASK))
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, readyPipe, readyDescriptor)
    let cargs = args.map { strdup($0) } + [nil]
    defer { for p in cargs { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, "/proc/self/exe", &actions, &attr, cargs, environ)
    guard rc == 0 else { throw MountFailure("cannot start the mount daemon: \(Errno(rawValue: rc))") }
    return pid
  }

  /// Runs `path` with `args` (argv[0] first), waits, and returns its exit status (or 1) and
  /// what it wrote to standard error (at most 4 KiB).
  static func runTool(_ path: String, _ args: [String]) -> (status: Int32, stderr: String) {
    var fds: [Int32] = [0, 0]
    guard pipe(&fds) == 0 else { return (1, "pipe: \(Errno(rawValue: errno))") }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, fds[1], 2)
    posix_spawn_file_actions_addclose(&actions, fds[0])
    let cargs = args.map { strdup($0) } + [nil]
    defer { for p in cargs { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, path, &actions, nil, cargs, environ)
    close(fds[1])
    defer { close(fds[0]) }
    guard rc == 0 else { return (1, "cannot run \(path): \(Errno(rawValue: rc))") }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 1024)
    while true {
      let n = chunk.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
      if n > 0 {
        if bytes.count < 4096 { bytes += chunk[0..<n] }
      } else if n == 0 || errno != EINTR {
        break
      }
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return ((status & 0x7f) == 0 ? (status >> 8) & 0xff : 1, String(decoding: bytes, as: UTF8.self))
  }
}

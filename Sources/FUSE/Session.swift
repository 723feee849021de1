import CFuse
import Glibc
import Logging
import SystemPackage

/// How a session's request loop ended.
public enum SessionExit: Hashable, Sendable {
  /// The file system was unmounted from outside (`fusermount3 -u`, `umount`).
  case unmounted
  /// A signal handled by ``FUSESession/installSignalHandlers()`` (SIGINT, SIGTERM, SIGHUP)
  /// stopped the loop; the mount is still there until ``FUSESession/unmount()``.
  case signal(Int32)
}

/// One FUSE mount served by a ``FileSystem`` through libfuse's low-level API.
///
/// The corresponding C type is `struct fuse_session`. The life cycle is the one of
/// libfuse's `hello_ll.c`, minus daemonizing (a Swift process must not fork once the
/// runtime is up; run in the foreground under a supervisor instead):
///
/// ```swift
/// let session = try FUSESession(
///   fileSystem: fs, mountpoint: path, options: ["ro", "subtype=mramfs"])
/// try session.installSignalHandlers()
/// try session.mount()
/// let exit = try session.run(threads: 8) { _ in      // blocks until unmounted or signalled;
///   try? FUSESession.reportReady(to: readyPipe)      // the closure runs once the mount answers
/// }
/// session.close()                                   // unmounts, destroys, releases the file system
/// ```
///
/// A session is used from one thread; the file system's handlers run on libfuse's workers.
public final class FUSESession {
  /// The directory the file system is (to be) mounted on.
  public let mountpoint: String
  /// ``mountpoint`` with symbolic links resolved, taken before mounting: once mounted, resolving
  /// it would ask this session's own workers.
  public let resolvedMountpoint: String
  /// The options given to libfuse, without the `-o` flags.
  public let options: [String]

  private var session: OpaquePointer?
  private var arguments: fuse_args
  private var context: Unmanaged<SessionContext>?
  private let logger: Logger
  private var signalHandlersInstalled = false

  /// Whether ``mount()`` succeeded and ``unmount()`` has not been called since.
  public private(set) var isMounted = false

  /// Creates a session; nothing is mounted yet.
  ///
  /// - Parameters:
  ///   - fileSystem: Answers the requests. The session keeps it alive until ``close()``.
  ///   - mountpoint: An existing directory.
  ///   - options: libfuse options, each as given after `-o`, such as `"ro"`,
  ///     `"fsname=vm.mram"`, `"subtype=mramfs"`, `"allow_other"`, `"default_permissions"`
  ///     or `"max_read=1032192"` (a comma-separated list is fine). libfuse rejects options
  ///     it does not know, so strip the file system's own (such as `uid=`) first.
  ///     `max_read` is mirrored into ``Connection/maxRead`` automatically.
  ///   - debug: libfuse's `-d`: prints every request and reply to standard error, and
  ///     lowers `logger` to `.debug`.
  ///   - logger: Receives this layer's messages, such as a handler that forgot to reply.
  /// - Throws: `EINVAL` when libfuse refuses the options (it prints why to standard error).
  public init(
    fileSystem: some FileSystem, mountpoint: String, options: [String] = [], debug: Bool = false,
    logger: Logger = Logger(label: "FUSE")
  ) throws(Errno) {
    var logger = logger
    if debug { logger.logLevel = .debug }
    self.logger = logger
    self.mountpoint = mountpoint
    self.options = options
    if let real = realpath(mountpoint, nil) {
      resolvedMountpoint = String(cString: real)
      free(real)
    } else {
      resolvedMountpoint = mountpoint
    }

    arguments = cfuse_args_init(0, nil)
    let program = CommandLine.arguments.first.map { String($0.split(separator: "/").last ?? "") }
    var argv = [program.flatMap { $0.isEmpty ? nil : $0 } ?? "fuse"]
    for option in options { argv += ["-o", option] }
    if debug { argv.append("-d") }
    for argument in argv where fuse_opt_add_arg(&arguments, argument) != 0 {
      fuse_opt_free_args(&arguments)
      throw .noMemory
    }

    let context = Unmanaged.passRetained(
      SessionContext(
        fileSystem: fileSystem, logger: logger,
        mountMaxRead: FUSESession.maxRead(in: options)))
    var operations = makeOperations()
    session = fuse_session_new(
      &arguments, &operations, MemoryLayout<fuse_lowlevel_ops>.size, context.toOpaque())
    guard session != nil else {
      context.release()
      fuse_opt_free_args(&arguments)
      throw .invalidArgument
    }
    self.context = context
  }

  deinit { close() }

  /// Mounts the file system on ``mountpoint`` (`fuse_session_mount`).
  ///
  /// When this returns the mount is visible in `/proc/self/mountinfo`, and clients
  /// block until ``run(threads:idleThreads:cloneFD:)`` starts answering. That is the
  /// moment to tell a waiting parent process, see ``reportReady(to:)``.
  /// - Throws: The `errno` of the failed mount (libfuse prints the reason too).
  public func mount() throws(Errno) {
    guard let session, !isMounted else { throw .invalidArgument }
    Glibc.errno = 0
    guard fuse_session_mount(session, mountpoint) == 0 else {
      let code = Glibc.errno
      throw code != 0 ? Errno(rawValue: code) : .ioError
    }
    isMounted = true
    logger.debug("mounted on \(mountpoint)")
  }

  /// Makes SIGINT, SIGTERM and SIGHUP end ``run(threads:idleThreads:cloneFD:)`` cleanly,
  /// and ignores SIGPIPE (`fuse_set_signal_handlers`).
  ///
  /// libfuse keeps one session for its handlers: install them for one session at a time.
  /// ``close()`` removes them again.
  public func installSignalHandlers() throws(Errno) {
    guard let session else { throw .invalidArgument }
    guard !signalHandlersInstalled else { return }
    guard fuse_set_signal_handlers(session) == 0 else { throw .ioError }
    signalHandlersInstalled = true
    // A process inherits its blocked-signal mask across exec. Foundation's `Process`
    // started from a Dispatch or Swift-concurrency thread (a test runner, a supervisor
    // written in Swift) hands its child SIGTERM, SIGINT and SIGHUP *blocked*: the handlers
    // would never run and the mount would never go. libfuse's workers copy this thread's
    // mask, so unblocking here covers them all.
    var unblock = sigset_t()
    sigemptyset(&unblock)
    for signal in [SIGHUP, SIGINT, SIGTERM] { sigaddset(&unblock, signal) }
    let rc = pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
    if rc != 0 { throw Errno(rawValue: rc) }
  }

  /// Answers requests on up to `threads` worker threads until the file system is
  /// unmounted or a handled signal arrives (`fuse_session_loop_mt`).
  ///
  /// - Parameters:
  ///   - threads: The most workers libfuse starts (`fuse_loop_cfg_set_max_threads`).
  ///   - idleThreads: The most idle workers kept, `nil` for libfuse's default. (libfuse's
  ///     own default, `UINT_MAX`, is not passed on: 3.14 would print "Ignoring invalid
  ///     max threads value".)
  ///   - cloneFD: Whether each worker reads from its own `/dev/fuse` descriptor.
  ///   - whenReady: Called once, on a thread of its own, when the mount answers: a `stat` of
  ///     the mount point succeeds on this mount's device while the loop runs. Never called
  ///     when the loop stops first (the kernel refused INIT, the mount went away). This is
  ///     the moment to tune the mount (readahead) and tell a waiting parent, see
  ///     ``reportReady(to:)``.
  /// - Returns: How the loop ended.
  /// - Throws: The error that stopped the loop, such as a lost connection.
  public func run(
    threads: Int = 10, idleThreads: Int? = nil, cloneFD: Bool = false,
    whenReady: (@Sendable (MountedDevice) -> Void)? = nil
  ) throws(Errno) -> SessionExit {
    guard let session, isMounted else { throw .invalidArgument }
    guard let config = fuse_loop_cfg_create() else { throw .noMemory }
    defer { fuse_loop_cfg_destroy(config) }
    fuse_loop_cfg_set_max_threads(config, UInt32(clamping: max(1, threads)))
    if let idleThreads {
      fuse_loop_cfg_set_idle_threads(config, UInt32(clamping: max(0, idleThreads)))
    }
    fuse_loop_cfg_set_clone_fd(config, cloneFD ? 1 : 0)
    let probe = startProbe(whenReady)
    let result = cfuse_session_loop_mt(session, config)
    probe?.loopEnded.store(1, ordering: .releasing)
    return try exit(result)
  }

  /// Answers requests on the calling thread only (`fuse_session_loop`), like libfuse's `-s`.
  ///
  /// For queue-depth-one workloads this is as fast as the threaded loop, and handlers
  /// never run concurrently. `whenReady` is as for ``run(threads:idleThreads:cloneFD:whenReady:)``.
  public func runSingleThreaded(whenReady: (@Sendable (MountedDevice) -> Void)? = nil) throws(Errno) -> SessionExit {
    guard let session, isMounted else { throw .invalidArgument }
    let probe = startProbe(whenReady)
    let result = fuse_session_loop(session)
    probe?.loopEnded.store(1, ordering: .releasing)
    return try exit(result)
  }

  private func startProbe(_ whenReady: (@Sendable (MountedDevice) -> Void)?) -> ReadinessProbe? {
    guard let whenReady else { return nil }
    let probe = ReadinessProbe(mountpoint: resolvedMountpoint, callback: whenReady)
    probe.start()
    return probe
  }

  /// Unmounts the file system (`fuse_session_unmount`); does nothing if it is not mounted.
  ///
  /// Call it after the loop returned. A lazy unmount: clients still inside the mount
  /// keep it alive until they leave.
  public func unmount() {
    guard let session, isMounted else { return }
    fuse_session_unmount(session)
    isMounted = false
    logger.debug("unmounted \(mountpoint)")
  }

  /// Unmounts if needed, removes signal handlers, destroys the session (the file system's
  /// ``FileSystem/destroy()`` runs here) and releases the file system. Idempotent.
  public func close() {
    if let session {
      if signalHandlersInstalled {
        fuse_remove_signal_handlers(session)
        signalHandlersInstalled = false
      }
      unmount()
      fuse_session_destroy(session)
      self.session = nil
    }
    // After fuse_session_destroy: `destroy` reached the file system through this context.
    context?.release()
    context = nil
    fuse_opt_free_args(&arguments)
  }

  /// The `/dev/fuse` descriptor of the session, once mounted (`fuse_session_fd`).
  public var fileDescriptor: FileDescriptor? {
    guard let session, isMounted else { return nil }
    let fd = fuse_session_fd(session)
    return fd >= 0 ? FileDescriptor(rawValue: fd) : nil
  }

  /// Tells a waiting parent process that the mount is up: writes `ready\n` to
  /// `descriptor` and closes it.
  ///
  /// This is how a command offers "background" mounting without forking a Swift
  /// process: the parent starts itself again in the foreground with the write end of a
  /// pipe, waits for a line on the read end, and exits 0 on `ready` or with the child's
  /// status on end of file (the child failed; its standard error says why). Call it from
  /// the `whenReady` closure of ``run(threads:idleThreads:cloneFD:whenReady:)``, which
  /// runs only once the mount really answers.
  public static func reportReady(to descriptor: FileDescriptor) throws(Errno) {
    defer { try? descriptor.close() }
    do {
      _ = try descriptor.writeAll("ready\n".utf8)
    } catch let error as Errno {
      throw error
    } catch {
      throw .ioError
    }
  }

  private func exit(_ result: Int32) throws(Errno) -> SessionExit {
    if result < 0 { throw Errno(rawValue: -result) }
    if result > 0 {
      logger.debug("request loop stopped by signal \(result)")
      return .signal(result)
    }
    return .unmounted
  }

  /// The value of the last `max_read=N` among the options, if any.
  static func maxRead(in options: [String]) -> UInt32? {
    var value: UInt32?
    for option in options {
      for part in option.split(separator: ",") where part.hasPrefix("max_read=") {
        value = UInt32(part.dropFirst("max_read=".count))
      }
    }
    return value
  }
}

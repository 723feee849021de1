// Helpers for tests that mount through the real kernel: find the built executables,
// start one as a subprocess, wait until its mount shows up in /proc/self/mountinfo
// (failing fast, with its standard error, if it dies first), and always unmount with
// `fusermount3 -u -z` afterwards. Modelled on libfuse's test/util.py.

import Foundation
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// A failure of the mount-test machinery, with what went wrong and what to do.
struct MountTestError: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}

/// One line of `/proc/self/mountinfo`.
struct MountInfo: Equatable {
  /// Field 5: where the file system is mounted.
  var mountPoint: String
  /// Field 4 after the separator: the file system type, such as `fuse.hello-fs`.
  var fileSystemType: String
  /// The mount source (`fsname=`).
  var source: String
  /// Per-mount options (field 6), such as `rw,nosuid,nodev,relatime`.
  var mountOptions: [String]
  /// Per-superblock options (the last field), such as `ro,user_id=0,group_id=0`.
  var superOptions: [String]
}

enum MountSupport {
  /// Whether this run is CI's (`CI=true`): missing prerequisites fail instead of skipping.
  static var isCI: Bool {
    ProcessInfo.processInfo.environment["CI"]?.lowercased() == "true"
  }

  // MARK: Prerequisites

  /// Skips the current test when FUSE is unavailable, with the reason, on a developer's
  /// machine; throws (fails the test) instead under `CI=true`, where FUSE must work.
  static func requireFUSE() throws {
    var missing: [String] = []
    if access("/dev/fuse", R_OK | W_OK) != 0 {
      missing.append(
        "/dev/fuse is missing or not readable and writable (\(String(cString: strerror(errno))))")
    }
    if findExecutable("fusermount3") == nil {
      missing.append("fusermount3 is not on PATH (Debian: apt-get install fuse3)")
    }
    guard !missing.isEmpty else { return }
    let reason = "FUSE mount test prerequisites missing: " + missing.joined(separator: "; ")
    if isCI {
      throw MountTestError(reason + " — under CI=true this is a failure, not a skip")
    }
    try Test.cancel(Comment(rawValue: reason))
  }

  /// The full path of an executable found on `PATH`, or `nil`.
  static func findExecutable(_ name: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
    for directory in path.split(separator: ":") + ["/usr/bin", "/bin", "/usr/sbin", "/sbin"] {
      let candidate = "\(directory)/\(name)"
      if access(candidate, X_OK) == 0 { return candidate }
    }
    return nil
  }

  // MARK: Built products

  /// The directory that holds the package's built executables.
  ///
  /// `MRAMFS_BIN_DIR` wins; otherwise the directory of the running test binary
  /// (`swift test` puts `mramfsPackageTests.xctest` beside the executables), or of its
  /// bundle on Darwin.
  static func productsDirectory() throws -> URL {
    if let override = ProcessInfo.processInfo.environment["MRAMFS_BIN_DIR"], !override.isEmpty {
      return URL(fileURLWithPath: override, isDirectory: true)
    }
    var candidates: [URL] = []
    if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
      candidates.append(URL(fileURLWithPath: exe).deletingLastPathComponent())
    }
    for bundle in Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
      candidates.append(bundle.bundleURL.deletingLastPathComponent())
    }
    candidates.append(Bundle.main.bundleURL)
    if let products = candidates.first(where: { isDirectory($0.appendingPathComponent("Modules")) })
    {
      return products
    }
    guard let first = candidates.first else {
      throw MountTestError("cannot locate the build products directory; set MRAMFS_BIN_DIR")
    }
    return first
  }

  /// The built executable `name`, or an error saying how to build it.
  static func executable(_ name: String) throws -> URL {
    let url = try productsDirectory().appendingPathComponent(name)
    guard access(url.path, X_OK) == 0 else {
      throw MountTestError(
        "\(url.path) is not built: run `swift build --product \(name)` (or set MRAMFS_BIN_DIR)")
    }
    return url
  }

  private static func isDirectory(_ url: URL) -> Bool {
    var directory: ObjCBool = false
    return FileManager.default.fileExists(atPath: url.path, isDirectory: &directory)
      && directory.boolValue
  }

  // MARK: Mount points

  /// Creates an empty temporary directory to mount on, with its canonical path (as
  /// `/proc/self/mountinfo` spells it).
  static func makeMountpoint(prefix: String = "mramfs-mnt") throws -> String {
    let base = FileManager.default.temporaryDirectory.path
    var template = Array("\(base)/\(prefix).XXXXXX".utf8CString)
    let created = template.withUnsafeMutableBufferPointer { buffer in
      buffer.baseAddress.flatMap { mkdtemp($0) }
    }
    guard let created else {
      throw MountTestError("mkdtemp in \(base) failed: \(String(cString: strerror(errno)))")
    }
    let path = String(cString: created)
    guard let resolved = realpath(path, nil) else { return path }
    defer { free(resolved) }
    return String(cString: resolved)
  }

  /// The current mounts of this process's mount namespace.
  static func mounts() -> [MountInfo] {
    guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else {
      return []
    }
    return text.split(separator: "\n").compactMap { line in
      let fields = line.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
      guard fields.count >= 10, let separator = fields.firstIndex(of: "-"),
        separator + 3 < fields.count
      else { return nil }
      return MountInfo(
        mountPoint: unescape(fields[4]), fileSystemType: fields[separator + 1],
        source: unescape(fields[separator + 2]),
        mountOptions: fields[5].split(separator: ",").map(String.init),
        superOptions: fields[separator + 3].split(separator: ",").map(String.init))
    }
  }

  /// The mount on `path`, if there is one.
  static func mount(at path: String) -> MountInfo? {
    mounts().last { $0.mountPoint == path }
  }

  /// Decodes the octal escapes (`\040` for a space) of mountinfo fields.
  private static func unescape(_ field: String) -> String {
    guard field.contains("\\") else { return field }
    var bytes: [UInt8] = []
    var utf8 = Array(field.utf8)[...]
    while let byte = utf8.popFirst() {
      if byte == UInt8(ascii: "\\"), utf8.count >= 3,
        let value = UInt8(String(decoding: utf8.prefix(3), as: UTF8.self), radix: 8)
      {
        bytes.append(value)
        utf8 = utf8.dropFirst(3)
      } else {
        bytes.append(byte)
      }
    }
    return String(decoding: bytes, as: UTF8.self)
  }

  /// Waits until `path` is a mount point, and returns its mountinfo line.
  ///
  /// Fails fast when `process` exits first, with its exit status and standard error.
  @discardableResult
  static func waitForMount(
    _ path: String, process: SpawnedProcess, timeout: Duration = .seconds(10)
  ) throws -> MountInfo {
    let deadline = ContinuousClock.now + timeout
    while true {
      if let info = mount(at: path) { return info }
      if !process.isRunning {
        throw MountTestError(
          """
          \(process.name) exited (status \(process.terminationStatus)) before mounting \(path); \
          stderr:
          \(process.standardError)
          """)
      }
      if ContinuousClock.now >= deadline {
        throw MountTestError(
          "\(path) was not mounted within \(timeout); \(process.name) stderr:\n\(process.standardError)"
        )
      }
      usleep(20_000)
    }
  }

  /// Waits until `path` is no longer a mount point; returns whether it went in time.
  static func waitForUnmount(_ path: String, timeout: Duration = .seconds(10)) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while mount(at: path) != nil {
      if ContinuousClock.now >= deadline { return false }
      usleep(20_000)
    }
    return true
  }

  /// Detaches whatever is mounted on `path` with `fusermount3 -u -z`, ignoring failures
  /// (nothing mounted is fine); the lazy unmount never blocks on a dead server.
  static func unmount(_ path: String) {
    guard let fusermount = findExecutable("fusermount3") else { return }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: fusermount)
    process.arguments = ["-u", "-z", "-q", path]
    process.standardOutput = FileHandle.nullDevice
    process.standardError = FileHandle.nullDevice
    guard (try? process.run()) != nil else { return }
    process.waitUntilExit()
  }

  // MARK: Syscall helpers

  /// The names `readdir(3)` returns for `path`, "." and ".." included; throws the `errno`.
  static func listDirectory(_ path: String) throws(POSIXError) -> [String] {
    guard let directory = opendir(path) else { throw POSIXError(currentErrno) }
    defer { closedir(directory) }
    var names: [String] = []
    errno = 0
    while let entry = readdir(directory) {
      let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
        String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
      }
      names.append(name)
    }
    guard errno == 0 else { throw POSIXError(currentErrno) }
    return names
  }

  /// The whole content of `path` read with plain `open(2)` and `read(2)`; throws the `errno`.
  static func readFile(_ path: String, chunk: Int = 4096) throws(POSIXError) -> [UInt8] {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { throw POSIXError(currentErrno) }
    defer { close(fd) }
    var content: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: chunk)
    while true {
      let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, chunk) }
      if n < 0 { throw POSIXError(currentErrno) }
      if n == 0 { return content }
      content += buffer[..<n]
    }
  }

  /// The `errno` of an `open(2)` with `flags` that is expected to fail, or `nil` if it succeeded.
  static func openError(_ path: String, flags: Int32) -> POSIXErrorCode? {
    let fd = open(path, flags)
    if fd >= 0 {
      close(fd)
      return nil
    }
    return currentErrno
  }

  /// The current `errno` as a `POSIXErrorCode`.
  static var currentErrno: POSIXErrorCode {
    POSIXErrorCode(rawValue: errno) ?? .EIO
  }
}

/// A subprocess whose standard output and error go to temporary files, so that a chatty
/// child (`-d`) can never block on a full pipe.
final class SpawnedProcess {
  let name: String
  let process = Process()
  private let outputURL: URL
  private let errorURL: URL

  /// Starts `executable` with `arguments`.
  init(_ executable: URL, arguments: [String], environment: [String: String]? = nil) throws {
    name = executable.lastPathComponent
    let stamp = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    let temporary = FileManager.default.temporaryDirectory
    outputURL = temporary.appendingPathComponent("\(name)-\(stamp).stdout")
    errorURL = temporary.appendingPathComponent("\(name)-\(stamp).stderr")
    for url in [outputURL, errorURL]
    where !FileManager.default.createFile(atPath: url.path, contents: nil) {
      throw MountTestError("cannot create \(url.path)")
    }
    process.executableURL = executable
    process.arguments = arguments
    if let environment { process.environment = environment }
    process.standardInput = FileHandle.nullDevice
    process.standardOutput = try FileHandle(forWritingTo: outputURL)
    process.standardError = try FileHandle(forWritingTo: errorURL)
    try process.run()
  }

  deinit {
    if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    try? FileManager.default.removeItem(at: outputURL)
    try? FileManager.default.removeItem(at: errorURL)
  }

  var isRunning: Bool { process.isRunning }
  var pid: pid_t { process.processIdentifier }
  /// Valid once the process has exited.
  var terminationStatus: Int32 { process.terminationStatus }
  /// Whether it exited normally (rather than by a signal); valid once it has exited.
  var exitedNormally: Bool { process.terminationReason == .exit }

  /// Everything the process wrote to standard error so far.
  var standardError: String {
    (try? String(contentsOf: errorURL, encoding: .utf8)) ?? ""
  }

  /// Everything the process wrote to standard output so far.
  var standardOutput: String {
    (try? String(contentsOf: outputURL, encoding: .utf8)) ?? ""
  }

  /// Sends `signal` to the process.
  func send(_ signal: Int32) {
    if process.isRunning { kill(process.processIdentifier, signal) }
  }

  /// Waits for the process to exit; returns whether it did within `timeout`.
  @discardableResult
  func waitForExit(timeout: Duration = .seconds(10)) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while process.isRunning {
      if ContinuousClock.now >= deadline { return false }
      usleep(10_000)
    }
    process.waitUntilExit()
    return true
  }
}

/// A file system process mounted on a fresh temporary directory, torn down by ``cleanup()``.
///
/// ```swift
/// try MountSupport.requireFUSE()
/// let mounted = try MountedFileSystem(executable: "hello-fs") { mountpoint in [mountpoint, "-f"] }
/// defer { mounted.cleanup() }
/// ```
final class MountedFileSystem {
  let mountpoint: String
  let process: SpawnedProcess
  let info: MountInfo

  /// Creates a mount point, starts `executable` with `arguments(mountpoint)`, and waits
  /// for the mount; on failure everything started is cleaned up again.
  init(
    executable name: String, timeout: Duration = .seconds(10),
    arguments: (String) -> [String]
  ) throws {
    let executable = try MountSupport.executable(name)
    let mountpoint = try MountSupport.makeMountpoint(prefix: "\(name)-mnt")
    let process: SpawnedProcess
    do {
      process = try SpawnedProcess(executable, arguments: arguments(mountpoint))
    } catch {
      rmdir(mountpoint)
      throw error
    }
    do {
      info = try MountSupport.waitForMount(mountpoint, process: process, timeout: timeout)
    } catch {
      MountedFileSystem.tearDown(process: process, mountpoint: mountpoint)
      throw error
    }
    self.mountpoint = mountpoint
    self.process = process
  }

  /// The path of `name` inside the mount.
  func path(_ name: String) -> String { "\(mountpoint)/\(name)" }

  /// Stops the process (SIGTERM, then SIGKILL), unmounts with `fusermount3 -u -z`, and
  /// removes the mount point. Safe to call more than once.
  func cleanup() {
    MountedFileSystem.tearDown(process: process, mountpoint: mountpoint)
  }

  private static func tearDown(process: SpawnedProcess, mountpoint: String) {
    if process.isRunning {
      process.send(SIGTERM)
      if !process.waitForExit(timeout: .seconds(5)) {
        process.send(SIGKILL)
        process.waitForExit(timeout: .seconds(5))
      }
    }
    MountSupport.unmount(mountpoint)
    rmdir(mountpoint)
  }
}

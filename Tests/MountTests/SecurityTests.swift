// Security through the real kernel: the mount is read-only, other users are kept out
// unless allow_other is given, nofollow refuses a symlinked image with a clear message,
// hostile block names never lead outside the mount, and the writers never write through
// a symlink at OUT.

import Foundation
import GuestViews
import MigrationFormat
import SaveFilesystem
import MigrationFormatTestSupport
import QEMUFixtures
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// One probe a child process makes after becoming another user.
enum UserProbe {
  case stat(String)
  case openDirectory(String)
  case readFile(String)
}

/// Runs `probes` in a forked child that has become uid and gid `user` (no supplementary
/// groups), and returns each probe's errno (0 when it succeeded).
///
/// The child only makes system calls on memory prepared before the fork: another thread of
/// this process may hold the allocator's lock at the moment of the fork.
func probeAsUser(_ user: UInt32, _ probes: [UserProbe]) throws -> [Int32] {
  let paths = probes.map { probe -> UnsafeMutablePointer<CChar>? in
    switch probe {
    case .stat(let p), .openDirectory(let p), .readFile(let p): return strdup(p)
    }
  }
  defer { for p in paths { free(p) } }
  let kinds: [Int] = probes.map {
    switch $0 {
    case .stat: return 0
    case .openDirectory: return 1
    case .readFile: return 2
    }
  }
  let results = UnsafeMutablePointer<Int32>.allocate(capacity: max(probes.count, 1))
  defer { results.deallocate() }
  let byte = UnsafeMutableRawPointer.allocate(byteCount: 16, alignment: 16)
  defer { byte.deallocate() }
  var st = stat()
  var fds: [Int32] = [0, 0]
  guard pipe(&fds) == 0 else { throw MountTestError("pipe: errno \(errno)") }
  let count = probes.count
  let child = fork()
  if child == 0 {
    close(fds[0])
    guard setgroups(0, nil) == 0, setgid(user) == 0, setuid(user) == 0, getuid() == user else { _exit(99) }
    for i in 0..<count {
      guard let path = paths[i] else { _exit(98) }
      var result: Int32 = 0
      switch kinds[i] {
      case 0:
        if stat(path, &st) != 0 { result = errno }
      case 1:
        let fd = open(path, O_RDONLY | O_DIRECTORY)
        if fd < 0 { result = errno } else { close(fd) }
      default:
        let fd = open(path, O_RDONLY)
        if fd < 0 {
          result = errno
        } else {
          if read(fd, byte, 1) != 1 { result = errno == 0 ? EIO : errno }
          close(fd)
        }
      }
      results[i] = result
    }
    let size = count * MemoryLayout<Int32>.size
    _exit(write(fds[1], results, size) == size ? 0 : 97)
  }
  close(fds[1])
  guard child > 0 else {
    close(fds[0])
    throw MountTestError("fork: errno \(errno)")
  }
  let size = count * MemoryLayout<Int32>.size
  var got = 0
  while got < size {
    let n = read(fds[0], UnsafeMutableRawPointer(results) + got, size - got)
    if n > 0 { got += n } else if n == 0 || errno != EINTR { break }
  }
  close(fds[0])
  var status: Int32 = 0
  while waitpid(child, &status, 0) < 0 && errno == EINTR {}
  guard status == 0, got == size else {
    throw MountTestError("the probe child as uid \(user) failed (wait status \(status), \(got) of \(size) bytes)")
  }
  return (0..<count).map { results[$0] }
}

/// setxattr(2) and utimensat(2) are looked up in libc: Glibc's module map leaves out <sys/xattr.h>.
func setxattr(_ path: String, _ name: String, _ value: [UInt8]) -> Int32 {
  typealias Setxattr = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeRawPointer?, Int, Int32) -> Int32
  guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "setxattr") else {
    errno = ENOSYS
    return -1
  }
  return value.withUnsafeBytes { unsafeBitCast(symbol, to: Setxattr.self)(path, name, $0.baseAddress, $0.count, 0) }
}

/// A small image: a dense 1 MiB pc.ram.
func smallImage(in scratch: ScratchDirectory, name: String = "image.mapped") throws -> (path: String, pcram: [UInt8]) {
  let stream = FixtureStream(blocks: [Hardening.denseBlock("pc.ram", length: 1 << 20, seed: 0x7365_6375)])
  let path = "\(scratch.path)/\(name)"
  try Hardening.write(stream, to: path)
  return (path, Hardening.contents(of: stream.blocks[0]))
}

@Suite("security", .serialized)
struct SecurityTests {
  static let nobody: UInt32 = 65534

  @Test("the mount is read-only: writing opens, create, touch, mkdir, unlink, rename, chmod, setxattr get EROFS")
  func readOnly() throws {
    let scratch = try ScratchDirectory()
    defer { withExtendedLifetime(scratch) {} }
    let (image, pcram) = try smallImage(in: scratch)
    let mount = try QEMUMount(image)
    defer { mount.cleanup() }
    #expect(mount.info.superOptions.contains("ro") || mount.info.mountOptions.contains("ro"), "\(mount.info)")
    let file = mount.path("pc.ram")
    for flags in [O_WRONLY, O_RDWR, O_WRONLY | O_TRUNC, O_RDWR | O_APPEND, O_WRONLY | O_CREAT] {
      #expect(MountSupport.openError(file, flags: flags) == .EROFS, "open(pc.ram, \(flags))")
    }
    #expect(errnoOf { Int(open(mount.path("new"), O_WRONLY | O_CREAT | O_EXCL, 0o644)) } == EROFS)
    #expect(errnoOf { Int(mkdir(mount.path("dir"), 0o755)) } == EROFS)
    #expect(errnoOf { Int(utimensat(AT_FDCWD, file, nil, 0)) } == EROFS, "touch's utimensat")
    #expect(errnoOf { Int(unlink(file)) } == EROFS)
    #expect(errnoOf { Int(rename(file, mount.path("moved"))) } == EROFS)
    #expect(errnoOf { Int(truncate(file, 0)) } == EROFS)
    #expect(errnoOf { Int(chmod(file, 0o666)) } == EROFS)
    #expect(errnoOf { Int(symlink("pc.ram", mount.path("link"))) } == EROFS)
    #expect(errnoOf { Int(setxattr(file, "user.test", [1])) } == EROFS)

    // The commands a user would type say the same.
    for (tool, args) in [("touch", [file]), ("touch", [mount.path("new")]), ("mkdir", [mount.path("dir")])] {
      let path = try #require(MountSupport.findExecutable(tool))
      let result = try CLI.run(path, args)
      #expect(result.status != 0 && result.stderr.contains("Read-only file system"), "\(tool): \(result.stderr)")
    }
    let listing = try MountSupport.listDirectory(mount.mountpoint)
    #expect(listing.contains("pc.ram") && listing.contains("info.json"))
    #expect(!listing.contains { ["new", "dir", "moved", "link"].contains($0) }, "nothing was created: \(listing)")
    #expect(Hardening.check(file, at: 0, count: 1 << 20, expected: pcram) == nil, "pc.ram is unchanged")
  }

  @Test("another user (nobody) gets EACCES without allow_other, and may read with it")
  func otherUsers() throws {
    try Hardening.require(geteuid() == 0, "becoming another user needs root")
    let scratch = try ScratchDirectory()
    defer { withExtendedLifetime(scratch) {} }
    let (image, _) = try smallImage(in: scratch)

    let mount = try QEMUMount(image)
    defer { mount.cleanup() }
    let probes: [UserProbe] = [
      .stat(mount.mountpoint), .stat(mount.path("pc.ram")), .openDirectory(mount.mountpoint),
      .readFile(mount.path("pc.ram")), .readFile(mount.path("info.json")),
    ]
    let denied = try probeAsUser(Self.nobody, probes)
    #expect(denied == [EACCES, EACCES, EACCES, EACCES, EACCES], "errnos as nobody: \(denied)")
    var st = stat()
    #expect(stat(mount.path("pc.ram"), &st) == 0, "the owner (root) still gets in")

    let shared = try QEMUMount(image, options: "allow_other")
    defer { shared.cleanup() }
    let allowed = try probeAsUser(
      Self.nobody,
      [.stat(shared.mountpoint), .stat(shared.path("pc.ram")), .openDirectory(shared.mountpoint), .readFile(shared.path("pc.ram"))])
    #expect(allowed == [0, 0, 0, 0], "errnos as nobody with allow_other: \(allowed)")
  }

  @Test("--nofollow and -o nofollow refuse a symlinked image with a clear message and mount nothing")
  func noFollow() throws {
    try MountSupport.requireFUSE()
    let scratch = try ScratchDirectory()
    defer { withExtendedLifetime(scratch) {} }
    let (image, pcram) = try smallImage(in: scratch)
    let link = "\(scratch.path)/link.mapped"
    try #require(symlink(image, link) == 0)
    let mramfs = try CLI.mramfs()
    let mountpoint = try MountSupport.makeMountpoint(prefix: "mramfs-nofollow")
    defer {
      MountSupport.unmount(mountpoint)
      rmdir(mountpoint)
    }
    for args in [
      ["mount", "--nofollow", link, mountpoint], ["mount", link, mountpoint, "-o", "nofollow"],
      [link, mountpoint, "-o", "ro,nofollow"], ["mount", "-f", "--nofollow", link, mountpoint],
    ] {
      let result = try CLI.run(mramfs, args, timeout: .seconds(30))
      let command = "mramfs \(args.joined(separator: " "))"
      #expect(result.exitedNormally && result.status == 1, "\(command) exited \(result.status)")
      #expect(result.stderrLines.count == 1, "\(command): one line, got:\n\(result.stderr)")
      #expect(result.stderr.contains("is a symbolic link") && result.stderr.contains("nofollow"), "\(command): \(result.stderr)")
      #expect(MountSupport.mount(at: mountpoint) == nil, "\(command) mounted something")
      #expect(mramfsDaemons(mountpoint).isEmpty)
    }
    // The image itself is fine, and without nofollow the link is followed.
    let followed = try QEMUMount(link)
    defer { followed.cleanup() }
    #expect(Hardening.check(followed.path("pc.ram"), at: 0, count: 1 << 20, expected: pcram) == nil)
    let direct = try QEMUMount(image, options: "nofollow")
    defer { direct.cleanup() }
    #expect(Hardening.check(direct.path("pc.ram"), at: 0, count: 4096, expected: pcram) == nil)
  }

  /// Block names that try to leave the mount, collide, or hold control bytes. (Names that are
  /// not UTF-8, or hold a NUL byte, are refused by the parser: such a file does not mount.)
  static let hostileNames: [[UInt8]] = [
    "../../etc/passwd", "/../x", "..", ".", "/", "//", "a/../../b", "./pc.ram", "x/..", "x/./y", "info.json",
    "pc.ram", "/pc.ram", "evil\nname%2F", "dir/", "%2E%2E", "d/e", "d", "tab\there", "caf\u{e9}/../..",
    "\u{202e}lmth.exe", "/rom@etc/../../../root",
  ].map { Array($0.utf8) } + [[0x2f, 0x2e, 0x2e, 0x2f, 0x7f, 0x2f, 0x2e, 0x2e]]

  @Test("hostile block names stay inside the mount, and user.mramfs.block gives back each exact name")
  func hostileNames() throws {
    try MountSupport.requireFUSE()
    try Self.checkNamesStayInside(Self.hostileNames)
  }

  @Test("a block name whose escaped form is longer than NAME_MAX (255 bytes) is still reachable")
  func longEscapedName() throws {
    try MountSupport.requireFUSE()
    // 255 bytes of "../" percent-encode to 425 bytes ("..%2F" 85 times); a 255-byte name of
    // "/" would need 765. BlockPaths shortens such names to fit NAME_MAX (hash suffix).
    let long = Array(String(repeating: "../", count: 85).utf8)
    let slashes = [UInt8](repeating: UInt8(ascii: "/"), count: 255)
    try Self.checkNamesStayInside([long, slashes, Array("pc.ram".utf8)])
    for path in BlockPaths.assign([BlockName(bytes: long), BlockName(bytes: slashes)]) {
      #expect(path.count == 1 && path[0].utf8.count <= BlockPaths.maximumNameLength, "\(path)")
    }
  }

  /// Mounts a file whose blocks carry `names`, and checks through the kernel that every entry
  /// is an ordinary name that resolves under the mount, that each block file's
  /// `user.mramfs.block` is its exact name, and that it serves that block's bytes.
  static func checkNamesStayInside(_ hostile: [[UInt8]]) throws {
    let scratch = try ScratchDirectory()
    defer { withExtendedLifetime(scratch) {} }
    let blocks = hostile.enumerated().map { i, name -> FixtureBlock in
      var rng = SplitMix64(state: 0x6e61_6d65 + UInt64(i))
      return FixtureBlock(nameBytes: name, length: 8192, present: [1: Hardening.randomPage(&rng)])
    }
    let image = "\(scratch.path)/hostile.mapped"
    try Hardening.write(FixtureStream(blocks: blocks), to: image)
    let file = try MigrationFile(path: image)
    #expect(file.blocks.map(\.name.bytes) == hostile)

    let mount = try QEMUMount(image)
    defer { mount.cleanup() }
    let root = mount.mountpoint

    // Walk the whole tree: every name is an ordinary one, every path resolves under the mount.
    var files: [String] = []
    var problems: [String] = []
    func walk(_ relative: String) throws {
      let directory = relative.isEmpty ? root : "\(root)/\(relative)"
      let names = try MountSupport.listDirectory(directory)
      #expect(names.filter { $0 == "." || $0 == ".." }.count == 2, "\(directory) lists . and .. once each: \(names)")
      for name in names where name != "." && name != ".." {
        if name.isEmpty || name.contains("/") || name.utf8.count > 255 { problems.append("bad entry \(name.debugDescription)") }
        let path = relative.isEmpty ? name : "\(relative)/\(name)"
        var st = stat()
        guard lstat("\(root)/\(path)", &st) == 0 else {
          problems.append("lstat \(path.debugDescription): errno \(errno)")
          continue
        }
        if let resolved = realpath("\(root)/\(path)", nil) {
          let real = String(cString: resolved)
          free(resolved)
          if !real.hasPrefix(root + "/") { problems.append("\(path.debugDescription) resolves to \(real)") }
        } else {
          problems.append("realpath \(path.debugDescription): errno \(errno)")
        }
        if (st.st_mode & S_IFMT) == S_IFDIR { try walk(path) } else { files.append(path) }
      }
    }
    try walk("")
    #expect(problems.isEmpty, "\(problems)")

    // Each block's file carries its exact name, and its bytes. The other files (info.json,
    // physmem, devices/…) are mramfs's own, under top-level names BlockPaths keeps for them.
    var names: [[UInt8]] = []
    var blockFiles: [String] = []
    let value = UnsafeMutableRawBufferPointer.allocate(byteCount: 1024, alignment: 1)
    defer { value.deallocate() }
    for path in files {
      let n = getxattr("\(root)/\(path)", "user.mramfs.block", value.baseAddress, value.count)
      guard n >= 0 else {
        #expect(errno == ENODATA && BlockPaths.reserved.contains(path.split(separator: "/").first.map(String.init) ?? ""), "\(path.debugDescription): no block xattr (errno \(errno))")
        continue
      }
      let name = Array(value[0..<n])
      names.append(name)
      blockFiles.append(path)
      guard let index = file.blocks.firstIndex(where: { $0.name.bytes == name }) else { continue }
      #expect(
        Hardening.check("\(root)/\(path)", at: 0, count: 8192, expected: Hardening.contents(of: blocks[index])) == nil,
        "\(path.debugDescription) serves block \(index)")
    }
    let order = { (a: [UInt8], b: [UInt8]) in a.lexicographicallyPrecedes(b) }
    #expect(names.sorted(by: order) == hostile.sorted(by: order), "the xattrs give back every name exactly once")
    // And the mount agrees with BlockPaths, the documented mapping.
    let assigned = BlockPaths.assign(file.blocks.map(\.name)).map { $0.joined(separator: "/") }
    #expect(Set(assigned) == Set(blockFiles))
    #expect(files.contains("info.json"))
  }

  @Test("create and synth: a symlink at OUT is refused without --force, and --force replaces the link, not its target")
  func writerSymlink() throws {
    let scratch = try ScratchDirectory()
    defer { withExtendedLifetime(scratch) {} }
    let mramfs = try CLI.mramfs()
    let raw = "\(scratch.path)/input.raw"
    try Data(repeating: 0x5a, count: 3 * 4096).write(to: URL(fileURLWithPath: raw))
    for command in [["create", "--block", "pc.ram=\(raw)"], ["synth", "--ram", "4M", "--density", "0.5"]] {
      let target = "\(scratch.path)/target-\(command[0])"
      let link = "\(scratch.path)/out-\(command[0])"
      let precious = Data("the link's target, not a migration file\n".utf8)
      try precious.write(to: URL(fileURLWithPath: target))
      try #require(symlink(target, link) == 0)
      var before = stat()
      try #require(stat(target, &before) == 0)
      let listing = try FileManager.default.contentsOfDirectory(atPath: scratch.path).sorted()

      let refused = try CLI.run(mramfs, command + ["-o", link])
      #expect(refused.exitedNormally && refused.status == 1, "\(command[0]) onto a symlink exited \(refused.status)")
      #expect(refused.stderr.contains("symbolic link"), "\(refused.stderr)")
      var st = stat()
      #expect(lstat(link, &st) == 0 && (st.st_mode & S_IFMT) == S_IFLNK, "OUT is still the link")

      let forced = try CLI.run(mramfs, command + ["-o", link, "--force"], timeout: .seconds(120))
      #expect(forced.status == 0, "\(command[0]) --force: \(forced.stderr)")
      #expect(lstat(link, &st) == 0 && (st.st_mode & S_IFMT) == S_IFREG, "OUT is now a regular file, not a link")
      #expect((try? MigrationFile(path: link))?.format == .mappedRAM)
      var after = stat()
      #expect(lstat(target, &after) == 0 && (after.st_mode & S_IFMT) == S_IFREG)
      #expect(after.st_ino == before.st_ino && after.st_size == before.st_size, "the target is the same file")
      #expect(
        after.st_mtim.tv_sec == before.st_mtim.tv_sec && after.st_mtim.tv_nsec == before.st_mtim.tv_nsec,
        "the target was not written")
      #expect(try Data(contentsOf: URL(fileURLWithPath: target)) == precious)
      #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path).sorted() == listing, "no temporary file left")
    }
  }
}

// Real QEMU files mounted through the kernel with the built `mramfs` binary, in
// background mode (the command returns once the mount is ready), checked with
// plain syscalls against the format library and against pmemsave (.pcram).
// Every mount is undone in cleanup (`fusermount3 -u -z`), and the daemon must exit.

import Foundation
import GuestViews
import MigrationFormat
import SaveFilesystem
import QEMUFixtures
import Testing

#if canImport(Glibc)
  import Glibc
#endif

// MARK: - Helpers

/// The processes serving a mount on `mountpoint`: an `mramfs` whose arguments name it.
func mramfsDaemons(_ mountpoint: String) -> [pid_t] {
  guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
  var pids: [pid_t] = []
  for entry in entries {
    guard let pid = pid_t(entry), pid != getpid(), isAlive(pid),
      let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline"), !data.isEmpty
    else { continue }
    let args = data.split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
    guard let argv0 = args.first, argv0.hasSuffix("mramfs"), args.contains(mountpoint) else { continue }
    pids.append(pid)
  }
  return pids
}

/// Whether `pid` exists and is not a zombie (a daemon reparented to a PID 1 that does not reap).
func isAlive(_ pid: pid_t) -> Bool {
  guard kill(pid, 0) == 0 || errno == EPERM else { return false }
  guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
    let close = stat.lastIndex(of: ")")
  else { return false }
  let state = stat[stat.index(after: close)...].split(separator: " ").first
  return state != "Z" && state != "X"
}

/// Waits until none of `pids` is alive; returns whether they went within `timeout`.
func waitForExit(_ pids: [pid_t], timeout: Duration) -> Bool {
  let deadline = ContinuousClock.now + timeout
  while pids.contains(where: isAlive) {
    if ContinuousClock.now >= deadline { return false }
    usleep(20_000)
  }
  return true
}

/// `mramfs mount FILE DIR [-o OPTIONS]` in background mode on a fresh mount point.
final class QEMUMount {
  let mountpoint: String
  let image: String
  let info: MountInfo
  /// The daemon serving the mount.
  let daemon: pid_t
  private var cleaned = false

  init(_ image: String, options: String? = nil, arguments: [String] = []) throws {
    try MountSupport.requireFUSE()
    let mramfs = try CLI.mramfs()
    let mountpoint = try MountSupport.makeMountpoint(prefix: "mramfs-qemu")
    var args = ["mount", image, mountpoint] + arguments
    if let options { args += ["-o", options] }
    let result: CommandResult
    do {
      result = try CLI.run(mramfs, args, timeout: .seconds(60))
    } catch {
      MountSupport.unmount(mountpoint)
      rmdir(mountpoint)
      throw error
    }
    // Background mode: the command returns only once the mount answers.
    guard result.exitedNormally, result.status == 0, let info = MountSupport.mount(at: mountpoint) else {
      MountSupport.unmount(mountpoint)
      rmdir(mountpoint)
      throw MountTestError(
        "mramfs \(args.joined(separator: " ")) exited \(result.status) (mounted: \(MountSupport.mount(at: mountpoint) != nil)); stderr:\n\(result.stderr)"
      )
    }
    let daemons = mramfsDaemons(mountpoint)
    guard daemons.count == 1 else {
      MountSupport.unmount(mountpoint)
      rmdir(mountpoint)
      throw MountTestError("expected one mramfs daemon serving \(mountpoint), found \(daemons)")
    }
    self.mountpoint = mountpoint
    self.image = image
    self.info = info
    self.daemon = daemons[0]
  }

  func path(_ relative: String) -> String { "\(mountpoint)/\(relative)" }

  /// Unmounts (lazily), waits for the daemon to exit, removes the mount point. Safe to call twice.
  func cleanup() {
    guard !cleaned else { return }
    cleaned = true
    MountSupport.unmount(mountpoint)
    if !waitForExit([daemon], timeout: .seconds(10)) {
      kill(daemon, SIGKILL)
      Issue.record("the mramfs daemon \(daemon) of \(mountpoint) did not exit within 10 s of the unmount")
    }
    rmdir(mountpoint)
  }
}

/// getxattr(2): Glibc's module map leaves out <sys/xattr.h>, so it is looked up in libc.
func getxattr(_ path: String, _ name: String, _ value: UnsafeMutableRawPointer?, _ size: Int) -> Int {
  typealias Getxattr = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeMutableRawPointer?, Int) -> Int
  guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "getxattr") else {  // RTLD_DEFAULT
    errno = ENOSYS
    return -1
  }
  let call = unsafeBitCast(symbol, to: Getxattr.self)
  return call(path, name, value, size)
}

/// A small deterministic generator (SplitMix64), so a failing run can be replayed from its seed.
struct SplitMix64: RandomNumberGenerator {
  var state: UInt64
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}

/// The mount-relative path of every block, from the rule of BlockPaths for clean names (one leading '/' dropped).
func expectedPath(_ blockName: String) -> String {
  blockName.hasPrefix("/") ? String(blockName.dropFirst()) : blockName
}

/// Collects errors from worker threads.
final class ThreadReport: @unchecked Sendable {
  private let lock = NSLock()
  private var messages: [String] = []
  private var reads = 0
  private var bytes: UInt64 = 0
  func fail(_ message: String) {
    lock.lock()
    if messages.count < 10 { messages.append(message) }
    lock.unlock()
  }
  func count(_ n: Int) {
    lock.lock()
    reads += 1
    bytes += UInt64(n)
    lock.unlock()
  }
  var snapshot: (messages: [String], reads: Int, bytes: UInt64) {
    lock.lock()
    defer { lock.unlock() }
    return (messages, reads, bytes)
  }
}

// MARK: - Tests

@Suite("real QEMU files, mounted", .serialized)
struct MountRealQEMUTests {
  static let mounted = ["pc-256", "q35-256-mfd", "pc-5g", "q35-5g-mfd", "pc-256-libvirt", "pc-256-live"]

  // MARK: Contents

  @Test("every block file reads as the library does; pc.ram equals pmemsave; stale bytes read as zeros", arguments: mounted)
  func contents(_ name: String) throws {
    try checkContents(name, options: nil)
  }

  @Test(
    "the same with -o direct_io,read=splice (replies spliced from the image)",
    arguments: ["pc-256", "pc-256-live", "pc-256-libvirt"])
  func contentsSpliced(_ name: String) throws {
    try checkContents(name, options: "direct_io,read=splice")
  }

  func checkContents(_ name: String, options: String?) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let file = try MigrationFile(path: fixtures.path(s.file))
    let mount = try QEMUMount(fixtures.path(s.file), options: options)
    defer { mount.cleanup() }

    let chunk = 1 << 20
    let viaMount = Buffer(chunk, fill: 0xEE)
    defer { withExtendedLifetime(viaMount) {} }  // its memory is used through raw pointers
    let viaLibrary = Buffer(chunk, fill: 0xDD)
    defer { withExtendedLifetime(viaLibrary) {} }  // its memory is used through raw pointers
    let ref = Buffer(chunk)
    defer { withExtendedLifetime(ref) {} }  // its memory is used through raw pointers
    let paths = BlockPaths.assign(file.blocks.map(\.name)).map { $0.joined(separator: "/") }
    for (index, block) in file.blocks.enumerated() {
      let path = mount.path(paths[index])
      let fd = open(path, O_RDONLY | O_CLOEXEC)
      guard fd >= 0 else {
        Issue.record("\(name): cannot open \(path): \(String(cString: strerror(errno)))")
        continue
      }
      defer { close(fd) }
      let isPCRAM = block.name.description == "pc.ram"
      var refFD: Int32 = -1
      if isPCRAM {
        refFD = open(fixtures.path(s.pcram), O_RDONLY | O_CLOEXEC)
        #expect(refFD >= 0, "\(name): cannot open \(s.pcram)")
      }
      defer { if refFD >= 0 { close(refFD) } }
      let excluded = s.excludedBlockRanges
      var nextRefData = refFD >= 0 ? seekData(refFD, 0) : nil
      var off: UInt64 = 0
      var failed = false
      while off < block.length && !failed {
        let n = Int(min(UInt64(chunk), block.length - off))
        let got = preadFully(fd, viaMount.base, n, off)
        let want = try file.read(block: index, at: off, into: viaLibrary.slice(n))
        guard got == n, want == n else {
          Issue.record("\(name): \(paths[index]) at \(hex(off)): mount read \(got) bytes, library \(want), expected \(n)")
          break
        }
        if let d = firstDifference(viaMount.base, viaLibrary.base, n) {
          Issue.record(
            "\(name): \(paths[index]) differs from the library first at \(hex(off + UInt64(d))): mount \(viaMount.raw[d]), library \(viaLibrary.raw[d])"
          )
          break
        }
        if refFD >= 0 {
          if let d = nextRefData, d < off { nextRefData = seekData(refFD, off) }
          let refBase: UnsafeRawPointer
          if let d = nextRefData, d < off + UInt64(n) {
            guard preadFully(refFD, ref.base, n, off) == n else {
              Issue.record("\(name): short read of \(s.pcram) at \(hex(off))")
              break
            }
            refBase = UnsafeRawPointer(ref.base)
          } else {
            refBase = UnsafeRawPointer(zeros.base)
          }
          for part in split(off, UInt64(n), by: excluded) where !part.excluded {
            let at = Int(part.range.lowerBound - off)
            let count = Int(part.range.upperBound - part.range.lowerBound)
            if let d = firstDifference(viaMount.base + at, refBase + at, count) {
              Issue.record("\(name): pc.ram in the mount differs from \(s.pcram) first at \(hex(part.range.lowerBound + UInt64(d)))")
              failed = true
              break
            }
          }
        }
        off += UInt64(n)
      }
      // End of file: nothing more.
      #expect(pread(fd, viaMount.base, 4096, off_t(block.length)) == 0, "\(name): \(paths[index]) reads nothing at EOF")
    }

    // The live save's stale region: 0xA5 in the image, zeros in the mount.
    if let stale = s.staleRegion {
      let start = try #require(s.blockOffset(ofGPA: stale.gpa))
      let fd = open(mount.path("pc.ram"), O_RDONLY | O_CLOEXEC)
      try #require(fd >= 0)
      defer { close(fd) }
      let buf = Buffer(Int(stale.length), fill: 0xEE)
      defer { withExtendedLifetime(buf) {} }  // its memory is used through raw pointers
      #expect(preadFully(fd, buf.base, Int(stale.length), start) == Int(stale.length))
      #expect(isZero(buf.base, Int(stale.length)), "\(name): the stale region reads as zeros through the mount")
      // A read that starts mid-page inside it, and one that ends inside it.
      #expect(preadFully(fd, buf.base, 5000, start + 1234) == 5000 && isZero(buf.base, 5000))
      #expect(preadFully(fd, buf.base, 8192, start - 4096) == 8192 && isZero(buf.base + 4096, 4096))
    }
  }

  // MARK: SEEK_DATA / SEEK_HOLE and stat

  @Test("SEEK_DATA/SEEK_HOLE follow the bitmap; stat reports size, blocks, modes and block size", arguments: mounted)
  func seekMapAndStat(_ name: String) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let file = try MigrationFile(path: fixtures.path(s.file))
    let mount = try QEMUMount(fixtures.path(s.file))
    defer { mount.cleanup() }

    let paths = BlockPaths.assign(file.blocks.map(\.name)).map { $0.joined(separator: "/") }
    var directories = Set<String>([""])
    for (index, block) in file.blocks.enumerated() {
      let path = mount.path(paths[index])
      var st = stat()
      guard stat(path, &st) == 0 else {
        Issue.record("\(name): stat \(path): \(String(cString: strerror(errno)))")
        continue
      }
      let bitmap = try #require(block.bitmap)
      #expect(st.st_mode & S_IFMT == S_IFREG, "\(paths[index]) is a regular file")
      #expect(st.st_mode & 0o7777 == 0o444, "\(paths[index]) mode \(String(st.st_mode & 0o7777, radix: 8))")
      #expect(UInt64(st.st_size) == block.length, "\(paths[index]) size")
      #expect(UInt64(st.st_blocks) * 512 == bitmap.populated * block.pageSize, "\(paths[index]) st_blocks")
      #expect(st.st_blksize == 4096, "\(paths[index]) st_blksize")
      #expect(st.st_nlink == 1)
      var prefix = ""
      for c in paths[index].split(separator: "/").dropLast() {
        prefix += (prefix.isEmpty ? "" : "/") + c
        directories.insert(prefix)
      }

      let fd = open(path, O_RDONLY | O_CLOEXEC)
      guard fd >= 0 else {
        Issue.record("\(name): open \(path): \(String(cString: strerror(errno)))")
        continue
      }
      defer { close(fd) }
      // Walk data and holes as `cp --sparse` would.
      var walked: [Range<UInt64>] = []
      var pos: UInt64 = 0
      var lastHoleEnd: UInt64? = nil
      while let data = seekData(fd, pos) {
        guard let hole = seekHole(fd, data), hole > data else {
          Issue.record("\(name): \(paths[index]): SEEK_HOLE from data at \(hex(data)) failed or went back")
          break
        }
        walked.append(data..<hole)
        pos = hole
        lastHoleEnd = hole
        if hole >= block.length { break }
      }
      let expected = bitmap.runs().map { ($0.lowerBound * block.pageSize)..<($0.upperBound * block.pageSize) }
      #expect(walked == expected, "\(name): \(paths[index]): SEEK map \(walked.prefix(4))… vs bitmap runs \(expected.prefix(4))…")
      // The final hole is EOF: SEEK_HOLE inside the last run (or anywhere in a hole) never passes the size.
      if let last = expected.last {
        #expect(lastHoleEnd == last.upperBound)
        #expect(errnoOf { Int(lseek(fd, off_t(last.upperBound), 3)) } == ENXIO,
                "\(name): \(paths[index]): SEEK_DATA after the last data")
        #expect(seekHole(fd, last.lowerBound) == last.upperBound)
        #expect(seekData(fd, last.upperBound - 1) == last.upperBound - 1, "SEEK_DATA inside data stays put")
      } else {
        #expect(errnoOf { Int(lseek(fd, 0, 3)) } == ENXIO, "\(name): \(paths[index]) has no data: ENXIO from 0")
      }
      #expect(seekHole(fd, 0) == (expected.first?.lowerBound == 0 ? expected.first!.upperBound : 0))
      #expect(errnoOf { Int(lseek(fd, off_t(block.length), 3)) } == ENXIO, "SEEK_DATA at EOF is ENXIO")
      #expect(errnoOf { Int(lseek(fd, off_t(block.length), 4)) } == ENXIO, "SEEK_HOLE at EOF is ENXIO")
      #expect(errnoOf { Int(lseek(fd, off_t(block.length + 12345), 3)) } == ENXIO, "SEEK_DATA past EOF is ENXIO")
      // Probes in the middle of holes and runs, off page boundaries.
      for (i, run) in expected.prefix(64).enumerated() {
        let holeStart = i == 0 ? 0 : expected[i - 1].upperBound
        if holeStart < run.lowerBound {
          let mid = holeStart + (run.lowerBound - holeStart) / 2 + 7
          #expect(seekData(fd, mid) == run.lowerBound, "SEEK_DATA from the hole at \(hex(mid))")
          #expect(seekHole(fd, mid) == mid, "SEEK_HOLE inside a hole stays put at \(hex(mid))")
        }
        let inRun = run.lowerBound + (run.upperBound - run.lowerBound) / 2 + 3
        #expect(seekData(fd, inRun) == inRun)
        #expect(seekHole(fd, inRun) == run.upperBound)
      }
    }
    for dir in directories {
      var st = stat()
      #expect(stat(mount.path(dir), &st) == 0)
      #expect(st.st_mode & S_IFMT == S_IFDIR, "\(dir) is a directory")
      #expect(st.st_mode & 0o7777 == 0o555, "\(dir) mode \(String(st.st_mode & 0o7777, radix: 8))")
    }
    var st = stat()
    #expect(stat(mount.path("info.json"), &st) == 0 && st.st_mode & 0o7777 == 0o444 && st.st_mode & S_IFMT == S_IFREG)
  }

  // MARK: Layout

  @Test("the directory tree, info.json and the user.mramfs.block xattr", arguments: ["pc-256", "q35-256-mfd", "pc-256-libvirt"])
  func layout(_ name: String) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let image = fixtures.path(s.file)
    let mount = try QEMUMount(image)
    defer { mount.cleanup() }

    if name == "pc-256" {
      #expect(access(mount.path("0000:00:02.0/vga.vram"), R_OK) == 0)
      #expect(access(mount.path("0000:00:02.0/vga.rom"), R_OK) == 0)
    }
    #expect(access(mount.path("rom@etc/acpi/tables"), R_OK) == 0)
    #expect(access(mount.path("rom@etc/table-loader"), R_OK) == 0)

    // Walk the whole tree with readdir.
    var files = Set<String>()
    var dirs = Set<String>()
    func walk(_ rel: String) throws {
      let names = try MountSupport.listDirectory(rel.isEmpty ? mount.mountpoint : mount.path(rel))
      #expect(names.contains(".") && names.contains(".."), "\(rel): dot entries")
      for n in names where n != "." && n != ".." {
        let child = rel.isEmpty ? n : "\(rel)/\(n)"
        var st = stat()
        #expect(lstat(mount.path(child), &st) == 0)
        if st.st_mode & S_IFMT == S_IFDIR {
          dirs.insert(child)
          try walk(child)
        } else {
          files.insert(child)
        }
      }
    }
    try walk("")
    // cpu/ and devices/ (the decoded state views) are checked by StateMountTests.
    let stateFiles = ["cpu/0/registers.json"] + (try MigrationFile(path: image)).deviceStates().map { "devices/\($0.fileName)" }
    // vmcore (checked by VmcoreRealQEMUTests) is there with physmem and the registers.
    let wantFiles = Set(s.ramblocks.map { expectedPath($0.name) } + ["info.json", "physmem", "vmcore"] + stateFiles)
    var wantDirs = Set<String>()
    for f in wantFiles {
      let parts = f.split(separator: "/")
      for i in 1..<max(parts.count, 1) { wantDirs.insert(parts[0..<i].joined(separator: "/")) }
    }
    #expect(files == wantFiles)
    #expect(dirs == wantDirs)

    // info.json is `mramfs info --json` of the same path.
    let info = try CLI.run(try CLI.mramfs(), ["info", "--json", image])
    #expect(info.status == 0)
    let served = try MountSupport.readFile(mount.path("info.json"))
    #expect(String(decoding: served, as: UTF8.self) == info.stdout)
    #expect(!info.stdout.isEmpty)

    // Each block file names its block exactly.
    for b in s.ramblocks {
      let path = mount.path(expectedPath(b.name))
      let size = getxattr(path, "user.mramfs.block", nil, 0)
      #expect(size == b.name.utf8.count, "\(b.name): xattr size query")
      var value = [UInt8](repeating: 0, count: 256)
      let n = value.withUnsafeMutableBytes { getxattr(path, "user.mramfs.block", $0.baseAddress, $0.count) }
      #expect(n >= 0 && Array(value[0..<max(n, 0)]) == Array(b.name.utf8), "\(b.name): user.mramfs.block")
      // Too small a buffer is ERANGE; an unknown name is ENODATA.
      let tiny = Buffer(2)
      defer { withExtendedLifetime(tiny) {} }  // its memory is used through raw pointers
      #expect(errnoOf { getxattr(path, "user.mramfs.block", tiny.base, 2) } == ERANGE)
      #expect(errnoOf { getxattr(path, "user.mramfs.nope", nil, 0) } == ENODATA)
    }
  }

  // MARK: errno

  @Test("errno: ENOENT, ENOTDIR, EROFS, EISDIR, ENXIO")
  func errnoCases() throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario("pc-256")
    let file = try MigrationFile(path: fixtures.path(s.file))
    let mount = try QEMUMount(fixtures.path(s.file))
    defer { mount.cleanup() }
    var st = stat()
    for missing in ["missing", "rom@etc/missing", "0000:00:02.0/vga.ram", "PC.RAM"] {
      #expect(MountSupport.openError(mount.path(missing), flags: O_RDONLY) == .ENOENT, "\(missing)")
      #expect(errnoOf { Int(stat(mount.path(missing), &st)) } == ENOENT, "\(missing)")
    }
    #expect(errnoOf { Int(stat(mount.path("pc.ram/x"), &st)) } == ENOTDIR)
    for flags in [O_WRONLY, O_RDWR, O_RDONLY | O_TRUNC, O_WRONLY | O_APPEND] {
      #expect(MountSupport.openError(mount.path("pc.ram"), flags: flags) == .EROFS, "open flags \(flags)")
    }
    #expect(MountSupport.openError(mount.path("0000:00:02.0/vga.vram"), flags: O_WRONLY) == .EROFS)
    #expect(MountSupport.openError(mount.path("info.json"), flags: O_WRONLY) == .EROFS)
    #expect(MountSupport.openError(mount.path("new-file"), flags: O_WRONLY | O_CREAT) == .EROFS)
    #expect(MountSupport.openError(mount.path("rom@etc"), flags: O_WRONLY) == .EISDIR)
    #expect(errnoOf { Int(mkdir(mount.path("newdir"), 0o755)) } == EROFS)
    #expect(errnoOf { Int(unlink(mount.path("pc.ram"))) } == EROFS)
    #expect(errnoOf { Int(truncate(mount.path("pc.ram"), 0)) } == EROFS)
    #expect(errnoOf { Int(rename(mount.path("pc.ram"), mount.path("pc.ram2"))) } == EROFS)

    // ENXIO from SEEK_DATA at and after the last data of pc.ram.
    let block = try #require(file.block(named: "pc.ram"))
    let lastRun = try #require(block.bitmap?.runs().last)
    let end = lastRun.upperBound * block.pageSize
    let fd = open(mount.path("pc.ram"), O_RDONLY | O_CLOEXEC)
    try #require(fd >= 0)
    defer { close(fd) }
    #expect(end < block.length, "pc.ram's last page is a hole in this fixture")
    for off in [end, end + 1, end + 4096, block.length - 1, block.length, block.length + (1 << 30)] {
      #expect(errnoOf { Int(lseek(fd, off_t(off), 3)) } == ENXIO, "SEEK_DATA at \(hex(off))")
    }
    #expect(lseek(fd, off_t(end - 1), 3) == off_t(end - 1), "the byte before is data")
    #expect(errnoOf { Int(lseek(fd, -1, 3)) } != nil, "a negative offset is refused")
  }

  // MARK: Concurrency

  @Test(
    "16 threads read random ranges of pc.ram and vga.vram at once, every byte as the library reads it",
    arguments: [nil, "direct_io", "direct_io,read=splice"] as [String?])
  func concurrentReads(_ options: String?) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario("pc-256")
    let file = try MigrationFile(path: fixtures.path(s.file))
    let mount = try QEMUMount(fixtures.path(s.file), options: options)
    defer { mount.cleanup() }

    let targets: [(path: String, index: Int)] = [
      (mount.path("pc.ram"), try #require(file.blockIndex(named: "pc.ram"))),
      (mount.path("0000:00:02.0/vga.vram"), try #require(file.blockIndex(named: "0000:00:02.0/vga.vram"))),
    ]
    let threads = 16
    let readsPerThread = options == nil ? 2000 : 1000
    let seed = UInt64.random(in: 0...UInt64.max)
    let report = ThreadReport()
    let group = DispatchGroup()
    for t in 0..<threads {
      group.enter()
      let thread = Thread {
        defer { group.leave() }
        var rng = SplitMix64(state: seed &+ UInt64(t) &* 0x1_0000_0001)
        let maxRead = 4 << 20
        let viaMount = Buffer(maxRead + 4096, fill: 0xEE)
        defer { withExtendedLifetime(viaMount) {} }  // its memory is used through raw pointers
        let viaLibrary = Buffer(maxRead + 4096, fill: 0xDD)
        defer { withExtendedLifetime(viaLibrary) {} }  // its memory is used through raw pointers
        var fds: [Int32] = []
        for target in targets {
          let fd = open(target.path, O_RDONLY | O_CLOEXEC)
          if fd < 0 {
            report.fail("thread \(t): open \(target.path): \(String(cString: strerror(errno)))")
            return
          }
          fds.append(fd)
        }
        defer { for fd in fds { close(fd) } }
        for r in 0..<readsPerThread {
          let which = Int(rng.next() % UInt64(targets.count))
          let block = file.blocks[targets[which].index]
          let length = block.length
          // Sizes from 1 byte to 4 MiB, mostly small.
          let size: Int
          switch rng.next() % 100 {
          case 0..<45: size = Int(rng.next() % 4096) + 1
          case 45..<80: size = Int(rng.next() % (256 << 10)) + 1
          case 80..<97: size = Int(rng.next() % (1 << 20)) + (1 << 19)
          default: size = Int(rng.next() % UInt64(maxRead)) + 1
          }
          // Offsets: around data runs (page boundaries ± a few bytes), near EOF, or anywhere.
          let offset: UInt64
          switch rng.next() % 10 {
          case 0..<4:
            let runs = block.bitmap?.runs() ?? []
            if let run = runs.isEmpty ? nil : runs[Int(rng.next() % UInt64(runs.count))] {
              let edge = (rng.next() % 2 == 0 ? run.lowerBound : run.upperBound) * block.pageSize
              let jitter = Int64(rng.next() % 8193) - 4096
              offset = UInt64(max(0, min(Int64(length) - 1, Int64(edge) + jitter)))
            } else {
              offset = rng.next() % length
            }
          case 4:
            offset = length - min(length, rng.next() % UInt64(2 * size + 1))
          default:
            offset = rng.next() % length
          }
          let expected = offset >= length ? 0 : Int(min(UInt64(size), length - offset))
          let got = preadFully(fds[which], viaMount.base, size, offset)
          let want: Int
          do {
            want = try file.read(block: targets[which].index, at: offset, into: viaLibrary.slice(size))
          } catch {
            report.fail("thread \(t) read \(r): library read failed: \(error)")
            return
          }
          if got != expected || want != expected {
            report.fail(
              "thread \(t) read \(r) (seed \(seed)): \(block.name) at \(hex(offset)) size \(size): mount gave \(got), library \(want), expected \(expected)"
            )
            return
          }
          if let d = firstDifference(viaMount.base, viaLibrary.base, got) {
            report.fail(
              "thread \(t) read \(r) (seed \(seed)): \(block.name) at \(hex(offset)) size \(size): first difference at \(hex(offset + UInt64(d)))"
            )
            return
          }
          report.count(got)
        }
      }
      thread.stackSize = 1 << 20
      thread.start()
    }
    let finished = group.wait(timeout: .now() + 180) == .success
    #expect(finished, "the reader threads did not finish within 180 s")
    let result = report.snapshot
    #expect(result.messages.isEmpty, "\(result.messages.joined(separator: "\n"))")
    if finished { #expect(result.reads == threads * readsPerThread) }
    #expect(result.bytes > 0)
  }

  // MARK: Lifecycle

  @Test("SIGTERM to the daemon unmounts within 5 s")
  func sigtermUnmounts() throws {
    let fixtures = try Fixtures.load()
    let mount = try QEMUMount(fixtures.path(try fixtures.scenario("pc-256").file))
    defer { mount.cleanup() }
    #expect(mount.info.fileSystemType == "fuse.mramfs")
    #expect(mount.info.superOptions.contains("ro") || mount.info.mountOptions.contains("ro"))
    // Keep a file open meanwhile: the daemon must still go.
    let fd = open(mount.path("pc.ram"), O_RDONLY | O_CLOEXEC)
    #expect(fd >= 0)
    defer { if fd >= 0 { close(fd) } }
    #expect(kill(mount.daemon, SIGTERM) == 0)
    #expect(MountSupport.waitForUnmount(mount.mountpoint, timeout: .seconds(5)), "still mounted 5 s after SIGTERM")
    #expect(waitForExit([mount.daemon], timeout: .seconds(5)), "the daemon is still running 5 s after SIGTERM")
  }

  @Test("`mramfs unmount DIR` unmounts, and clears a mount whose daemon was killed")
  func unmountCommand() throws {
    let fixtures = try Fixtures.load()
    let image = fixtures.path(try fixtures.scenario("pc-256").file)
    let mramfs = try CLI.mramfs()

    let mount = try QEMUMount(image)
    defer { mount.cleanup() }
    let result = try CLI.run(mramfs, ["unmount", mount.mountpoint])
    #expect(result.status == 0, "stderr: \(result.stderr)")
    #expect(MountSupport.mount(at: mount.mountpoint) == nil, "still mounted after `mramfs unmount`")
    #expect(waitForExit([mount.daemon], timeout: .seconds(5)))

    // SIGKILL leaves a stale mount (ENOTCONN); `mramfs unmount` clears it.
    let killed = try QEMUMount(image)
    defer { killed.cleanup() }
    kill(killed.daemon, SIGKILL)
    #expect(waitForExit([killed.daemon], timeout: .seconds(5)))
    var st = stat()
    // A dead connection: ENOTCONN, or ECONNABORTED while the kernel is still tearing it down.
    let dead = errnoOf { Int(stat(killed.path("pc.ram"), &st)) }
    #expect(dead == ENOTCONN || dead == ECONNABORTED, "a killed daemon leaves a dead mount, got errno \(String(describing: dead))")
    #expect(MountSupport.mount(at: killed.mountpoint) != nil, "the dead mount is still listed before `mramfs unmount`")
    let stale = try CLI.run(mramfs, ["unmount", killed.mountpoint])
    #expect(stale.status == 0, "stderr: \(stale.stderr)")
    #expect(MountSupport.mount(at: killed.mountpoint) == nil, "the stale mount is still there")
  }

  @Test("`mramfs mount -f` stays in the foreground and exits 0 on SIGTERM")
  func foreground() throws {
    try MountSupport.requireFUSE()
    let fixtures = try Fixtures.load()
    let image = fixtures.path(try fixtures.scenario("pc-256-novmdesc").file)
    let mounted = try MountedFileSystem(executable: "mramfs") { ["mount", image, $0, "-f"] }
    defer { mounted.cleanup() }
    #expect(mounted.info.fileSystemType == "fuse.mramfs")
    #expect(mounted.info.source == image)
    var st = stat()
    #expect(stat(mounted.path("pc.ram"), &st) == 0 && st.st_size == 256 << 20)
    mounted.process.send(SIGTERM)
    #expect(mounted.process.waitForExit(timeout: .seconds(5)))
    #expect(mounted.process.exitedNormally && mounted.process.terminationStatus == 0, "stderr: \(mounted.process.standardError)")
    #expect(MountSupport.mount(at: mounted.mountpoint) == nil)
  }

  enum Refused: String, CaseIterable, CustomTestStringConvertible {
    case truncated = "a file cut in pc.ram's pages region"
    case headerVersion = "a mapped-ram header of version 2"
    case classic = "a classic stream"
    case libvirtPart = "an unfinished libvirt save"
    var testDescription: String { rawValue }
  }

  @Test("mounting a file that cannot be served exits 1 with one line and mounts nothing", arguments: Refused.allCases)
  func refusedMount(_ refused: Refused) throws {
    try MountSupport.requireFUSE()
    let fixtures = try Fixtures.load()
    let pc256 = try fixtures.scenario("pc-256")
    let pcram = try #require(pc256.fileInfo.blocks.first { $0.name == "pc.ram" })
    let scratch = try ScratchDirectory()
    let image: String
    let mustSay: [String]
    switch refused {
    case .truncated:
      let pages = try #require(pcram.pagesOffset)
      image = try scratch.copy(fixtures.path(pc256.file), as: "cut.mapped", length: pages + 100 << 20)
      mustSay = ["pages region of block \"pc.ram\"", "offset \(hex(pages))"]
    case .headerVersion:
      let header = try #require(pcram.headerOffset)
      image = try scratch.copy(fixtures.path(pc256.file), as: "v2.mapped")
      try scratch.patch(image, at: header, with: [0, 0, 0, 2])
      mustSay = ["mapped-ram header of block \"pc.ram\"", "offset \(hex(header))", "version 2"]
    case .classic:
      image = fixtures.path(try fixtures.scenario("pc-256-classic").file)
      mustSay = ["mramfs convert"]
    case .libvirtPart:
      image = fixtures.path(try fixtures.scenario("pc-256-libvirt-part").file)
      mustSay = ["LibvirtQemudPart", "offset 0x"]
    }
    let mountpoint = try MountSupport.makeMountpoint(prefix: "mramfs-refused")
    defer {
      MountSupport.unmount(mountpoint)
      rmdir(mountpoint)
    }
    let result = try CLI.run(try CLI.mramfs(), ["mount", image, mountpoint], timeout: .seconds(30))
    #expect(result.exitedNormally && result.status == 1, "exit status \(result.status)")
    let lines = result.stderrLines
    #expect(lines.count == 1, "one line on stderr, got:\n\(result.stderr)")
    for text in mustSay { #expect(result.stderr.contains(text), "stderr should mention \(text): \(result.stderr)") }
    #expect(MountSupport.mount(at: mountpoint) == nil, "something is mounted on \(mountpoint)")
    usleep(300_000)
    #expect(MountSupport.mount(at: mountpoint) == nil, "something got mounted on \(mountpoint) later")
    #expect(mramfsDaemons(mountpoint).isEmpty, "a daemon is left for \(mountpoint)")
    #expect((try? MountSupport.listDirectory(mountpoint))?.sorted() == [".", ".."], "the mount point is untouched")

    if refused == .libvirtPart {
      // With -o force it mounts, and serves the same pc.ram as the finished save.
      let forced = try QEMUMount(image, options: "force")
      defer { forced.cleanup() }
      var st = stat()
      #expect(stat(forced.path("pc.ram"), &st) == 0 && st.st_size == 256 << 20)
    }
  }

  @Test("bad usage of `mramfs mount` exits 2 and mounts nothing")
  func badMountUsage() throws {
    let fixtures = try Fixtures.load()
    let image = fixtures.path(try fixtures.scenario("pc-256").file)
    let mramfs = try CLI.mramfs()
    let mountpoint = try MountSupport.makeMountpoint(prefix: "mramfs-usage")
    defer {
      MountSupport.unmount(mountpoint)
      rmdir(mountpoint)
    }
    let cases: [[String]] = [
      ["mount", image],
      ["mount", image, "\(mountpoint)/does-not-exist"],
      ["mount", image, image],
      ["mount", image, mountpoint, "-o", "no_such_option"],
      ["mount", image, mountpoint, "-o", "uid=alice"],
      ["mount", image, mountpoint, "-o", "fsname=x"],
    ]
    for args in cases {
      let result = try CLI.run(mramfs, args)
      #expect(result.exitedNormally && result.status == 2, "mramfs \(args.joined(separator: " ")) exited \(result.status)")
      #expect(!result.stderr.isEmpty)
      #expect(MountSupport.mount(at: mountpoint) == nil)
    }
  }

  // MARK: Options and mount(8)

  @Test("-o uid=1234,gid=5678 sets the owner of every file and directory")
  func ownerOptions() throws {
    let fixtures = try Fixtures.load()
    let mount = try QEMUMount(fixtures.path(try fixtures.scenario("pc-256").file), options: "uid=1234,gid=5678")
    defer { mount.cleanup() }
    for rel in ["", "pc.ram", "info.json", "0000:00:02.0", "0000:00:02.0/vga.vram", "rom@etc/acpi/tables"] {
      var st = stat()
      #expect(stat(rel.isEmpty ? mount.mountpoint : mount.path(rel), &st) == 0)
      #expect(st.st_uid == 1234 && st.st_gid == 5678, "\(rel): \(st.st_uid):\(st.st_gid)")
    }
    // Without the option the files belong to the image's owner.
    let plain = try QEMUMount(fixtures.path(try fixtures.scenario("pc-256").file))
    defer { plain.cleanup() }
    var image = stat()
    var served = stat()
    #expect(stat(plain.image, &image) == 0 && stat(plain.path("pc.ram"), &served) == 0)
    #expect(served.st_uid == image.st_uid && served.st_gid == image.st_gid)
  }

  /// A temporary directory holding a `mramfs` symlink to the built binary.
  func helperDirectory() throws -> (ScratchDirectory, String) {
    let dir = try ScratchDirectory()
    let link = "\(dir.path)/mramfs"
    guard symlink(try CLI.mramfs(), link) == 0 else {
      throw MountTestError("symlink \(link): \(String(cString: strerror(errno)))")
    }
    return (dir, dir.path)
  }

  @Test("mount.fuse3 finds `mramfs` on PATH and mounts it (the fstab helper chain)")
  func mountFuseHelper() throws {
    try MountSupport.requireFUSE()
    let fixtures = try Fixtures.load()
    let image = fixtures.path(try fixtures.scenario("pc-256").file)
    guard let helper = MountSupport.findExecutable("mount.fuse3") else {
      throw MountTestError("mount.fuse3 is not installed (Debian: apt-get install fuse3)")
    }
    let (dir, bin) = try helperDirectory()
    defer { withExtendedLifetime(dir) {} }  // keeps the symlink until the test ends
    let mountpoint = try MountSupport.makeMountpoint(prefix: "mramfs-helper")
    defer {
      MountSupport.unmount(mountpoint)
      _ = waitForExit(mramfsDaemons(mountpoint), timeout: .seconds(5))
      rmdir(mountpoint)
    }
    var env = ProcessInfo.processInfo.environment
    env["PATH"] = "\(bin):\(env["PATH"] ?? "/usr/bin:/bin")"
    // mount.fuse3 runs `mramfs FILE DIR -o ro,dev,suid,uid=4321` through /bin/sh.
    let result = try CLI.run(helper, [image, mountpoint, "-t", "mramfs", "-o", "ro,uid=4321"], environment: env)
    #expect(result.status == 0, "mount.fuse3 exited \(result.status); stderr:\n\(result.stderr)")
    let info = try #require(MountSupport.mount(at: mountpoint), "nothing mounted once mount.fuse3 returned")
    #expect(info.fileSystemType == "fuse.mramfs")
    #expect(try MountSupport.listDirectory(mountpoint).contains("pc.ram"))
    var st = stat()
    #expect(stat("\(mountpoint)/pc.ram", &st) == 0 && st.st_uid == 4321 && st.st_size == 256 << 20)
    #expect(mramfsDaemons(mountpoint).count == 1)
  }

  @Test("`mount -t fuse.mramfs FILE DIR` works (in a private mount namespace where `mramfs` is on mount(8)'s PATH)")
  func mountCommand() throws {
    try MountSupport.requireFUSE()
    // mount(8) drops the caller's PATH (util-linux sanitize_env), so the helper is looked up in
    // /bin/sh's default PATH (/usr/local/sbin:...). The test puts its symlink there with a bind
    // mount inside a private mount namespace, so the host is never touched. That needs root.
    if getuid() != 0 || MountSupport.findExecutable("unshare") == nil {
      let reason = "`mount -t fuse.mramfs` test needs root and unshare(1) (util-linux)"
      if MountSupport.isCI { throw MountTestError(reason + " — under CI=true this is a failure") }
      try Test.cancel(Comment(rawValue: reason))
    }
    let fixtures = try Fixtures.load()
    let image = fixtures.path(try fixtures.scenario("pc-256").file)
    let (dir, bin) = try helperDirectory()
    defer { withExtendedLifetime(dir) {} }  // keeps the symlink until the test ends
    let out = "\(dir.path)/out"
    mkdir(out, 0o755)
    let mountpoint = try MountSupport.makeMountpoint(prefix: "mramfs-mount8")
    defer {
      _ = waitForExit(mramfsDaemons(mountpoint), timeout: .seconds(5))
      rmdir(mountpoint)
    }
    let script = """
      set -eu
      mount --bind "$1" /usr/local/sbin
      trap 'fusermount3 -u -z "$3" 2>/dev/null || true' EXIT
      mount -t fuse.mramfs -o ro,uid=4321,nofail "$2" "$3"
      grep " $3 " /proc/self/mountinfo > "$4/mountinfo"
      ls -a "$3" > "$4/ls"
      stat -c '%s %u' "$3/pc.ram" > "$4/stat"
      head -c 8 "$3/pc.ram" | od -An -tx1 > /dev/null
      umount "$3"
      echo unmounted > "$4/done"
      """
    let unshare = try #require(MountSupport.findExecutable("unshare"))
    let result = try CLI.run(
      unshare, ["--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh", bin, image, mountpoint, out],
      timeout: .seconds(60))
    #expect(result.status == 0, "the script exited \(result.status); stderr:\n\(result.stderr)")
    func text(_ name: String) -> String { (try? String(contentsOfFile: "\(out)/\(name)", encoding: .utf8)) ?? "" }
    #expect(text("mountinfo").contains("fuse.mramfs"), "mountinfo: \(text("mountinfo"))")
    #expect(text("mountinfo").contains(image))
    let names = text("ls").split(separator: "\n").map(String.init)
    #expect(names.contains("pc.ram") && names.contains("info.json") && names.contains("rom@etc"), "ls: \(names)")
    #expect(text("stat") == "\(256 << 20) 4321\n", "stat: \(text("stat"))")
    #expect(text("done") == "unmounted\n")
    #expect(waitForExit(mramfsDaemons(mountpoint), timeout: .seconds(5)), "the daemon outlived the unmount")
    #expect(MountSupport.mount(at: mountpoint) == nil, "the namespace's mount leaked into the host")
  }
}

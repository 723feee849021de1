// `mramfs create` and `mramfs synth` round trips through the format library and through a
// real mount (`mramfs mount` in background mode, then `mramfs unmount`), dirty passes in
// classic vs mapped-ram output, and the writer's safe-output rules (no clobbering without
// --force, no symlink following, nothing left behind after SIGINT, --json summaries).
//
// The RAM images come from the real QEMU fixtures (.pcram: pmemsave of the guest's main RAM,
// see scripts/make-fixtures.py and QEMUFixtures.swift for where they come from).

import Foundation
import GuestViews
import MigrationFormat
import QEMUFixtures
import Testing

#if canImport(Glibc)
  import Glibc
#endif

// MARK: - Support

struct WriterTestError: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}

/// A child process started with posix_spawn the way a shell would start it: standard input
/// from /dev/null, output to files, every other descriptor closed, an empty signal mask and
/// default SIGINT/SIGTERM/SIGPIPE dispositions.
///
/// Why not Foundation's Process (or SpawnedProcess): (1) Process watches a child through a
/// socket the child inherits, and `mramfs mount`'s background daemon keeps every inherited
/// descriptor open (see Mounter.spawnSelf in Sources/SaveFilesystem/Mounter.swift), so Process never sees the
/// `mount` command finish; (2) the test runner's threads block most signals and posix_spawn
/// passes that mask on, so a child's SIGINT handler would never run. Here the exit is
/// observed with waitpid on the pid.
final class WriterChild {
  let pid: pid_t
  let name: String
  private let outPath: String
  private let errPath: String
  private var waitStatus: Int32? = nil

  init(_ executable: String, _ arguments: [String]) throws {
    name = (executable as NSString).lastPathComponent
    let stamp = "\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
    outPath = "\(FileManager.default.temporaryDirectory.path)/mramfs-writer-\(stamp).out"
    errPath = "\(FileManager.default.temporaryDirectory.path)/mramfs-writer-\(stamp).err"
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_addopen(&actions, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    // posix_spawn_file_actions_addclosefrom_np (glibc 2.34+) does not import into Swift.
    typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else {
      throw WriterTestError("this libc has no posix_spawn_file_actions_addclosefrom_np (glibc 2.34+ needed)")
    }
    _ = unsafeBitCast(sym, to: CloseFrom.self)(&actions, 3)
    var attr = posix_spawnattr_t()
    posix_spawnattr_init(&attr)
    defer { posix_spawnattr_destroy(&attr) }
    var empty = sigset_t()
    sigemptyset(&empty)
    posix_spawnattr_setsigmask(&attr, &empty)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for sig in [SIGINT, SIGTERM, SIGPIPE] { sigaddset(&defaults, sig) }
    posix_spawnattr_setsigdefault(&attr, &defaults)
    posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { for a in argv { free(a) } }
    var child: pid_t = 0
    let rc = posix_spawn(&child, executable, &actions, &attr, argv, environ)
    guard rc == 0 else { throw WriterTestError("posix_spawn \(executable): \(String(cString: strerror(rc)))") }
    pid = child
  }

  deinit {
    if waitStatus == nil {
      kill(pid, SIGKILL)
      _ = wait(timeout: .seconds(10))
    }
    unlink(outPath)
    unlink(errPath)
  }

  /// Whether the child has exited (reaps it).
  var hasExited: Bool {
    if waitStatus != nil { return true }
    var st: Int32 = 0
    let r = waitpid(pid, &st, WNOHANG)
    if r == pid { waitStatus = st }
    return waitStatus != nil
  }

  /// Waits for the exit; returns whether it happened within `timeout`.
  func wait(timeout: Duration) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while !hasExited {
      if ContinuousClock.now >= deadline { return false }
      usleep(5_000)
    }
    return true
  }

  func send(_ signal: Int32) { if !hasExited { kill(pid, signal) } }

  /// Exited by itself (not by a signal); valid after the exit.
  var exitedNormally: Bool { (waitStatus ?? 0x7f) & 0x7f == 0 }
  /// The exit code, or 128 + the signal number; valid after the exit.
  var status: Int32 { exitedNormally ? ((waitStatus ?? 0) >> 8) & 0xff : 128 + ((waitStatus ?? 0) & 0x7f) }
  var standardOutput: Data { FileManager.default.contents(atPath: outPath) ?? Data() }
  var standardError: String { String(decoding: FileManager.default.contents(atPath: errPath) ?? Data(), as: UTF8.self) }
}

/// What a finished `mramfs` run printed.
struct WriterRun {
  var status: Int32
  var exitedNormally: Bool
  var stdout: Data
  var stderr: String
  var ok: Bool { exitedNormally && status == 0 }
  var text: String { String(decoding: stdout, as: UTF8.self) }

  /// The --json summary on standard output.
  func summary() throws -> [String: Any] {
    guard let json = try JSONSerialization.jsonObject(with: stdout) as? [String: Any] else {
      throw WriterTestError("no JSON object on standard output: \(text)")
    }
    return json
  }

  /// Runs the built `mramfs` with `args`.
  static func mramfs(_ args: [String], timeout: Duration = .seconds(120)) throws -> WriterRun {
    let p = try WriterChild(try MountSupport.executable("mramfs").path, args)
    guard p.wait(timeout: timeout) else {
      p.send(SIGKILL)
      _ = p.wait(timeout: .seconds(10))
      throw WriterTestError("mramfs \(args.joined(separator: " ")) did not finish within \(timeout); stderr:\n\(p.standardError)")
    }
    return WriterRun(status: p.status, exitedNormally: p.exitedNormally, stdout: p.standardOutput, stderr: p.standardError)
  }

  /// Runs `mramfs ARGS` and fails unless it exits 0.
  @discardableResult
  static func success(_ args: [String], timeout: Duration = .seconds(120)) throws -> WriterRun {
    let r = try mramfs(args, timeout: timeout)
    guard r.ok else { throw WriterTestError("mramfs \(args.joined(separator: " ")) exited \(r.status):\n\(r.stderr)") }
    return r
  }
}

/// A temporary directory, removed with everything in it when the value goes away.
final class WriterDirectory {
  let path: String
  init() throws {
    var template = Array("\(FileManager.default.temporaryDirectory.path)/mramfs-writer.XXXXXX".utf8CString)
    guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
      throw WriterTestError("mkdtemp failed: \(String(cString: strerror(errno)))")
    }
    path = String(cString: made)
  }
  deinit { try? FileManager.default.removeItem(atPath: path) }
  func file(_ name: String) -> String { "\(path)/\(name)" }
  /// Names in the directory (hidden ones included).
  func listing() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted() }
}

/// stat(2) of a path (not following a symlink when `link`).
func writerStat(_ path: String, link: Bool = false) -> stat? {
  var st = stat()
  return (link ? lstat(path, &st) : stat(path, &st)) == 0 ? st : nil
}

/// Byte comparisons of sparse data, chunk by chunk, skipping what is a hole on both sides.
enum WriterCompare {
  static let chunk = 4 << 20
  typealias Reader = (UnsafeMutableRawBufferPointer, UInt64) throws -> Void

  /// Byte offsets of the pages (within [0, length)) where `a` and `b` differ.
  static func differingPages(length: UInt64, hasData: (UInt64, UInt64) -> Bool, _ a: Reader, _ b: Reader) throws -> [UInt64] {
    let x = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
    let y = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
    defer {
      x.deallocate()
      y.deallocate()
    }
    var diffs: [UInt64] = []
    var off: UInt64 = 0
    while off < length {
      let n = Int(min(UInt64(chunk), length - off))
      if hasData(off, off + UInt64(n)) {
        let xa = UnsafeMutableRawBufferPointer(rebasing: x[0..<n])
        let yb = UnsafeMutableRawBufferPointer(rebasing: y[0..<n])
        try a(xa, off)
        try b(yb, off)
        if memcmp(xa.baseAddress!, yb.baseAddress!, n) != 0 {
          for p in stride(from: 0, to: n, by: 4096) where memcmp(xa.baseAddress! + p, yb.baseAddress! + p, min(4096, n - p)) != 0 {
            diffs.append(off + UInt64(p))
          }
        }
      }
      off += UInt64(n)
    }
    return diffs
  }

  /// pread of a file (zeros past its end); `base` is added to every offset.
  static func file(_ fd: Int32, base: UInt64 = 0) -> Reader {
    { buffer, offset in
      memset(buffer.baseAddress!, 0, buffer.count)
      if preadFully(fd, buffer.baseAddress!, buffer.count, base + offset) < 0 {
        throw WriterTestError("pread at \(base + offset): \(String(cString: strerror(errno)))")
      }
    }
  }

  /// A block read through the library.
  static func block(_ file: MigrationFile, _ index: Int) -> Reader {
    { buffer, offset in
      let n = try file.read(block: index, at: offset, into: buffer)
      if n != buffer.count { throw WriterTestError("short block read at \(offset): \(n) of \(buffer.count)") }
    }
  }

  static func fileHasData(_ fd: Int32, _ start: UInt64, _ end: UInt64) -> Bool {
    guard let d = seekData(fd, start) else { return false }
    return d < end
  }

  static func blockHasData(_ file: MigrationFile, _ index: Int, _ start: UInt64, _ end: UInt64) -> Bool {
    guard let d = file.nextData(block: index, from: start) else { return false }
    return d < end
  }

  static func describe(_ diffs: [UInt64]) -> String {
    "\(diffs.count) page(s) differ, first at " + diffs.prefix(8).map { "0x" + String($0, radix: 16) }.joined(separator: ", ")
  }

  /// The number of non-zero 4 KiB pages of a sparse file.
  static func nonZeroPages(_ fd: Int32, length: UInt64) throws -> UInt64 {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
    defer { buffer.deallocate() }
    let zero = [UInt8](repeating: 0, count: 4096)
    var count: UInt64 = 0
    var off: UInt64 = 0
    while off < length, let data = seekData(fd, off), data < length {
      let end = min(seekHole(fd, data) ?? length, length)
      var at = data / 4096 * 4096
      while at < end {
        let n = Int(min(UInt64(chunk), (end + 4095) / 4096 * 4096 - at))
        let part = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
        try file(fd)(part, at)
        for p in stride(from: 0, to: n, by: 4096) where memcmp(part.baseAddress! + p, zero, min(4096, n - p)) != 0 {
          count += 1
        }
        at += UInt64(n)
      }
      off = (end + 4095) / 4096 * 4096
    }
    return count
  }

  /// Copies [from, from + length) of `src` to `to` in `dst`, data regions only (holes stay holes).
  static func sparseCopy(_ src: Int32, from: UInt64, length: UInt64, _ dst: Int32, to: UInt64) throws {
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
    defer { buffer.deallocate() }
    let end = from + length
    var off = from
    while off < end, let data = seekData(src, off), data < end {
      let hole = min(seekHole(src, data) ?? end, end)
      var at = data
      while at < hole {
        let n = Int(min(UInt64(chunk), hole - at))
        guard preadFully(src, buffer.baseAddress!, n, at) == n,
          pwrite(dst, buffer.baseAddress!, n, off_t(to + at - from)) == n
        else { throw WriterTestError("sparse copy failed at \(at)") }
        at += UInt64(n)
      }
      off = hole
    }
  }
}

/// `mramfs mount FILE DIR` in background mode on a fresh mount point; `unmount()` is `mramfs unmount DIR`.
final class WriterMount {
  let mountpoint: String
  private var mounted = true

  init(_ image: String) throws {
    try MountSupport.requireFUSE()
    mountpoint = try MountSupport.makeMountpoint(prefix: "mramfs-writer")
    let r: WriterRun
    do {
      r = try WriterRun.mramfs(["mount", image, mountpoint], timeout: .seconds(60))
    } catch {
      MountSupport.unmount(mountpoint)
      rmdir(mountpoint)
      throw error
    }
    guard r.ok, MountSupport.mount(at: mountpoint) != nil else {
      MountSupport.unmount(mountpoint)
      rmdir(mountpoint)
      throw WriterTestError("mramfs mount \(image) exited \(r.status) without a mount:\n\(r.stderr)")
    }
  }

  func path(_ name: String) -> String { "\(mountpoint)/\(name)" }

  /// `mramfs unmount DIR`; returns its result after checking the mount went away.
  @discardableResult
  func unmount() throws -> WriterRun {
    let r = try WriterRun.mramfs(["unmount", mountpoint], timeout: .seconds(30))
    if r.ok { mounted = !MountSupport.waitForUnmount(mountpoint) }
    return r
  }

  deinit {
    if mounted { MountSupport.unmount(mountpoint) }
    rmdir(mountpoint)
  }
}

/// The fixture scenario `name`'s ground-truth pcram and sizes.
func writerPcram(_ name: String) throws -> (path: String, ramBytes: UInt64, lowmem: UInt64, machineType: String) {
  let fixtures = try Fixtures.load()
  let s = try fixtures.scenario(name)
  return (fixtures.path(s.pcram), s.ramBytes, s.lowmem, s.machineType)
}

// MARK: - create

@Suite("create and synth: library, mount, dirty passes, safe output")
struct WriterTests {
  @Test("create --block pc.ram=RAW (a sparse pcram) reads back as RAW through the library and a real mount")
  func createBlockRoundTrip() throws {
    let (raw, ramBytes, _, _) = try writerPcram("pc-256")
    let dir = try WriterDirectory()
    let out = dir.file("created.mapped")
    let summary = try WriterRun.success(["create", "-o", out, "--block", "pc.ram=\(raw)", "--json"]).summary()

    let rfd = open(raw, O_RDONLY | O_CLOEXEC)
    #expect(rfd >= 0)
    defer { close(rfd) }
    let nonZero = try WriterCompare.nonZeroPages(rfd, length: ramBytes)
    #expect(summary["populatedPages"] as? UInt64 == nonZero, "populated pages = RAW's non-zero pages")
    #expect(summary["ramBytes"] as? UInt64 == ramBytes)
    #expect(summary["format"] as? String == "mapped-ram")
    let st = try #require(writerStat(out))
    #expect(summary["fileSize"] as? UInt64 == UInt64(st.st_size))
    #expect(summary["allocatedBytes"] as? UInt64 == UInt64(st.st_blocks) * 512)
    #expect(UInt64(st.st_blocks) * 512 < nonZero * 4096 + (4 << 20), "the output is sparse (zero pages are holes)")

    let file = try MigrationFile(path: out)
    #expect(file.format == .mappedRAM)
    #expect(file.machineType == "pc-i440fx-10.0")
    #expect(file.blocks.map(\.name.description) == ["pc.ram"])
    #expect(file.blocks.first?.length == ramBytes)
    #expect(file.blocks.first?.populatedPages == nonZero)
    let libDiffs = try WriterCompare.differingPages(
      length: ramBytes,
      hasData: { WriterCompare.fileHasData(rfd, $0, $1) || WriterCompare.blockHasData(file, 0, $0, $1) },
      WriterCompare.file(rfd), WriterCompare.block(file, 0))
    #expect(libDiffs.isEmpty, "library read vs RAW: \(WriterCompare.describe(libDiffs))")

    let mount = try WriterMount(out)
    let mpath = mount.path("pc.ram")
    #expect(writerStat(mpath).map { UInt64($0.st_size) } == ramBytes)
    let mfd = open(mpath, O_RDONLY | O_CLOEXEC)
    #expect(mfd >= 0, "open \(mpath): \(String(cString: strerror(errno)))")
    if mfd >= 0 {
      // Every chunk where either side has data (SEEK_DATA on RAW, the bitmap for the mount).
      let mountDiffs = try WriterCompare.differingPages(
        length: ramBytes,
        hasData: { WriterCompare.fileHasData(rfd, $0, $1) || WriterCompare.blockHasData(file, 0, $0, $1) },
        WriterCompare.file(rfd), WriterCompare.file(mfd))
      close(mfd)
      #expect(mountDiffs.isEmpty, "mounted pc.ram vs RAW: \(WriterCompare.describe(mountDiffs))")
    }
    let u = try mount.unmount()
    #expect(u.ok, "mramfs unmount: \(u.stderr)")
    #expect(MountSupport.mount(at: mount.mountpoint) == nil)
  }

  @Test("create --from-physmem: a flat physical dump of a 5 GiB guest becomes pc.ram split at lowmem",
        arguments: ["pc-5g", "q35-5g-mfd"])
  func createFromPhysmem(_ name: String) throws {
    let (pcram, ramBytes, low, machineType) = try writerPcram(name)
    let family = machineType.contains("q35") ? "q35" : "pc"
    let dir = try WriterDirectory()
    // Flat dump: offset N = guest-physical address N; RAM [0, L) at 0, [L, R) at 4 GiB, a hole between.
    let flat = dir.file("physmem.raw")
    let src = open(pcram, O_RDONLY | O_CLOEXEC)
    #expect(src >= 0)
    defer { close(src) }
    let dst = open(flat, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    #expect(dst >= 0)
    try WriterCompare.sparseCopy(src, from: 0, length: low, dst, to: 0)
    try WriterCompare.sparseCopy(src, from: low, length: ramBytes - low, dst, to: 1 << 32)
    #expect(ftruncate(dst, off_t((1 << 32) + ramBytes - low)) == 0)
    close(dst)

    let out = dir.file("physmem.mapped")
    let summary = try WriterRun.success(["create", "-o", out, "--from-physmem", flat, "--machine", family, "--json"]).summary()
    #expect(summary["ramBytes"] as? UInt64 == ramBytes)
    let file = try MigrationFile(path: out)
    #expect(file.machineType == (family == "q35" ? "pc-q35-10.0" : "pc-i440fx-10.0"))
    let index = try #require(file.blockIndex(named: "pc.ram"))
    #expect(file.blocks.count == 1)
    #expect(file.blocks[index].length == ramBytes)
    let diffs = try WriterCompare.differingPages(
      length: ramBytes,
      hasData: { WriterCompare.fileHasData(src, $0, $1) || WriterCompare.blockHasData(file, index, $0, $1) },
      WriterCompare.file(src), WriterCompare.block(file, index))
    #expect(diffs.isEmpty, "\(name): pc.ram from the flat dump vs pcram: \(WriterCompare.describe(diffs))")
    // The guest's high marker (GPA 0x140000000) is at pc.ram offset L + 0x40000000.
    var marker = [UInt8](repeating: 0, count: 8)
    _ = try marker.withUnsafeMutableBytes { try file.read(block: index, at: low + 0x4000_0000, into: $0) }
    #expect(marker == Array("DRAMHIGH".utf8))
  }

  // MARK: synth

  @Test("synth with dirty passes: the classic stream grows, the mapped-ram file does not")
  func synthDirtyPasses() throws {
    let dir = try WriterDirectory()
    var sizes: [String: (size: UInt64, allocated: UInt64, populated: UInt64)] = [:]
    for format in ["classic", "mapped-ram"] {
      for passes in [0, 3] {
        let out = dir.file("\(format)-\(passes)")
        let s = try WriterRun.success([
          "synth", "-o", out, "--ram", "64M", "--density", "0.2", "--format", format, "--dirty-passes", "\(passes)", "--json",
        ]).summary()
        let st = try #require(writerStat(out))
        #expect(s["fileSize"] as? UInt64 == UInt64(st.st_size))
        #expect(s["format"] as? String == format)
        sizes["\(format)-\(passes)"] = (UInt64(st.st_size), UInt64(st.st_blocks) * 512, s["populatedPages"] as? UInt64 ?? 0)
      }
    }
    let c0 = try #require(sizes["classic-0"]), c3 = try #require(sizes["classic-3"])
    let m0 = try #require(sizes["mapped-ram-0"]), m3 = try #require(sizes["mapped-ram-3"])
    // 64 MiB at density 0.2: about 3277 of 16384 pages, the same ones in every file.
    #expect(c0.populated > 2800 && c0.populated < 3800)
    #expect(Set([c0.populated, c3.populated, m0.populated, m3.populated]).count == 1)
    #expect(c0.size >= c0.populated * (4096 + 8), "a classic stream holds every populated page as a record")
    #expect(c3.size > c0.size, "3 dirty passes re-send pages: classic \(c0.size) -> \(c3.size) bytes")
    #expect(c3.size - c0.size >= c0.populated / 4 * 4104 / 2, "about a quarter of the pages per pass are re-sent")
    #expect(m3.size == m0.size, "mapped-ram size does not depend on dirty passes")
    #expect(m3.allocated == m0.allocated, "mapped-ram allocation does not depend on dirty passes")
    #expect(try Data(contentsOf: URL(fileURLWithPath: dir.file("mapped-ram-0")))
      == Data(contentsOf: URL(fileURLWithPath: dir.file("mapped-ram-3"))), "and its bytes are identical")

    // The busy classic stream converts to exactly the same RAM (the last send of a page wins).
    try WriterRun.success(["convert", dir.file("classic-3"), "-o", dir.file("converted")])
    let conv = try MigrationFile(path: dir.file("converted"))
    let mapped = try MigrationFile(path: dir.file("mapped-ram-0"))
    #expect(conv.blocks.map(\.populatedPages) == mapped.blocks.map(\.populatedPages))
    let diffs = try WriterCompare.differingPages(
      length: 64 << 20, hasData: { _, _ in true }, WriterCompare.block(mapped, 0), WriterCompare.block(conv, 0))
    #expect(diffs.isEmpty, "converted busy classic vs synth mapped-ram: \(WriterCompare.describe(diffs))")
  }

  @Test("convert IN OUT takes its output as qemu-img convert does; -o OUT says the same; both or neither is a usage error")
  func convertPositionalOutput() throws {
    let dir = try WriterDirectory()
    try WriterRun.success(["synth", "-o", dir.file("in.classic"), "--ram", "8M", "--density", "0.3", "--format", "classic"])
    try WriterRun.success(["convert", dir.file("in.classic"), dir.file("positional.mapped")])
    try WriterRun.success(["convert", dir.file("in.classic"), "-o", dir.file("option.mapped")])
    let a = try Data(contentsOf: URL(fileURLWithPath: dir.file("positional.mapped")))
    let b = try Data(contentsOf: URL(fileURLWithPath: dir.file("option.mapped")))
    #expect(a == b && !a.isEmpty, "the two spellings write the same file")
    #expect(try MigrationFile(path: dir.file("positional.mapped")).format == .mappedRAM)
    let both = try WriterRun.mramfs(["convert", dir.file("in.classic"), dir.file("x"), "-o", dir.file("y")])
    #expect(both.status == 2 && both.stderr.contains("given twice"), "\(both.stderr)")
    let neither = try WriterRun.mramfs(["convert", dir.file("in.classic")])
    #expect(neither.status == 2 && neither.stderr.contains("mramfs convert IN OUT"), "\(neither.stderr)")
    #expect(dir.listing() == ["in.classic", "option.mapped", "positional.mapped"], "nothing else written")
  }

  @Test("a synth mapped-ram file mounts, and each page's bytes name its block and offset")
  func synthMounts() throws {
    let dir = try WriterDirectory()
    let out = dir.file("synth.mapped")
    try WriterRun.success(["synth", "-o", out, "--ram", "64M", "--density", "0.2"])
    let file = try MigrationFile(path: out)
    let bitmap = try #require(file.blocks.first?.bitmap)
    var present: [UInt64] = []
    var absent: [UInt64] = []
    for p in UInt64(0)..<16384 { if bitmap.isSet(p) { present.append(p) } else { absent.append(p) } }
    #expect(!present.isEmpty && !absent.isEmpty)
    var rng = SystemRandomNumberGenerator()
    let pick = [present.first!, present.last!] + (0..<30).map { _ in present.randomElement(using: &rng)! }

    let mount = try WriterMount(out)
    let fd = open(mount.path("pc.ram"), O_RDONLY | O_CLOEXEC)
    #expect(fd >= 0)
    if fd >= 0 {
      defer { close(fd) }
      var page = [UInt8](repeating: 0, count: 4096)
      for p in pick {
        let n = page.withUnsafeMutableBytes { preadFully(fd, $0.baseAddress!, 4096, p * 4096) }
        #expect(n == 4096)
        let text = String(decoding: page.prefix(80), as: UTF8.self)
        let prefix = "mramfs-synth pc.ram page \(p) offset 0x"
        #expect(text.hasPrefix(prefix), "page \(p) reads \(text.debugDescription)")
        let hexDigits = text.dropFirst(prefix.count).prefix { $0.isHexDigit }
        #expect(UInt64(hexDigits, radix: 16) == p * 4096, "page \(p) names offset 0x\(hexDigits)")
        let tail = page[4088..<4096].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        #expect(tail == p, "page \(p) ends with its number")
      }
      for p in absent.prefix(3) + [absent.last!] {
        _ = page.withUnsafeMutableBytes { preadFully(fd, $0.baseAddress!, 4096, p * 4096) }
        #expect(page.allSatisfy { $0 == 0 }, "unpopulated page \(p) reads as zeros")
      }
    }
    let u = try mount.unmount()
    #expect(u.ok, "mramfs unmount: \(u.stderr)")
  }

  // MARK: Safe output

  /// The commands that write OUT, each writing a small valid file.
  static func writers(_ dir: WriterDirectory) throws -> [[String]] {
    let raw = dir.file("input.raw")
    try Data(repeating: 0x5a, count: 3 * 4096).write(to: URL(fileURLWithPath: raw))
    return [
      ["create", "--block", "pc.ram=\(raw)"],
      ["synth", "--ram", "4M", "--density", "0.5"],
    ]
  }

  @Test("create and synth refuse an existing OUT without --force and leave it unchanged; --force replaces it")
  func refuseExisting() throws {
    let dir = try WriterDirectory()
    for command in try Self.writers(dir) {
      let out = dir.file("existing")
      let precious = Data("precious bytes, not a migration file\n".utf8)
      try precious.write(to: URL(fileURLWithPath: out))
      let before = dir.listing()
      let r = try WriterRun.mramfs(command + ["-o", out])
      #expect(r.exitedNormally && r.status == 1, "\(command[0]) over an existing file exits 1 (got \(r.status))")
      #expect(r.stderr.contains("already exists"), "\(command[0]): \(r.stderr)")
      #expect(try Data(contentsOf: URL(fileURLWithPath: out)) == precious, "\(command[0]) left OUT unchanged")
      #expect(dir.listing() == before, "\(command[0]) left nothing beside OUT")
      try WriterRun.success(command + ["-o", out, "--force"])
      #expect(try MigrationFile(path: out).format == .mappedRAM, "\(command[0]) --force replaced OUT")
      #expect(dir.listing() == before, "no temporary file left after --force")
      try FileManager.default.removeItem(atPath: out)
    }
  }

  @Test("create and synth refuse a symlink at OUT without --force and leave its target unchanged")
  func refuseSymlink() throws {
    let dir = try WriterDirectory()
    for command in try Self.writers(dir) {
      let target = dir.file("target")
      let link = dir.file("link")
      let precious = Data("the link's target\n".utf8)
      try precious.write(to: URL(fileURLWithPath: target))
      #expect(symlink(target, link) == 0)
      let before = dir.listing()
      let r = try WriterRun.mramfs(command + ["-o", link])
      #expect(r.exitedNormally && r.status == 1, "\(command[0]) onto a symlink exits 1 (got \(r.status))")
      #expect(r.stderr.contains("symbolic link"), "\(command[0]): \(r.stderr)")
      #expect(try Data(contentsOf: URL(fileURLWithPath: target)) == precious, "the target is unchanged")
      #expect(writerStat(link, link: true).map { $0.st_mode & S_IFMT == S_IFLNK } == true, "OUT is still a symlink")
      #expect(dir.listing() == before)
      // A dangling symlink is refused just the same.
      try FileManager.default.removeItem(atPath: target)
      let dangling = try WriterRun.mramfs(command + ["-o", link])
      #expect(dangling.exitedNormally && dangling.status == 1, "\(command[0]) onto a dangling symlink exits 1")
      #expect(!FileManager.default.fileExists(atPath: target), "nothing was created through the dangling link")
      // With --force the write succeeds and OUT's path reads as the new file. (Whether the link is
      // replaced or written through is not asserted: the help says "write through", the code
      // replaces the link; see the report.)
      try precious.write(to: URL(fileURLWithPath: target))
      try WriterRun.success(command + ["-o", link, "--force"])
      #expect(try MigrationFile(path: link).format == .mappedRAM)
      try? FileManager.default.removeItem(atPath: link)
      try? FileManager.default.removeItem(atPath: target)
    }
  }

  @Test("SIGINT during a large synth leaves no OUT and no temporary file")
  func interruptLeavesNothing() throws {
    let dir = try WriterDirectory()
    let out = dir.file("big.mapped")
    let p = try WriterChild(
      try MountSupport.executable("mramfs").path, ["synth", "-o", out, "--ram", "64G", "--density", "0.5"])
    // (WriterChild's deinit kills and reaps it if anything below fails first.)
    // The writer's temporary file appears beside OUT first (".big.mapped.mramfs-PID.tmp").
    let deadline = ContinuousClock.now + .seconds(10)
    while dir.listing().isEmpty && !p.hasExited && ContinuousClock.now < deadline { usleep(10_000) }
    let during = dir.listing()
    #expect(during.count == 1 && during.first?.hasPrefix(".big.mapped.mramfs-") == true, "while writing: \(during)")
    usleep(1_000_000)
    #expect(!p.hasExited, "64 GiB at density 0.5 must still be running after 1 s (stderr: \(p.standardError))")
    p.send(SIGINT)
    guard p.wait(timeout: .seconds(10)) else {
      p.send(SIGKILL)
      _ = p.wait(timeout: .seconds(10))
      Issue.record("synth did not exit within 10 s of SIGINT")
      return
    }
    #expect(p.exitedNormally && p.status == 130, "exit status after SIGINT: \(p.status) (stderr: \(p.standardError))")
    #expect(dir.listing().isEmpty, "left behind: \(dir.listing())")
    #expect(!FileManager.default.fileExists(atPath: out))
  }

  @Test("--json prints a parseable summary that matches the file")
  func jsonSummary() throws {
    let dir = try WriterDirectory()
    let out = dir.file("s.mapped")
    let r = try WriterRun.success(["synth", "-o", out, "--ram", "16M", "--density", "0.25", "--json"])
    let s = try r.summary()
    let st = try #require(writerStat(out))
    #expect(s["path"] as? String == out)
    #expect(s["format"] as? String == "mapped-ram")
    #expect(s["ramBytes"] as? UInt64 == 16 << 20)
    #expect(s["fileSize"] as? UInt64 == UInt64(st.st_size))
    #expect(s["allocatedBytes"] as? UInt64 == UInt64(st.st_blocks) * 512)
    #expect((s["seconds"] as? Double).map { $0 >= 0 } == true)
    #expect((s["bytesWritten"] as? UInt64).map { $0 > 0 } == true)
    let file = try MigrationFile(path: out)
    #expect(s["populatedPages"] as? UInt64 == file.blocks.first?.populatedPages)
  }
}

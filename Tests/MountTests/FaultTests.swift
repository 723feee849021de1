// Faults while mounted, through the real kernel: the image truncated, replaced or failing
// with EIO under a live mount, an unmount while readers are busy, and a killed daemon.
//
// What mramfs promises (also in `mramfs mount --help`):
// - The image is opened once, at mount time, and the daemon keeps that descriptor. Renaming
//   another file over the path, or deleting it, changes nothing for the mount: it keeps
//   serving the bytes of the file it opened. Only a new mount sees the new file.
// - If the file it opened shrinks (truncated in place), pages that are no longer in it read
//   as EIO, with either read strategy; pages still in the file keep reading correctly, the
//   file sizes do not change, and the daemon logs the first error once and keeps serving.
// - An I/O error from the storage under the image is passed to the reader as EIO.
// - `fusermount3 -u` refuses (EBUSY) while files are open; `fusermount3 -u -z` detaches at
//   once, open files keep reading until closed, then the daemon exits 0.
// - A killed daemon leaves a stale mount; `mramfs mount` on it refuses (exit 2) and names
//   `mramfs unmount DIR`, which clears it.

import Foundation
import GuestViews
import MigrationFormat
import MigrationFormatTestSupport
import QEMUFixtures
import Synchronization
import Testing

#if canImport(Glibc)
  import Glibc
#endif

// MARK: - Helpers shared by the hardening tests (FaultTests, StressTests, SecurityTests)

enum Hardening {
  /// A page of pseudo-random bytes, none of its 8-byte words zero, so a page served as
  /// zeros or from the wrong place never matches by accident.
  static func randomPage(_ rng: inout SplitMix64) -> [UInt8] {
    var page = [UInt8](repeating: 0, count: 4096)
    page.withUnsafeMutableBytes { raw in
      for i in 0..<512 { raw.storeBytes(of: rng.next() | 1, toByteOffset: i * 8, as: UInt64.self) }
    }
    return page
  }

  /// A block of `length` bytes whose every page is present with random bytes.
  static func denseBlock(_ name: String, length: UInt64, seed: UInt64) -> FixtureBlock {
    var rng = SplitMix64(state: seed)
    var block = FixtureBlock(name: name, length: length)
    for page in 0..<length / 4096 { block.present[page] = randomPage(&rng) }
    return block
  }

  /// The bytes a mount serves for `block`: present pages as written, everything else zeros.
  static func contents(of block: FixtureBlock) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: Int(block.length))
    for (page, bytes) in block.present where page < block.length / 4096 {
      out.replaceSubrange(Int(page) * 4096..<Int(page) * 4096 + bytes.count, with: bytes)
    }
    return out
  }

  /// Writes `stream` to `path`, padded with zeros to a multiple of `padTo` bytes.
  static func write(_ stream: FixtureStream, to path: String, padTo: Int = 1) throws {
    var bytes = stream.build().bytes
    if bytes.count % padTo != 0 { bytes += [UInt8](repeating: 0, count: padTo - bytes.count % padTo) }
    guard FileManager.default.createFile(atPath: path, contents: Data(bytes)) else {
      throw MountTestError("cannot write \(path)")
    }
  }

  /// The image most fault tests use: a dense 16 MiB pc.ram, then a dense 4 MiB vga.vram.
  static func faultStream(seed: UInt64) -> FixtureStream {
    FixtureStream(blocks: [
      denseBlock("pc.ram", length: 16 << 20, seed: seed),
      denseBlock("vga.vram", length: 4 << 20, seed: seed ^ 0x5555),
    ])
  }

  /// Fails under `CI=true`, skips with `reason` elsewhere (MountSupport.requireFUSE's rule).
  static func require(_ condition: Bool, _ reason: @autoclosure () -> String) throws {
    guard !condition else { return }
    if MountSupport.isCI {
      throw MountTestError(reason() + " — under CI=true this is a failure, not a skip")
    }
    try Test.cancel(Comment(rawValue: reason()))
  }

  /// `pread` once; the byte count, or the errno as a negative number.
  static func preadOnce(_ fd: Int32, _ buffer: Buffer, _ count: Int, _ offset: UInt64) -> Int {
    let n = pread(fd, buffer.base, count, off_t(offset))
    return n >= 0 ? n : -Int(errno)
  }

  /// Reads `count` bytes at `offset` of the file at `path` and compares them with `expected`.
  ///
  /// Returns nil when they match, else what went wrong.
  static func check(_ path: String, at offset: UInt64, count: Int, expected: [UInt8]) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "open \(path): errno \(errno)" }
    defer { close(fd) }
    let buffer = Buffer(count)
    let n = preadFully(fd, buffer.base, count, offset)
    guard n == count else { return "read \(count) at \(offset) of \(path) gave \(n) (errno \(errno))" }
    let want = Array(expected[Int(offset)..<Int(offset) + count])
    return want.withUnsafeBytes { w in
      firstDifference(buffer.base, w.baseAddress!, count).map { "byte \(offset + UInt64($0)) of \(path) differs" }
    }
  }

  /// The value of `field` (in kB) in /proc/PID/status.
  static func statusKiB(_ pid: pid_t, _ field: String) -> UInt64? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix(field + ":") {
      return line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first.flatMap { UInt64($0) }
    }
    return nil
  }

  /// Runs `body(i)` for i in 0..<count, each on its own thread, and waits for all of them.
  static func runThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let group = DispatchGroup()
    for i in 0..<count {
      group.enter()
      Thread.detachNewThread {
        body(i)
        group.leave()
      }
    }
    group.wait()
  }
}

/// What the reader threads of a test share.
final class ReaderState: Sendable {
  let stop = Atomic<Bool>(false)
  let started = Atomic<Int>(0)
  let reopenFailures = Atomic<Int>(0)
  /// Failed reads, by errno.
  let errors = Mutex<[Int32: Int]>([:])
}

/// `mramfs mount IMAGE DIR -f [-o OPTIONS]`, with the daemon's standard error captured.
func foregroundMount(_ image: String, options: String) throws -> MountedFileSystem {
  try MountSupport.requireFUSE()
  return try MountedFileSystem(executable: "mramfs") { mountpoint in
    ["mount", image, mountpoint, "-f"] + (options.isEmpty ? [] : ["-o", options])
  }
}

// MARK: - Tests

@Suite("faults while mounted", .serialized)
struct FaultTests {
  static let strategies = ["", "read=splice", "direct_io", "direct_io,read=splice"]

  @Test(
    "a truncated image: pages now gone read as EIO, the rest reads correctly, the daemon stays up and logs once",
    arguments: strategies)
  func truncatedUnderMount(_ options: String) throws {
    let scratch = try ScratchDirectory()
    defer { withExtendedLifetime(scratch) {} }
    let image = "\(scratch.path)/image.mapped"
    let stream = Hardening.faultStream(seed: 0x7472_756e)
    try Hardening.write(stream, to: image)
    let pcram = Hardening.contents(of: stream.blocks[0])
    let layout = try MigrationFile(path: image)
    let pagesOffset = layout.blocks[0].pagesOffset

    let mounted = try foregroundMount(image, options: options)
    defer { mounted.cleanup() }
    let file = mounted.path("pc.ram")
    let fd = open(file, O_RDONLY | O_CLOEXEC)
    try #require(fd >= 0)
    defer { close(fd) }
    #expect(Hardening.check(file, at: 0, count: 4096, expected: pcram) == nil)

    // Cut the image 100 bytes into page 2048 of pc.ram (8 MiB): that page and every later one,
    // and all of vga.vram, are gone. The descriptor above was opened before the cut.
    let cut: UInt64 = 8 << 20
    try #require(truncate(image, off_t(pagesOffset + cut + 100)) == 0)

    let buffer = Buffer(1 << 20)
    let gone: [(offset: UInt64, count: Int)] = [
      (cut, 4096), (cut + 200, 10), (12 << 20, 4096), ((12 << 20) + 123, 65536), (9 << 20, 1 << 20),
      ((16 << 20) - 4096, 4096), (15 << 20, 1 << 20),
    ]
    for (offset, count) in gone {
      let n = Hardening.preadOnce(fd, buffer, count, offset)
      #expect(n == -Int(EIO), "read of \(count) at \(offset) (past the cut) gave \(n), expected EIO")
    }
    // The first 100 bytes of page 2048 are still in the file: with the page cache the kernel
    // asks for the whole page (EIO); with direct_io a read of just those bytes gets them.
    let kept = Hardening.preadOnce(fd, buffer, 10, cut + 50)
    #expect(kept == -Int(EIO) || kept == 10, "read of 10 bytes still in the file gave \(kept)")
    if kept == 10 {
      #expect(pcram.withUnsafeBytes { memcmp(buffer.base, $0.baseAddress! + Int(cut + 50), 10) } == 0)
    }
    let vga = open(mounted.path("vga.vram"), O_RDONLY | O_CLOEXEC)
    #expect(vga >= 0)
    if vga >= 0 {
      #expect(Hardening.preadOnce(vga, buffer, 8192, 4096) == -Int(EIO), "vga.vram lies wholly past the cut")
      close(vga)
    }

    // A read that starts before the cut and ends after it: EIO, or a short read of correct
    // bytes that stops at or before the cut (the page cache serves the good pages it can).
    let spanStart = cut - 32768
    let span = Hardening.preadOnce(fd, buffer, 65536, spanStart)
    #expect(span == -Int(EIO) || (span > 0 && UInt64(span) <= cut - spanStart), "read across the cut gave \(span)")
    if span > 0 {
      let same = pcram.withUnsafeBytes { firstDifference(buffer.base, $0.baseAddress! + Int(spanStart), span) }
      #expect(same == nil, "the short read across the cut serves the original bytes")
    }

    // Pages still in the file read correctly, before and after the errors, and the daemon answers.
    #expect(Hardening.check(file, at: 5 << 20, count: 4096, expected: pcram) == nil)
    #expect(Hardening.check(file, at: 2 << 20, count: 1 << 20, expected: pcram) == nil)
    #expect(Hardening.check(file, at: cut - 4096, count: 4096, expected: pcram) == nil)
    #expect(mounted.process.isRunning, "the daemon is still running")
    var st = stat()
    #expect(stat(file, &st) == 0 && st.st_size == 16 << 20, "pc.ram keeps its size (the kernel was never told EOF)")
    var sv = statvfs()
    #expect(statvfs(mounted.mountpoint, &sv) == 0, "statfs reaches the daemon: errno \(errno)")
    #expect(Hardening.preadOnce(fd, buffer, 4096, 12 << 20) == -Int(EIO), "a page past the cut stays EIO (no zeros cached)")

    // The error is logged once, however many reads failed.
    mounted.process.send(SIGTERM)
    #expect(mounted.process.waitForExit(timeout: .seconds(10)))
    #expect(mounted.process.exitedNormally && mounted.process.terminationStatus == 0)
    let log = mounted.process.standardError
    let logged = log.split(separator: "\n").filter { $0.contains("answering EIO") }
    #expect(logged.count == 1, "one error line in the daemon's log, got:\n\(log)")
    #expect(logged.first?.contains("logged once") == true)
  }

  @Test(
    "an image replaced by rename (or deleted) under a live mount: the mount keeps serving the original bytes",
    arguments: ["", "direct_io,read=splice"])
  func replacedUnderMount(_ options: String) throws {
    let scratch = try ScratchDirectory()
    defer { withExtendedLifetime(scratch) {} }
    let image = "\(scratch.path)/image.mapped"
    let replacement = "\(scratch.path)/replacement.mapped"
    let original = Hardening.faultStream(seed: 0x6f72_6967)
    let other = Hardening.faultStream(seed: 0x6f74_6872)
    try Hardening.write(original, to: image)
    try Hardening.write(other, to: replacement)
    let pcram = Hardening.contents(of: original.blocks[0])
    let otherPcram = Hardening.contents(of: other.blocks[0])
    let vga = Hardening.contents(of: original.blocks[1])

    let mount = try QEMUMount(image, options: options.isEmpty ? nil : options)
    defer { mount.cleanup() }
    let infoBefore = try MountSupport.readFile(mount.path("info.json"))
    #expect(Hardening.check(mount.path("pc.ram"), at: 0, count: 4096, expected: pcram) == nil)

    try #require(rename(replacement, image) == 0)
    // Every byte of both blocks, none of them read before the rename, is the original's.
    #expect(Hardening.check(mount.path("pc.ram"), at: 0, count: 16 << 20, expected: pcram) == nil)
    #expect(Hardening.check(mount.path("vga.vram"), at: 0, count: 4 << 20, expected: vga) == nil)
    let sample = Buffer(4096)
    let fd = open(mount.path("pc.ram"), O_RDONLY | O_CLOEXEC)
    #expect(fd >= 0)
    if fd >= 0 {
      #expect(preadFully(fd, sample.base, 4096, 7 << 20) == 4096)
      let replaced = otherPcram.withUnsafeBytes { memcmp(sample.base, $0.baseAddress! + (7 << 20), 4096) == 0 }
      #expect(!replaced, "never the replacement's bytes")
      close(fd)
    }
    #expect(try MountSupport.readFile(mount.path("info.json")) == infoBefore)

    // Deleted altogether: the daemon still holds the original.
    try #require(unlink(image) == 0)
    #expect(Hardening.check(mount.path("pc.ram"), at: (16 << 20) - (1 << 20), count: 1 << 20, expected: pcram) == nil)
    #expect(isAlive(mount.daemon))
  }

  @Test(
    "EIO from the storage under the image (a loop device whose backing file lost its tail): EIO, the daemon stays up",
    arguments: ["", "read=splice", "direct_io,read=splice"])
  func storageErrors(_ options: String) throws {
    try MountSupport.requireFUSE()
    // No device-mapper in this kernel (CONFIG_BLK_DEV_DM is off, so no dm-error or
    // dm-flakey). A loop device does the same job: once its backing file is cut, the
    // loop driver completes reads past the cut with BLK_STS_IOERR, so pread of the
    // device fails with EIO. mramfs serves a block device as the image.
    let losetup = MountSupport.findExecutable("losetup")
    try Hardening.require(geteuid() == 0, "loop devices need root")
    try Hardening.require(access("/dev/loop-control", R_OK | W_OK) == 0, "/dev/loop-control is missing")
    try Hardening.require(losetup != nil, "losetup is not on PATH (Debian: util-linux's mount package)")
    let scratch = try ScratchDirectory()
    defer { withExtendedLifetime(scratch) {} }
    let backing = "\(scratch.path)/backing.img"
    let stream = Hardening.faultStream(seed: 0x6c6f_6f70)
    try Hardening.write(stream, to: backing, padTo: 4096)
    let pcram = Hardening.contents(of: stream.blocks[0])
    let pagesOffset = try MigrationFile(path: backing).blocks[0].pagesOffset

    let attach = try CLI.run(losetup ?? "losetup", ["--find", "--show", backing])
    let device = attach.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    try Hardening.require(
      attach.status == 0 && device.hasPrefix("/dev/loop"), "losetup could not attach a loop device: \(attach.stderr)")
    defer { _ = try? CLI.run(losetup ?? "losetup", ["--detach", device]) }

    let mounted = try foregroundMount(device, options: options)
    defer { mounted.cleanup() }
    let file = mounted.path("pc.ram")
    #expect(Hardening.check(file, at: 0, count: 4096, expected: pcram) == nil)

    // Cut the backing file at 8 MiB into pc.ram's pages, then drop the device's cached pages.
    let cut: UInt64 = 8 << 20
    try #require(truncate(backing, off_t(pagesOffset + cut)) == 0)
    let dev = open(device, O_RDONLY | O_CLOEXEC)
    try #require(dev >= 0)
    #expect(posix_fadvise(dev, 0, 0, POSIX_FADV_DONTNEED) == 0)
    #expect(Hardening.preadOnce(dev, Buffer(4096), 4096, pagesOffset + (12 << 20)) == -Int(EIO),
      "the device itself fails past the cut")
    close(dev)

    let fd = open(file, O_RDONLY | O_CLOEXEC)
    try #require(fd >= 0)
    defer { close(fd) }
    let buffer = Buffer(1 << 20)
    for (offset, count) in [(12 << 20, 4096), ((12 << 20) + 123, 65536), (9 << 20, 1 << 20), (cut, 4096)] as [(UInt64, Int)] {
      let n = Hardening.preadOnce(fd, buffer, count, offset)
      #expect(n == -Int(EIO), "read of \(count) at \(offset) (past the cut) gave \(n), expected EIO")
    }
    #expect(Hardening.check(file, at: 2 << 20, count: 1 << 20, expected: pcram) == nil)
    #expect(mounted.process.isRunning, "the daemon is still running")
    var sv = statvfs()
    #expect(statvfs(mounted.mountpoint, &sv) == 0)

    // A read across the cut: EIO, or a short read of correct bytes.
    let spanStart = cut - 32768
    let span = Hardening.preadOnce(fd, buffer, 65536, spanStart)
    #expect(span == -Int(EIO) || (span > 0 && UInt64(span) <= cut - spanStart), "read across the cut gave \(span)")
    if span > 0 {
      let same = pcram.withUnsafeBytes { firstDifference(buffer.base, $0.baseAddress! + Int(spanStart), span) }
      #expect(same == nil)
    }
    var st = stat()
    if options == "read=splice" {
      // libfuse splices a file segment that fails part-way as a short reply (fuse_send_data_iov
      // keeps the bytes it got), and the kernel's page cache takes a short reply for end of file
      // and shrinks the file. mramfs cannot see the failure from its handler.
      // So the file may look shorter from then on (README: "Faults"); what matters is that
      // no byte past the failure is ever served: EIO, or nothing at all.
      #expect(stat(file, &st) == 0)
      let n = Hardening.preadOnce(fd, buffer, 4096, 12 << 20)
      #expect(n == -Int(EIO) || n == 0, "read past the failure gave \(n)")
    } else {
      #expect(stat(file, &st) == 0 && st.st_size == 16 << 20, "pc.ram keeps its size")
      #expect(Hardening.preadOnce(fd, buffer, 4096, 12 << 20) == -Int(EIO))
    }
    #expect(mounted.process.isRunning)
  }

  @Test(
    "`fusermount3 -u` while 16 readers are busy: refused while files are open, then -z ends cleanly and the daemon exits 0",
    arguments: ["", "direct_io,read=splice"])
  func unmountUnderLoad(_ options: String) throws {
    let scratch = try ScratchDirectory()
    defer { withExtendedLifetime(scratch) {} }
    let image = "\(scratch.path)/image.mapped"
    let stream = Hardening.faultStream(seed: 0x6275_7379)
    try Hardening.write(stream, to: image)
    let pcram = Hardening.contents(of: stream.blocks[0])
    let fusermount = try #require(MountSupport.findExecutable("fusermount3"))

    let mounted = try foregroundMount(image, options: options)
    defer { mounted.cleanup() }
    let file = mounted.path("pc.ram")
    let state = ReaderState()
    let report = ThreadReport()

    let readers = Thread {
      Hardening.runThreads(16) { index in
        var rng = SplitMix64(state: 0xfeed + UInt64(index))
        let buffer = Buffer(256 << 10)
        var fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return report.fail("reader \(index): open: errno \(errno)") }
        state.started.add(1, ordering: .relaxed)
        var reads = 0
        while !state.stop.load(ordering: .relaxed) {
          let count = Int(rng.next() % (256 << 10)) + 1
          let offset = rng.next() % UInt64(pcram.count - count)
          let n = pread(fd, buffer.base, count, off_t(offset))
          if n < 0 {
            let e = errno
            state.errors.withLock { $0[e, default: 0] += 1 }
            break
          }
          if n != count { report.fail("reader \(index): \(n) of \(count) bytes at \(offset)") }
          let wrong = pcram.withUnsafeBytes { firstDifference(buffer.base, $0.baseAddress! + Int(offset), n) }
          if let wrong { report.fail("reader \(index): wrong byte at \(offset + UInt64(wrong))") }
          report.count(n)
          reads += 1
          // Now and then close and reopen: after the lazy unmount the path no longer leads into the mount.
          if reads % 64 == 0 {
            close(fd)
            fd = open(file, O_RDONLY | O_CLOEXEC)
            if fd < 0 {
              state.reopenFailures.add(1, ordering: .relaxed)
              return
            }
          }
        }
        close(fd)
      }
    }
    readers.start()
    defer {
      state.stop.store(true, ordering: .relaxed)
      while !readers.isFinished { usleep(10_000) }
    }
    while state.started.load(ordering: .relaxed) < 16 && report.snapshot.messages.isEmpty { usleep(10_000) }
    usleep(300_000)

    // Plain unmount: the readers hold files open, so the kernel says EBUSY and nothing changes.
    let plain = try CLI.run(fusermount, ["-u", mounted.mountpoint])
    if plain.status != 0 {
      #expect(plain.stderr.contains("busy"), "fusermount3 -u: \(plain.stderr)")
      #expect(MountSupport.mount(at: mounted.mountpoint) != nil, "a refused unmount leaves the mount")
      #expect(mounted.process.isRunning)
      usleep(200_000)
      let detached = try CLI.run(fusermount, ["-u", "-z", mounted.mountpoint])
      #expect(detached.status == 0, "fusermount3 -u -z: \(detached.stderr)")
    }
    #expect(MountSupport.mount(at: mounted.mountpoint) == nil, "the mount left /proc/self/mountinfo at once")
    usleep(300_000)
    state.stop.store(true, ordering: .relaxed)
    while !readers.isFinished { usleep(10_000) }

    #expect(mounted.process.waitForExit(timeout: .seconds(10)), "the daemon exits once the last file is closed")
    let exitedCleanly = mounted.process.exitedNormally && mounted.process.terminationStatus == 0
    let how = "the daemon \(mounted.process.exitedNormally ? "exited" : "was killed by signal") \(mounted.process.terminationStatus)"
    let log = mounted.process.standardError
    #expect(exitedCleanly, "\(how); stderr: \(log)")
    #expect(MountSupport.mount(at: mounted.mountpoint) == nil)
    let seen = report.snapshot
    #expect(seen.messages.isEmpty, "\(seen.messages)")
    #expect(seen.reads > 0)
    // Readers either finished (stopped) or met an error; the only error is a reopen that
    // no longer finds the file (ENOENT), never a failed read of an open file.
    let failed = state.errors.withLock { $0 }
    #expect(failed.isEmpty, "reads of open files failed (errno: count): \(failed)")
    print("unmountUnderLoad(\(options)): \(seen.reads) reads, \(state.reopenFailures.load(ordering: .relaxed)) reopens after the detach failed")
  }

  @Test("a killed daemon leaves a stale mount: `mramfs mount` on it exits 2 naming `mramfs unmount DIR`, which clears it")
  func staleMount() throws {
    let scratch = try ScratchDirectory()
    defer { withExtendedLifetime(scratch) {} }
    let image = "\(scratch.path)/image.mapped"
    let stream = Hardening.faultStream(seed: 0x7374_616c)
    try Hardening.write(stream, to: image)
    let pcram = Hardening.contents(of: stream.blocks[0])
    let mramfs = try CLI.mramfs()

    let killed = try QEMUMount(image)
    defer { killed.cleanup() }
    #expect(kill(killed.daemon, SIGKILL) == 0)
    #expect(waitForExit([killed.daemon], timeout: .seconds(5)))
    var sv = statvfs()
    let dead = errnoOf { Int(statvfs(killed.mountpoint, &sv)) }
    #expect(dead == ENOTCONN || dead == ECONNABORTED, "a killed daemon leaves a dead mount, got errno \(String(describing: dead))")
    let before = MountSupport.mounts().filter { $0.mountPoint == killed.mountpoint }.count
    #expect(before == 1)

    for args in [["mount", image, killed.mountpoint], [image, killed.mountpoint, "-o", "ro"]] {
      let again = try CLI.run(mramfs, args, timeout: .seconds(30))
      #expect(again.exitedNormally && again.status == 2, "mramfs \(args.joined(separator: " ")) exited \(again.status)")
      #expect(again.stderr.contains("mramfs unmount \(killed.mountpoint)"), "the message says what to run: \(again.stderr)")
      #expect(again.stderr.contains("stale"), "\(again.stderr)")
      #expect(MountSupport.mounts().filter { $0.mountPoint == killed.mountpoint }.count == before, "nothing was mounted over it")
    }

    let cleared = try CLI.run(mramfs, ["unmount", killed.mountpoint])
    #expect(cleared.status == 0, "stderr: \(cleared.stderr)")
    #expect(MountSupport.mount(at: killed.mountpoint) == nil, "the stale mount is gone")
    // The same directory mounts again and serves the image.
    let fresh = try CLI.run(mramfs, ["mount", image, killed.mountpoint], timeout: .seconds(30))
    #expect(fresh.status == 0, "stderr: \(fresh.stderr)")
    let daemons = mramfsDaemons(killed.mountpoint)
    defer {
      MountSupport.unmount(killed.mountpoint)
      _ = waitForExit(daemons, timeout: .seconds(10))
    }
    #expect(Hardening.check("\(killed.mountpoint)/pc.ram", at: 0, count: 1 << 20, expected: pcram) == nil)
  }
}

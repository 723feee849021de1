// Stress and resource bounds through the real kernel.
//
// Stress: 16 threads read random ranges of every file of a synthetic image (several blocks,
// nested names, holes, stale bytes behind clear bits, a block with no pages) and check every
// byte against the format library's own MigrationFile.read(block:at:into:). Sizes run from
// 1 byte to 4 MiB, skewed small; offsets favour page edges, max_read edges, block ends and
// the space past them. The operation count is fixed; nothing is timed.
//
// Resource bounds: a 1 TiB guest (`mramfs synth --ram 1T --density 0.0001`, a 32 MiB bitmap)
// is mounted and inspected with `info`; memory must stay in proportion to the bitmap.

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

/// The synthetic image of the stress test and how to pick reads from it.
enum StressImage {
  /// A block whose pages come in present and absent runs of 1 to `maxRun` pages, with about
  /// `density` of them present; a third of the absent pages have stale bytes in the file.
  static func block(
    _ name: String, length: UInt64, density: Double, maxRun: UInt64, _ rng: inout SplitMix64
  ) -> FixtureBlock {
    var block = FixtureBlock(name: name, length: length)
    let pages = length / 4096
    var page: UInt64 = 0
    while page < pages {
      let present = Double(rng.next() % 1_000_000) / 1_000_000 < density
      let run = min(rng.next() % maxRun + 1, pages - page)
      for p in page..<page + run {
        if present {
          block.present[p] = Hardening.randomPage(&rng)
        } else if rng.next() % 3 == 0 {
          block.stale[p] = Hardening.randomPage(&rng)
        }
      }
      page += run
    }
    return block
  }

  static func stream() -> FixtureStream {
    var rng = SplitMix64(state: 0x7374_7265_7373)
    var all = FixtureBlock(name: "pc.bios", length: 256 << 10)
    for p in 0..<UInt64(64) { all.present[p] = Hardening.randomPage(&rng) }
    return FixtureStream(blocks: [
      block("pc.ram", length: 48 << 20, density: 0.6, maxRun: 64, &rng),
      block("0000:00:02.0/vga.vram", length: 8 << 20, density: 0.3, maxRun: 8, &rng),
      block("/rom@etc/acpi/tables", length: 128 << 10, density: 1, maxRun: 1, &rng),
      all,
      // Every other page: a 1 MiB read meets 256 runs, beyond the splice segment limit.
      block("0000:00:03.0/e1000.rom", length: 256 << 10, density: 0.5, maxRun: 1, &rng),
      FixtureBlock(name: "empty.ram", length: 2 << 20),
    ])
  }

  /// A read size from 1 byte to 4 MiB: mostly up to 64 KiB, a few up to 4 MiB.
  static func size(_ rng: inout SplitMix64) -> Int {
    let r = rng.next() % 1000
    func within(_ low: Int, _ high: Int) -> Int { low + Int(rng.next() % UInt64(high - low + 1)) }
    if r < 50 { return within(1, 16) }
    if r < 600 { return within(1, 4096) }
    if r < 930 { return within(4097, 64 << 10) }
    if r < 992 { return within((64 << 10) + 1, 1 << 20) }
    return within((1 << 20) + 1, 4 << 20)
  }

  /// A read offset in a file of `length` bytes for a read of `size` bytes.
  static func offset(length: UInt64, size: Int, _ rng: inout SplitMix64) -> UInt64 {
    func delta(_ span: UInt64) -> Int64 { Int64(rng.next() % (2 * span + 1)) - Int64(span) }
    let k = rng.next() % 100
    var at: Int64
    switch k {
    case 0..<35:  // anywhere
      at = Int64(rng.next() % max(length, 1))
    case 35..<65:  // around a page edge
      at = Int64(rng.next() % (length / 4096 + 1)) * 4096 + delta(64)
    case 65..<75:  // around a max_read edge: 1 MiB (pread) or 1032192 (splice)
      let unit: UInt64 = rng.next() % 2 == 0 ? 1 << 20 : 1_032_192
      at = Int64(rng.next() % (length / unit + 1) * unit) + delta(4096)
    case 75..<90:  // ending near or past the end of the file
      at = Int64(length) - Int64(rng.next() % UInt64(size + 4096))
    default:  // starting past the end
      at = Int64(length) + Int64(rng.next() % 65536)
    }
    return UInt64(max(0, at))
  }
}

@Suite("stress: 16 threads, random reads checked byte for byte", .serialized)
struct StressTests {
  /// Reads per mount; two mounts make about 200,000.
  static let operations = 100_000
  static let threads = 16

  @Test("random reads of every file equal the library's bytes", arguments: ["", "direct_io,read=splice"])
  func randomReads(_ options: String) throws {
    try MountSupport.requireFUSE()
    let scratch = try ScratchDirectory()
    defer { withExtendedLifetime(scratch) {} }
    let image = "\(scratch.path)/stress.mapped"
    try Hardening.write(StressImage.stream(), to: image)
    let file = try MigrationFile(path: image)
    let paths = BlockPaths.assign(file.blocks.map(\.name)).map { $0.joined(separator: "/") }
    #expect(paths.contains("0000:00:02.0/vga.vram") && paths.contains("rom@etc/acpi/tables"))

    let mount = try QEMUMount(image, options: options.isEmpty ? nil : options)
    defer { mount.cleanup() }
    let info = try MountSupport.readFile(mount.path("info.json"))
    let parsed = try JSONSerialization.jsonObject(with: Data(info)) as? [String: Any]
    #expect((parsed?["blocks"] as? [Any])?.count == file.blocks.count, "info.json lists every block")

    let report = ThreadReport()
    let mountpoint = mount.mountpoint
    let perThread = Self.operations / Self.threads
    let start = ContinuousClock.now
    Hardening.runThreads(Self.threads) { index in
      var rng = SplitMix64(state: 0x5eed_0000 + UInt64(index))
      // One descriptor per file and two 4 MiB buffers per thread, made before the first read.
      let fds = paths.map { open("\(mountpoint)/\($0)", O_RDONLY | O_CLOEXEC) }
      let infoFD = open("\(mountpoint)/info.json", O_RDONLY | O_CLOEXEC)
      defer { for fd in fds + [infoFD] where fd >= 0 { close(fd) } }
      guard !fds.contains(where: { $0 < 0 }), infoFD >= 0 else {
        return report.fail("thread \(index): cannot open the files: errno \(errno)")
      }
      let got = Buffer(4 << 20, fill: 0xa5)
      let want = Buffer(4 << 20)
      for _ in 0..<perThread {
        let size = StressImage.size(&rng)
        let pick = rng.next() % 100
        if pick < 5 {
          // info.json: against the copy read at the start.
          let offset = StressImage.offset(length: UInt64(info.count), size: size, &rng)
          let n = pread(infoFD, got.base, size, off_t(offset))
          let expected = offset < UInt64(info.count) ? min(size, info.count - Int(offset)) : 0
          if n != expected {
            report.fail("info.json: \(size) bytes at \(offset) gave \(n) (errno \(errno)), expected \(expected)")
          } else if n > 0, info.withUnsafeBytes({ memcmp(got.base, $0.baseAddress! + Int(offset), n) }) != 0 {
            report.fail("info.json: \(size) bytes at \(offset) differ")
          }
          report.count(max(n, 0))
          continue
        }
        // pc.ram takes a third of the reads, the other blocks share the rest.
        let block = pick < 35 ? 0 : 1 + Int(rng.next() % UInt64(paths.count - 1))
        let length = file.blocks[block].length
        let offset = StressImage.offset(length: length, size: size, &rng)
        let expected = offset < length ? Int(min(UInt64(size), length - offset)) : 0
        let reference: Int
        do {
          reference = try file.read(block: block, at: offset, into: want.slice(size))
        } catch {
          report.fail("library: \(paths[block]) \(size) bytes at \(offset): \(error)")
          continue
        }
        if reference != expected {
          report.fail("library: \(paths[block]) \(size) bytes at \(offset) gave \(reference), expected \(expected)")
        }
        let n = pread(fds[block], got.base, size, off_t(offset))
        if n != reference {
          report.fail("\(paths[block]): \(size) bytes at \(offset) gave \(n) (errno \(errno)), the library \(reference)")
        } else if n > 0, let at = firstDifference(got.base, want.base, n) {
          report.fail("\(paths[block]): \(size) bytes at \(offset): byte \(offset + UInt64(at)) differs")
        }
        report.count(max(n, 0))
      }
      withExtendedLifetime((got, want)) {}
    }
    let elapsed = ContinuousClock.now - start
    let seen = report.snapshot
    #expect(seen.messages.isEmpty, "\(seen.messages.joined(separator: "\n"))")
    #expect(seen.reads == perThread * Self.threads)
    #expect(isAlive(mount.daemon), "the daemon is still running")
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    print(
      "stress [\(options.isEmpty ? "default" : options)]: \(seen.reads) reads, \(seen.bytes >> 20) MiB in "
        + String(format: "%.1f s (%.0f reads/s)", seconds, Double(seen.reads) / seconds))
  }
}

// MARK: - Resource bounds

/// Runs `executable` to completion and reports its exit status and peak resident memory.
///
/// The figure is `ru_maxrss` from wait4, taken by a small python3 parent that forks and
/// execs the command. Measured from this process it would be wrong: a child inherits the
/// high-water mark of the memory it was forked (or posix_spawned) from when it execs, and a
/// test process holding large buffers would mask the command's own peak.
func runMeasuringMemory(_ executable: String, _ arguments: [String], timeout: Duration = .seconds(300)) throws -> (
  status: Int32, maxRSSKiB: Int, stderr: String
) {
  let python = MountSupport.findExecutable("python3")
  try Hardening.require(python != nil, "python3 is not on PATH (scripts/install-deps.sh installs it)")
  let measure = """
    import os, sys
    pid = os.fork()
    if pid == 0:
        null = os.open("/dev/null", os.O_WRONLY)
        os.dup2(null, 1)
        os.execv(sys.argv[1], sys.argv[1:])
    _, status, usage = os.wait4(pid, 0)
    print(usage.ru_maxrss)
    sys.exit(os.waitstatus_to_exitcode(status) & 0xff)
    """
  let result = try CLI.run(python ?? "python3", ["-c", measure, executable] + arguments, timeout: timeout)
  guard result.exitedNormally, let kib = Int(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) else {
    throw MountTestError("measuring \(executable) \(arguments.joined(separator: " ")) failed: \(result.stdout) \(result.stderr)")
  }
  return (result.status, kib, result.stderr)
}

@Suite("resource bounds")
struct ResourceBoundTests {
  @Test("a 1 TiB guest: the daemon's RSS stays under 64 MiB and `info`'s under 128 MiB (a 32 MiB bitmap)")
  func terabyteGuest() throws {
    try MountSupport.requireFUSE()
    let mramfs = try CLI.mramfs()
    let scratch = try ScratchDirectory()
    defer { withExtendedLifetime(scratch) {} }
    let image = "\(scratch.path)/terabyte.mapped"
    let synth = try runMeasuringMemory(mramfs, ["synth", "-o", image, "--ram", "1T", "--density", "0.0001"])
    try #require(synth.status == 0, "synth: \(synth.stderr)")
    let file = try MigrationFile(path: image)
    let bitmapBytes = file.blocks[0].bitmapSize
    #expect(bitmapBytes == 32 << 20)

    var infoRSS: [String: Int] = [:]
    for args in [["info", image], ["info", "--json", image]] {
      let info = try runMeasuringMemory(mramfs, args)
      #expect(info.status == 0, "\(args.joined(separator: " ")): \(info.stderr)")
      #expect(info.maxRSSKiB < 128 << 10, "\(args.joined(separator: " ")) peaked at \(info.maxRSSKiB) KiB")
      infoRSS[args.dropLast().joined(separator: " ")] = info.maxRSSKiB
    }

    let mount = try QEMUMount(image)
    defer { mount.cleanup() }
    let afterMount = Hardening.statusKiB(mount.daemon, "VmRSS")
    // A few requests: stat, a data page found with SEEK_DATA half-way in, a hole, info.json.
    var st = stat()
    #expect(stat(mount.path("pc.ram"), &st) == 0 && UInt64(st.st_size) == 1 << 40)
    let fd = open(mount.path("pc.ram"), O_RDONLY | O_CLOEXEC)
    try #require(fd >= 0)
    defer { close(fd) }
    let data = seekData(fd, 1 << 39)
    #expect(data != nil, "SEEK_DATA finds a populated page in the second half")
    let page = Buffer(4096)
    if let data {
      #expect(preadFully(fd, page.base, 4096, data) == 4096)
      #expect(!isZero(page.base, 4096), "a populated page holds data")
      #expect(seekHole(fd, data).map { $0 > data } == true)
    }
    #expect(try MountSupport.readFile(mount.path("info.json")).count > 0)
    let rss = try #require(Hardening.statusKiB(mount.daemon, "VmRSS"))
    let peak = try #require(Hardening.statusKiB(mount.daemon, "VmHWM"))
    let anonymous = Hardening.statusKiB(mount.daemon, "RssAnon") ?? 0
    #expect(rss < 64 << 10, "the daemon's VmRSS is \(rss) KiB")
    #expect(peak < 64 << 10, "the daemon's VmHWM is \(peak) KiB")
    print(
      "1 TiB guest (bitmap \(bitmapBytes >> 10) KiB): daemon VmRSS \(afterMount ?? 0) KiB after mount, \(rss) KiB "
        + "(\(anonymous) KiB anonymous) after reads, VmHWM \(peak) KiB; info max RSS \(infoRSS); synth max RSS \(synth.maxRSSKiB) KiB")
  }
}

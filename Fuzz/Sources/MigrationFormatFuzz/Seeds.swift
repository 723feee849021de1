// The seed corpus, written at run time (scripts/fuzz.sh sets MRAMFS_FUZZ_SEEDS), so no
// large file is ever committed:
//   * synthetic streams from the tests' fixture writer and from the library's own writer,
//     one per layout and header variant, with 4 KiB alignment so each stays small;
//   * files real QEMU wrote (the .fixtures the QEMU tests use, when present), shrunk: the
//     real configuration, block names, device sections and VM description kept byte for
//     byte, each block cut to its first pages; plus the raw first 64 KiB of each file.
import Foundation
import FuzzFixtures
import MigrationFormat

/// Largest seed written; libFuzzer runs with -max_len 1 MiB.
private let maxSeedSize = 1 << 20

/// Writes every seed into `dir`; returns the process exit status.
func writeSeeds(to dir: String, fixtures: String?) -> Int32 {
  do {
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  } catch {
    warn("cannot create \(dir): \(error)")
    return 1
  }
  var count = 0
  func save(_ name: String, _ bytes: [UInt8]) {
    guard bytes.count <= maxSeedSize else {
      warn("seed \(name) is \(bytes.count) bytes, above the 1 MiB limit; left out")
      return
    }
    if FileManager.default.createFile(atPath: "\(dir)/\(name)", contents: Data(bytes)) { count += 1 }
  }
  for (name, stream) in syntheticStreams() {
    save("synthetic-\(name)", stream.build().bytes)
  }
  for (name, plan) in writerPlans() {
    if let bytes = written(plan, dir: dir, name: name) { save("writer-\(name)", bytes) }
  }
  if let fixtures {
    realSeeds(from: fixtures, into: dir, save: save)
  } else {
    warn("MRAMFS_FIXTURES not set; no seeds from real QEMU files")
  }
  print("mramfs-fuzz: wrote \(count) seeds to \(dir)")
  return 0
}

/// A block of `pages` pages with every `every`-th page present.
private func patterned(_ name: String, pages: UInt64, every: UInt64) -> FixtureBlock {
  var b = FixtureBlock(name: name, length: pages * 4096)
  for p in stride(from: UInt64(0), to: pages, by: Int(every)) {
    b.present[p] = FixtureBlock.pattern(block: name, page: p)
  }
  return b
}

/// The fixture writer's streams, one knob turned in each.
private func syntheticStreams() -> [(String, FixtureStream)] {
  func typical() -> FixtureStream {
    var s = FixtureStream(blocks: [
      patterned("0000:00:02.0/vga.vram", pages: 3, every: 2),
      patterned("pc.ram", pages: 5, every: 2),
      patterned("/rom@etc/acpi/tables", pages: 2, every: 1),
      patterned("pc.bios", pages: 1, every: 2),
    ])
    s.alignment = 4096
    s.uuid = Array(0..<16)
    s.devices = [
      .timer,
      FixtureDevice(
        name: "cpu", instance: 0, version: 12,
        fields: [.init("env.regs", "uint64", be(0x1234_5678, 8)), .init("env.eflags", "uint32", be(2, 4))]),
      FixtureDevice(name: "cpu", instance: 1, version: 12, fields: [.init("env.regs", "uint64", be(7, 8))]),
    ]
    return s
  }
  var out: [(String, FixtureStream)] = [("mapped-ram", typical())]
  var s = typical()
  // One block whose bitmap spans two words, the second with a single page.
  s.blocks[1] = patterned("pc.ram", pages: 65, every: 9)
  out.append(("mapped-ram-65-pages", s))
  s = typical()
  s.parts = 3
  out.append(("mapped-ram-3-parts", s))
  for format in [StreamFormat.classic, .fixedRAM, .fixedRAMRFC1] {
    s = typical()
    s.format = format
    s.capabilities = format == .classic ? [] : ["fixed-ram"]
    s.parts = 2
    out.append((format.rawValue, s))
  }
  s = typical()
  s.machine = nil
  out.append(("mapped-ram-no-configuration", s))
  s.format = .classic
  out.append(("classic-no-configuration", s))
  s = typical()
  s.capabilities = ["mapped-ram", "x-ignore-shared"]
  s.blocks[1].mrAddr = 0x10_0000
  out.append(("mapped-ram-ignore-shared", s))
  s = typical()
  s.format = .classic
  s.capabilities = ["x-ignore-shared"]
  out.append(("classic-ignore-shared", s))
  s = typical()
  s.prefix = libvirtPrefix(xml: "<domain type='kvm'><name>fuzz</name></domain>", padding: 100)
  out.append(("libvirt", s))
  s.prefix = libvirtPrefix(xml: "<domain/>", magic: "LibvirtQemudPart", padding: 10)
  out.append(("libvirt-part", s))
  s = typical()
  s.format = .classic
  s.capabilities = []
  s.prefix = libvirtPrefix(xml: "<domain/>", format: 0, padding: 16)
  out.append(("libvirt-classic", s))
  s = typical()
  s.vmDescription = false
  out.append(("no-vmdesc", s))
  s = typical()
  s.finished = false
  out.append(("unfinished", s))
  s = typical()
  s.switchover = false
  s.devices = []
  out.append(("no-devices", s))
  s = typical()
  s.blocks[1].stale = [1: [0xa5], 2: [0x5a]]
  s.blocks.append(FixtureBlock(name: "empty", length: 0))
  out.append(("stale-and-empty", s))
  s = typical()
  s.blocks = [s.blocks[1]]
  s.blocks[0].bitmapOffsetField = 4096
  out.append(("bitmap-elsewhere", s))
  return out
}

/// A source whose every `every`-th page holds a pattern naming it.
private struct PatternSource: PageSource {
  var every: UInt64

  func page(_ page: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(FormatError) -> Bool {
    guard page % every == 0 else { return false }
    let tag = Array("page \(page) ".utf8)
    for i in 0..<buffer.count { buffer[i] = tag[i % tag.count] }
    return true
  }

  func nextCandidate(from page: UInt64) -> UInt64? {
    (page + every - 1) / every * every
  }
}

/// Streams from the library's writer: the configuration records it writes that the fixture writer does not.
private func writerPlans() -> [(String, StreamPlan)] {
  var out: [(String, StreamPlan)] = []
  for format in [StreamFormat.mappedRAM, .fixedRAMRFC1, .classic] {
    var plan = StreamPlan(machineType: "pc-q35-10.0")
    plan.format = format
    plan.targetPageBits = 12
    plan.uuid = Array(repeating: 0xab, count: 16)
    plan.alignment = 4096
    plan.threads = 1
    plan.blocks = [
      BlockPlan(name: BlockName("pc.ram"), length: 7 * 4096, source: PatternSource(every: 3)),
      BlockPlan(name: BlockName("/rom@etc/table-loader"), length: 4096, source: PatternSource(every: 1)),
    ]
    out.append((format.rawValue, plan))
  }
  return out
}

/// Writes `plan` to a temporary file in `dir` and returns its bytes.
private func written(_ plan: StreamPlan, dir: String, name: String) -> [UInt8]? {
  let path = "\(dir)/.tmp-\(name)"
  defer { try? FileManager.default.removeItem(atPath: path) }
  do {
    let output = try OutputFile(path: path, overwrite: true)
    _ = try StreamWriter.write(plan, to: output)
    guard let data = FileManager.default.contents(atPath: path) else { return nil }
    return [UInt8](data)
  } catch {
    warn("seed \(name): \(error)")
    return nil
  }
}

/// Seeds from the real QEMU files in `dir`.
private func realSeeds(from dir: String, into out: String, save: (String, [UInt8]) -> Void) {
  guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else {
    warn("cannot list \(dir); no seeds from real QEMU files")
    return
  }
  for name in names.sorted() where [".mapped", ".classic", ".sav"].contains(where: name.hasSuffix) {
    let path = "\(dir)/\(name)"
    if let image = try? ImageFile(path: path), let head = try? image.bytes(at: 0, count: min(image.size, 64 << 10), "head") {
      save("real-\(name)-head", head)
    }
    var options = OpenOptions()
    options.force = true
    let file: MigrationFile
    do {
      file = try MigrationFile(path: path, options: options)
    } catch {
      warn("\(name): \(error)")
      continue
    }
    let other: StreamFormat = file.format == .classic ? .mappedRAM : .classic
    for format in [file.format, other] {
      do {
        var plan = try Converter.plan(file, to: format, alignment: 4096, threads: 1)
        // The first page of each block is enough: the offsets and structure are what matter,
        // and small inputs fuzz faster.
        for i in plan.blocks.indices {
          plan.blocks[i].length = min(plan.blocks[i].length, 4096)
        }
        let seed = "real-\(name)-as-\(format.rawValue)"
        if let bytes = written(plan, dir: out, name: seed) {
          save(seed, bytes)
        }
      } catch {
        warn("\(name) as \(format.rawValue): \(error)")
      }
    }
  }
}

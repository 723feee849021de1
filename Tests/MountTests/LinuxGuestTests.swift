// Real Linux guests (Debian's cloud kernel, KASLR on; scripts/fixtures/linux.py), one with
// -device vmcoreinfo and qemu_fw_cfg loaded, one without, mounted: `vmcoreinfo` is the note's
// text in guest memory; `info --json` has the guest's own release and KASLR offset; drgn opens
// MNT/vmcore with nothing but vmlinux and lists exactly the tasks it lists on QEMU's
// dump-guest-memory of the same stopped guest (given --vmcoreinfo there when QEMU's dump has no
// note); crash's `sys` and `ps` print the same on both. And the tiny test guest, which has no
// VMCOREINFO: no `vmcoreinfo`, the reason in info, vmcore as before.

import Foundation
import GuestViews
import MigrationFormat
import QEMUFixtures
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// The Linux fixture and the guest named `name`; skips (fails under CI=true) when the fixtures could not make it.
func linuxGuest(_ name: String) throws -> (Fixtures, LinuxFixture, LinuxGuest) {
  let fixtures = try Fixtures.load()
  guard let linux = fixtures.manifest.linux else {
    throw MountTestError("the manifest has no linux entry; remake the fixtures (MRAMFS_FRESH=1 scripts/test.sh)")
  }
  if let why = linux.unavailable {
    if MountSupport.isCI { throw MountTestError("no Linux guest: \(why) — under CI=true this is a failure, not a skip") }
    try Test.cancel(Comment(rawValue: "no Linux guest: \(why)"))
  }
  guard let g = linux.guests?.first(where: { $0.name == name }) else {
    throw MountTestError("the manifest's linux entry has no guest \(name)")
  }
  return (fixtures, linux, g)
}

/// The vmlinux of the guests' kernel, which must exist.
func vmlinux(_ linux: LinuxFixture) throws -> String {
  guard let path = linux.vmlinux, access(path, R_OK) == 0 else {
    throw MountTestError("vmlinux \(linux.vmlinux ?? "(none)") is missing; scripts/test.sh fetches it into MRAMFS_DOWNLOADS")
  }
  return path
}

/// Prints (pid, comm) of every task and the KASLR offset, as drgn sees the core.
private let drgnScript = """
  from drgn.helpers.linux.pid import for_each_task
  from drgn.helpers.linux.boot import kaslr_offset
  print("KASLR", kaslr_offset(prog))
  for t in for_each_task(prog): print("TASK", t.pid.value_(), t.comm.string_().decode())
  """

@Suite("real Linux guests, mounted: vmcoreinfo, info, drgn and crash", .serialized)
struct LinuxGuestTests {
  static let guests = ["linux-with-device", "linux-without-device"]

  @Test("vmcoreinfo is the note's text in guest memory; info --json and info.json give the guest's release and KASLR offset", arguments: guests)
  func vmcoreinfoAndInfo(_ name: String) throws {
    let (fixtures, _, g) = try linuxGuest(name)
    let image = fixtures.path(g.file)
    let mount = try QEMUMount(image)
    defer { mount.cleanup() }
    let text = try MountSupport.readFile(fixtures.path(g.vmcoreinfoText))
    #expect(try MountSupport.listDirectory(mount.mountpoint).contains("vmcoreinfo"))
    #expect(try MountSupport.readFile(mount.path("vmcoreinfo")) == text, "\(name): vmcoreinfo differs from the note in guest memory")

    let r = try CLI.run(try CLI.mramfs(), ["info", "--json", image])
    try #require(r.status == 0, "\(name): info exited \(r.status): \(r.stderr)")
    for (what, json) in [("info --json", r.stdoutData), ("info.json", Data(try MountSupport.readFile(mount.path("info.json"))))] {
      let doc = try #require(try JSONSerialization.jsonObject(with: json) as? [String: Any])
      let k = try #require(doc["kernel"] as? [String: Any], "\(name): \(what) has no kernel: \(doc["kernelUnavailable"] ?? "")")
      #expect(k["release"] as? String == g.release, "\(name): \(what) release")
      #expect((k["kaslrOffset"] as? NSNumber)?.uint64Value == g.kaslrOffset, "\(name): \(what) KASLR offset, the guest's is \(hex(g.kaslrOffset))")
      #expect(k["buildID"] as? String == g.buildID)
      #expect(k["source"] as? String == (g.device ? "device" : "search"), "\(name): \(what) source")
      #expect((k["gpa"] as? NSNumber)?.uint64Value == g.vmcoreinfoGPA, "\(name): \(what) gpa")
      #expect(k["validation"] as? String == "init_uts_ns")
    }
    let table = try CLI.run(try CLI.mramfs(), ["info", image])
    #expect(table.stdout.contains("kernel          \(g.release), build ID"), "\(name): \(table.stdout)")
  }

  /// drgn's (pid, comm) list and KASLR offset for `core`.
  func drgnTasks(_ drgn: String, _ core: String, vmlinux: String, extra: [String] = []) throws -> (kaslr: UInt64, tasks: [String]) {
    let r = try CLI.run(drgn, ["-q", "-c", core, "-s", vmlinux] + extra + ["-e", drgnScript], timeout: .seconds(300))
    try #require(r.exitedNormally && r.status == 0, "drgn -c \(core) exited \(r.status): \(r.stderr)")
    var kaslr: UInt64? = nil
    var tasks: [String] = []
    for line in r.stdout.split(separator: "\n") {
      if line.hasPrefix("KASLR ") { kaslr = UInt64(line.dropFirst(6)) }
      if line.hasPrefix("TASK ") { tasks.append(String(line.dropFirst(5))) }
    }
    return (try #require(kaslr, "drgn printed no KASLR line: \(r.stdout)"), tasks)
  }

  @Test("drgn -c MNT/vmcore -s vmlinux lists exactly the tasks drgn lists on QEMU's dump", arguments: guests)
  func drgn(_ name: String) throws {
    let (fixtures, linux, g) = try linuxGuest(name)
    let drgn = try requireTool(
      "drgn", environment: "MRAMFS_DRGN", install: "scripts/test.sh installs PyPI drgn into .venv and sets MRAMFS_DRGN")
    let symbols = try vmlinux(linux)
    let mount = try QEMUMount(fixtures.path(g.file))
    defer { mount.cleanup() }
    let ours = try drgnTasks(drgn, mount.path("vmcore"), vmlinux: symbols)
    // QEMU's dump of the guest without the device has no VMCOREINFO note: drgn needs the text given.
    let theirs = try drgnTasks(
      drgn, fixtures.path(g.elfDump), vmlinux: symbols, extra: g.device ? [] : ["--vmcoreinfo", fixtures.path(g.vmcoreinfoText)])
    #expect(ours.tasks == theirs.tasks, "\(name): drgn's tasks on vmcore differ from those on QEMU's dump")
    #expect(ours.kaslr == g.kaslrOffset && theirs.kaslr == g.kaslrOffset)
    // And they are the guest's own: every task it listed, by pid and comm.
    let listed = Set(g.tasks.map { "\($0.pid) \($0.taskComm)" })
    #expect(listed.isSubset(of: Set(ours.tasks)), "\(name): tasks the guest listed that drgn does not: \(listed.subtracting(ours.tasks))")
    for sleeper in ["mramfs_alpha", "mramfs_beta", "mramfs_gamma"] {
      #expect(ours.tasks.contains { $0.hasSuffix(" " + sleeper) }, "\(name): no \(sleeper)")
    }
  }

  /// crash's output for `sys` and `ps` on `core`, without the lines that name the core file.
  func crashSysPs(_ crash: String, _ core: String, vmlinux: String) throws -> [String] {
    let input = FileManager.default.temporaryDirectory.appendingPathComponent("mramfs-crash-\(UUID().uuidString)").path
    try Data("sys\nps\nquit\n".utf8).write(to: URL(fileURLWithPath: input))
    defer { unlink(input) }
    let r = try CLI.run(crash, ["-s", "-i", input, vmlinux, core], timeout: .seconds(300))
    try #require(r.exitedNormally && r.status == 0, "crash on \(core) exited \(r.status): \(r.stderr)")
    let lines = r.stdout.split(separator: "\n").map(String.init)
    try #require(lines.contains { $0.contains("RELEASE:") } && lines.contains { $0.contains("[swapper/0]") }, "crash printed no sys/ps: \(r.stdout)")
    // DUMPFILE names the file given; "cannot read vmcoreinfo_data" is crash noting that QEMU's dump
    // of the guest without the device has no VMCOREINFO note (vmcore has one).
    return lines.filter { !$0.contains("DUMPFILE:") && !$0.hasPrefix("crash: cannot read vmcoreinfo_data") }
  }

  @Test("crash's sys and ps print on MNT/vmcore what they print on QEMU's dump", arguments: guests)
  func crash(_ name: String) throws {
    let (fixtures, linux, g) = try linuxGuest(name)
    let crash = try requireTool(
      "crash", environment: "MRAMFS_CRASH", install: "scripts/test.sh fetches Debian forky's crash and sets MRAMFS_CRASH")
    let symbols = try vmlinux(linux)
    let mount = try QEMUMount(fixtures.path(g.file))
    defer { mount.cleanup() }
    let ours = try crashSysPs(crash, mount.path("vmcore"), vmlinux: symbols)
    let theirs = try crashSysPs(crash, fixtures.path(g.elfDump), vmlinux: symbols)
    #expect(ours == theirs, "\(name): crash differs:\n\(ours.difference(from: theirs))")
    #expect(ours.contains { $0.contains("RELEASE: \(g.release)") })
    #expect(ours.filter { $0.contains("mramfs_") }.count == 3, "\(name): crash ps shows the three sleepers")
  }

  @Test("the tiny guest has no VMCOREINFO: no vmcoreinfo file, the reason in info, vmcore without the note", arguments: ["pc-256", "q35-5g-mfd"])
  func noKernel(_ name: String) throws {
    let fixtures = try Fixtures.load()
    let s = try fixtures.scenario(name)
    let mount = try QEMUMount(fixtures.path(s.file))
    defer { mount.cleanup() }
    #expect(try !MountSupport.listDirectory(mount.mountpoint).contains("vmcoreinfo"))
    #expect(MountSupport.openError(mount.path("vmcoreinfo"), flags: O_RDONLY) == .ENOENT)
    let doc = try #require(try JSONSerialization.jsonObject(with: Data(try MountSupport.readFile(mount.path("info.json")))) as? [String: Any])
    #expect(doc["kernel"] == nil)
    let why = try #require(doc["kernelUnavailable"] as? String)
    #expect(why.contains("no VMCOREINFO note") && why.contains("not a Linux guest"), "\(name): \(why)")
    let table = try CLI.run(try CLI.mramfs(), ["info", fixtures.path(s.file)])
    #expect(table.stdout.contains("kernel          none (no VMCOREINFO note in the"), "\(name): \(table.stdout)")
    // vmcore is what it was: the header mramfs builds without a note, byte for byte.
    let file = try MigrationFile(path: fixtures.path(s.file))
    let core = try ELFCore.resolve(file, layout: PhysicalLayout(file)).get()
    let fd = open(mount.path("vmcore"), O_RDONLY | O_CLOEXEC)
    try #require(fd >= 0)
    defer { close(fd) }
    var header = [UInt8](repeating: 0, count: core.header.count)
    #expect(header.withUnsafeMutableBytes { preadFully(fd, $0.baseAddress!, $0.count, 0) } == core.header.count)
    #expect(header == core.header)
    #expect(!String(decoding: header, as: UTF8.self).contains("VMCOREINFO"))
  }
}

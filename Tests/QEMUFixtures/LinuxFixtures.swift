// The manifest's "linux" entry (scripts/fixtures/linux.py): Debian's cloud kernel booted with
// and without -device vmcoreinfo, saved with mapped-ram and dumped with dump-guest-memory, and
// what the guest said about itself on its console.

import Foundation

/// The real Linux guests, or why there are none.
public struct LinuxFixture: Decodable, Sendable {
  /// Why the guests could not be made (a download failed without CI); nil when they were.
  public var unavailable: String?
  /// The kernel release (`6.1.0-57-cloud-amd64`).
  public var release: String?
  /// The absolute path of the kernel's vmlinux with debug symbols (from its -dbg package).
  public var vmlinux: String?
  /// The guests.
  public var guests: [LinuxGuest]?
}

/// One booted and saved Linux guest.
public struct LinuxGuest: Decodable, Sendable {
  /// One task the guest listed (/proc/PID/comm) and what task_struct.comm holds.
  public struct Task: Decodable, Sendable, Equatable {
    public var pid: Int
    public var comm: String
    public var taskComm: String
    enum CodingKeys: String, CodingKey {
      case pid, comm
      case taskComm = "task_comm"
    }
  }

  /// `linux-with-device` or `linux-without-device`.
  public var name: String
  /// Whether QEMU ran with `-device vmcoreinfo` (and the guest loaded qemu_fw_cfg).
  public var device: Bool
  /// The mapped-ram save.
  public var file: String
  /// QEMU's dump-guest-memory ELF of the same stopped guest.
  public var elfDump: String
  /// The VMCOREINFO text read from QEMU's dump at the address /sys/kernel/vmcoreinfo gave.
  public var vmcoreinfoText: String
  /// That address: the note's guest-physical address.
  public var vmcoreinfoGPA: UInt64
  /// `uname -r`.
  public var release: String
  /// `_text` from /proc/kallsyms − 0xffffffff81000000.
  public var kaslrOffset: UInt64
  /// BUILD-ID from the note.
  public var buildID: String?
  /// The tasks the guest listed before READY (after which it starts nothing).
  public var tasks: [Task]

  enum CodingKeys: String, CodingKey {
    case name, device, file, release, tasks
    case elfDump = "elf_dump"
    case vmcoreinfoText = "vmcoreinfo_text"
    case vmcoreinfoGPA = "vmcoreinfo_gpa"
    case kaslrOffset = "kaslr_offset"
    case buildID = "build_id"
  }
}

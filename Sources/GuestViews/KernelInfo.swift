import MigrationFormat

/// The guest kernel's VMCOREINFO: the text a Linux kernel keeps in its own memory for crash
/// tools (`OSRELEASE=…`, `BUILD-ID=…`, `PAGESIZE=…`, `SYMBOL(…)=…`, `KERNELOFFSET=…`), found
/// in a saved guest by ``VMCoreInfoSearch``.
///
/// Linux (with `CONFIG_CRASH_CORE`) keeps the text in `vmcoreinfo_note`, a page-aligned buffer
/// that holds it as one ELF note: namesz 11, descsz = the text's length, type 0, the name
/// `VMCOREINFO\0` padded to 12 bytes, then the text (no NUL). QEMU's `-device vmcoreinfo`
/// learns the buffer's address from the guest (the `qemu_fw_cfg` module writes it to the
/// fw_cfg file `etc/vmcoreinfo`) and its `dump-guest-memory` then copies the note into the
/// dump; drgn needs it to open a dump at all, crash uses it when it is there.
public struct KernelInfo: Sendable, Equatable {
  /// Where the note was found.
  public enum Source: String, Sendable, Codable {
    /// At the guest-physical address the `vmcoreinfo` device's saved state gives.
    case device
    /// By searching the populated pages of main RAM.
    case search
  }

  /// How far the note was checked against the rest of the guest.
  public enum Validation: String, Sendable, Codable {
    /// `SYMBOL(init_uts_ns)`, translated through a saved vCPU's page tables (CR3), holds the
    /// note's `OSRELEASE`: the note belongs to the kernel that was running.
    case initUTSNamespace = "init_uts_ns"
    /// Only the text was checked (printable, `OSRELEASE=` first, `PAGESIZE` equal to the page
    /// size): the vCPUs had paging off, or `init_uts_ns` is not mapped through their CR3.
    case text
  }

  /// A note that was looked at and not taken, and why.
  public struct Rejection: Error, Sendable, Equatable, Codable {
    /// The guest-physical address of the note (its ELF note header).
    public var gpa: UInt64
    /// Why it was not taken, in one line.
    public var reason: String
    /// A refusal of the note at `gpa`, for `reason`.
    public init(gpa: UInt64, reason: String) {
      self.gpa = gpa
      self.reason = reason
    }
  }

  /// Why a saved guest has no VMCOREINFO (a non-Linux guest, a kernel without
  /// `CONFIG_CRASH_CORE`, the page not in the file), with what was looked at.
  public struct Unavailable: Error, Sendable, Equatable, CustomStringConvertible {
    /// The reason, in one line, for `info` and info.json.
    public let reason: String
    /// Notes that were found and refused.
    public var rejected: [Rejection] = []
    /// How long the look-up took.
    public var duration: Duration = .zero
    /// Populated pages of main RAM whose first bytes the search read.
    public var pagesSearched: UInt64 = 0
    /// No note, for `reason`.
    public init(_ reason: String) { self.reason = reason }
    /// The reason.
    public var description: String { reason }
  }

  /// The note's text (its descriptor), exactly as the guest holds it: what `vmcoreinfo` serves.
  public let text: [UInt8]
  /// `OSRELEASE`: the kernel release (`uname -r`).
  public let release: String
  /// `BUILD-ID`: the GNU build ID of the kernel image (hex), when the kernel gives it.
  public let buildID: String?
  /// `KERNELOFFSET` (hex in the text): the KASLR offset of the kernel's virtual addresses.
  public let kaslrOffset: UInt64?
  /// `PAGESIZE`.
  public let pageSize: UInt64
  /// Where the note was found.
  public let source: Source
  /// The guest-physical address of the note (its ELF note header; the text starts 24 bytes later).
  public let gpa: UInt64
  /// How far the note was checked.
  public let validation: Validation
  /// Notes that were looked at first and not taken.
  public var rejected: [Rejection] = []
  /// How long the look-up took (device and search).
  public var duration: Duration = .zero
  /// Populated pages of main RAM whose first bytes the search read (0 when the device gave the note).
  public var pagesSearched: UInt64 = 0

  /// The value of `key` in the text (`OSRELEASE`, `SYMBOL(init_uts_ns)`), if it is there.
  public func value(_ key: String) -> String? { VMCoreInfoText.fields(text)[key] }

  /// The duration in seconds, rounded to milliseconds (for documents and tables).
  public static func seconds(_ d: Duration) -> Double {
    let ms = d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000
    return Double(ms) / 1000
  }
}

/// The checks on a VMCOREINFO text, and its `KEY=value` lines.
public enum VMCoreInfoText {
  /// The largest text mramfs reads (the kernel's is at most one page; a note that claims
  /// more is refused, never allocated).
  public static let maxBytes = 1 << 20

  /// The `KEY=value` lines of `text`; the first of a repeated key wins.
  public static func fields(_ text: [UInt8]) -> [String: String] {
    var out: [String: String] = [:]
    for line in text.split(separator: UInt8(ascii: "\n")) {
      guard let eq = line.firstIndex(of: UInt8(ascii: "=")) else { continue }
      let key = String(decoding: line[line.startIndex..<eq], as: UTF8.self)
      if out[key] == nil { out[key] = String(decoding: line[(eq + 1)...], as: UTF8.self) }
    }
    return out
  }

  /// Why a text (or the device's record of it) is refused, in one line.
  public struct Problem: Error, Sendable, Equatable, CustomStringConvertible {
    /// What is wrong, in one line.
    public let reason: String
    /// A problem described by `reason`.
    public init(_ reason: String) { self.reason = reason }
    /// The reason.
    public var description: String { reason }
  }

  /// What a text that passed ``check(_:pageSize:)`` says.
  public struct Checked: Sendable, Equatable {
    /// `OSRELEASE`.
    public var release: String
    /// `BUILD-ID`, when present and not empty.
    public var buildID: String?
    /// `KERNELOFFSET`, when present.
    public var kaslrOffset: UInt64?
    /// `PAGESIZE`, equal to the page size checked against.
    public var pageSize: UInt64
    /// Every `KEY=value` line (``VMCoreInfoText/fields(_:)``).
    public var fields: [String: String]
  }

  /// Checks that `text` is a kernel's VMCOREINFO for pages of `pageSize` bytes: printable
  /// ASCII lines, `OSRELEASE=` first (1 to 64 characters), `PAGESIZE` equal to `pageSize`,
  /// and `KERNELOFFSET` hex when present. Returns the reason when it is not.
  public static func check(_ text: [UInt8], pageSize: UInt64) -> Result<Checked, Problem> {
    guard !text.isEmpty else { return .failure(Problem("the note's text is empty")) }
    if let bad = text.firstIndex(where: { !($0 >= 0x20 && $0 < 0x7f) && $0 != 0x0a }) {
      return .failure(Problem("byte \(bad) of the text is \(hex(UInt64(text[bad]))), not printable ASCII"))
    }
    guard text.starts(with: "OSRELEASE=".utf8) else { return .failure(Problem("the text does not start with OSRELEASE=")) }
    let f = fields(text)
    guard let release = f["OSRELEASE"], !release.isEmpty, release.utf8.count <= 64 else {
      return .failure(Problem("OSRELEASE is empty or longer than 64 characters"))
    }
    guard let ps = f["PAGESIZE"] else { return .failure(Problem("the text has no PAGESIZE")) }
    guard UInt64(ps) == pageSize else { return .failure(Problem("PAGESIZE=\(ps), but the guest's pages are \(pageSize) bytes")) }
    var offset: UInt64? = nil
    if let k = f["KERNELOFFSET"] {
      guard let v = UInt64(k, radix: 16) else { return .failure(Problem("KERNELOFFSET=\(k) is not hex")) }
      offset = v
    }
    let build = f["BUILD-ID"].flatMap { $0.isEmpty ? nil : $0 }
    return .success(Checked(release: release, buildID: build, kaslrOffset: offset, pageSize: pageSize, fields: f))
  }
}

extension ByteWriter {
  /// Appends the `VMCOREINFO` ELF note (type 0) that QEMU's dump-guest-memory and kdump write, holding `text`.
  public mutating func appendVMCoreInfoNote(_ text: [UInt8]) {
    appendELFNote(name: "VMCOREINFO", type: 0, desc: text)
  }
}

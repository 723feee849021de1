import ArgumentParser
import Dispatch
import GuestViews
import MigrationFormat
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

extension Mramfs {
  /// `mramfs diff`: which pages changed between two saves.
  struct Diff: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Compare the RAM of two saves: the pages that changed, per block and as guest-physical ranges.",
      discussion: """
        A page changed when the bytes a mount of A and a mount of B would serve differ. A clear \
        bitmap bit reads as zeros, so a page whose bit is set over zeros in one file and clear in \
        the other has not changed, and a page whose bit was cleared under non-zero bytes (a live \
        save's stale bytes) has, if the other file holds non-zero bytes there.

        Blocks are matched by name. Blocks only in A, only in B, or of different sizes are \
        reported as such and not compared. Only pages populated in A or in B are read, in runs of \
        up to 1 MiB, on --threads threads; a progress bar shows on a terminal for long runs.

        Output: one line per block (size, status, changed pages and bytes, ranges), a total, then \
        each changed range of each block as [start, end) byte offsets in its file, and, when both \
        files lay out guest-physical memory alike (pc and q35), the same changes as [start, end) \
        guest-physical addresses: offsets in a mount's physmem. --stat stops after the total. \
        --json prints one document (schema in the README; integers exact).

        A and B must have pages at fixed offsets (mapped-ram, fixed-ram, RFC fixed-ram); convert \
        a classic stream first. The file options below apply to both files.

        Examples:
          mramfs diff clean.sav compromised.sav
          mramfs diff --stat before.mapped after.mapped
          mramfs diff --json src.mapped dst.mapped | jq '.physical[]'
          mramfs mount after.mapped /mnt/d -o base=before.mapped   # only what changed

        Exit status, as cmp and diff: 0 when the RAM is identical, 1 when it differs, 2 on \
        trouble (a file that cannot be read, a classic stream, a usage error).
        """)

    @Argument(help: "The first save, the base.")
    var a: String

    @Argument(help: "The second save.")
    var b: String

    @Flag(help: "Print a JSON document instead of text.")
    var json = false

    @Flag(help: "Stop after the per-block counts and the total: no ranges.")
    var stat = false

    @Option(help: "Threads that read and compare pages, 1 to 1024 (default: the number of CPUs).", transform: ArgumentValue.threads)
    var threads: Int?

    @OptionGroup var options: FileOptions

    func run() throws {
      let fileA = try open(a)
      let fileB = try open(b)
      let bar = isatty(2) == 1 ? ProgressBar(label: "diff") : nil
      let shown = ShownFlag()
      let start = DispatchTime.now().uptimeNanoseconds
      var report: (@Sendable (UInt64, UInt64) -> Void)? = nil
      if let bar {
        // Only runs that take a while get a bar: a quick diff prints nothing on standard error.
        report = { done, total in
          guard DispatchTime.now().uptimeNanoseconds - start > 500_000_000 else { return }
          shown.value.store(true, ordering: .relaxed)
          bar.update(done, total)
        }
      }
      let diff: SaveDiff
      do {
        diff = try SaveDiff(fileA, fileB, threads: threads ?? SaveDiff.defaultThreads, progress: report)
      } catch {
        if shown.value.load(ordering: .relaxed) { bar?.finish() }
        printError("error: \(error)")
        throw Failure(code: 2)
      }
      if shown.value.load(ordering: .relaxed) { bar?.finish() }
      let physical = diff.physicalRanges()
      if json {
        print(JSONText.encode(DiffDocument(diff, physical: physical, ranges: !stat)), terminator: "")
      } else {
        print(DiffText(diff: diff, physical: physical, ranges: !stat).render(), terminator: "")
      }
      if !diff.isIdentical { throw Failure(code: 1) }
    }

    /// Opens one of the two files; any trouble is exit status 2, as for cmp.
    func open(_ path: String) throws -> MigrationFile {
      let file: MigrationFile
      do {
        file = try MigrationFile(path: path, options: options.openOptions)
      } catch {
        printError("error: \(error)")
        throw Failure(code: 2)
      }
      for w in file.warnings { printError("warning: \(path): \(w)") }
      guard file.format.isPositional else {
        printError(
          "error: \(path) is a classic (sequential) stream; its pages are not at fixed offsets. "
            + "Convert it first: mramfs convert \(path) OUT.mapped, then diff OUT.mapped")
        throw Failure(code: 2)
      }
      return file
    }
  }
}

/// Whether the progress bar was drawn, set from the comparing threads.
final class ShownFlag: Sendable {
  let value = Atomic<Bool>(false)
}

/// What `mramfs diff --json` prints. The schema is in the README.
struct DiffDocument: Encodable {
  struct Block: Encodable {
    var name: String
    var status: SaveDiff.Status
    var pageSize: UInt64
    var changedPages: UInt64
    var changedBytes: UInt64
    var lengthInA: UInt64?
    var lengthInB: UInt64?
    var ranges: [Piece]?
  }
  struct Piece: Encodable {
    var offset: UInt64
    var length: UInt64
  }
  struct Physical: Encodable {
    var gpa: UInt64
    var length: UInt64
  }
  var a: String
  var b: String
  var identical: Bool
  var changedPages: UInt64
  var changedBytes: UInt64
  var comparedPages: UInt64
  var blocks: [Block]
  var physical: [Physical]?
  var physicalUnavailable: String?

  /// The document for `diff`; without `ranges` (`--stat`), no block ranges and no physical ranges.
  init(_ diff: SaveDiff, physical: Result<[Range<UInt64>], PhysicalLayout.Unavailable>, ranges: Bool) {
    a = diff.a.path
    b = diff.b.path
    identical = diff.isIdentical
    changedPages = diff.changedPages
    changedBytes = diff.changedBytes
    comparedPages = diff.comparedPages
    blocks = diff.blocks.map { d in
      Block(
        name: d.name.description, status: d.status, pageSize: d.pageSize, changedPages: d.changedPages,
        changedBytes: d.changedBytes, lengthInA: d.lengthInA, lengthInB: d.lengthInB,
        ranges: ranges ? d.changedRanges.map { Piece(offset: $0.lowerBound, length: UInt64($0.count)) } : nil)
    }
    switch physical {
    case .success(let r) where ranges: self.physical = r.map { Physical(gpa: $0.lowerBound, length: UInt64($0.count)) }
    case .success: break
    case .failure(let why): physicalUnavailable = why.reason
    }
  }
}

/// Renders a ``SaveDiff`` as text: a line per block, a total, then the ranges.
struct DiffText {
  var diff: SaveDiff
  var physical: Result<[Range<UInt64>], PhysicalLayout.Unavailable>
  var ranges: Bool

  func render() -> String {
    var rows: [[String]] = [["BLOCK", "SIZE", "STATUS", "CHANGED", "BYTES", "RANGES"]]
    var counts: [UInt64] = []
    for d in diff.blocks {
      let runs = UInt64(d.changedRanges.count)
      counts.append(runs)
      let size: String
      let status: String
      switch d.status {
      case .same, .changed:
        size = formatSize(d.lengthInB ?? 0)
        status = d.status.rawValue
      case .onlyInA:
        size = formatSize(d.lengthInA ?? 0)
        status = "only in A"
      case .onlyInB:
        size = formatSize(d.lengthInB ?? 0)
        status = "only in B"
      case .sizeDiffers:
        size = "\(formatSize(d.lengthInA ?? 0)) -> \(formatSize(d.lengthInB ?? 0))"
        status = d.pageSizeInA == d.pageSizeInB ? "size differs" : "page size differs"
      }
      let compared = d.isCompared
      rows.append([
        d.name.description, size, status, compared ? "\(d.changedPages)" : "-",
        compared ? formatSize(d.changedBytes) : "-", compared ? "\(runs)" : "-",
      ])
    }
    var out = table(rows, rightAligned: [1, 3, 4, 5])
    out += summary(ranges: counts.reduce(0, +)) + "\n"
    switch physical {
    case .success(let r) where ranges && !r.isEmpty:
      out += "physical: \(r.count) range\(r.count == 1 ? "" : "s") of guest-physical memory (physmem offsets)\n"
    case .success: break
    case .failure(let why): out += "physical: none (\(why.reason))\n"
    }
    guard ranges else { return out }
    var lines: [[String]] = []
    for d in diff.blocks {
      for r in d.changedRanges {
        lines.append([d.name.description, "[\(hex(r.lowerBound)), \(hex(r.upperBound)))", formatSize(UInt64(r.count))])
      }
    }
    if case .success(let r) = physical {
      for p in r { lines.append(["physical", "[\(hex(p.lowerBound)), \(hex(p.upperBound)))", formatSize(UInt64(p.count))]) }
    }
    if !lines.isEmpty { out += "\n" + table(lines, rightAligned: [2]) }
    return out
  }

  /// The total line: identical, or what differs.
  func summary(ranges: UInt64) -> String {
    let n = diff.blocks.count
    if diff.isIdentical {
      return "identical: \(n) block\(n == 1 ? "" : "s"), \(diff.comparedPages) populated pages compared"
    }
    let compared = diff.blocks.filter(\.isCompared).count
    let changed = diff.blocks.filter { $0.status == .changed }.count
    var parts: [String] = []
    if changed > 0 {
      let p = diff.changedPages
      parts.append(
        "\(p) page\(p == 1 ? "" : "s") (\(formatSize(diff.changedBytes))) in \(ranges) range\(ranges == 1 ? "" : "s"), "
          + "in \(changed) of \(compared) block\(compared == 1 ? "" : "s") compared")
    }
    for (status, what) in [(SaveDiff.Status.onlyInA, "only in A"), (.onlyInB, "only in B"), (.sizeDiffers, "of different sizes")] {
      let k = diff.blocks.filter { $0.status == status }.count
      if k > 0 { parts.append("\(k) block\(k == 1 ? "" : "s") \(what)") }
    }
    if changed == 0 && compared > 0 { parts.append("no page changed in the \(compared) block\(compared == 1 ? "" : "s") compared") }
    return "differ: " + parts.joined(separator: "; ")
  }
}

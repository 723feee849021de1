import ArgumentParser
import Foundation
import GuestViews
import MigrationFormat

extension Mramfs {
  /// `mramfs translate`: where a guest virtual address lives in the file.
  struct Translate: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Translate a guest virtual address to a guest-physical address and a file offset.",
      discussion: """
        Walks the guest's page tables from a vCPU's CR3, as saved in its cpu device section: \
        long-mode 4-level and 5-level paging (CR4.LA57) with 4 KiB, 2 MiB and 1 GiB pages. \
        Page tables are read from guest-physical memory as the mount's physmem file serves it, \
        so a table page the file does not hold reads as zeros (not present). With paging off \
        (CR0.PG=0) the address is already physical; 32-bit and PAE paging are not supported.

        Prints the guest-physical address, the RAM block and offset in it, and the offset in \
        FILE where the byte is (absent when the file does not hold that page: it reads as zero).

        Exit status: 0 when the address is mapped, 1 when it is not (or the file has no \
        registers, or the paging mode is not supported), 2 for bad arguments.
        """)

    @Argument(help: "A mapped-ram migration file with a VM description.")
    var file: String

    @Argument(
      help: ArgumentHelp("The virtual address: 0x-prefixed hex or decimal.", valueName: "VADDR"),
      transform: ArgumentValue.address)
    var vaddr: UInt64

    @Option(
      help: "The vCPU whose CR3 and paging mode to use.",
      transform: { (text: String) throws(InvalidValue) -> UInt32 in try ArgumentValue.integer(text, in: 0...UInt32.max, "a vCPU index") })
    var cpu: UInt32 = 0

    @Flag(help: "Print JSON instead of text.")
    var json = false

    @Option(
      help: ArgumentHelp("RAM below 4 GiB, as mount -o lowmem= (3G, 0xc0000000).", valueName: "SIZE"),
      transform: ArgumentValue.lowmem)
    var lowmem: UInt64?

    @OptionGroup var options: FileOptions

    func run() throws {
      let migration = try openMigrationFile(file, options)
      let answer = try Translation(migration, va: vaddr, cpu: cpu, lowmem: lowmem)
      print(json ? answer.json() : answer.text(), terminator: "")
      if !answer.mapped { throw Failure(code: 1) }
    }
  }
}

/// The answer of `mramfs translate`, as text or JSON (exact 64-bit integers through UInt64 Codable).
struct Translation: Encodable {
  var file: String
  var cpu: UInt32
  var va: UInt64
  var mode: String
  var mapped: Bool
  /// Why the address is not mapped, when it is not.
  var reason: String?
  var gpa: UInt64?
  var pageSize: UInt64?
  var block: String?
  var blockOffset: UInt64?
  /// Whether the file holds the page (its bitmap bit is set); a page it does not hold reads as zeros.
  var inFile: Bool?
  var fileOffset: UInt64?
  var steps: [PageWalk.Step]

  init(_ migration: MigrationFile, va: UInt64, cpu: UInt32, lowmem: UInt64?) throws {
    let regs: [X86Registers]
    switch migration.x86Registers() {
    case .success(let r): regs = r
    case .failure(let why):
      printError("error: no CPU registers in \(migration.path): \(why.reason)")
      throw Failure(code: 1)
    }
    guard let r = regs.first(where: { $0.cpu == cpu }) else {
      printError("error: there is no vCPU \(cpu) (the file has \(regs.map { String($0.cpu) }.joined(separator: ", ")))")
      throw Failure(code: 1)
    }
    guard let cr0 = r.cr0, let cr3 = r.cr3, let cr4 = r.cr4 else {
      printError("error: vCPU \(cpu)'s saved state has no CR0, CR3 or CR4")
      throw Failure(code: 1)
    }
    let layout: PhysicalLayout
    switch PhysicalLayout.resolve(migration, lowmem: lowmem) {
    case .success(let l): layout = l
    case .failure(let why):
      printError("error: cannot place guest-physical memory: \(why.reason)")
      throw Failure(code: 1)
    }
    let efer = r.efer ?? 0
    let outcome = try PageWalk.translate(va, cr0: cr0, cr3: cr3, cr4: cr4, efer: efer) { (gpa: UInt64) throws(FormatError) -> UInt64 in
      try migration.readUInt64LE(physical: layout, at: gpa)
    }
    file = migration.path
    self.cpu = cpu
    self.va = va
    mode = PageWalk.mode(cr0: cr0, cr4: cr4, efer: efer).rawValue
    switch outcome {
    case .unsupported(let m):
      printError("error: vCPU \(cpu) uses \(m.rawValue) (CR0 \(hex(cr0)), CR4 \(hex(cr4)), EFER \(hex(efer))), which mramfs does not walk: not supported")
      throw Failure(code: 1)
    case .nonCanonical(let bits):
      mapped = false
      reason = "not mapped: \(hex(va)) is not canonical for \(mode) (bits 63..\(bits - 1) must be equal)"
      steps = []
    case .notPresent(let s):
      mapped = false
      steps = s
      let last = s[s.count - 1]
      reason = "not mapped: \(last.level) at GPA \(hex(last.entryGPA)) is not present (entry \(hex(last.entry)))"
    case .mapped(let g, let size, let s):
      mapped = true
      steps = s
      gpa = g
      pageSize = size == 0 ? nil : size
      if let (b, off) = layout.locate(g) {
        let blk = migration.blocks[b]
        block = blk.name.description
        blockOffset = off
        let held = blk.bitmap?.isSet(off / blk.pageSize) ?? false
        inFile = held
        fileOffset = held ? blk.pagesOffset + off : nil
      }
    }
  }

  func text() -> String {
    var out = ""
    for s in steps {
      out += "\(s.level.padding(toLength: 6, withPad: " ", startingAt: 0)) at GPA \(hex(s.entryGPA)) = \(hex(s.entry))\n"
    }
    guard mapped, let gpa else { return out + (reason ?? "not mapped") + "\n" }
    func line(_ k: String, _ v: String) { out += k.padding(toLength: 14, withPad: " ", startingAt: 0) + v + "\n" }
    line("virtual", "\(hex(va)) (cpu \(cpu), \(mode))")
    line("physical", hex(gpa) + (pageSize.map { " (in a \(formatSize($0)) page)" } ?? ""))
    if let block, let blockOffset {
      line("block", block)
      line("block offset", hex(blockOffset))
      line("file offset", fileOffset.map { "\(hex($0)) (\($0))" } ?? "none: the file does not hold this page (it reads as zeros)")
    } else {
      line("block", "none: the address is not in main RAM (physmem reads it as zeros)")
    }
    return out
  }

  func json() -> String { JSONText.encode(self) }
}

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif
import MigrationFormat

/// Finds a saved Linux guest's VMCOREINFO note (``KernelInfo``) in its memory.
///
/// 1. **The device.** When the file has a `vmcoreinfo` device section (QEMU's
///    `-device vmcoreinfo`), its fields `has_vmcoreinfo`, `vmcoreinfo.guest_format`
///    (1 = ELF note), `vmcoreinfo.size` and `vmcoreinfo.paddr`, decoded by name with
///    ``DeviceState``, say where the guest registered its note; it is read there.
/// 2. **The search**, when there is no device, the guest never wrote it (`qemu_fw_cfg` not
///    loaded), or the note there does not check: the first bytes of every *populated* page of
///    main RAM (the bitmaps' set runs through ``PhysicalLayout``; pages the file does not hold
///    are never looked at) are compared with a note header named `VMCOREINFO` whose text
///    starts with `OSRELEASE=`. Linux's buffer is page-aligned, so only page starts are read:
///    the cost follows the populated pages, and stops at ``Limits``.
///
/// Every note must pass ``VMCoreInfoText/check(_:pageSize:)``, and its sizes are bounded
/// (at most ``VMCoreInfoText/maxBytes``, inside the populated run or the device's size) before
/// anything is allocated. Then, where a saved vCPU has long-mode paging on,
/// `SYMBOL(init_uts_ns)` is translated through its CR3 (and, for a kernel with page-table
/// isolation stopped in user mode, the kernel half of that PGD pair) and the `release` of the
/// `struct new_utsname` there must equal the note's `OSRELEASE`. A note whose release is
/// contradicted there (a stale copy from an earlier kernel or a kdump kernel, in freed memory)
/// is refused; the search takes the first note that is confirmed, else the first that could
/// not be checked.
public enum VMCoreInfoSearch {
  /// Bounds on a search.
  public struct Limits: Sendable {
    /// Populated pages whose first bytes are read, at most (default 2^24: 64 GiB of 4 KiB pages).
    public var maxPages: UInt64 = 1 << 24
    /// The search stops after this long (default 20 s: about 20 GiB of populated pages here).
    public var timeLimit: Duration = .seconds(20)
    /// Candidate notes read and checked, at most.
    public var maxCandidates = 64
    /// The default bounds.
    public init() {}
  }

  /// The name and the start of the text at a page start: the note header's name and the first key.
  static let signature = Array("VMCOREINFO\0\0OSRELEASE=".utf8)

  /// Finds the note of `file`'s guest, whose main RAM `layout` places, checking it with the vCPUs' `registers`.
  public static func find(
    _ file: MigrationFile, layout: PhysicalLayout, registers: [X86Registers], limits: Limits = Limits()
  ) -> Result<KernelInfo, KernelInfo.Unavailable> {
    let clock = ContinuousClock()
    let start = clock.now
    var rejected: [KernelInfo.Rejection] = []
    var deviceNote: String? = nil
    switch deviceLocation(file) {
    case .none:
      deviceNote = nil
    case .some(.failure(let why)):
      deviceNote = why.reason
    case .some(.success(let (gpa, size))):
      let bound = min(size, UInt64(24 + VMCoreInfoText.maxBytes))
      switch candidate(file, layout: layout, registers: registers, at: gpa, availableBytes: bound) {
      case .success(var info):
        info = KernelInfo(info, source: .device)
        info.duration = clock.now - start
        return .success(info)
      case .failure(let r):
        rejected.append(KernelInfo.Rejection(gpa: gpa, reason: "at the vmcoreinfo device's address: \(r.reason)"))
      }
    }
    var search = Search(file: file, layout: layout, registers: registers, limits: limits, deadline: start + limits.timeLimit)
    search.run()
    rejected += search.rejected
    if var found = search.confirmed ?? search.unchecked.first {
      if search.confirmed == nil {
        for other in search.unchecked.dropFirst() {
          rejected.append(KernelInfo.Rejection(gpa: other.gpa, reason: "not taken: a note found earlier was taken, and neither could be checked against init_uts_ns"))
        }
      }
      found.rejected = Array(rejected.prefix(16))
      found.duration = clock.now - start
      found.pagesSearched = search.pages
      return .success(found)
    }
    var parts: [String] = []
    if let deviceNote { parts.append(deviceNote) }
    if let stop = search.stoppedBecause {
      parts.append("no VMCOREINFO note in the first \(search.pages) populated pages of main RAM: \(stop)")
    } else {
      parts.append(
        "no VMCOREINFO note in the \(search.pages) populated pages of main RAM: "
          + (rejected.isEmpty ? "not a Linux guest, or a kernel without CONFIG_CRASH_CORE"
            : "\(rejected.count) note\(rejected.count == 1 ? "" : "s") refused, the first at \(hex(rejected[0].gpa)): \(rejected[0].reason)"))
    }
    var why = KernelInfo.Unavailable(parts.joined(separator: "; "))
    why.rejected = Array(rejected.prefix(16))
    why.duration = clock.now - start
    why.pagesSearched = search.pages
    return .failure(why)
  }

  /// The note's guest-physical address and size from the `vmcoreinfo` device section; nil when
  /// the file has no such section, or why it gives no address.
  public static func deviceLocation(_ file: MigrationFile) -> Result<(gpa: UInt64, size: UInt64), VMCoreInfoText.Problem>? {
    guard let desc = file.vmDescription, let section = file.devices.first(where: { $0.name == "vmcoreinfo" }) else {
      return nil
    }
    let state = DeviceState(section: section, description: desc.devices[section.descriptionIndex], file: file)
    guard let s = state.state else {
      return .failure(VMCoreInfoText.Problem("the vmcoreinfo device section does not decode: \(state.problem ?? "unknown problem")"))
    }
    guard let has = s.field("has_vmcoreinfo")?.value.integer, let format = s.field("vmcoreinfo.guest_format")?.value.integer,
      let size = s.field("vmcoreinfo.size")?.value.integer, let paddr = s.field("vmcoreinfo.paddr")?.value.integer
    else {
      return .failure(VMCoreInfoText.Problem("the vmcoreinfo device section has no has_vmcoreinfo, vmcoreinfo.guest_format, .size and .paddr fields"))
    }
    guard has == 1 else {
      return .failure(VMCoreInfoText.Problem("the vmcoreinfo device is there, but the guest never gave it a note (qemu_fw_cfg not loaded?)"))
    }
    guard format == 1 else { return .failure(VMCoreInfoText.Problem("the vmcoreinfo device's guest_format is \(format), not 1 (ELF note)")) }
    guard size >= 24 else { return .failure(VMCoreInfoText.Problem("the vmcoreinfo device's size is \(size) bytes, too small for a note")) }
    return .success((paddr, size))
  }

  /// Reads and checks the note at `gpa`, of which at most `availableBytes` bytes may be read.
  static func candidate(
    _ file: MigrationFile, layout: PhysicalLayout, registers: [X86Registers], at gpa: UInt64, availableBytes: UInt64
  ) -> Result<KernelInfo, KernelInfo.Rejection> {
    func reject(_ r: String) -> Result<KernelInfo, KernelInfo.Rejection> { .failure(.init(gpa: gpa, reason: r)) }
    let header: [UInt8]
    do {
      header = try readPhysical(file, layout, gpa, 24)
    } catch {
      return reject("cannot read the note header: \(error)")
    }
    guard let namesz = header.loadLE(0, 4), let descsz = header.loadLE(4, 4), let type = header.loadLE(8, 4) else {
      return reject("cannot read the note header")
    }
    guard namesz == 11, type == 0, header[12..<23].elementsEqual("VMCOREINFO\0".utf8) else {
      return reject("no ELF note named VMCOREINFO of type 0 there (namesz \(namesz), type \(type))")
    }
    guard descsz > 0, descsz <= UInt64(VMCoreInfoText.maxBytes), 24 + descsz <= availableBytes else {
      return reject("the note claims a \(descsz)-byte text, more than the \(availableBytes > 24 ? availableBytes - 24 : 0) bytes it may hold")
    }
    let text: [UInt8]
    do {
      text = try readPhysical(file, layout, gpa + 24, Int(descsz))
    } catch {
      return reject("cannot read the text: \(error)")
    }
    let checked: VMCoreInfoText.Checked
    switch VMCoreInfoText.check(text, pageSize: layout.pageSize) {
    case .success(let c): checked = c
    case .failure(let p): return reject(p.reason)
    }
    let validation: KernelInfo.Validation
    switch releaseCheck(checked, file: file, layout: layout, registers: registers) {
    case .confirmed: validation = .initUTSNamespace
    case .unchecked: validation = .text
    case .contradicted(let r): return reject(r)
    }
    return .success(
      KernelInfo(
        text: text, release: checked.release, buildID: checked.buildID, kaslrOffset: checked.kaslrOffset,
        pageSize: checked.pageSize, source: .search, gpa: gpa, validation: validation))
  }

  enum ReleaseCheck: Equatable {
    case confirmed
    case unchecked(String)
    case contradicted(String)
  }

  /// Whether `init_uts_ns`'s release, read through a vCPU's page tables, is the note's.
  static func releaseCheck(
    _ c: VMCoreInfoText.Checked, file: MigrationFile, layout: PhysicalLayout, registers: [X86Registers]
  ) -> ReleaseCheck {
    guard let sym = c.fields["SYMBOL(init_uts_ns)"], let base = UInt64(sym, radix: 16) else {
      return .unchecked("the text has no SYMBOL(init_uts_ns)")
    }
    let nameOffset = c.fields["OFFSET(uts_namespace.name)"].flatMap { UInt64($0) } ?? 0
    // struct new_utsname: sysname[65], nodename[65], release[65], ...
    let va = base &+ nameOffset &+ 130
    var tried = Set<UInt64>()
    for r in registers {
      guard let cr0 = r.cr0, let cr3 = r.cr3, let cr4 = r.cr4, let efer = r.efer else { continue }
      switch PageWalk.mode(cr0: cr0, cr4: cr4, efer: efer) {
      case .fourLevel, .fiveLevel: break
      default: continue
      }
      // With page-table isolation the user PGD is the kernel PGD + 4 KiB (PTI_PGTABLE_SWITCH_BIT).
      for root in [cr3, cr3 & ~0x1000] where tried.insert(root & PageWalk.addressMask).inserted {
        guard let bytes = readVirtual(file, layout, va, 65, cr0: cr0, cr3: root, cr4: cr4, efer: efer) else { continue }
        let release = String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        if release == c.release { return .confirmed }
        return .contradicted(
          "init_uts_ns (\(hex(base))) through CR3 \(hex(root)) holds release \"\(release.prefix(64))\", the note says \"\(c.release)\"")
      }
    }
    return .unchecked("init_uts_ns (\(hex(base))) is not mapped through any vCPU's CR3")
  }

  /// `count` bytes at guest-virtual `va`, page by page through the tables at `cr3`; nil when a page is not mapped.
  static func readVirtual(
    _ file: MigrationFile, _ layout: PhysicalLayout, _ va: UInt64, _ count: Int, cr0: UInt64, cr3: UInt64, cr4: UInt64,
    efer: UInt64
  ) -> [UInt8]? {
    var out: [UInt8] = []
    var at = va
    while out.count < count {
      let outcome: PageWalk.Outcome
      do {
        outcome = try PageWalk.translate(at, cr0: cr0, cr3: cr3, cr4: cr4, efer: efer) { (a: UInt64) throws(FormatError) -> UInt64 in
          try file.readUInt64LE(physical: layout, at: a)
        }
      } catch {
        return nil
      }
      guard case .mapped(let gpa, _, _) = outcome else { return nil }
      let n = min(count - out.count, Int(4096 - (at & 0xfff)))
      guard let bytes = try? readPhysical(file, layout, gpa, n) else { return nil }
      out += bytes
      at &+= UInt64(n)
    }
    return out
  }

  /// `count` bytes of guest-physical memory at `gpa`, as `physmem` serves them (zeros past the end).
  static func readPhysical(_ file: MigrationFile, _ layout: PhysicalLayout, _ gpa: UInt64, _ count: Int) throws(FormatError) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    var failure: FormatError? = nil
    out.withUnsafeMutableBytes { raw in
      do throws(FormatError) {
        _ = try file.read(physical: layout, at: gpa, into: raw)
      } catch { failure = error }
    }
    if let failure { throw failure }
    return out
  }

  /// One pass over the populated page starts of main RAM.
  struct Search {
    let file: MigrationFile
    let layout: PhysicalLayout
    let registers: [X86Registers]
    let limits: Limits
    let deadline: ContinuousClock.Instant
    var pages: UInt64 = 0
    var candidates = 0
    var confirmed: KernelInfo? = nil
    var unchecked: [KernelInfo] = []
    var rejected: [KernelInfo.Rejection] = []
    var stoppedBecause: String? = nil

    init(file: MigrationFile, layout: PhysicalLayout, registers: [X86Registers], limits: Limits, deadline: ContinuousClock.Instant) {
      self.file = file
      self.layout = layout
      self.registers = registers
      self.limits = limits
      self.deadline = deadline
    }

    /// Bytes read at once: a piece of a populated run, whose page starts are then compared.
    static let chunkBytes: UInt64 = 256 << 10

    /// Reads page starts until a confirmed note, the end of main RAM, or a limit. A populated
    /// run is read in pieces of ``chunkBytes`` (one `pread` each, into one buffer), so the
    /// cost is one system call per 64 pages, not per page.
    mutating func run() {
      let ps = layout.pageSize
      let chunkPages = max(1, Search.chunkBytes / ps)
      let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(chunkPages * ps), alignment: 4096)
      defer { buffer.deallocate() }
      guard let base = buffer.baseAddress else { return }
      let signature = VMCoreInfoSearch.signature
      for r in layout.ranges {
        let b = file.blocks[r.block]
        guard let bitmap = b.bitmap, b.pageSize == ps else { continue }
        let end = (r.blockOffset + r.length) / ps
        var p = r.blockOffset / ps
        while let set = bitmap.nextSet(from: p, limit: end) {
          let runEnd = bitmap.nextClear(from: set, limit: end) ?? end
          var q = set
          while q < runEnd {
            guard pages < limits.maxPages else {
              stoppedBecause = "stopped at the limit of \(limits.maxPages) pages"
              return
            }
            guard ContinuousClock.now < deadline else {
              stoppedBecause = "stopped after \(limits.timeLimit)"
              return
            }
            let n = min(chunkPages, runEnd - q, limits.maxPages - pages)
            let into = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<Int(n * ps)])
            let got = (try? file.read(block: r.block, at: q * ps, into: into)) ?? 0
            pages += n
            for i in 0..<n where (i + 1) * ps <= UInt64(got) {
              let at = base + Int(i * ps)
              guard at.loadUnaligned(as: UInt32.self) == UInt32(11).littleEndian,
                at.loadUnaligned(fromByteOffset: 8, as: UInt32.self) == 0,
                signature.withUnsafeBytes({ memcmp(at + 12, $0.baseAddress!, $0.count) }) == 0
              else { continue }
              guard candidates < limits.maxCandidates else {
                stoppedBecause = "stopped after \(limits.maxCandidates) candidate notes, none confirmed"
                return
              }
              candidates += 1
              let page = q + i
              let gpa = r.gpa + (page * ps - r.blockOffset)
              // The note may use the rest of its populated run in this range, and no more.
              let available = (runEnd - page) * ps
              switch VMCoreInfoSearch.candidate(file, layout: layout, registers: registers, at: gpa, availableBytes: available) {
              case .success(let info) where info.validation == .initUTSNamespace:
                confirmed = info
                return
              case .success(let info):
                unchecked.append(info)
              case .failure(let why):
                rejected.append(why)
              }
            }
            q += n
          }
          p = runEnd
        }
      }
    }
  }
}

extension KernelInfo {
  /// A copy of `info` whose ``source`` is `source`.
  init(_ info: KernelInfo, source: Source) {
    self.init(
      text: info.text, release: info.release, buildID: info.buildID, kaslrOffset: info.kaslrOffset,
      pageSize: info.pageSize, source: source, gpa: info.gpa, validation: info.validation)
    rejected = info.rejected
  }

  /// The VMCOREINFO of `file`'s guest, or why there is none: no physmem view (the search needs
  /// main RAM's place), or nothing found. Registers are used when the file gives them.
  public static func resolve(
    _ file: MigrationFile, layout: PhysicalLayout?, limits: VMCoreInfoSearch.Limits = VMCoreInfoSearch.Limits()
  ) -> Result<KernelInfo, Unavailable> {
    guard file.format.isPositional else {
      return .failure(Unavailable("a classic stream's pages are not at fixed offsets; convert it to look for the kernel"))
    }
    guard let layout else { return .failure(Unavailable("there is no physmem view, so guest memory cannot be searched")) }
    let registers = (try? file.x86Registers().get()) ?? []
    return VMCoreInfoSearch.find(file, layout: layout, registers: registers, limits: limits)
  }
}

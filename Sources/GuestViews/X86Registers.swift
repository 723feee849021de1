import MigrationFormat

/// One x86 vCPU's registers, taken from its `cpu` device section.
///
/// The values come from the decoded fields of QEMU's `cpu` vmstate, found by
/// their names in the VM description (never by offset): `env.regs` (16
/// general registers in the order RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI,
/// R8–R15; 8 of them on a 32-bit target, given here as rax…rdi), `env.eip`,
/// `env.eflags`, `env.cr[0]`, `env.cr[2]`, `env.cr[3]`, `env.cr[4]`,
/// `env.efer` (top level or in a subsection), `env.dr`, `env.segs` (six
/// `segment` structs in the order ES, CS, SS, DS, FS, GS, each
/// selector/base/limit/flags), `env.ldt`, `env.tr`, `env.gdt` and `env.idt`.
/// A register whose field is absent is nil, and left out of the JSON.
public struct X86Registers: Codable, Sendable, Equatable {
  /// A segment register: the selector and the hidden descriptor cache.
  public struct Segment: Codable, Sendable, Equatable {
    public var selector: UInt64
    public var base: UInt64
    public var limit: UInt64
    /// QEMU's `flags`: descriptor bits 8–23 in place (type `<<8`, S 12, DPL 13–14, P 15, L 21, D/B 22, G 23).
    public var attributes: UInt64
    public init(selector: UInt64, base: UInt64, limit: UInt64, attributes: UInt64) {
      self.selector = selector
      self.base = base
      self.limit = limit
      self.attributes = attributes
    }
  }

  /// A descriptor table register (GDTR, IDTR).
  public struct Table: Codable, Sendable, Equatable {
    public var base: UInt64
    public var limit: UInt64
    public init(base: UInt64, limit: UInt64) {
      self.base = base
      self.limit = limit
    }
  }

  /// The vCPU index (the `cpu` section's instance id).
  public var cpu: UInt32
  public var rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi: UInt64?
  public var r8, r9, r10, r11, r12, r13, r14, r15: UInt64?
  public var rip, rflags: UInt64?
  public var cr0, cr2, cr3, cr4, efer: UInt64?
  public var dr0, dr1, dr2, dr3, dr6, dr7: UInt64?
  public var es, cs, ss, ds, fs, gs, ldtr, tr: Segment?
  public var gdt, idt: Table?

  /// An empty set for vCPU `cpu`.
  public init(cpu: UInt32) { self.cpu = cpu }

  /// Why a `cpu` section gives no registers.
  public struct Unavailable: Error, Sendable, Equatable, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
  }

  /// Reads the registers of vCPU `cpu` from its decoded `cpu` vmstate.
  public init(cpu: UInt32, state s: DecodedVMSD) throws(Unavailable) {
    self.cpu = cpu
    func int(_ name: String) -> UInt64? { s.field(name)?.value.integer }
    guard let regs = s.field("env.regs")?.value.elements?.map(\.integer), regs.count == 16 || regs.count == 8,
      let eip = int("env.eip")
    else {
      throw Unavailable("the cpu section has no env.regs array of 16 (or 8) integers and env.eip: not an x86 CPU")
    }
    rax = regs[0]
    rcx = regs[1]
    rdx = regs[2]
    rbx = regs[3]
    rsp = regs[4]
    rbp = regs[5]
    rsi = regs[6]
    rdi = regs[7]
    if regs.count == 16 {
      (r8, r9, r10, r11) = (regs[8], regs[9], regs[10], regs[11])
      (r12, r13, r14, r15) = (regs[12], regs[13], regs[14], regs[15])
    }
    rip = eip
    rflags = int("env.eflags")
    cr0 = int("env.cr[0]")
    cr2 = int("env.cr[2]")
    cr3 = int("env.cr[3]")
    cr4 = int("env.cr[4]")
    efer = int("env.efer")
    if let dr = s.field("env.dr")?.value.elements?.map(\.integer), dr.count == 8 {
      (dr0, dr1, dr2, dr3, dr6, dr7) = (dr[0], dr[1], dr[2], dr[3], dr[6], dr[7])
    }
    func segment(_ v: DeviceValue?) -> Segment? {
      guard let st = v?.structure, let sel = st.field("selector")?.value.integer,
        let base = st.field("base")?.value.integer, let limit = st.field("limit")?.value.integer,
        let flags = st.field("flags")?.value.integer
      else { return nil }
      return Segment(selector: sel, base: base, limit: limit, attributes: flags)
    }
    if let segs = s.field("env.segs")?.value.elements, segs.count == 6 {
      (es, cs, ss) = (segment(segs[0]), segment(segs[1]), segment(segs[2]))
      (ds, fs, gs) = (segment(segs[3]), segment(segs[4]), segment(segs[5]))
    }
    ldtr = segment(s.field("env.ldt")?.value)
    tr = segment(s.field("env.tr")?.value)
    gdt = segment(s.field("env.gdt")?.value).map { Table(base: $0.base, limit: $0.limit) }
    idt = segment(s.field("env.idt")?.value).map { Table(base: $0.base, limit: $0.limit) }
  }

  /// The registers as pretty-printed JSON with sorted keys, ending in a newline (a mount's `registers.json`).
  public func json() -> String { JSONText.encode(self) }

  /// The general registers by lower-case name, in QEMU's `info registers` order.
  public var generalRegisters: [(String, UInt64?)] {
    [
      ("rax", rax), ("rbx", rbx), ("rcx", rcx), ("rdx", rdx), ("rsi", rsi), ("rdi", rdi), ("rbp", rbp), ("rsp", rsp),
      ("r8", r8), ("r9", r9), ("r10", r10), ("r11", r11), ("r12", r12), ("r13", r13), ("r14", r14), ("r15", r15),
    ]
  }

  /// The segment registers by lower-case name, in `info registers` order.
  public var segments: [(String, Segment?)] {
    [("es", es), ("cs", cs), ("ss", ss), ("ds", ds), ("fs", fs), ("gs", gs), ("ldtr", ldtr), ("tr", tr)]
  }
}

extension MigrationFile {
  /// The registers of every vCPU (its `cpu` sections, by instance), or why there are none.
  public func x86Registers() -> Result<[X86Registers], X86Registers.Unavailable> {
    guard let desc = vmDescription else {
      return .failure(.init(devicesUnavailableReason ?? "the file has no VM description"))
    }
    let cpus = devices.filter { $0.name == "cpu" }.sorted { $0.instanceID < $1.instanceID }
    guard !cpus.isEmpty else {
      return .failure(
        .init(
          devicesUnavailableReason.map { "no cpu section was located (\($0))" }
            ?? "the stream has no cpu device sections"))
    }
    var result: [X86Registers] = []
    for c in cpus {
      let d = DeviceState(section: c, description: desc.devices[c.descriptionIndex], file: self)
      guard let state = d.state, d.problem == nil else {
        return .failure(.init("cpu \(c.instanceID) cannot be decoded: \(d.problem ?? "unknown problem")"))
      }
      do {
        result.append(try X86Registers(cpu: c.instanceID, state: state))
      } catch {
        return .failure(error)
      }
    }
    return .success(result)
  }
}

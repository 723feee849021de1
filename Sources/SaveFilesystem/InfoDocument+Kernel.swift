import GuestViews
import MigrationFormat

extension InfoDocument {
  /// The guest kernel's VMCOREINFO note (``KernelInfo``): info.json's `kernel` key.
  public struct Kernel: Codable, Sendable {
    /// `OSRELEASE`.
    public var release: String
    /// `BUILD-ID`, when the kernel gives it.
    public var buildID: String?
    /// `KERNELOFFSET`: the KASLR offset, when the kernel gives it.
    public var kaslrOffset: UInt64?
    /// `device` (the `vmcoreinfo` device's address) or `search` (found in populated guest memory).
    public var source: String
    /// The guest-physical address of the note (its ELF note header).
    public var gpa: UInt64
    /// Bytes of the text: the size of the mount's `vmcoreinfo` file.
    public var size: UInt64
    /// `init_uts_ns` (its release, read through the vCPU's page tables, is the note's) or `text`.
    public var validation: String
    /// Populated pages whose first bytes the search read. (How long that took is in `info`'s
    /// table only, so that info.json is the `info --json` document byte for byte.)
    public var pagesSearched: UInt64
    /// Notes looked at and refused, with why; absent when none.
    public var rejected: [KernelInfo.Rejection]?

    init(_ k: KernelInfo) {
      release = k.release
      buildID = k.buildID
      kaslrOffset = k.kaslrOffset
      source = k.source.rawValue
      gpa = k.gpa
      size = UInt64(k.text.count)
      validation = k.validation.rawValue
      pagesSearched = k.pagesSearched
      rejected = k.rejected.isEmpty ? nil : k.rejected
    }
  }

  /// Describes `file` as `mramfs info --json` does: with the guest kernel looked up in its
  /// memory (``KernelInfo/resolve(_:layout:limits:)``, bounded), which reads pages.
  public static func lookingUpKernel(_ file: MigrationFile, lowmem: UInt64? = nil) -> InfoDocument {
    let layout = try? PhysicalLayout.resolve(file, lowmem: lowmem).get()
    return InfoDocument(file, lowmem: lowmem, kernel: KernelInfo.resolve(file, layout: layout))
  }

  /// Sets ``kernel`` or ``kernelUnavailable`` from the result of a look-up.
  mutating func setKernel(_ result: Result<KernelInfo, KernelInfo.Unavailable>) {
    switch result {
    case .success(let k): kernel = Kernel(k)
    case .failure(let why): kernelUnavailable = why.reason
    }
  }
}

import Foundation
import GuestViews
import MigrationFormat
import Synchronization

// The files that depend on the guest kernel's VMCOREINFO (KernelInfo): `vmcoreinfo` (the
// text), `vmcore` (whose notes carry it, so its header and size depend on it) and info.json
// (its `kernel` key). Finding the note searches guest memory, so it is not done at mount:
// it starts in the background when the kernel sends FUSE's INIT, and the first request that
// needs it (lookup, getattr, readdir of the root, read of these files) waits for it once.
// After that the result is read through one atomic load, no lock.

/// The lazily computed kernel-dependent views of a mount, computed once.
final class KernelViews: Sendable {
  /// What the views hold once the note was looked for.
  final class Resolved: Sendable {
    /// The note, or why there is none.
    let kernel: Result<KernelInfo, KernelInfo.Unavailable>
    /// The `vmcore` layout, with the `VMCOREINFO` note when there is one; nil when there is no `vmcore`.
    let core: ELFCore?
    /// The bytes of info.json.
    let info: [UInt8]
    /// The bytes of `vmcoreinfo`; nil when there is no note (no file).
    let vmcoreinfo: [UInt8]?

    init(kernel: Result<KernelInfo, KernelInfo.Unavailable>, core: ELFCore?, info: [UInt8]) {
      self.kernel = kernel
      self.core = core
      self.info = info
      vmcoreinfo = try? kernel.get().text
    }
  }

  private let resolved = AtomicLazyReference<Resolved>()
  /// Held by the one thread that computes; the others wait on it, once.
  private let computing = Mutex<Void>(())
  private let compute: @Sendable () -> Resolved

  /// Views that `compute` builds at the first ``get()``.
  init(compute: @escaping @Sendable () -> Resolved) {
    self.compute = compute
  }

  /// The views, computed by the first caller while the others wait; after that an atomic load.
  func get() -> Resolved {
    if let r = resolved.load() { return r }
    return computing.withLock { _ in
      if let r = resolved.load() { return r }
      return resolved.storeIfNil(compute())
    }
  }

  /// Starts computing on a thread of its own, so that the first request finds it done or under way.
  func startInBackground() {
    Thread.detachNewThread { [self] in _ = get() }
  }

  /// The views of `file` as a mount shows them.
  static func make(
    file: MigrationFile, layout: PhysicalLayout?, lowmem: UInt64?, baseCore: ELFCore?,
    base: InfoDocument.Base? = nil, limits: VMCoreInfoSearch.Limits = VMCoreInfoSearch.Limits()
  ) -> KernelViews {
    KernelViews {
      let kernel = KernelInfo.resolve(file, layout: layout, limits: limits)
      var core = baseCore
      if baseCore != nil, case .success(let k) = kernel {
        core = (try? ELFCore.resolve(file, layout: layout, vmcoreinfo: k.text).get()) ?? baseCore
      }
      let info = Array(InfoDocument(file, lowmem: lowmem, kernel: kernel, base: base).json().utf8)
      return Resolved(kernel: kernel, core: core, info: info)
    }
  }
}

extension MramFileSystem {
  /// The guest kernel's VMCOREINFO as this mount found it (searching at the first call), or why there is none.
  public var kernel: Result<KernelInfo, KernelInfo.Unavailable> { kernelViews.get().kernel }

  /// The layout of `vmcore` (with its `VMCOREINFO` note when there is one); nil when there is no `vmcore`.
  var vmcore: ELFCore? { kernelViews.get().core }

  /// Whether `node` is left out of the mount: `vmcoreinfo` when no note was found.
  func isHidden(_ node: Node) -> Bool {
    if case .vmcoreinfo = node.kind { return kernelViews.get().vmcoreinfo == nil }
    return false
  }

  /// The bytes of a file computed with the kernel views (`info.json`, `vmcoreinfo`); nil for other nodes.
  func kernelFileBytes(_ node: Node) -> [UInt8]? {
    switch node.kind {
    case .info: return kernelViews.get().info
    case .vmcoreinfo: return kernelViews.get().vmcoreinfo
    default: return nil
    }
  }
}

import Glibc
import Synchronization
import SystemPackage

/// The mount a session serves, as a readiness probe found it answering.
public struct MountedDevice: Sendable, Hashable {
  /// The mount's device number, `major:minor` as `/proc/self/mountinfo` and
  /// `/sys/class/bdi/` name it (the FUSE connection's anonymous device).
  public var device: String
  /// The mount point, with symbolic links resolved.
  public var mountpoint: String
}

/// Waits, on a thread of its own, until a freshly mounted session answers, then calls back.
///
/// "Answers" means: a `stat` of the mount point succeeds, on the device that
/// `/proc/self/mountinfo` lists for that mount point, while the session's loop is still
/// running. A session whose loop never started, or stopped (INIT refused, unmounted at once),
/// is never reported ready: its mount point either fails with `ENOTCONN` or shows the
/// directory underneath.
final class ReadinessProbe: Sendable {
  let mountpoint: String
  let callback: @Sendable (MountedDevice) -> Void
  /// 0: the loop runs; 1: it has returned.
  let loopEnded = Atomic<Int>(0)

  init(mountpoint: String, callback: @escaping @Sendable (MountedDevice) -> Void) {
    self.mountpoint = mountpoint
    self.callback = callback
  }

  /// Starts the probe thread. Traps when the system cannot create a thread.
  func start() {
    let box = Unmanaged.passRetained(self).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, readinessProbeMain, box)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    pthread_detach(thread)
  }

  func probe() {
    var st = stat()
    guard stat(mountpoint, &st) == 0 else { return }
    guard loopEnded.load(ordering: .acquiring) == 0, let entry = MountTable.entry(at: mountpoint),
      entry.type.hasPrefix("fuse"), entry.deviceNumber == st.st_dev
    else { return }
    callback(MountedDevice(device: entry.device, mountpoint: mountpoint))
  }
}

/// glibc's `makedev` (a macro Swift cannot import): the `dev_t` of `major:minor`.
func makeDevice(major: UInt32, minor: UInt32) -> UInt {
  let ma = UInt64(major)
  let mi = UInt64(minor)
  return UInt((ma & 0xfff) << 8 | (ma & ~0xfff) << 32 | (mi & 0xff) | (mi & ~0xff) << 12)
}

/// The probe thread's body: a plain function, never a closure from `main.swift` (it would be
/// main-actor isolated and trap on this thread).
private func readinessProbeMain(_ context: UnsafeMutableRawPointer?) -> UnsafeMutableRawPointer? {
  guard let context else { return nil }
  let probe = Unmanaged<ReadinessProbe>.fromOpaque(context).takeRetainedValue()
  probe.probe()
  return nil
}

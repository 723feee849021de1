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
    guard loopEnded.load(ordering: .acquiring) == 0,
      let device = ReadinessProbe.device(of: mountpoint),
      device.number == st.st_dev
    else { return }
    callback(MountedDevice(device: device.name, mountpoint: mountpoint))
  }

  /// The device of the newest mount on `mountpoint` in `/proc/self/mountinfo`, if it is a FUSE mount.
  static func device(of mountpoint: String) -> (name: String, number: UInt)? {
    guard let text = readSmallFile("/proc/self/mountinfo") else { return nil }
    var found: (String, UInt)? = nil
    for line in text.split(separator: "\n") {
      // Fields: id parent major:minor root mountpoint options ... - fstype source superoptions
      let f = line.split(separator: " ")
      guard f.count > 6, unescapeMountinfo(f[4]) == mountpoint,
        let dash = f.firstIndex(of: "-"), dash + 1 < f.count, f[dash + 1].hasPrefix("fuse")
      else { continue }
      let mm = f[2].split(separator: ":")
      guard mm.count == 2, let major = UInt32(mm[0]), let minor = UInt32(mm[1]) else { continue }
      found = (String(f[2]), makeDevice(major: major, minor: minor))
    }
    return found
  }

  /// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
  static func unescapeMountinfo(_ field: Substring) -> String {
    var out: [UInt8] = []
    let b = Array(field.utf8)
    var i = 0
    while i < b.count {
      if b[i] == UInt8(ascii: "\\"), i + 3 < b.count,
        let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8)
      {
        out.append(v)
        i += 4
      } else {
        out.append(b[i])
        i += 1
      }
    }
    return String(decoding: out, as: UTF8.self)
  }

  /// Reads a small text file such as `/proc/self/mountinfo` (at most 4 MiB).
  static func readSmallFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while bytes.count < 4 << 20 {
      let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
      if n > 0 {
        bytes += chunk[0..<n]
      } else if n == 0 || errno != EINTR {
        break
      }
    }
    return String(decoding: bytes, as: UTF8.self)
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

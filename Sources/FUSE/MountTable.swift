import Glibc

/// The calling process's mounts, as `/proc/self/mountinfo` lists them.
///
/// Used to tell that a session's mount answers on its own device (readiness), and that a
/// directory holds a mount of a given type before unmounting it.
public enum MountTable {
  /// One line of `/proc/self/mountinfo`.
  public struct Entry: Sendable, Hashable {
    /// The mount point, with mountinfo's octal escapes undone.
    public var mountpoint: String
    /// The device, `major:minor`.
    public var device: String
    /// The file system type, such as `fuse.mramfs` (`fuse.` + the `subtype=` option).
    public var type: String
    /// The device as a `dev_t`, comparable with `stat`'s `st_dev`.
    public var deviceNumber: UInt
  }

  /// Every mount, in mountinfo's order (the newest last); empty when the table cannot be read.
  public static func entries() -> [Entry] {
    guard let text = readSmallFile("/proc/self/mountinfo") else { return [] }
    var out: [Entry] = []
    for line in text.split(separator: "\n") {
      // Fields: id parent major:minor root mountpoint options ... - fstype source superoptions
      let f = line.split(separator: " ")
      guard f.count > 6, let dash = f.firstIndex(of: "-"), dash + 1 < f.count else { continue }
      let mm = f[2].split(separator: ":")
      guard mm.count == 2, let major = UInt32(mm[0]), let minor = UInt32(mm[1]) else { continue }
      out.append(
        Entry(
          mountpoint: unescape(f[4]), device: String(f[2]), type: String(f[dash + 1]),
          deviceNumber: makeDevice(major: major, minor: minor)))
    }
    return out
  }

  /// The newest mount whose mount point is exactly `path` (resolved, absolute), if any.
  public static func entry(at path: String) -> Entry? {
    entries().last { $0.mountpoint == path }
  }

  /// Undoes mountinfo's octal escapes (`\\040` for a space, `\\011`, `\\012`, `\\134`).
  static func unescape(_ field: Substring) -> String {
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

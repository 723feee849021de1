import MigrationFormat

/// Where each RAM block appears in a mount: one documented, reversible mapping
/// from block names to relative paths.
///
/// The rules, in order:
/// 1. One leading `/` is dropped (QEMU's fw_cfg blobs are all named `/rom@…`).
/// 2. If every `/`-separated part of what is left is *clean* (not empty, not
///    `.` or `..`, valid UTF-8 with no control bytes and no `%`), the parts
///    become nested directories: `0000:00:02.0/vga.vram`, `rom@etc/acpi/tables`.
/// 3. Otherwise, or when that path is taken (by an earlier block, by a
///    directory another block needs, or by a top-level name mramfs reserves
///    such as `info.json`), the whole name becomes one file name in the top
///    directory, percent-encoded: every byte that is `/`, `%`, a control byte,
///    a space or outside printable ASCII becomes `%XX`. If even that is taken,
///    the first byte is encoded too. Percent-decoding such a name gives back the
///    block name exactly, and no two blocks ever share a path.
/// 4. A flat name longer than 255 bytes (NAME_MAX) is cut to its first 200 bytes,
///    followed by `~` and 16 hex digits of a hash of the whole name (then `~2`,
///    `~3`, … if that is taken); only the xattr gives such a name back.
///
/// Each block file also carries its exact name in the `user.mramfs.block` xattr.
public enum BlockPaths {
  /// Top-level names the mount keeps for itself (``TopLevelName``).
  public static var reserved: Set<String> { TopLevelName.all }

  /// The path components of each block, in the order given.
  public static func assign(_ names: [BlockName]) -> [[String]] {
    let reserved = TopLevelName.all
    var files = Set<String>()
    var dirs = Set<String>()
    var result: [[String]] = []
    func conflicts(_ comps: [String]) -> Bool {
      if reserved.contains(comps[0]) { return true }
      let full = comps.joined(separator: "/")
      if files.contains(full) || dirs.contains(full) { return true }
      for i in 1..<comps.count where files.contains(comps[0..<i].joined(separator: "/")) { return true }
      return false
    }
    func take(_ comps: [String]) {
      files.insert(comps.joined(separator: "/"))
      for i in 1..<comps.count { dirs.insert(comps[0..<i].joined(separator: "/")) }
      result.append(comps)
    }
    for name in names {
      if let comps = nested(name.bytes), !conflicts(comps) {
        take(comps)
        continue
      }
      var flat = encode(name.bytes, firstByte: false)
      if conflicts([flat]) { flat = encode(name.bytes, firstByte: true) }
      if flat.utf8.count > maximumNameLength {
        flat = shortened(flat, name.bytes)
        var n = 2
        while conflicts([flat]) {
          flat = shortened(flat, name.bytes, suffix: "~\(n)")
          n += 1
        }
      }
      take([flat])
    }
    return result
  }

  /// The longest file name the kernel looks up (NAME_MAX).
  public static let maximumNameLength = 255

  /// A flat name cut to fit NAME_MAX: its first 200 bytes (never inside a `%XX`),
  /// `~`, and 16 hex digits of the FNV-1a hash of the whole block name.
  static func shortened(_ flat: String, _ bytes: [UInt8], suffix: String = "") -> String {
    var cut = Array(flat.utf8.prefix(200))
    if let last = cut.lastIndex(of: UInt8(ascii: "%")), last >= cut.count - 2 { cut.removeSubrange(last...) }
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in bytes { hash = (hash ^ UInt64(b)) &* 0x100_0000_01b3 }
    let hex = String(hash, radix: 16)
    return String(decoding: cut, as: UTF8.self) + "~" + String(repeating: "0", count: 16 - hex.count) + hex + suffix
  }

  /// The nested form of a name, if every part is clean.
  static func nested(_ bytes: [UInt8]) -> [String]? {
    var b = bytes[...]
    if b.first == UInt8(ascii: "/") { b = b.dropFirst() }
    let parts = b.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
    var comps: [String] = []
    for p in parts {
      guard !p.isEmpty, let s = String(validating: p, as: UTF8.self), s != ".", s != "..",
        !p.contains(where: { $0 < 0x20 || $0 == 0x7f || $0 == UInt8(ascii: "%") })
      else { return nil }
      comps.append(s)
    }
    return comps.isEmpty ? nil : comps
  }

  /// Percent-encodes a whole name into one file name.
  public static func encode(_ bytes: [UInt8], firstByte: Bool) -> String {
    var out = ""
    for (i, b) in bytes.enumerated() {
      let plain = b > 0x20 && b < 0x7f && b != UInt8(ascii: "/") && b != UInt8(ascii: "%")
      if plain && !(firstByte && i == 0) {
        out.unicodeScalars.append(Unicode.Scalar(b))
      } else {
        out += "%" + (b < 16 ? "0" : "") + String(b, radix: 16, uppercase: true)
      }
    }
    if out == "." || out == ".." || out.isEmpty {
      return bytes.map { "%" + ($0 < 16 ? "0" : "") + String($0, radix: 16, uppercase: true) }.joined()
    }
    return out
  }

  /// Percent-decodes a flat file name back into the block name's bytes.
  public static func decode(_ name: String) -> [UInt8] {
    var out: [UInt8] = []
    let u = Array(name.utf8)
    var i = 0
    while i < u.count {
      if u[i] == UInt8(ascii: "%"), i + 2 < u.count,
        let v = UInt8(String(decoding: u[i + 1...i + 2], as: UTF8.self), radix: 16)
      {
        out.append(v)
        i += 3
      } else {
        out.append(u[i])
        i += 1
      }
    }
    return out
  }
}

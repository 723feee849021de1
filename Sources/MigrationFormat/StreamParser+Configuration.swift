// The stream header (`QEVM`, version 3) and the configuration record with its subsections.

extension StreamParser {
  mutating func parseHeader(_ c: inout StreamCursor) throws(FormatError) {
    let at = c.offset
    let magic = try c.readUInt32BE("stream header")
    guard magic == streamMagic else {
      throw FormatError(
        .badMagic, "stream header", at: at, "magic \(hex(magic)), expected 0x5145564d (\"QEVM\")")
    }
    let version = try c.readUInt32BE("stream header")
    guard version == streamVersion else {
      throw FormatError(.badVersion, "stream header", at: at + 4, "version \(version), expected 3")
    }
  }

  mutating func parseConfiguration(_ c: inout StreamCursor) throws(FormatError) {
    let at = c.offset
    guard try c.peekUInt8("configuration record") == RecordType.configuration else { return }
    sawConfiguration = true
    _ = try c.readUInt8("configuration record")
    let s = "configuration record"
    let nameLength = try c.readUInt32BE(s)
    guard nameLength > 0, nameLength <= Limits.machineNameLength else {
      throw FormatError(
        .badValue, s, at: at + 1, "machine name length \(nameLength), expected 1 to \(Limits.machineNameLength)")
    }
    let nameBytes = try c.readBytes(Int(nameLength), s)
    guard let name = String(validating: nameBytes, as: UTF8.self), !nameBytes.contains(0) else {
      throw FormatError(.badValue, s, at: at + 5, "machine name \(quoted(nameBytes)) is not printable UTF-8")
    }
    machineType = name
    while !c.atEnd, try c.peekUInt8(s) == RecordType.subsection {
      let subAt = c.offset
      _ = try c.readUInt8(s)
      let len = try c.readUInt8(s)
      let subBytes = try c.readBytes(Int(len), s)
      let subName = String(decoding: subBytes, as: UTF8.self)
      let sub = "configuration subsection \(quoted(subBytes))"
      let version = try c.readUInt32BE(sub)
      guard version == 1 else {
        throw FormatError(.badVersion, sub, at: subAt + 2 + UInt64(len), "version \(version), expected 1")
      }
      switch subName {
      case "configuration/capabilities":
        let countAt = c.offset
        let count = try c.readUInt32BE(sub)
        guard count <= Limits.capabilityCount else {
          throw FormatError(
            .limitExceeded, sub, at: countAt, "\(count) capabilities, at most \(Limits.capabilityCount) accepted")
        }
        for _ in 0..<count {
          let capAt = c.offset
          let l = try c.readUInt8(sub)
          let bytes = try c.readBytes(Int(l), sub)
          guard l > 0, let cap = String(validating: bytes, as: UTF8.self) else {
            throw FormatError(.badValue, sub, at: capAt, "capability name \(quoted(bytes)) is empty or not UTF-8")
          }
          if !["mapped-ram", "fixed-ram", "x-ignore-shared"].contains(cap) {
            warnings.append("unknown capability \(quoted(bytes)) in the configuration record")
          }
          capabilities.append(cap)
        }
      case "configuration/uuid":
        uuid = try c.readBytes(16, sub)
      case "configuration/target-page-bits":
        let bitsAt = c.offset
        let bits = try c.readUInt32BE(sub)
        guard bits >= 10, bits <= 21 else {
          throw FormatError(.badValue, sub, at: bitsAt, "target page bits \(bits), expected 10 to 21")
        }
        targetPageBits = bits
      default:
        throw FormatError(
          .unsupported, sub, at: subAt, "unknown configuration subsection; its length is not known to mramfs")
      }
    }
  }

}

// The VM description QEMU appends after the EOF record, found from the end of the file.

extension StreamParser {
  // MARK: - VM description

  /// Finds and parses the VMDESCRIPTION record at the tail (FORMAT.md §1.8). Problems become warnings.
  mutating func locateVMDescription() {
    guard file.size > streamOffset + 16 else { return }
    guard let last = try? file.bytes(at: file.size - 1, count: 1, "tail"), last[0] == UInt8(ascii: "}") else {
      return
    }
    // JSON holds no raw control bytes, so scan back to the first one: the record header is within 5 bytes of it.
    let maxScan = min(file.size - streamOffset, Limits.vmDescriptionBytes + 5)
    var pos = file.size
    var control: UInt64? = nil
    let chunk: UInt64 = 1 << 20
    scan: while pos > file.size - maxScan {
      let start = max(pos >= chunk ? pos - chunk : 0, file.size - maxScan)
      guard let bytes = try? file.bytes(at: start, count: pos - start, "VM description") else { return }
      for i in stride(from: bytes.count - 1, through: 0, by: -1) {
        let b = bytes[i]
        if b < 0x20 && b != 9 && b != 10 && b != 13 {
          control = start + UInt64(i)
          break scan
        }
      }
      pos = start
    }
    guard let q = control else {
      warnings.append("the file ends like JSON but no VM description record was found")
      return
    }
    for x in stride(from: q, through: q >= 4 ? q - 4 : 0, by: -1) {
      guard let h = try? file.bytes(at: x, count: 6, "VM description record"), h[0] == RecordType.vmDescription
      else { continue }
      let len = UInt64(h[1]) << 24 | UInt64(h[2]) << 16 | UInt64(h[3]) << 8 | UInt64(h[4])
      guard x + 5 + len == file.size, h[5] == UInt8(ascii: "{") else { continue }
      guard len <= Limits.vmDescriptionBytes else {
        warnings.append("VM description of \(len) bytes is above the limit of \(Limits.vmDescriptionBytes)")
        devicesUnavailableReason = "the VM description is larger than \(Limits.vmDescriptionBytes) bytes"
        return
      }
      vmDescriptionOffset = x
      do {
        let json = try file.bytes(at: x + 5, count: len, "VM description")
        vmDescription = try VMDescription(json: json, at: x + 5)
      } catch {
        warnings.append("VM description: \(error)")
        devicesUnavailableReason = "the VM description could not be parsed: \(error.problem)"
      }
      return
    }
  }
}

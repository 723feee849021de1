import Foundation

/// The VM description QEMU appends after the EOF record: a JSON document that
/// describes every device (FULL) section field by field (FORMAT.md §8).
public struct VMDescription: Sendable {
  /// One vmstate description: a device, a nested struct or a subsection.
  public struct VMSD: Sendable {
    /// The vmstate name (`cpu`, `cpu/tsc_khz`).
    public var vmsdName: String
    /// Its version.
    public var version: Int
    /// Its fields in stream order.
    public var fields: [Field]
    /// The subsections present in the stream, in order.
    public var subsections: [VMSD]

    /// Bytes this vmstate's fields and subsections take in the stream.
    public var encodedSize: UInt64 {
      var total: UInt64 = 0
      for f in fields { total &+= f.encodedSize }
      for s in subsections { total &+= 1 + 1 + UInt64(s.vmsdName.utf8.count) + 4 + s.encodedSize }
      return total
    }
  }

  /// One field description.
  public struct Field: Sendable {
    /// The field name (`env.regs`, `env.cr[3]`).
    public var name: String
    /// The type name (`uint64`, `struct`, `buffer`, `int32 le`, …).
    public var type: String
    /// Bytes per element.
    public var size: UInt64
    /// Number of elements of a compressed array, if it is one.
    public var arrayLength: UInt64?
    /// Index of a single array element that could not be compressed.
    public var index: Int?
    /// The nested vmstate of a `struct` field (or an inlined `tmp`/`vstruct` one).
    public var nested: VMSD?

    /// Bytes this field takes in the stream.
    public var encodedSize: UInt64 { size &* (arrayLength ?? 1) }
  }

  /// One device section's description.
  public struct Device: Sendable {
    /// The section's idstr.
    public var name: String
    /// The section's instance id.
    public var instanceID: UInt32
    /// The device's vmstate.
    public var vmsd: VMSD
    /// Bytes of the section body between its header and footer.
    public var bodySize: UInt64 { vmsd.encodedSize }
  }

  /// The target page size QEMU records, if present.
  public let pageSize: UInt64?
  /// Device descriptions in stream order.
  public let devices: [Device]
  /// The JSON text, as it is in the file.
  public let json: [UInt8]

  /// Parses a VM description; `offset` is where the JSON starts, for messages.
  public init(json: [UInt8], at offset: UInt64) throws(FormatError) {
    let s = "VM description"
    try VMDescription.checkDepth(json, at: offset)
    let object: Any
    do {
      object = try JSONSerialization.jsonObject(with: Data(json), options: [])
    } catch {
      throw FormatError(.badValue, s, at: offset, "not valid JSON (\(error.localizedDescription))")
    }
    guard let top = object as? [String: Any] else {
      throw FormatError(.badValue, s, at: offset, "top level is not an object")
    }
    self.json = json
    pageSize = (top["page_size"] as? NSNumber)?.uint64Value
    guard let list = top["devices"] as? [Any] else {
      throw FormatError(.badValue, s, at: offset, "no \"devices\" array")
    }
    var devices: [Device] = []
    devices.reserveCapacity(min(list.count, Limits.deviceSectionCount))
    for (i, item) in list.prefix(Limits.deviceSectionCount).enumerated() {
      guard let d = item as? [String: Any], let name = d["name"] as? String else {
        throw FormatError(.badValue, s, at: offset, "device \(i) has no name")
      }
      let instance = (d["instance_id"] as? NSNumber)?.uint32Value ?? 0
      let vmsd = try VMDescription.vmsd(d, at: offset, path: name)
      devices.append(Device(name: name, instanceID: instance, vmsd: vmsd))
    }
    self.devices = devices
  }

  private static func vmsd(_ d: [String: Any], at offset: UInt64, path: String) throws(FormatError) -> VMSD {
    let name = d["vmsd_name"] as? String ?? path
    let version = (d["version"] as? NSNumber)?.intValue ?? 0
    var fields: [Field] = []
    if let list = d["fields"] as? [Any] {
      for item in list {
        guard let f = item as? [String: Any], let fname = f["name"] as? String,
          let size = (f["size"] as? NSNumber)?.uint64Value
        else {
          throw FormatError(
            .badValue, "VM description of \(quoted(Array(path.utf8)))", at: offset, "a field without name or size")
        }
        let type = f["type"] as? String ?? "unknown"
        var nested: VMSD? = nil
        if let st = f["struct"] as? [String: Any] {
          nested = try vmsd(st, at: offset, path: path + "." + fname)
        } else if (type == "tmp" || type == "vstruct"), f["fields"] != nil {
          nested = try vmsd(f, at: offset, path: path + "." + fname)
        }
        fields.append(
          Field(
            name: fname, type: type, size: size, arrayLength: (f["array_len"] as? NSNumber)?.uint64Value,
            index: (f["index"] as? NSNumber)?.intValue, nested: nested))
      }
    }
    var subs: [VMSD] = []
    if let list = d["subsections"] as? [Any] {
      for item in list {
        guard let sd = item as? [String: Any] else { continue }
        subs.append(try vmsd(sd, at: offset, path: path))
      }
    }
    return VMSD(vmsdName: name, version: version, fields: fields, subsections: subs)
  }

  /// Refuses JSON nested deeper than ``Limits/vmDescriptionDepth``, before a parser recurses into it.
  static func checkDepth(_ json: [UInt8], at offset: UInt64) throws(FormatError) {
    var depth = 0
    var inString = false
    var escaped = false
    for (i, b) in json.enumerated() {
      if inString {
        if escaped { escaped = false } else if b == UInt8(ascii: "\\") { escaped = true } else if b == UInt8(ascii: "\"") { inString = false }
        continue
      }
      switch b {
      case UInt8(ascii: "\""): inString = true
      case UInt8(ascii: "{"), UInt8(ascii: "["):
        depth += 1
        if depth > Limits.vmDescriptionDepth {
          throw FormatError(
            .limitExceeded, "VM description", at: offset + UInt64(i),
            "nesting deeper than \(Limits.vmDescriptionDepth) levels")
        }
      case UInt8(ascii: "}"), UInt8(ascii: "]"): depth -= 1
      default: break
      }
    }
  }
}

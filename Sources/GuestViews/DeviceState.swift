import MigrationFormat

/// Device state decoded from a device (FULL) section, field by field, using
/// the section's description in the VM description JSON (FORMAT.md §8).
///
/// Nothing here knows a device's layout: every width, array length, nested
/// struct and subsection comes from the JSON. Each field element occupies the
/// `size` bytes the JSON gives it (per element for arrays, as QEMU writes it);
/// a struct element is decoded only when its own description accounts for
/// exactly those bytes, and anything that cannot be decoded for sure is kept
/// as raw bytes with the reason, never guessed.
public struct DeviceState: Sendable {
  /// The section.
  public let section: DeviceSection
  /// The decoded body, or nil when the body could not be walked (see ``problem``).
  public let state: DecodedVMSD?
  /// Bytes of the body the decoder accounted for.
  public let decodedBytes: UInt64
  /// Bytes of the section body between its header and footer.
  public let bodySize: UInt64
  /// Why the body is not (fully) decoded; nil when every byte is accounted for.
  public let problem: String?
}

/// One decoded vmstate: a device, a struct element, or a subsection.
public struct DecodedVMSD: Sendable {
  /// The vmstate name (`cpu`, `segment`, `cpu/tsc_khz`).
  public var vmsdName: String
  /// Its version from the JSON.
  public var version: Int
  /// Its fields in stream order.
  public var fields: [DecodedField]
  /// Its subsections in stream order.
  public var subsections: [DecodedVMSD]

  /// The first field named `name` here or, depth first, in a subsection.
  public func field(_ name: String) -> DecodedField? {
    if let f = fields.first(where: { $0.name == name }) { return f }
    for s in subsections { if let f = s.field(name) { return f } }
    return nil
  }
}

/// One decoded field description: a single value or a whole compressed array.
public struct DecodedField: Sendable {
  /// The field name from the JSON (`env.regs`, `env.cr[3]`).
  public var name: String
  /// The type name from the JSON (`uint64`, `struct`, `buffer`, …).
  public var type: String
  /// The array index the JSON gives a single uncompressed element (`index`).
  public var index: Int?
  /// Absolute file offset of the field's first byte.
  public var offset: UInt64
  /// Bytes the field takes (all elements).
  public var size: UInt64
  /// The value: an array for `array_len` fields, else one element.
  public var value: DeviceValue
}

/// A decoded field element.
public indirect enum DeviceValue: Sendable {
  /// An unsigned integer (`uint8` … `uint64`).
  case unsigned(UInt64)
  /// A signed integer (`int8` … `int64`, `timer`).
  case signed(Int64)
  /// A `bool`.
  case bool(Bool)
  /// A finite `float64`.
  case float(Double)
  /// Bytes of a type that is bytes by nature (`buffer`, `unused_buffer`, `pci config`, …).
  case bytes([UInt8])
  /// Bytes that could not be decoded for sure, and why.
  case undecoded([UInt8], reason: String)
  /// A struct element (`struct`, `tmp`, `vstruct`).
  case structure(DecodedVMSD)
  /// The elements of an `array_len` field.
  case array([DeviceValue])

  /// The value as an unsigned integer: unsigned as is, signed reinterpreted, bool as 0/1; nil otherwise.
  public var integer: UInt64? {
    switch self {
    case .unsigned(let v): return v
    case .signed(let v): return UInt64(bitPattern: v)
    case .bool(let b): return b ? 1 : 0
    default: return nil
    }
  }

  /// The elements of an array value; nil for anything else.
  public var elements: [DeviceValue]? {
    if case .array(let a) = self { return a }
    return nil
  }

  /// The struct of a struct value; nil for anything else.
  public var structure: DecodedVMSD? {
    if case .structure(let s) = self { return s }
    return nil
  }
}

extension DeviceState {
  /// The largest section body decoded; a larger one is reported and left alone.
  public static let bodyLimit: UInt64 = 16 << 20

  /// Decodes `section`'s body with `description` (its entry in the VM description).
  public init(section: DeviceSection, description: VMDescription.Device, file: MigrationFile) {
    let bodyEnd = section.offset &+ section.size &- 5
    let size = bodyEnd >= section.bodyOffset ? bodyEnd - section.bodyOffset : 0
    guard size <= DeviceState.bodyLimit else {
      self.init(
        section: section, state: nil, decodedBytes: 0, bodySize: size,
        problem: "the section body is \(size) bytes, more than mramfs decodes (\(DeviceState.bodyLimit))")
      return
    }
    let bytes: [UInt8]
    do {
      bytes = try file.file.bytes(at: section.bodyOffset, count: size, "body of section \(quoted(Array(section.name.utf8)))")
    } catch {
      self.init(
        section: section, state: nil, decodedBytes: 0, bodySize: size,
        problem: "the section body cannot be read: \(error)")
      return
    }
    self.init(section: section, description: description.vmsd, body: bytes)
  }

  /// Decodes a section body already read (`body` starts at `section.bodyOffset`).
  public init(section: DeviceSection, description: VMDescription.VMSD, body: [UInt8]) {
    var d = StateDecoder(bytes: body, base: section.bodyOffset)
    do {
      let s = try d.decode(description, depth: 0)
      self.init(
        section: section, state: s, decodedBytes: UInt64(d.pos), bodySize: UInt64(body.count),
        problem: d.pos == body.count
          ? nil : "the description accounts for \(d.pos) bytes but the section body is \(body.count)")
    } catch {
      self.init(
        section: section, state: nil, decodedBytes: UInt64(d.pos), bodySize: UInt64(body.count), problem: error.reason)
    }
  }
}

/// Why a walk over a body stopped.
struct StateDecodeError: Error {
  var reason: String
}

/// Walks a section body with its description.
struct StateDecoder {
  let bytes: [UInt8]
  /// Absolute file offset of `bytes[0]`.
  let base: UInt64
  var pos = 0

  init(bytes: [UInt8], base: UInt64) {
    self.bytes = bytes
    self.base = base
  }

  /// Decodes `vmsd`'s fields, then its subsections (each behind `05`, name, be32 version).
  mutating func decode(_ vmsd: VMDescription.VMSD, depth: Int) throws(StateDecodeError) -> DecodedVMSD {
    guard depth < Limits.vmDescriptionDepth else { throw StateDecodeError(reason: "nesting too deep") }
    var fields: [DecodedField] = []
    for f in vmsd.fields {
      fields.append(try field(f, depth: depth))
    }
    var subs: [DecodedVMSD] = []
    for s in vmsd.subsections {
      let at = base + UInt64(pos)
      let name = Array(s.vmsdName.utf8)
      guard pos < bytes.count, bytes[pos] == 0x05 else {
        throw StateDecodeError(reason: "no subsection marker (0x05) for \(quoted(name)) at offset \(hex(at))")
      }
      guard pos + 2 <= bytes.count, Int(bytes[pos + 1]) == name.count, pos + 2 + name.count + 4 <= bytes.count,
        bytes[(pos + 2)..<(pos + 2 + name.count)].elementsEqual(name)
      else {
        throw StateDecodeError(reason: "the subsection at offset \(hex(at)) is not \(quoted(name))")
      }
      pos += 2 + name.count
      let version = be(pos, 4)
      pos += 4
      var decoded = try decode(s, depth: depth + 1)
      decoded.version = Int(version)
      subs.append(decoded)
    }
    return DecodedVMSD(vmsdName: vmsd.vmsdName, version: vmsd.version, fields: fields, subsections: subs)
  }

  /// Decodes one field description: `array_len` elements (or one), each `size` bytes.
  mutating func field(_ f: VMDescription.Field, depth: Int) throws(StateDecodeError) -> DecodedField {
    let start = pos
    let count = f.arrayLength ?? 1
    let (total, overflow) = f.size.multipliedReportingOverflow(by: count)
    guard !overflow, total <= UInt64(bytes.count - pos) else {
      throw StateDecodeError(
        reason: "field \(quoted(Array(f.name.utf8))) needs \(overflow ? "more than 2^64" : "\(total)") bytes at offset "
          + "\(hex(base + UInt64(pos))), the section body has \(bytes.count - pos) left")
    }
    // Zero-byte elements cost nothing in the body, so the body cannot bound their count.
    guard f.size > 0 || count <= Limits.zeroSizeArrayLength else {
      throw StateDecodeError(
        reason: "field \(quoted(Array(f.name.utf8))) claims \(count) elements of 0 bytes "
          + "(at most \(Limits.zeroSizeArrayLength) are decoded)")
    }
    var elements: [DeviceValue] = []
    for _ in 0..<count {
      let end = pos + Int(f.size)
      elements.append(try element(f, bytes[pos..<end], depth: depth))
      pos = end
    }
    let value: DeviceValue = f.arrayLength == nil ? elements[0] : .array(elements)
    return DecodedField(
      name: f.name, type: f.type, index: f.index, offset: base + UInt64(start), size: UInt64(pos - start), value: value)
  }

  /// Decodes one element of `f` from exactly `slice`.
  func element(_ f: VMDescription.Field, _ slice: ArraySlice<UInt8>, depth: Int) throws(StateDecodeError) -> DeviceValue {
    let raw = Array(slice)
    if let nested = f.nested {
      guard nested.encodedSize == f.size else {
        return .undecoded(
          raw, reason: "its description accounts for \(nested.encodedSize) bytes, the element has \(f.size)")
      }
      var inner = StateDecoder(bytes: raw, base: base + UInt64(slice.startIndex))
      do {
        let s = try inner.decode(nested, depth: depth + 1)
        guard inner.pos == raw.count else {
          return .undecoded(raw, reason: "its description accounts for \(inner.pos) bytes, the element has \(raw.count)")
        }
        return .structure(s)
      } catch {
        return .undecoded(raw, reason: error.reason)
      }
    }
    var type = f.type
    if type.hasSuffix(" equal") { type.removeLast(" equal".count) }
    if type == "int32 le" { type = "int32" }
    let widths: [String: Int] = [
      "bool": 1, "uint8": 1, "int8": 1, "uint16": 2, "int16": 2, "uint32": 4, "int32": 4, "uint64": 8, "int64": 8,
      "timer": 8, "float64": 8,
    ]
    if let w = widths[type] {
      guard raw.count == w else {
        return .undecoded(raw, reason: "type \(f.type) is \(w) bytes, the description gives \(raw.count)")
      }
      let v = raw.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
      switch type {
      case "bool":
        return v <= 1 ? .bool(v == 1) : .undecoded(raw, reason: "a bool that is neither 0 nor 1")
      case "float64":
        let d = Double(bitPattern: v)
        return d.isFinite ? .float(d) : .undecoded(raw, reason: "not a finite number")
      case "uint8", "uint16", "uint32", "uint64":
        return .unsigned(v)
      default:
        let shift = UInt64(64 - 8 * w)
        return .signed(Int64(bitPattern: v << shift) >> shift)
      }
    }
    switch f.type {
    case "pci irq state" where raw.count == 16:
      return .array(
        (0..<4).map { i in
          .signed(Int64(Int32(bitPattern: UInt32(raw[4 * i]) << 24 | UInt32(raw[4 * i + 1]) << 16 | UInt32(raw[4 * i + 2]) << 8 | UInt32(raw[4 * i + 3]))))
        })
    case "buffer", "unused_buffer", "pci config", "bitmap", "capability", "nullptr", "pci irq state":
      return .bytes(raw)
    default:
      return .undecoded(raw, reason: "mramfs does not decode type \(f.type)")
    }
  }

  /// The big-endian integer of `count` bytes at `at`.
  func be(_ at: Int, _ count: Int) -> UInt64 {
    bytes[at..<(at + count)].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
  }
}

extension MigrationFile {
  /// Decodes every device section the stream walk located; empty without a VM description.
  public func deviceStates() -> [DeviceState] {
    guard let desc = vmDescription else { return [] }
    return devices.map { DeviceState(section: $0, description: desc.devices[$0.descriptionIndex], file: self) }
  }
}

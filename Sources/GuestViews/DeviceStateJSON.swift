/// The JSON text of decoded device state (a mount's `devices/*.json`).
///
/// Written by hand rather than through `JSONEncoder`, so that every integer
/// is printed exactly as its decimal text (values above 2^53 stay exact) and
/// fields keep their stream order. The schema is in the README.
extension DeviceState {
  /// The section and every decoded field as pretty-printed JSON, ending in a newline.
  public func json() -> String {
    var w = JSONTextWriter()
    var members: [(String, JSONTextWriter.Item)] = [
      ("name", .string(section.name)),
      ("instance", .number(String(section.instanceID))),
      ("version", .number(String(section.version))),
      ("offset", .number(String(section.offset))),
      ("bodyOffset", .number(String(section.bodyOffset))),
      ("bodySize", .number(String(bodySize))),
      ("decodedBytes", .number(String(decodedBytes))),
    ]
    if let problem { members.append(("problem", .string(problem))) }
    if let state {
      members.append(("vmsdName", .string(state.vmsdName)))
      members.append(contentsOf: DeviceState.members(of: state).filter { $0.0 != "vmsdName" && $0.0 != "version" })
    }
    w.write(.object(members), indent: 0)
    return w.text + "\n"
  }

  static func members(of s: DecodedVMSD) -> [(String, JSONTextWriter.Item)] {
    [
      ("vmsdName", .string(s.vmsdName)),
      ("version", .number(String(s.version))),
      ("fields", .array(s.fields.map(item))),
      ("subsections", .array(s.subsections.map { .object(members(of: $0)) })),
    ]
  }

  static func item(_ f: DecodedField) -> JSONTextWriter.Item {
    var m: [(String, JSONTextWriter.Item)] = [("name", .string(f.name)), ("type", .string(f.type))]
    if let i = f.index { m.append(("index", .number(String(i)))) }
    m.append(("offset", .number(String(f.offset))))
    m.append(("size", .number(String(f.size))))
    m.append(("value", item(f.value)))
    return .object(m)
  }

  static func item(_ v: DeviceValue) -> JSONTextWriter.Item {
    switch v {
    case .unsigned(let u): return .number(String(u))
    case .signed(let s): return .number(String(s))
    case .bool(let b): return .number(b ? "true" : "false")
    case .float(let d): return .number("\(d)")
    case .bytes(let b): return .object([("hex", .string(hexString(b)))])
    case .undecoded(let b, let reason): return .object([("undecoded", .string(reason)), ("hex", .string(hexString(b)))])
    case .structure(let s): return .object(members(of: s))
    case .array(let a): return .array(a.map(item))
    }
  }
}

/// Lower-case hex digits of `bytes`, two per byte.
func hexString(_ bytes: [UInt8]) -> String {
  let digits = Array("0123456789abcdef".utf8)
  var out = [UInt8]()
  out.reserveCapacity(bytes.count * 2)
  for b in bytes {
    out.append(digits[Int(b >> 4)])
    out.append(digits[Int(b & 15)])
  }
  return String(decoding: out, as: UTF8.self)
}

/// A minimal pretty-printing JSON writer: objects keep their member order, numbers are written as given.
struct JSONTextWriter {
  /// A JSON value.
  indirect enum Item {
    /// A number or literal, written verbatim.
    case number(String)
    case string(String)
    case array([Item])
    case object([(String, Item)])

    var isScalar: Bool {
      switch self {
      case .number, .string: return true
      case .array, .object: return false
      }
    }
  }

  var text = ""

  mutating func write(_ item: Item, indent: Int) {
    let pad = String(repeating: "  ", count: indent + 1)
    let close = String(repeating: "  ", count: indent)
    switch item {
    case .number(let n): text += n
    case .string(let s): text += JSONTextWriter.quote(s)
    case .array(let a):
      if a.isEmpty {
        text += "[]"
      } else if a.allSatisfy(\.isScalar) {
        text += "["
        for (i, e) in a.enumerated() {
          if i > 0 { text += ", " }
          write(e, indent: indent + 1)
        }
        text += "]"
      } else {
        text += "[\n"
        for (i, e) in a.enumerated() {
          text += pad
          write(e, indent: indent + 1)
          text += i == a.count - 1 ? "\n" : ",\n"
        }
        text += close + "]"
      }
    case .object(let m):
      if m.isEmpty {
        text += "{}"
        return
      }
      text += "{\n"
      for (i, (k, v)) in m.enumerated() {
        text += pad + JSONTextWriter.quote(k) + ": "
        write(v, indent: indent + 1)
        text += i == m.count - 1 ? "\n" : ",\n"
      }
      text += close + "}"
    }
  }

  /// `s` as a JSON string literal.
  static func quote(_ s: String) -> String {
    var out = "\""
    for u in s.unicodeScalars {
      switch u {
      case "\"": out += "\\\""
      case "\\": out += "\\\\"
      case "\n": out += "\\n"
      case "\r": out += "\\r"
      case "\t": out += "\\t"
      default:
        if u.value < 0x20 {
          out += "\\u00" + (u.value < 16 ? "0" : "") + String(u.value, radix: 16)
        } else {
          out.unicodeScalars.append(u)
        }
      }
    }
    return out + "\""
  }
}

import MigrationFormat

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
    w.write(.object(members))
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

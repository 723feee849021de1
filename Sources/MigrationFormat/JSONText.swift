import Foundation

/// The one place mramfs turns values into JSON text.
///
/// Two ways, for two needs: ``encode(_:)`` for `Codable` documents (`info --json`, summaries,
/// registers), pretty-printed with sorted keys so output is stable; and ``JSONTextWriter`` for
/// documents whose member order carries meaning (device state in stream order). Both print
/// 64-bit integers as their exact decimal text, also above 2^53.
public enum JSONText {
  /// `value` as pretty-printed JSON with sorted keys and unescaped slashes, ending in a newline.
  public static func encode(_ value: some Encodable) -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    do {
      return String(decoding: try encoder.encode(value), as: UTF8.self) + "\n"
    } catch {
      // Only non-finite doubles fail to encode, and mramfs never stores one.
      preconditionFailure("JSON encoding failed: \(error)")
    }
  }
}

/// A minimal pretty-printing JSON writer: objects keep their member order, numbers are written as given.
public struct JSONTextWriter: Sendable {
  /// A JSON value.
  public indirect enum Item: Sendable {
    /// A number or literal (`true`, `null`), written verbatim.
    case number(String)
    /// A string, quoted and escaped.
    case string(String)
    /// An array.
    case array([Item])
    /// An object whose members keep their order.
    case object([(String, Item)])

    var isScalar: Bool {
      switch self {
      case .number, .string: return true
      case .array, .object: return false
      }
    }
  }

  /// The text written so far.
  public private(set) var text = ""

  /// An empty writer.
  public init() {}

  /// Writes `item` at nesting level `indent`.
  public mutating func write(_ item: Item, indent: Int = 0) {
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
  public static func quote(_ s: String) -> String {
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

/// Lower-case hex digits of `bytes`, two per byte.
public func hexString(_ bytes: [UInt8]) -> String {
  let digits = Array("0123456789abcdef".utf8)
  var out = [UInt8]()
  out.reserveCapacity(bytes.count * 2)
  for b in bytes {
    out.append(digits[Int(b >> 4)])
    out.append(digits[Int(b & 15)])
  }
  return String(decoding: out, as: UTF8.self)
}

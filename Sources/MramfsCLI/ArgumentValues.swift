/// Why a command-line value was refused, saying what is accepted.
///
/// swift-argument-parser prints it after the option and the value:
/// `The value 'infG' is invalid for '--lowmem <SIZE>': expected …`.
struct InvalidValue: Error, CustomStringConvertible {
  let description: String
  init(_ description: String) { self.description = description }
}

/// Strict parsers for every number, size and address the command line takes.
///
/// All in integers, ASCII only, overflow checked, nothing through floating point: a value is
/// exactly what it says or it is refused. No signs, no spaces, no digits from other scripts.
enum ArgumentValue {
  static let sizeForms = "bytes (4096), hex (0x1000) or a number with K, M, G, T or P in binary units (256M, 5G, 1.5G when exact)"

  /// A byte count: decimal, `0x` hex, or a decimal number (with an exact fraction) followed by
  /// K, M, G, T or P (powers of 1024; `KiB`, `KB` and `k` are the same).
  static func size(_ text: String) throws(InvalidValue) -> UInt64 {
    guard let v = parseSize(text) else { throw InvalidValue("expected \(sizeForms)") }
    return v
  }

  /// A RAM size: a whole number of 4 KiB pages, from one page to 64 TiB.
  static func ramSize(_ text: String) throws(InvalidValue) -> UInt64 {
    guard let v = parseSize(text), v > 0, v % 4096 == 0, v <= 64 << 40 else {
      throw InvalidValue("expected a whole number of 4 KiB pages up to 64T, such as 256M, 5G or 1T")
    }
    return v
  }

  /// RAM below 4 GiB (QEMU's `max-ram-below-4g`): whole 4 KiB pages from 4K to 4G.
  static func lowmem(_ text: String) throws(InvalidValue) -> UInt64 {
    guard let v = parseSize(text), v > 0, v <= 1 << 32, v % 4096 == 0 else {
      throw InvalidValue("expected a size from 4K to 4G in whole 4 KiB pages, such as 3G, 2560M or 0xc0000000")
    }
    return v
  }

  /// A 64-bit address: `0x` hex or decimal, `_` allowed between digits.
  static func address(_ text: String) throws(InvalidValue) -> UInt64 {
    guard let v = parseAddress(text) else {
      throw InvalidValue("expected a 64-bit address in 0x-prefixed hex or decimal, such as 0xffffffff81000000")
    }
    return v
  }

  /// A fraction from 0 to 1, in millionths: `0.05`, `1`, `0`, `5%`, at most six decimal places.
  static func fraction(_ text: String) throws(InvalidValue) -> Fraction {
    guard let ppm = parseFraction(text) else {
      throw InvalidValue("expected a fraction from 0 to 1 with at most 6 decimal places (0.05, 0.0001, 1) or a percentage (5%)")
    }
    return Fraction(ppm: ppm)
  }

  /// A decimal integer in `range`.
  static func integer<T: FixedWidthInteger>(_ text: String, in range: ClosedRange<T>, _ what: String) throws(InvalidValue) -> T {
    guard let v = parseDecimal(text), let t = T(exactly: v), range.contains(t) else {
      throw InvalidValue("expected \(what), a whole number from \(range.lowerBound) to \(range.upperBound)")
    }
    return t
  }

  /// Copying threads: 1 to 1024.
  static func threads(_ text: String) throws(InvalidValue) -> Int {
    try integer(text, in: 1...1024, "a thread count")
  }

  /// A machine type as QEMU names them: 1 to 64 letters, digits, `.`, `-` or `_`.
  static func machine(_ text: String) throws(InvalidValue) -> String {
    let ok = !text.isEmpty && text.utf8.count <= 64
      && text.utf8.allSatisfy { isASCIIAlphanumeric($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") }
    guard ok else {
      throw InvalidValue("expected a QEMU machine type such as pc, q35, pc-i440fx-10.0 or pc-q35-10.0 (letters, digits, '.', '-', '_')")
    }
    return text
  }

  // MARK: - The parsers

  static func isASCIIDigit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }
  static func isASCIIAlphanumeric(_ b: UInt8) -> Bool {
    isASCIIDigit(b) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a)
  }

  /// ASCII decimal digits only (no sign, no spaces), at least one, without overflow.
  static func parseDecimal(_ text: some StringProtocol) -> UInt64? {
    let bytes = Array(text.utf8)
    guard !bytes.isEmpty, bytes.count <= 40, bytes.allSatisfy(isASCIIDigit) else { return nil }
    var v: UInt64 = 0
    for b in bytes {
      let (m, o1) = v.multipliedReportingOverflow(by: 10)
      let (a, o2) = m.addingReportingOverflow(UInt64(b - 0x30))
      guard !o1, !o2 else { return nil }
      v = a
    }
    return v
  }

  /// ASCII hex digits only, at least one, without overflow.
  static func parseHex(_ text: some StringProtocol) -> UInt64? {
    let bytes = Array(text.utf8)
    guard !bytes.isEmpty, bytes.count <= 40 else { return nil }
    var v: UInt64 = 0
    for b in bytes {
      let d: UInt8
      switch b {
      case 0x30...0x39: d = b - 0x30
      case 0x61...0x66: d = b - 0x61 + 10
      case 0x41...0x46: d = b - 0x41 + 10
      default: return nil
      }
      guard v >> 60 == 0 else { return nil }
      v = v << 4 | UInt64(d)
    }
    return v
  }

  /// See ``size(_:)``.
  static func parseSize(_ text: String) -> UInt64? {
    if text.hasPrefix("0x") || text.hasPrefix("0X") { return parseHex(text.dropFirst(2)) }
    var t = Substring(text)
    for suffix in ["iB", "IB", "ib", "Ib"] where t.hasSuffix(suffix) {
      t = t.dropLast(2)
      break
    }
    var unit: UInt64 = 1
    if let last = t.last, let shift = ["K": 10, "M": 20, "G": 30, "T": 40, "P": 50][last.uppercased()] {
      unit = 1 << UInt64(shift)
      t = t.dropLast()
    } else if t.hasSuffix("B") || t.hasSuffix("b") {
      t = t.dropLast()  // 4096B
    }
    let parts = t.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
    guard let whole = parts.first.flatMap(parseDecimal) else { return nil }
    let (base, overflow) = whole.multipliedReportingOverflow(by: unit)
    guard !overflow else { return nil }
    guard parts.count == 2 else { return base }
    // A fraction: exact in bytes, or refused.
    let digits = parts[1]
    guard unit > 1, !digits.isEmpty, digits.count <= 18, let f = parseDecimal(digits) else { return nil }
    var scale: UInt64 = 1
    for _ in 0..<digits.count { scale *= 10 }
    let (product, o1) = f.multipliedFullWidth(by: unit)
    let (q, r) = scale.dividingFullWidth((product, o1))
    guard r == 0 else { return nil }
    let (sum, o2) = base.addingReportingOverflow(q)
    return o2 ? nil : sum
  }

  /// See ``address(_:)``.
  static func parseAddress(_ text: String) -> UInt64? {
    let isHex = text.hasPrefix("0x") || text.hasPrefix("0X")
    let body = isHex ? text.dropFirst(2) : Substring(text)
    // Underscores only between digits.
    guard !body.hasPrefix("_"), !body.hasSuffix("_"), !body.contains("__") else { return nil }
    let digits = body.replacing("_", with: "")
    return isHex ? parseHex(digits) : parseDecimal(digits)
  }

  /// See ``fraction(_:)``; the result is in millionths.
  static func parseFraction(_ text: String) -> UInt64? {
    if text.hasSuffix("%") {
      guard let ppm = parseMillionths(text.dropLast(), scale: 10_000), ppm <= 1_000_000 else { return nil }
      return ppm
    }
    guard let ppm = parseMillionths(Substring(text), scale: 1_000_000), ppm <= 1_000_000 else { return nil }
    return ppm
  }

  /// A decimal number times `scale`, exactly, with at most 6 decimal places after scaling.
  static func parseMillionths(_ text: Substring, scale: UInt64) -> UInt64? {
    let parts = text.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
    guard let whole = parts.first.flatMap(parseDecimal), whole <= 100 else { return nil }
    var value = whole * scale
    if parts.count == 2 {
      let digits = parts[1]
      guard !digits.isEmpty, digits.count <= 6, let f = parseDecimal(digits) else { return nil }
      var denominator: UInt64 = 1
      for _ in 0..<digits.count { denominator *= 10 }
      guard (f * scale) % denominator == 0 else { return nil }
      value += f * scale / denominator
    }
    return value
  }
}

/// A fraction from 0 to 1, kept in millionths.
struct Fraction: CustomStringConvertible, Sendable {
  var ppm: UInt64
  /// `0.05` for 50 000 ppm.
  var description: String {
    if ppm == 1_000_000 { return "1" }
    var frac = String(ppm)
    frac = String(repeating: "0", count: 6 - frac.count) + frac
    while frac.hasSuffix("0") { frac.removeLast() }
    return frac.isEmpty ? "0" : "0." + frac
  }
}

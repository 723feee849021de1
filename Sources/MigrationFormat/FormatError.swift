/// Why a migration file could not be read.
///
/// Every error names the structure it was reading, the absolute byte offset in
/// the file, and what was found or expected, so that one line tells a user
/// what is wrong and where:
///
///     mapped-ram header of block "pc.ram" at offset 0x8e: version 2, expected 1
public struct FormatError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The class of problem, for callers and tests that branch on it.
  public enum Kind: String, Sendable, Equatable {
    /// The file ends before the structure does.
    case truncated
    /// A magic number or signature does not match.
    case badMagic
    /// A version field holds a version this reader does not know.
    case badVersion
    /// A field holds a value the format does not allow.
    case badValue
    /// Two regions of the file claim the same bytes.
    case overlap
    /// Offset arithmetic would pass 2^64.
    case overflow
    /// A count or size is above one of the limits in ``Limits``.
    case limitExceeded
    /// Two RAM blocks have the same name.
    case duplicate
    /// The stream stops before its end marker (an interrupted or unfinished save).
    case incomplete
    /// The file uses a feature this reader cannot carry (for example XBZRLE pages).
    case unsupported
    /// The operating system refused an operation on the file.
    case io
  }

  /// The class of problem.
  public var kind: Kind
  /// The structure being read, such as `mapped-ram header of block "pc.ram"`.
  public var structure: String
  /// The absolute byte offset in the file where the problem is.
  public var offset: UInt64
  /// What was found, and what was expected.
  public var problem: String

  /// Creates an error.
  public init(_ kind: Kind, _ structure: String, at offset: UInt64, _ problem: String) {
    self.kind = kind
    self.structure = structure
    self.offset = offset
    self.problem = problem
  }

  /// The one-line message shown to users.
  public var description: String {
    "\(structure) at offset \(hex(offset)): \(problem)"
  }

  static func truncated(_ structure: String, at offset: UInt64, needed: UInt64, fileSize: UInt64)
    -> FormatError
  {
    let available = fileSize > offset ? fileSize - offset : 0
    return FormatError(
      .truncated, structure, at: offset,
      "need \(needed) bytes, file has \(available) (the file is cut short)")
  }
}

/// Formats a number as `0x…` in lower-case hexadecimal.
@inlinable
public func hex<T: BinaryInteger>(_ value: T) -> String {
  "0x" + String(value, radix: 16)
}

/// Quotes a block or section name for messages; bytes that are not printable show as `\xNN`.
public func quoted(_ bytes: [UInt8]) -> String {
  var s = "\""
  for b in bytes {
    if b >= 0x20 && b < 0x7f && b != UInt8(ascii: "\"") && b != UInt8(ascii: "\\") {
      s.unicodeScalars.append(Unicode.Scalar(b))
    } else if b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") {
      s += "\\" + String(Unicode.Scalar(b))
    } else {
      s += "\\x" + (b < 16 ? "0" : "") + String(b, radix: 16)
    }
  }
  return s + "\""
}

extension UInt64 {
  /// `self + other`, or an ``FormatError/Kind/overflow`` error naming the field.
  @inlinable
  func adding(_ other: UInt64, _ structure: @autoclosure () -> String, at offset: UInt64, _ what: String)
    throws(FormatError) -> UInt64
  {
    let (r, o) = addingReportingOverflow(other)
    if o {
      throw FormatError(.overflow, structure(), at: offset, "\(what) passes 2^64")
    }
    return r
  }

  /// `self * other`, or an ``FormatError/Kind/overflow`` error naming the field.
  @inlinable
  func multiplying(_ other: UInt64, _ structure: @autoclosure () -> String, at offset: UInt64, _ what: String)
    throws(FormatError) -> UInt64
  {
    let (r, o) = multipliedReportingOverflow(by: other)
    if o {
      throw FormatError(.overflow, structure(), at: offset, "\(what) passes 2^64")
    }
    return r
  }
}

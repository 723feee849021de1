import GuestViews

/// The names a mount keeps for itself at its top level, in one place: the tree builds these
/// entries, and ``BlockPaths`` keeps block files off every one of them (a block named
/// `physmem` becomes the flat file `%70hysmem`).
public enum TopLevelName: String, CaseIterable, Sendable {
  /// The `info --json` document.
  case info = "info.json"
  /// Guest-physical memory as one sparse file.
  case physmem
  /// The guest as an ELF core file.
  case vmcore
  /// The guest kernel's VMCOREINFO text.
  case vmcoreinfo
  /// `cpu/N/registers.json`.
  case cpu
  /// `devices/NAME[.INSTANCE].json`.
  case devices
  /// Kept free for mramfs's own future use.
  case reserved = ".mramfs"

  /// Every reserved name.
  public static let all: Set<String> = Set(allCases.map(\.rawValue))
}

extension DeviceState {
  /// The file name of the section in a mount's `devices` directory (without the directory).
  public var fileName: String { DeviceState.fileName(name: section.name, instance: section.instanceID) }

  /// `NAME.json` for instance 0 and `NAME.INSTANCE.json` otherwise, with NAME percent-encoded as
  /// ``BlockPaths/encode(_:firstByte:)`` does (`/` becomes `%2F`, `%` becomes `%25`, control bytes,
  /// spaces and non-ASCII bytes `%XX`). A name that ends in `.` and digits gets that `.` encoded as
  /// `%2E`, so that `dma.1.json` can only be `dma` instance 1.
  public static func fileName(name: String, instance: UInt32) -> String {
    var encoded = BlockPaths.encode(Array(name.utf8), firstByte: false)
    if let dot = encoded.lastIndex(of: "."), encoded.index(after: dot) < encoded.endIndex,
      encoded[encoded.index(after: dot)...].allSatisfy({ $0.isASCII && $0.isNumber })
    {
      encoded.replaceSubrange(dot...dot, with: "%2E")
    }
    return instance == 0 ? "\(encoded).json" : "\(encoded).\(instance).json"
  }
}

// The record grammar of a QEMU migration stream: top-level record types and the flags
// of `ram` section words (QEMU `migration/savevm.h`, `migration/ram.c`; FORMAT.md §1-§2).

/// Record type bytes of the top-level stream (QEMU `migration/savevm.h`).
enum RecordType {
  static let eof: UInt8 = 0x00
  static let sectionStart: UInt8 = 0x01
  static let sectionPart: UInt8 = 0x02
  static let sectionEnd: UInt8 = 0x03
  static let sectionFull: UInt8 = 0x04
  static let subsection: UInt8 = 0x05
  static let vmDescription: UInt8 = 0x06
  static let configuration: UInt8 = 0x07
  static let command: UInt8 = 0x08
  static let footer: UInt8 = 0x7e
}

/// Flags in the low bits of a `ram` section record word (QEMU `migration/ram.c`).
public enum RAMFlag {
  public static let zero: UInt64 = 0x002
  public static let memSize: UInt64 = 0x004
  public static let page: UInt64 = 0x008
  public static let eos: UInt64 = 0x010
  public static let `continue`: UInt64 = 0x020
  public static let xbzrle: UInt64 = 0x040
  public static let hook: UInt64 = 0x080
  public static let compressPage: UInt64 = 0x100
  public static let multifdFlush: UInt64 = 0x200
}

/// The stream magic, `QEVM`, and the only version QEMU still reads.
let streamMagic: UInt32 = 0x5145_564d
let streamVersion: UInt32 = 3

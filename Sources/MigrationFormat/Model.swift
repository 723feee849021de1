/// Which layout a stream uses for its RAM.
public enum StreamFormat: String, Sendable, Codable {
  /// QEMU 9.0 and later: capability `mapped-ram`, 28-byte per-block header.
  case mappedRAM = "mapped-ram"
  /// The late `fixed-ram` patches (v2–v4, 2023–24): capability `fixed-ram`
  /// with the same 28-byte header as mapped-ram (FORMAT.md §3, generation B).
  case fixedRAM = "fixed-ram"
  /// The first `fixed-ram` RFC (2022–23): a 12-byte header of bitmap size and
  /// pages offset, with the bitmap right after it (FORMAT.md §3, generation A).
  case fixedRAMRFC1 = "fixed-ram-rfc1"
  /// A classic sequential stream: pages are records inside the stream.
  case classic = "classic"

  /// Whether pages sit at fixed offsets, so a page can be read in place without replaying records.
  public var isPositional: Bool { self != .classic }
}

/// The raw 28-byte mapped-ram per-block header, as QEMU writes it (big-endian).
public struct RawMappedRAMHeader: Sendable, Equatable {
  /// Header layout version; QEMU writes 1.
  public var version: UInt32
  /// Page size of the bitmap and pages region; the target page size (4096 on x86).
  public var pageSize: UInt64
  /// Absolute file offset of the bitmap of written pages.
  public var bitmapOffset: UInt64
  /// Absolute file offset of page 0 of the block.
  public var pagesOffset: UInt64

  /// The encoded size of the header.
  public static let size: UInt64 = 28
}

/// A block's name exactly as the stream holds it, plus a printable form.
public struct BlockName: Sendable, Hashable, CustomStringConvertible {
  /// The raw bytes (QEMU's `idstr`, not NUL-terminated in the stream).
  public let bytes: [UInt8]
  /// Creates a name from its bytes.
  public init(bytes: [UInt8]) { self.bytes = bytes }
  /// Creates a name from a string.
  public init(_ string: String) { self.bytes = Array(string.utf8) }
  /// The name as a string if it is valid UTF-8, else nil.
  public var string: String? { String(validating: bytes, as: UTF8.self) }
  /// The name for display: the string, or a quoted form with `\xNN` escapes when it has
  /// bytes that are not printable UTF-8.
  public var description: String {
    if let s = string, !bytes.contains(where: { $0 < 0x20 || $0 == 0x7f }) { return s }
    return quoted(bytes)
  }
}

/// One RAM block of a migration stream, validated.
public struct RAMBlock: Sendable {
  /// The block's name (`pc.ram`, `0000:00:02.0/vga.vram`, `/rom@etc/acpi/tables`).
  public let name: BlockName
  /// The block's used length in bytes (QEMU's `used_length`).
  public let length: UInt64
  /// The page size of the bitmap and pages region.
  public let pageSize: UInt64
  /// Absolute offset of the block entry (its name length byte).
  public let entryOffset: UInt64
  /// Absolute offset of the mapped-ram (or fixed-ram) header, for positional formats.
  public let headerOffset: UInt64?
  /// The MemoryRegion offset in its container, present when `x-ignore-shared` is on. Not a guest-physical address.
  public let mrAddr: UInt64?
  /// Absolute offset of the bitmap, for positional formats.
  public let bitmapOffset: UInt64
  /// Size of the bitmap in the file, in bytes.
  public let bitmapSize: UInt64
  /// Absolute offset of page 0, for positional formats.
  public let pagesOffset: UInt64
  /// Which pages the file holds; nil for classic streams. Reads serve these pages from the
  /// file and zeros for the others.
  public let bitmap: PageBitmap?
  /// Which pages count as data for ``MigrationFile/nextData(block:from:)``,
  /// ``MigrationFile/nextHole(block:from:)`` and ``populatedPages`` when that is not
  /// ``bitmap``; nil means ``bitmap``.
  ///
  /// Set only in a delta view (``SaveDiff/delta()``): there it is the pages that changed since
  /// the base, which include pages that changed to zeros and so read as zeros.
  public internal(set) var extentMap: PageBitmap? = nil

  /// Number of pages in the block.
  public var pageCount: UInt64 { length / pageSize }
  /// The pages that hold data for ``MigrationFile/nextData(block:from:)``,
  /// ``MigrationFile/nextHole(block:from:)`` and ``populatedPages``: ``extentMap``, else
  /// ``bitmap``; nil for classic streams. What counts or seeks data goes by this; reads go by ``bitmap``.
  public var dataPages: PageBitmap? { extentMap ?? bitmap }
  /// Number of pages that hold data (``dataPages``); nil for classic streams.
  ///
  /// For a file as saved, the pages whose bytes are in the file.
  public var populatedPages: UInt64? { dataPages?.populated }
  /// Whether page `page` is in the file.
  @inlinable public func isPresent(page: UInt64) -> Bool { bitmap?.isSet(page) ?? false }
  /// The absolute file offset of page `page` (meaningful when it is present).
  @inlinable public func fileOffset(ofPage page: UInt64) -> UInt64 { pagesOffset + page * pageSize }

  /// This block with reads served from `served`'s pages only and `extents` as its data pages
  /// (``extentMap``); both must have ``pageCount`` pages.
  public func masked(serving served: PageBitmap, extents: PageBitmap) -> RAMBlock {
    precondition(served.pageCount == pageCount && extents.pageCount == pageCount, "bitmaps of another size")
    return RAMBlock(
      name: name, length: length, pageSize: pageSize, entryOffset: entryOffset, headerOffset: headerOffset,
      mrAddr: mrAddr, bitmapOffset: bitmapOffset, bitmapSize: bitmapSize, pagesOffset: pagesOffset,
      bitmap: served, extentMap: extents)
  }
}

/// The libvirt save header in front of a stream (`virQEMUSaveHeader`).
public struct LibvirtHeader: Sendable {
  /// `LibvirtQemudSave` for a finished save, `LibvirtQemudPart` while it runs or after it failed.
  public let magic: String
  /// Header version (2).
  public let version: UInt32
  /// Bytes of XML, cookie and padding after the 92-byte header.
  public let dataLength: UInt32
  /// Whether the domain was running when saved.
  public let wasRunning: Bool
  /// Image format: 0 raw, 1 gzip, 2 bzip2, 3 xz, 4 lzop, 5 zstd, 6 sparse (mapped-ram).
  public let format: UInt32
  /// The format's name.
  public var formatName: String {
    ["raw", "gzip", "bzip2", "xz", "lzop", "zstd", "sparse"].indices.contains(Int(format))
      ? ["raw", "gzip", "bzip2", "xz", "lzop", "zstd", "sparse"][Int(format)] : "unknown(\(format))"
  }
  /// The domain XML.
  public let xml: String
  /// The cookie XML, if any.
  public let cookie: String?
  /// Whether the save finished (`LibvirtQemudSave`).
  public var isComplete: Bool { magic == LibvirtHeader.completeMagic }

  static let completeMagic = "LibvirtQemudSave"
  static let partialMagic = "LibvirtQemudPart"
  /// Size of the fixed part of the header.
  public static let size: UInt64 = 92
}

/// A record of the top-level stream, as found while walking it.
public struct StreamRecord: Sendable {
  /// The record type.
  public enum Kind: String, Sendable {
    case sectionStart = "start", sectionPart = "part", sectionEnd = "end", sectionFull = "full"
    case command, eof, vmDescription = "vmdesc"
  }
  /// What kind of record.
  public let kind: Kind
  /// Absolute offset of its type byte.
  public let offset: UInt64
  /// Section id, for sections.
  public let sectionID: UInt32?
  /// The section's name, for START/FULL, or the command's number.
  public let name: String
}

/// A device (FULL) section of the stream, located through the VM description.
public struct DeviceSection: Sendable {
  /// The section's idstr (`cpu`, `0000:00:01.0/mch`, `timer`).
  public let name: String
  /// Instance id: which of several same-named sections (`cpu` 0, `cpu` 1).
  public let instanceID: UInt32
  /// The section's vmstate version.
  public let version: UInt32
  /// Absolute offset of the section's type byte.
  public let offset: UInt64
  /// Size in bytes from the type byte through its footer.
  public let size: UInt64
  /// Absolute offset of the section body (after the header).
  public let bodyOffset: UInt64
  /// Index of the device's entry in the VM description's `devices` array.
  public let descriptionIndex: Int
}

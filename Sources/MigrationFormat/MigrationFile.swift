/// How to open a migration file.
public struct OpenOptions: Sendable {
  /// Open a stream that stops before its end marker, with a warning, instead of refusing it.
  public var force = false
  /// Refuse a symbolic link at the path (`O_NOFOLLOW`).
  public var noFollow = false
  /// Where the QEMU stream starts, when it is behind a prefix mramfs does not recognise.
  public var streamOffset: UInt64? = nil
  /// How the bitmap words were laid out by the writing host.
  public var bitmapLayout: BitmapLayout = .littleEndian64
  /// Skip the walk over device sections and the VM description.
  public var skipDevices = false

  /// The default options: refuse incomplete streams, follow symlinks, little-endian bitmaps.
  public init() {}
}

/// A QEMU migration file, parsed and validated.
///
/// Opening reads the headers, the `ram` section's block list and every
/// block's bitmap, then walks the rest of the stream to check that it is
/// complete. Its cost depends on the size of the bitmaps and the stream
/// records, never on the size of the guest's RAM.
///
/// Reads of block contents (``read(block:at:into:)``) are safe from any
/// number of threads at once.
public final class MigrationFile: Sendable {
  /// The open file.
  public let file: ImageFile
  /// The libvirt header in front of the stream, if any.
  public let libvirt: LibvirtHeader?
  /// Absolute offset of the `QEVM` stream header.
  public let streamOffset: UInt64
  /// The machine type from the configuration record (`pc-i440fx-10.0`), or nil if there is none.
  public let machineType: String?
  /// Capabilities listed in the configuration record (`mapped-ram`, `x-ignore-shared`).
  public let capabilities: [String]
  /// The VM's UUID (16 bytes), when the configuration records it.
  public let uuid: [UInt8]?
  /// Target page bits from the configuration, when recorded.
  public let targetPageBits: UInt32?
  /// Which RAM layout the stream uses.
  public let format: StreamFormat
  /// The total of all blocks' lengths, from the MEM_SIZE record.
  public let memorySize: UInt64
  /// The RAM blocks, in stream order.
  public let blocks: [RAMBlock]
  /// The section id of `ram`.
  public let ramSectionID: UInt32
  /// Top-level records seen while walking the stream.
  public let records: [StreamRecord]
  /// Device sections, located with the VM description.
  public let devices: [DeviceSection]
  /// The VM description, if the file has one.
  public let vmDescription: VMDescription?
  /// Absolute offset of the VMDESCRIPTION record, if any.
  public let vmDescriptionOffset: UInt64?
  /// Why device state is not available, when it is not.
  public let devicesUnavailableReason: String?
  /// Whether the stream reached its end marker.
  public let isComplete: Bool
  /// Things that are odd but not fatal.
  public let warnings: [String]
  /// The options the file was opened with.
  public let options: OpenOptions
  /// Offset right after a classic START's block list, where page records may follow.
  public let ramListEnd: UInt64?

  /// The file's path.
  public var path: String { file.path }

  /// Opens and validates a migration file.
  public convenience init(path: String, options: OpenOptions = OpenOptions()) throws(FormatError) {
    let file = try ImageFile(path: path, noFollow: options.noFollow)
    try self.init(file: file, options: options)
  }

  /// Validates an already open file.
  public init(file: ImageFile, options: OpenOptions = OpenOptions()) throws(FormatError) {
    self.file = file
    self.options = options
    var p = StreamParser(file: file, options: options)
    try p.parse()
    libvirt = p.libvirt
    streamOffset = p.streamOffset
    machineType = p.machineType
    capabilities = p.capabilities
    uuid = p.uuid
    targetPageBits = p.targetPageBits
    format = p.format
    memorySize = p.memorySize
    blocks = p.blocks
    ramSectionID = p.ramSectionID
    records = p.records
    devices = p.devices
    vmDescription = p.vmDescription
    vmDescriptionOffset = p.vmDescriptionOffset
    devicesUnavailableReason = p.devicesUnavailableReason
    isComplete = p.isComplete
    warnings = p.warnings
    ramListEnd = p.ramListEnd
  }

  /// A view of `other` whose RAM blocks are `blocks`: the same open file, stream records and
  /// device state (how ``SaveDiff/delta()`` makes a delta view).
  init(_ other: MigrationFile, blocks: [RAMBlock]) {
    file = other.file
    options = other.options
    libvirt = other.libvirt
    streamOffset = other.streamOffset
    machineType = other.machineType
    capabilities = other.capabilities
    uuid = other.uuid
    targetPageBits = other.targetPageBits
    format = other.format
    memorySize = other.memorySize
    self.blocks = blocks
    ramSectionID = other.ramSectionID
    records = other.records
    devices = other.devices
    vmDescription = other.vmDescription
    vmDescriptionOffset = other.vmDescriptionOffset
    devicesUnavailableReason = other.devicesUnavailableReason
    isComplete = other.isComplete
    warnings = other.warnings
    ramListEnd = other.ramListEnd
  }

  /// The index of the block named `name`, if any.
  public func blockIndex(named name: String) -> Int? {
    blocks.firstIndex { $0.name.bytes.elementsEqual(name.utf8) }
  }

  /// The block named `name`, if any.
  public func block(named name: String) -> RAMBlock? {
    blockIndex(named: name).map { blocks[$0] }
  }
}

/// A block to write.
public struct BlockPlan: Sendable {
  /// The block's name (QEMU's idstr: 1 to 255 bytes, no NUL).
  public var name: BlockName
  /// The block's length in bytes, a whole number of 4 KiB pages.
  public var length: UInt64
  /// Where its pages come from.
  public var source: any PageSource
  /// For classic output: how many times each present page is sent (dirty passes); 1 = once.
  public var classicRepeats: @Sendable (UInt64) -> Int = { _ in 1 }

  /// A block of `length` bytes named `name` whose pages come from `source`.
  public init(name: BlockName, length: UInt64, source: any PageSource) {
    self.name = name
    self.length = length
    self.source = source
  }
}

/// Everything that describes a stream to write.
public struct StreamPlan: Sendable {
  /// Bytes before the stream (a libvirt header); offsets in the file are absolute.
  public var prefix: [UInt8] = []
  /// The machine type for the configuration record (`pc-i440fx-10.0`).
  public var machineType: String
  /// Capabilities for the configuration record; `mapped-ram` is added or removed by the format.
  public var capabilities: [String] = []
  /// The VM's UUID (16 bytes), if it is to be recorded.
  public var uuid: [UInt8]? = nil
  /// Target page bits, if they are to be recorded.
  public var targetPageBits: UInt32? = nil
  /// The layout to write.
  public var format: StreamFormat = .mappedRAM
  /// Alignment of pages regions: 1 MiB as QEMU writes them, or 4 KiB.
  public var alignment: UInt64 = 1 << 20
  /// The blocks, in stream order.
  public var blocks: [BlockPlan] = []
  /// The `ram` section's id.
  public var ramSectionID: UInt32 = 1
  /// Records that go between the ram START and the ram END, copied verbatim (commands, early devices).
  public var middle: [UInt8] = []
  /// Everything after the ram END: device sections, EOF and the VM description, verbatim.
  /// Empty means just the EOF byte.
  public var tail: [UInt8] = []
  /// Worker threads for page copying.
  public var threads = 2

  /// A plan for a machine of type `machineType`, with no blocks yet.
  public init(machineType: String) {
    self.machineType = machineType
  }

  /// Checks what the stream's grammar needs before a byte is written: a machine type of 1 to
  /// 256 bytes, block names of 1 to 255 bytes with no NUL and none twice, lengths in whole
  /// 4 KiB pages, at most ``Limits/blockCount`` blocks, and a power-of-two alignment.
  public func validate() throws(FormatError) {
    let s = "stream plan"
    let machine = Array(machineType.utf8)
    guard !machine.isEmpty, machine.count <= Int(Limits.machineNameLength), !machine.contains(0) else {
      throw FormatError(
        .badValue, s, at: 0,
        "machine type \(quoted(machine)) must be 1 to \(Limits.machineNameLength) bytes with no NUL")
    }
    guard !blocks.isEmpty else { throw FormatError(.badValue, s, at: 0, "no RAM blocks to write") }
    guard blocks.count <= Limits.blockCount else {
      throw FormatError(.limitExceeded, s, at: 0, "\(blocks.count) blocks, at most \(Limits.blockCount)")
    }
    guard alignment >= 4096, alignment.nonzeroBitCount == 1 else {
      throw FormatError(.badValue, s, at: 0, "alignment \(alignment) is not a power of two of at least 4096")
    }
    var seen = Set<[UInt8]>()
    for b in blocks {
      let name = b.name.bytes
      guard !name.isEmpty else { throw FormatError(.badValue, s, at: 0, "a block name is empty") }
      guard name.count <= 255 else {
        throw FormatError(
          .badValue, s, at: 0, "block name \(quoted(Array(name.prefix(40))))… is \(name.count) bytes; QEMU's limit is 255")
      }
      guard !name.contains(0) else { throw FormatError(.badValue, s, at: 0, "block name \(quoted(name)) contains a NUL byte") }
      guard seen.insert(name).inserted else {
        throw FormatError(.duplicate, s, at: 0, "block name \(quoted(name)) is given twice")
      }
      guard b.length > 0, b.length % 4096 == 0, b.length <= Limits.blockLength else {
        throw FormatError(
          .badValue, s, at: 0, "block \(quoted(name)): length \(b.length) is not a whole number of 4 KiB pages from 4 KiB to 64 TiB")
      }
    }
  }
}

/// What a write did.
public struct WriteSummary: Sendable, Codable {
  /// The file written.
  public var path: String
  /// Its layout (`mapped-ram`, `classic`, …).
  public var format: String
  /// Bytes written (pages, headers, bitmaps, records).
  public var bytesWritten: UInt64
  /// The file's apparent size.
  public var fileSize: UInt64
  /// The file's allocated bytes on disk.
  public var allocatedBytes: UInt64
  /// The total of the blocks' lengths.
  public var ramBytes: UInt64
  /// Pages written (each once, even in a classic stream with dirty passes).
  public var populatedPages: UInt64
  /// Wall-clock seconds the write took.
  public var seconds: Double
}

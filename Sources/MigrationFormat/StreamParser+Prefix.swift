// What comes before the QEMU stream: a libvirt save header, or an offset the user gives.

extension StreamParser {
  // MARK: - Prefix, header, configuration

  mutating func parsePrefix() throws(FormatError) {
    if let given = options.streamOffset {
      // Checked here, once: every later offset is the stream offset plus what the file holds.
      guard given <= file.size, file.size - given >= 8 else {
        throw FormatError.truncated("stream header", at: given, needed: 8, fileSize: file.size)
      }
      streamOffset = given
      return
    }
    guard file.size >= 8 else {
      throw FormatError.truncated("stream header", at: 0, needed: 8, fileSize: file.size)
    }
    let head = try file.bytes(at: 0, count: min(16, file.size), "stream header")
    if head.count == 16, let magic = String(validating: head, as: UTF8.self),
      magic == LibvirtHeader.completeMagic || magic == LibvirtHeader.partialMagic
    {
      try parseLibvirt(magic: magic)
      return
    }
    if head.starts(with: [0x51, 0x45, 0x56, 0x4d]) {
      streamOffset = 0
      return
    }
    throw FormatError(
      .badMagic, "stream header", at: 0,
      "found \(quoted(Array(head.prefix(8)))), expected \"QEVM\" (a QEMU migration stream) or a libvirt save header"
        + "; if the stream sits behind another prefix, give its offset with --offset")
  }

  mutating func parseLibvirt(magic: String) throws(FormatError) {
    let s = "libvirt save header"
    let raw = try file.bytes(at: 0, count: LibvirtHeader.size, s)
    func u32(_ at: Int, swap: Bool) -> UInt32 {
      let v = UInt32(raw[at]) | UInt32(raw[at + 1]) << 8 | UInt32(raw[at + 2]) << 16 | UInt32(raw[at + 3]) << 24
      return swap ? v.byteSwapped : v
    }
    let swap = u32(16, swap: false) > 2
    let version = u32(16, swap: swap)
    guard version == 2 || version == 1 else {
      throw FormatError(.badVersion, s, at: 16, "version \(version), expected 2")
    }
    let dataLength = u32(20, swap: swap)
    let wasRunning = u32(24, swap: swap)
    let format = u32(28, swap: swap)
    let cookieOffset = u32(32, swap: swap)
    guard UInt64(dataLength) <= Limits.libvirtDataLength else {
      throw FormatError(
        .limitExceeded, s, at: 20, "data_len \(dataLength) is above the limit of \(Limits.libvirtDataLength)")
    }
    let start = LibvirtHeader.size + UInt64(dataLength)
    guard start + 8 <= file.size else {
      throw FormatError(
        .truncated, s, at: 20,
        "data_len \(dataLength) puts the stream at \(hex(start)), past the end of the file (size \(file.size))")
    }
    if magic == LibvirtHeader.partialMagic && !options.force {
      throw FormatError(
        .incomplete, s, at: 0,
        "magic \"LibvirtQemudPart\": this save never finished (libvirt rewrites it to \"LibvirtQemudSave\" when QEMU is done); use --force to read what is there")
    }
    guard format == 0 || format == 6 else {
      let names = ["raw", "gzip", "bzip2", "xz", "lzop", "zstd", "sparse"]
      let name = Int(format) < names.count ? names[Int(format)] : "unknown"
      throw FormatError(
        .unsupported, s, at: 28,
        "image format \(format) (\(name)): the stream is compressed; decompress it (or save with --image-format sparse) first")
    }
    let data = try file.bytes(at: LibvirtHeader.size, count: UInt64(dataLength), s)
    let xmlEnd = cookieOffset > 0 ? min(Int(cookieOffset), data.count) : data.count
    let xmlBytes = data[0..<xmlEnd].prefix { $0 != 0 }
    var cookie: String? = nil
    if cookieOffset > 0 && Int(cookieOffset) < data.count {
      cookie = String(decoding: data[Int(cookieOffset)...].prefix { $0 != 0 }, as: UTF8.self)
    }
    libvirt = LibvirtHeader(
      magic: magic, version: version, dataLength: dataLength, wasRunning: wasRunning != 0, format: format,
      xml: String(decoding: xmlBytes, as: UTF8.self), cookie: cookie)
    if magic == LibvirtHeader.partialMagic {
      warnings.append("libvirt header says \"LibvirtQemudPart\": the save never finished")
    }
    streamOffset = start
  }

}

// The walk over a whole stream. The parts of the walk that read one structure each live in
// their own files: StreamParser+Prefix (the libvirt header or --offset), +Configuration (stream
// header and configuration record), +RAMSection (the ram section and block headers),
// ClassicRecords (classic page records), +VMDescription (locating the JSON at the tail).

/// Walks a stream once, filling in what ``MigrationFile`` exposes.
struct StreamParser {
  let file: ImageFile
  let options: OpenOptions

  var libvirt: LibvirtHeader? = nil
  var streamOffset: UInt64 = 0
  var machineType: String? = nil
  var capabilities: [String] = []
  var uuid: [UInt8]? = nil
  var targetPageBits: UInt32? = nil
  var format: StreamFormat = .classic
  var memorySize: UInt64 = 0
  var blocks: [RAMBlock] = []
  var ramSectionID: UInt32 = 0
  var records: [StreamRecord] = []
  var devices: [DeviceSection] = []
  var vmDescription: VMDescription? = nil
  var vmDescriptionOffset: UInt64? = nil
  var devicesUnavailableReason: String? = nil
  var isComplete = false
  var warnings: [String] = []
  /// Offset right after the block list of a classic START, where page records may follow.
  var ramListEnd: UInt64? = nil

  /// Section ids seen in START/FULL records, with their names.
  var sectionNames: [UInt32: String] = [:]
  var ramEnded = false
  var sawConfiguration = false
  /// Set when the block list stopped early on a cut file opened with `force`.
  var cutShort = false
  /// The block of the last classic page record that named one: a CONTINUE record
  /// may refer to it from a later section (QEMU keeps it across iterations).
  var classicLastBlock: Int? = nil

  init(file: ImageFile, options: OpenOptions) {
    self.file = file
    self.options = options
  }

  var targetPageSize: UInt64 { 1 << UInt64(targetPageBits ?? 12) }

  mutating func parse() throws(FormatError) {
    try parsePrefix()
    var c = StreamCursor(file: file, offset: streamOffset)
    try parseHeader(&c)
    try parseConfiguration(&c)
    try findRAM(&c)
    if cutShort {
      isComplete = false
      return
    }
    if !options.skipDevices {
      locateVMDescription()
    }
    try walkRest(&c)
    if let e = incompleteError { throw e }
    if !isComplete {
      if options.force {
        warnings.append(
          "the stream stops before its end marker (an interrupted or unfinished save); showing what is there")
      }
    }
    if format.isPositional, !blocks.isEmpty, blocks.allSatisfy({ ($0.populatedPages ?? 0) == 0 }) {
      warnings.append("every bitmap is empty: QEMU writes bitmaps last, so this may be an interrupted save")
    }
  }

  // MARK: - The ram section

  mutating func findRAM(_ c: inout StreamCursor) throws(FormatError) {
    while true {
      let at = c.offset
      if c.atEnd {
        throw FormatError(
          .incomplete, "stream", at: at, "the file ends before the ram section (an interrupted save?)")
      }
      let type = try c.readUInt8("record type")
      switch type {
      case RecordType.command:
        try skipCommand(&c, at: at)
      case RecordType.sectionStart:
        let h = try readSectionHeader(&c, at: at)
        guard h.name == "ram" else {
          throw FormatError(
            .unsupported, "section \(h.quotedName)", at: at,
            "an iterative section before ram; mramfs cannot skip it")
        }
        records.append(StreamRecord(kind: .sectionStart, offset: at, sectionID: h.id, name: h.name))
        guard h.version == 4 else {
          throw FormatError(.badVersion, "ram section", at: at, "version \(h.version), expected 4")
        }
        ramSectionID = h.id
        sectionNames[h.id] = "ram"
        try parseRAMStart(&c, at: at)
        return
      case RecordType.sectionFull:
        let h = try readSectionHeader(&c, at: at)
        throw FormatError(
          .unsupported, "section \(h.quotedName)", at: at, "a device section before ram; mramfs cannot skip it")
      case RecordType.eof:
        throw FormatError(.badValue, "stream", at: at, "EOF record before any ram section")
      default:
        throw FormatError(
          .badValue, "stream", at: at, "record type \(hex(type)), expected a section or command")
      }
    }
  }

  struct SectionHeader {
    var id: UInt32
    var name: String
    var instance: UInt32
    var version: UInt32
    /// The name for messages: quoted, with control bytes escaped, so a message stays one line.
    var quotedName: String { quoted(Array(name.utf8)) }
  }

  func readSectionHeader(_ c: inout StreamCursor, at: UInt64) throws(FormatError) -> SectionHeader {
    let s = "section header"
    let id = try c.readUInt32BE(s)
    let len = try c.readUInt8(s)
    let nameBytes = try c.readBytes(Int(len), s)
    guard len > 0, let name = String(validating: nameBytes, as: UTF8.self) else {
      throw FormatError(.badValue, s, at: at + 5, "section name \(quoted(nameBytes)) is empty or not UTF-8")
    }
    let instance = try c.readUInt32BE(s)
    let version = try c.readUInt32BE(s)
    return SectionHeader(id: id, name: name, instance: instance, version: version)
  }

  mutating func skipCommand(_ c: inout StreamCursor, at: UInt64) throws(FormatError) {
    let cmd = try c.readUInt16BE("command record")
    let len = try c.readUInt16BE("command record")
    if cmd == 7 {
      throw FormatError(
        .unsupported, "command record", at: at,
        "PACKAGED (postcopy) command; a nested stream is not followed")
    }
    try c.skip(UInt64(len), "command record")
    records.append(StreamRecord(kind: .command, offset: at, sectionID: nil, name: "\(cmd)"))
  }

  func expectFooter(_ c: inout StreamCursor, id: UInt32, _ s: String) throws(FormatError) {
    let at = c.offset
    let b = try c.readUInt8(s)
    guard b == RecordType.footer else {
      throw FormatError(.badValue, s, at: at, "byte \(hex(b)), expected a section footer (0x7e)")
    }
    let fid = try c.readUInt32BE(s)
    guard fid == id else {
      throw FormatError(.badValue, s, at: at + 1, "footer for section id \(fid), expected \(id)")
    }
  }


  // MARK: - The rest of the stream

  /// Walks the records after the ram START up to EOF, to check completeness and to locate device sections.
  mutating func walkRest(_ c: inout StreamCursor) throws(FormatError) {
    var deviceCursor = 0
    var deviceWalkOK = true
    while true {
      let at = c.offset
      if c.atEnd {
        isComplete = false
        if !options.force {
          throw FormatError(
            .incomplete, "stream", at: at,
            ramEnded
              ? "the file ends before the EOF record (an interrupted save?); use --force to read what is there"
              : "the file ends before the ram END section (an interrupted or still-running save?); use --force to read what is there")
        }
        return
      }
      let type = try c.readUInt8("record type")
      switch type {
      case RecordType.sectionPart, RecordType.sectionEnd:
        let id = try c.readUInt32BE("section record")
        let isEnd = type == RecordType.sectionEnd
        records.append(
          StreamRecord(
            kind: isEnd ? .sectionEnd : .sectionPart, offset: at, sectionID: id, name: sectionNames[id] ?? "?"))
        guard id == ramSectionID else {
          guard let other = sectionNames[id] else {
            throw FormatError(.badValue, "section record", at: at + 1, "section id \(id) was never started")
          }
          return stopWalk(at: at, "section \(quoted(Array(other.utf8))) has a private format mramfs does not walk")
        }
        try skipRAMBody(&c)
        try expectFooter(&c, id: id, "ram section footer")
        if isEnd { ramEnded = true }
      case RecordType.command:
        try skipCommand(&c, at: at)
      case RecordType.sectionStart:
        let h = try readSectionHeader(&c, at: at)
        sectionNames[h.id] = h.name
        records.append(StreamRecord(kind: .sectionStart, offset: at, sectionID: h.id, name: h.name))
        return stopWalk(at: at, "iterative section \(h.quotedName) has a private format mramfs does not walk")
      case RecordType.sectionFull:
        let h = try readSectionHeader(&c, at: at)
        sectionNames[h.id] = h.name
        records.append(StreamRecord(kind: .sectionFull, offset: at, sectionID: h.id, name: h.name))
        guard deviceWalkOK, let desc = vmDescription else {
          return stopWalk(
            at: at, vmDescription == nil ? "the file has no VM description" : "device sections could not be walked")
        }
        guard let index = desc.devices[deviceCursor...].firstIndex(where: {
          $0.name == h.name && $0.instanceID == h.instance
        }) else {
          deviceWalkOK = false
          return stopWalk(at: at, "section \(h.quotedName) \(h.instance) is not in the VM description")
        }
        let body = c.offset
        let size = desc.devices[index].bodySize
        guard let end = body.addingReportingOverflow(size).partialValue as UInt64?, size < file.size,
          end + 5 <= file.size
        else {
          return stopWalk(at: at, "section \(h.quotedName) would end past the end of the file")
        }
        c.seek(to: end)
        do {
          try expectFooter(&c, id: h.id, "footer of section \(h.quotedName)")
        } catch {
          return stopWalk(
            at: at, "section \(h.quotedName) does not end where its VM description says (\(error.problem))")
        }
        guard devices.count < Limits.deviceSectionCount else {
          return stopWalk(at: at, "more than \(Limits.deviceSectionCount) device sections")
        }
        devices.append(
          DeviceSection(
            name: h.name, instanceID: h.instance, version: h.version, offset: at, size: c.offset - at,
            bodyOffset: body, descriptionIndex: index))
        deviceCursor = index + 1
      case RecordType.eof:
        records.append(StreamRecord(kind: .eof, offset: at, sectionID: nil, name: "EOF"))
        try finishAtEOF(at: at)
        return
      default:
        throw FormatError(
          .badValue, "stream", at: at, "record type \(hex(type)), expected a section, command or EOF")
      }
    }
  }

  /// The ram PART/END body: EOS only for positional formats (none for RFC v1), page records for classic.
  mutating func skipRAMBody(_ c: inout StreamCursor) throws(FormatError) {
    switch format {
    case .classic:
      try skipClassicRecords(&c)
    case .fixedRAMRFC1:
      // RFC v1 sends empty PART/END bodies; tolerate an EOS too.
      if try c.peekUInt8("ram section") != RecordType.footer {
        _ = try skipPositionalBody(&c)
      }
    case .mappedRAM, .fixedRAM:
      _ = try skipPositionalBody(&c)
    }
  }

  mutating func skipPositionalBody(_ c: inout StreamCursor) throws(FormatError) -> Bool {
    while true {
      let at = c.offset
      let w = try c.readUInt64BE("ram section")
      if w == RAMFlag.eos { return true }
      if w & (targetPageSize - 1) == RAMFlag.multifdFlush && w & ~(targetPageSize - 1) == 0 { continue }
      throw FormatError(
        .badValue, "ram section", at: at,
        "word \(hex(w)), expected EOS (0x10); \(format.rawValue) streams carry no page records in the stream")
    }
  }

  /// Device sections could not be walked further: decide completeness from the tail.
  mutating func stopWalk(at: UInt64, _ reason: String) {
    if devicesUnavailableReason == nil && !options.skipDevices {
      devicesUnavailableReason = reason
    }
    if let vmdAt = vmDescriptionOffset {
      // A well-formed VM description right after an EOF byte marks a finished save.
      isComplete = ramEnded && vmdAt > 0 && ((try? file.bytes(at: vmdAt - 1, count: 1, "EOF"))?.first == 0)
    } else {
      let last = try? file.bytes(at: file.size - 1, count: 1, "EOF")
      isComplete = ramEnded && last?.first == 0
      if !isComplete {
        devicesUnavailableReason = devicesUnavailableReason ?? reason
      }
    }
    if !isComplete && !options.force {
      incompleteError = FormatError(
        .incomplete, "stream", at: at,
        "cannot find the end of the stream (no ram END or no EOF record after \(reason)); use --force to read what is there")
    }
  }

  var incompleteError: FormatError? = nil

  mutating func finishAtEOF(at: UInt64) throws(FormatError) {
    guard ramEnded else {
      isComplete = false
      if !options.force {
        throw FormatError(
          .incomplete, "stream", at: at, "EOF record before the ram END section; use --force to read what is there")
      }
      return
    }
    isComplete = true
    let after = at + 1
    if after == file.size {
      if vmDescription == nil && !options.skipDevices {
        devicesUnavailableReason = devicesUnavailableReason ?? "the file has no VM description (suppress-vmdesc)"
      }
      return
    }
    if let vmdAt = vmDescriptionOffset, vmdAt == after {
      records.append(StreamRecord(kind: .vmDescription, offset: vmdAt, sectionID: nil, name: "vmdesc"))
      return
    }
    if vmDescriptionOffset == nil, !options.skipDevices {
      let b = try file.bytes(at: after, count: 1, "VM description record")
      if b[0] == RecordType.vmDescription {
        warnings.append("the VM description after EOF is damaged; device state is not available")
        devicesUnavailableReason = "the VM description after EOF is damaged"
        return
      }
    }
    warnings.append("\(file.size - after) bytes after the EOF record that are not a VM description")
  }

}

#if canImport(Glibc)
  import Glibc
#endif
import Dispatch

/// Writes migration streams: mapped-ram (QEMU 9.0+), RFC v1 fixed-ram, or classic.
///
/// The stream is the one QEMU's loader reads (FORMAT.md §1-§3): the header, the configuration
/// record, the `ram` section's START with MEM_SIZE and the block list (each block followed by
/// its header; its bitmap and pages regions follow at fixed, aligned offsets), then the ram END,
/// then the plan's tail (device sections and the VM description, or just EOF). Classic output
/// puts every page in one PART section as PAGE records instead.
public enum StreamWriter {
  static let pageSize: UInt64 = 4096

  /// Writes `plan` to `output`, calling `progress(bytesDone, bytesTotal)` now and then.
  public static func write(
    _ plan: StreamPlan, to output: OutputFile, progress: (@Sendable (UInt64, UInt64) -> Void)? = nil
  ) throws(FormatError) -> WriteSummary {
    try plan.validate()
    let start = DispatchTime.now().uptimeNanoseconds
    let ramBytes = plan.blocks.reduce(UInt64(0)) { $0 + $1.length }
    let counter = ProgressCounter(total: ramBytes, report: progress)
    let caps = capabilities(plan)
    var out = Emitter(file: output)
    var head = ByteWriter()
    head.append(plan.prefix)
    appendHeaderAndConfiguration(&head, plan, capabilities: caps)
    appendSectionStart(&head, id: plan.ramSectionID, name: "ram", instance: 0, version: 4)
    head.appendUInt64BE(ramBytes | RAMFlag.memSize)
    let populated: UInt64
    if plan.format == .classic {
      populated = try writeClassicRAM(plan, head: &head, out: &out, counter: counter, capabilities: caps)
    } else {
      populated = try writePositionalRAM(plan, head: &head, out: &out, counter: counter, capabilities: caps)
    }
    var tail = ByteWriter()
    tail.append(plan.middle)
    tail.appendUInt8(RecordType.sectionEnd)
    tail.appendUInt32BE(plan.ramSectionID)
    if plan.format != .fixedRAMRFC1 { tail.appendUInt64BE(RAMFlag.eos) }
    appendFooter(&tail, id: plan.ramSectionID)
    if plan.tail.isEmpty { tail.appendUInt8(RecordType.eof) } else { tail.append(plan.tail) }
    try out.emit(&tail)
    try output.commit(size: out.offset)
    var st = stat()
    _ = stat(output.path, &st)
    counter.finish()
    return WriteSummary(
      path: output.path, format: plan.format.rawValue, bytesWritten: out.written, fileSize: out.offset,
      allocatedBytes: UInt64(st.st_blocks) * 512, ramBytes: ramBytes, populatedPages: populated,
      seconds: Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
  }

  /// The configuration's capabilities: the plan's, with `mapped-ram` or `fixed-ram` as the format needs.
  static func capabilities(_ plan: StreamPlan) -> [String] {
    var caps = plan.capabilities.filter { $0 != "mapped-ram" && $0 != "fixed-ram" }
    switch plan.format {
    case .mappedRAM: caps.append("mapped-ram")
    case .fixedRAM, .fixedRAMRFC1: caps.append("fixed-ram")
    case .classic: break
    }
    return caps
  }

  /// The stream header and the configuration record with its subsections (FORMAT.md §1.2-§1.3).
  static func appendHeaderAndConfiguration(_ w: inout ByteWriter, _ plan: StreamPlan, capabilities caps: [String]) {
    w.appendUInt32BE(streamMagic)
    w.appendUInt32BE(streamVersion)
    w.appendUInt8(RecordType.configuration)
    w.appendUInt32BE(UInt32(plan.machineType.utf8.count))
    w.append(plan.machineType.utf8)
    if let bits = plan.targetPageBits {
      appendSubsection(&w, "configuration/target-page-bits")
      w.appendUInt32BE(bits)
    }
    if !caps.isEmpty {
      appendSubsection(&w, "configuration/capabilities")
      w.appendUInt32BE(UInt32(caps.count))
      for c in caps { w.appendCountedName(Array(c.utf8)) }
    }
    if let uuid = plan.uuid {
      appendSubsection(&w, "configuration/uuid")
      w.append(uuid)
    }
  }

  /// A subsection marker, its name and version 1.
  static func appendSubsection(_ w: inout ByteWriter, _ name: String) {
    w.appendUInt8(RecordType.subsection)
    w.appendCountedName(Array(name.utf8))
    w.appendUInt32BE(1)
  }

  /// A SECTION_START record's header.
  static func appendSectionStart(_ w: inout ByteWriter, id: UInt32, name: String, instance: UInt32, version: UInt32) {
    w.appendUInt8(RecordType.sectionStart)
    w.appendUInt32BE(id)
    w.appendCountedName(Array(name.utf8))
    w.appendUInt32BE(instance)
    w.appendUInt32BE(version)
  }

  /// A section footer.
  static func appendFooter(_ w: inout ByteWriter, id: UInt32) {
    w.appendUInt8(RecordType.footer)
    w.appendUInt32BE(id)
  }

  /// A block list entry: the name, the used length and, under x-ignore-shared, the MR address.
  static func appendBlockEntry(_ w: inout ByteWriter, _ b: BlockPlan, capabilities caps: [String]) {
    w.appendCountedName(b.name.bytes)
    w.appendUInt64BE(b.length)
    if caps.contains("x-ignore-shared") { w.appendUInt64BE(0) }
  }

  /// Mapped-ram and fixed-ram: each block's entry and header, then its pages at their fixed
  /// offsets and its bitmap; returns the pages written.
  static func writePositionalRAM(
    _ plan: StreamPlan, head: inout ByteWriter, out: inout Emitter, counter: ProgressCounter, capabilities caps: [String]
  ) throws(FormatError) -> UInt64 {
    var populated: UInt64 = 0
    for b in plan.blocks {
      let pages = b.length / pageSize
      appendBlockEntry(&head, b, capabilities: caps)
      let headerOffset = out.offset + UInt64(head.count)
      let bitmapSize = (pages + 63) / 64 * 8
      let bitmapOffset = headerOffset + (plan.format == .fixedRAMRFC1 ? 12 : RawMappedRAMHeader.size)
      let pagesOffset = (bitmapOffset + bitmapSize + plan.alignment - 1) / plan.alignment * plan.alignment
      if plan.format == .fixedRAMRFC1 {
        head.appendUInt32BE(UInt32(bitmapSize))
        head.appendUInt64BE(pagesOffset)
      } else {
        head.appendUInt32BE(1)
        head.appendUInt64BE(pageSize)
        head.appendUInt64BE(bitmapOffset)
        head.appendUInt64BE(pagesOffset)
      }
      try out.emit(&head)
      let copied = try PageCopier.copy(b, pagesOffset: pagesOffset, output: out.file, threads: plan.threads, counter: counter)
      populated += copied.pages
      out.written += copied.bytes
      try out.file.write(copied.bitmap, at: bitmapOffset)
      out.written += UInt64(copied.bitmap.count)
      out.offset = pagesOffset + b.length
    }
    head.appendUInt64BE(RAMFlag.eos)
    appendFooter(&head, id: plan.ramSectionID)
    try out.emit(&head)
    return populated
  }

  /// Classic: the block list, then one PART section with a PAGE record per non-zero page (sent
  /// again per dirty pass); returns the pages written once.
  static func writeClassicRAM(
    _ plan: StreamPlan, head: inout ByteWriter, out: inout Emitter, counter: ProgressCounter, capabilities caps: [String]
  ) throws(FormatError) -> UInt64 {
    for b in plan.blocks { appendBlockEntry(&head, b, capabilities: caps) }
    head.appendUInt64BE(RAMFlag.eos)
    appendFooter(&head, id: plan.ramSectionID)
    head.appendUInt8(RecordType.sectionPart)
    head.appendUInt32BE(plan.ramSectionID)
    try out.emit(&head)
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(pageSize), alignment: 4096)
    defer { buffer.deallocate() }
    var populated: UInt64 = 0
    for b in plan.blocks {
      var named = false
      let pages = b.length / pageSize
      var p = b.source.nextCandidate(from: 0) ?? pages
      while p < pages {
        if try b.source.page(p, into: buffer), !isZero(UnsafeRawBufferPointer(buffer)) {
          populated += 1
          for _ in 0..<max(1, b.classicRepeats(p)) {
            var record = ByteWriter()
            record.appendUInt64BE(p * pageSize | RAMFlag.page | (named ? RAMFlag.continue : 0))
            if !named { record.appendCountedName(b.name.bytes) }
            named = true
            try out.emit(&record)
            try out.emit(UnsafeRawBufferPointer(buffer))
          }
        }
        counter.add(pageSize)
        p = b.source.nextCandidate(from: p + 1) ?? pages
      }
    }
    var end = ByteWriter()
    end.appendUInt64BE(RAMFlag.eos)
    appendFooter(&end, id: plan.ramSectionID)
    try out.emit(&end)
    return populated
  }

  /// Whether a page is all zeros.
  @inlinable
  public static func isZero(_ page: UnsafeRawBufferPointer) -> Bool {
    let words = page.count / 8
    var acc: UInt64 = 0
    for i in 0..<words {
      acc |= page.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)
      if i & 63 == 63 && acc != 0 { return false }
    }
    for i in words * 8..<page.count { acc |= UInt64(page[i]) }
    return acc == 0
  }
}

/// Writes sequential parts of a stream and keeps count of where the next one goes.
struct Emitter {
  let file: OutputFile
  /// Where the next byte goes.
  var offset: UInt64 = 0
  /// Bytes written so far.
  var written: UInt64 = 0

  /// Writes `w`'s bytes at ``offset``, advances, and empties `w`.
  mutating func emit(_ w: inout ByteWriter) throws(FormatError) {
    try file.write(w.bytes, at: offset)
    offset += UInt64(w.count)
    written += UInt64(w.count)
    w = ByteWriter()
  }

  /// Writes raw bytes at ``offset`` and advances.
  mutating func emit(_ raw: UnsafeRawBufferPointer) throws(FormatError) {
    try file.write(raw, at: offset)
    offset += UInt64(raw.count)
    written += UInt64(raw.count)
  }
}

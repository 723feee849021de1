#if canImport(Glibc)
  import Glibc
#endif
import MigrationFormat

// Reading guest-physical memory through a ``PhysicalLayout``: what a mount's `physmem` file
// serves, and what page walks and the VMCOREINFO search read.

extension MigrationFile {
  /// Reads the guest-physical bytes from `address` on into `buffer`, as the
  /// `physmem` file serves them: main RAM through ``read(block:at:into:)`` (so
  /// masked by the bitmap), zeros where there is no RAM. Reads stop at the
  /// layout's size, so the result may be short; returns the number of bytes written.
  ///
  /// It allocates nothing and takes no lock.
  public func read(physical layout: PhysicalLayout, at address: UInt64, into buffer: UnsafeMutableRawBufferPointer)
    throws(FormatError) -> Int
  {
    guard address < layout.size, buffer.count > 0, let base = buffer.baseAddress else { return 0 }
    let count = Int(min(UInt64(buffer.count), layout.size - address))
    let end = address + UInt64(count)
    var pos = address
    var i = layout.firstRange(endingAfter: pos)
    while pos < end {
      let into = base + Int(pos - address)
      if i < layout.ranges.count, layout.ranges[i].gpa <= pos {
        let r = layout.ranges[i]
        let want = Int(min(end, r.end) - pos)
        let got = try read(block: r.block, at: r.blockOffset + (pos - r.gpa), into: UnsafeMutableRawBufferPointer(start: into, count: want))
        if got < want { memset(into + got, 0, want - got) }
        pos += UInt64(want)
        i += 1
      } else {
        let stop = i < layout.ranges.count ? min(end, layout.ranges[i].gpa) : end
        memset(into, 0, Int(stop - pos))
        pos = stop
      }
    }
    return count
  }

  /// The first guest-physical address at or after `address` that holds data, or nil past the last data.
  ///
  /// Costs O(bitmap words scanned) per range of the layout, never O(pages).
  public func nextData(physical layout: PhysicalLayout, from address: UInt64) -> UInt64? {
    guard address < layout.size else { return nil }
    var i = layout.firstRange(endingAfter: address)
    while i < layout.ranges.count {
      let r = layout.ranges[i]
      let from = max(address, r.gpa)
      if let d = nextData(block: r.block, from: r.blockOffset + (from - r.gpa)), d < r.blockOffset + r.length {
        return r.gpa + (d - r.blockOffset)
      }
      i += 1
    }
    return nil
  }

  /// The first guest-physical address at or after `address` that is a hole; like `SEEK_HOLE`, the
  /// end of the view counts as one. Returns nil when `address` is past the end.
  ///
  /// Costs O(bitmap words scanned) per range of the layout, never O(pages).
  public func nextHole(physical layout: PhysicalLayout, from address: UInt64) -> UInt64? {
    guard address < layout.size else { return nil }
    var pos = address
    var i = layout.firstRange(endingAfter: address)
    while i < layout.ranges.count {
      let r = layout.ranges[i]
      if pos < r.gpa { return pos }
      let blockEnd = r.blockOffset + r.length
      let h = nextHole(block: r.block, from: r.blockOffset + (pos - r.gpa)) ?? blockEnd
      if h < blockEnd { return r.gpa + (h - r.blockOffset) }
      pos = r.end
      i += 1
    }
    return pos
  }
}

extension MigrationFile {
  /// The little-endian u64 at guest-physical `gpa`, as the `physmem` file serves it (zeros outside RAM
  /// and in pages the file does not hold).
  public func readUInt64LE(physical layout: PhysicalLayout, at gpa: UInt64) throws(FormatError) -> UInt64 {
    var value: UInt64 = 0
    var failure: FormatError? = nil
    withUnsafeMutableBytes(of: &value) { raw in
      do throws(FormatError) {
        let n = try read(physical: layout, at: gpa, into: raw)
        if n < 8 { memset(raw.baseAddress! + n, 0, 8 - n) }
      } catch { failure = error }
    }
    if let failure { throw failure }
    return UInt64(littleEndian: value)
  }
}

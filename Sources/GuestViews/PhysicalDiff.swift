import MigrationFormat

extension SaveDiff {
  /// The changed pages as guest-physical address ranges: offsets in a mount's `physmem`
  /// (main RAM, the BIOS, VGA RAM, as ``PhysicalLayout`` places them), in address order,
  /// adjacent ranges merged.
  ///
  /// Only when both files lay out guest-physical memory the same way (the same blocks, at the
  /// same addresses, in the same pieces); otherwise ``PhysicalLayout/Unavailable`` says why.
  /// `lowmem` overrides the machine type's split for both, as `mount -o lowmem=` does.
  public func physicalRanges(lowmem: UInt64? = nil) -> Result<[Range<UInt64>], PhysicalLayout.Unavailable> {
    let layoutA: PhysicalLayout
    let layoutB: PhysicalLayout
    switch (PhysicalLayout.resolve(a, lowmem: lowmem), PhysicalLayout.resolve(b, lowmem: lowmem)) {
    case (.success(let la), .success(let lb)): (layoutA, layoutB) = (la, lb)
    case (.failure(let why), _): return .failure(PhysicalLayout.Unavailable("\(a.path): \(why.reason)"))
    case (_, .failure(let why)): return .failure(PhysicalLayout.Unavailable("\(b.path): \(why.reason)"))
    }
    func pieces(_ layout: PhysicalLayout, _ file: MigrationFile) -> [String] {
      layout.ranges.map {
        "\(file.blocks[$0.block].name) [\(hex($0.blockOffset)), \(hex($0.blockOffset + $0.length))) at \(hex($0.gpa))"
      }
    }
    let piecesA = pieces(layoutA, a)
    let piecesB = pieces(layoutB, b)
    guard piecesA == piecesB else {
      return .failure(
        PhysicalLayout.Unavailable(
          "the two files lay out guest-physical memory differently: \(piecesA.joined(separator: "; ")) in \(a.path), "
            + "\(piecesB.joined(separator: "; ")) in \(b.path)"))
    }
    var changedInB: [Int: PageBitmap] = [:]
    for d in blocks {
      if let ib = d.indexInB, let c = d.changed { changedInB[ib] = c }
    }
    var out: [Range<UInt64>] = []
    for r in layoutB.ranges {
      guard let changed = changedInB[r.block] else { continue }
      let ps = b.blocks[r.block].pageSize
      let last = (r.blockOffset + r.length) / ps
      var page = r.blockOffset / ps
      while let first = changed.nextSet(from: page, limit: last) {
        let end = changed.nextClear(from: first, limit: last) ?? last
        let gpa = r.gpa + first * ps - r.blockOffset
        let range = gpa..<(gpa + (end - first) * ps)
        if let previous = out.last, previous.upperBound == range.lowerBound {
          out[out.count - 1] = previous.lowerBound..<range.upperBound
        } else {
          out.append(range)
        }
        page = end
      }
    }
    return .success(out)
  }
}

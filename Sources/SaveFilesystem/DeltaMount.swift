import MigrationFormat

/// A delta mount (`mramfs mount FILE DIR -o base=BASE`): every block file serves FILE's bytes
/// in the pages that changed since BASE and is a hole everywhere else, so `grep`, `strings`,
/// Volatility and `cp --sparse` see only what changed; `physmem` and `vmcore` follow, since
/// they read through the same blocks.
///
/// The comparison (``SaveDiff``) runs once, before mounting; the view it gives
/// (``SaveDiff/delta()``) has the same read paths as the file itself, with other bitmaps. A
/// page that changed to zeros is data for `SEEK_DATA` and `st_blocks` and reads as zeros.
public enum DeltaMount {
  /// At most this many mismatched blocks are named in a refusal; the rest are counted.
  static let namedMismatches = 4

  /// The view of `image` that serves what changed since the file at `basePath`, and what
  /// `info.json` says about the base.
  ///
  /// The base is opened with the request's options, except `--offset` (which is the image's);
  /// a libvirt header in front of it is found by itself. A base whose blocks do not all match
  /// the image's (names, sizes) is refused with the difference named, unless
  /// ``MountRequest/baseMismatchOK``: then only the matching blocks are mounted.
  public static func view(of image: MigrationFile, base basePath: String, _ request: MountRequest) throws(MountFailure)
    -> (MigrationFile, InfoDocument.Base)
  {
    var options = request.openOptions
    options.streamOffset = nil
    if options.noFollow, Mounter.isSymbolicLink(basePath) {
      throw MountFailure(
        "base \(basePath) is a symbolic link, and nofollow refuses to follow it; give the link's target instead")
    }
    let base: MigrationFile
    do {
      base = try MigrationFile(path: basePath, options: options)
    } catch {
      throw MountFailure("base \(basePath): \(error)")
    }
    guard base.format.isPositional else {
      throw MountFailure(
        "base \(basePath) is a classic (sequential) stream; its pages are not at fixed offsets. "
          + "Convert it first: mramfs convert \(basePath) OUT.mapped, then mount with -o base=OUT.mapped")
    }
    let diff: SaveDiff
    do {
      diff = try SaveDiff(base, image)
    } catch {
      throw MountFailure("comparing \(request.image) with base \(basePath): \(error)")
    }
    let mismatched = diff.mismatchedBlocks
    if !mismatched.isEmpty && !request.baseMismatchOK {
      var named = mismatched.prefix(namedMismatches).map { describe($0, base: basePath, image: request.image) }
      if mismatched.count > namedMismatches { named.append("and \(mismatched.count - namedMismatches) more") }
      throw MountFailure(
        "base \(basePath) does not match \(request.image): \(named.joined(separator: "; ")); "
          + "-o base-mismatch=ok mounts only the blocks that match")
    }
    return (diff.delta(), InfoDocument.Base(diff))
  }

  /// How one block fails to match, for the refusal.
  static func describe(_ block: SaveDiff.Block, base: String, image: String) -> String {
    switch block.status {
    case .onlyInA:
      return "block \(quoted(block.name.bytes)) is only in the base"
    case .onlyInB:
      return "block \(quoted(block.name.bytes)) is only in \(image)"
    default:
      guard block.pageSizeInA == block.pageSizeInB else {
        return "block \(quoted(block.name.bytes)) has \(block.pageSizeInA ?? 0)-byte pages in the base, "
          + "\(block.pageSizeInB ?? 0)-byte pages in \(image)"
      }
      return "block \(quoted(block.name.bytes)) is \(hex(block.lengthInA ?? 0)) bytes in the base, "
        + "\(hex(block.lengthInB ?? 0)) in \(image)"
    }
  }
}

// The pairs of real QEMU saves that scripts/fixtures/pairs.py makes for `mramfs diff` and
// the delta mount: entries of the manifest's "extra_scenarios" whose kind is "save-pair".

import Foundation

/// Two saves of one guest, each with its pmemsave: `baseFile` first, then `file`.
public struct SavePair: Decodable, Sendable {
  /// One change the generator made the guest make between the saves.
  public struct Change: Decodable, Sendable {
    public var gpa: UInt64
    public var length: UInt64
    public var what: String
    /// The bytes the guest wrote there, when they are text.
    public var bytes: String?
  }

  public var name: String
  /// The second save.
  public var file: String
  /// The first save, the base.
  public var baseFile: String
  /// pmemsave of main RAM at the second save (pc.ram offset = guest-physical address).
  public var pcram: String
  /// pmemsave of main RAM at the first save.
  public var basePcram: String
  public var ramBytes: UInt64
  public var lowmem: UInt64
  /// Guest-physical ranges where pmemsave and the RAM block legitimately differ (the VGA window).
  public var compareExclude: [[UInt64]]
  /// `[start, end)` pc.ram offsets where the two pmemsaves differ, outside `compareExclude`,
  /// found by the generator comparing them page by page.
  public var pcramDiffers: [[UInt64]]
  /// Whether the generator found the two pmemsaves equal.
  public var identicalMemory: Bool
  public var expectedChanges: [Change]
  /// For a re-save, whether the two files' pc.ram bitmaps are equal (they need not be).
  public var bitmapsEqual: Bool?

  enum CodingKeys: String, CodingKey {
    case name, file, lowmem
    case baseFile = "base_file"
    case pcram
    case basePcram = "base_pcram"
    case ramBytes = "ram_bytes"
    case compareExclude = "compare_exclude"
    case pcramDiffers = "pcram_differs"
    case identicalMemory = "identical_memory"
    case expectedChanges = "expected_changes"
    case bitmapsEqual = "bitmaps_equal"
  }

  /// `compareExclude` as pc.ram offset ranges (all below lowmem, where offset = address).
  public var excluded: [Range<UInt64>] {
    compareExclude.compactMap { $0.count == 2 && $0[1] <= lowmem ? $0[0]..<$0[1] : nil }
  }
}

/// The manifest's "extra_scenarios", keeping only the save pairs.
private struct SavePairManifest: Decodable {
  struct Entry: Decodable {
    var pair: SavePair?
    init(from decoder: any Decoder) throws {
      let kind = try? decoder.container(keyedBy: Kind.self).decode(String.self, forKey: .kind)
      pair = kind == "save-pair" ? try SavePair(from: decoder) : nil
    }
    enum Kind: String, CodingKey { case kind }
  }
  var extraScenarios: [Entry]?
  enum CodingKeys: String, CodingKey { case extraScenarios = "extra_scenarios" }
}

extension Fixtures {
  /// The save pair `name` (pc-256-twice, pc-256-resaved), or a failure saying the manifest lacks it.
  public func savePair(_ name: String) throws -> SavePair {
    let url = URL(fileURLWithPath: directory).appendingPathComponent("manifest.json")
    let manifest = try JSONDecoder().decode(SavePairManifest.self, from: Data(contentsOf: url))
    let pairs = (manifest.extraScenarios ?? []).compactMap(\.pair)
    guard let pair = pairs.first(where: { $0.name == name }) else {
      throw FixtureError(
        "\(url.path) has no save pair \(name) (it has \(pairs.map(\.name))); remake the fixtures with the "
          + "current scripts/make-fixtures.py")
    }
    return pair
  }
}

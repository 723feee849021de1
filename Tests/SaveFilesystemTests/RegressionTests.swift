import Foundation
import GuestViews
import MigrationFormat
import SaveFilesystem
import Testing

/// Inputs kept from fuzzing (scripts/fuzz.sh): the ones that crashed the library before a fix,
/// and small interesting ones from the corpus. Each must open, or fail with a one-line
/// ``FormatError``; reading what opened must not trap either.
///
/// Crashes, fixed:
/// - `pages-offset-past-off-t-max.stream`: a cut mapped-ram file (no configuration record) whose
///   pages_offset is near 2^64; opened with `--force`, a read trapped converting it to `off_t`.
/// - `config-subsection-name-newline.stream`: a configuration subsection name holding a newline
///   went raw into the error message, breaking the one-line rule (and letting a file write to the terminal).
///
/// Corpus inputs that reach deep paths: a forced open of a cut mapped-ram file recognised without
/// a configuration record, of cut fixed-ram and RFC v1 fixed-ram files (pages_offset 2^48), of a
/// libvirt-prefixed one; a classic stream whose EOF comes before the ram END; and a complete classic
/// stream with page records and three device sections to decode.
@Suite("Fuzz regressions")
struct RegressionTests {
  /// `Tests/SaveFilesystemTests/Regressions`, found from this file so no resource rules are needed.
  static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .appendingPathComponent("Regressions")

  /// The regression files' names, sorted; dot files are left out.
  static let names: [String] =
    ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? [])
    .filter { !$0.hasPrefix(".") }.sorted()

  @Test("the regression directory is there and not empty")
  func directoryIsNotEmpty() {
    #expect(Self.names.count >= 3, "no regression files found in \(Self.directory.path)")
  }

  @Test("each file opens, or fails with a one-line FormatError", arguments: names)
  func opensOrFails(_ name: String) throws {
    let path = Self.directory.appendingPathComponent(name).path
    #expect(FileManager.default.isReadableFile(atPath: path), "\(name) is missing")
    for force in [false, true] {
      var options = OpenOptions()
      options.force = force
      let file: MigrationFile
      do {
        file = try MigrationFile(path: path, options: options)
      } catch {
        // `MigrationFile.init` throws only FormatError; its message is one printable line.
        #expect(!error.description.utf8.contains { $0 < 0x20 }, "\(name): \(error)")
        #expect(error.description.contains("at offset 0x"), "\(name): \(error)")
        continue
      }
      for warning in file.warnings {
        #expect(!warning.utf8.contains { $0 < 0x20 }, "\(name): \(warning)")
      }
      try readEverything(file)
    }
  }

  /// The fuzzer's first trap: `--offset` near 2^64 overflowed the stream cursor instead of
  /// failing; an offset that leaves no room for the 8-byte header is now refused up front.
  @Test("a stream offset at or past the end of the file is refused", arguments: names.prefix(1))
  func streamOffsetPastEnd(_ name: String) throws {
    let path = Self.directory.appendingPathComponent(name).path
    let size = try #require(FileManager.default.attributesOfItem(atPath: path)[.size] as? UInt64)
    for offset in [max(size, 7) - 7, size, size + 1, UInt64.max - 3, UInt64.max] {
      var options = OpenOptions()
      options.force = true
      options.streamOffset = offset
      #expect(throws: FormatError.self, "offset \(offset)") { try MigrationFile(path: path, options: options) }
    }
  }

  /// Reads each block's first pages and hole boundaries, the info document and the classic page index.
  func readEverything(_ file: MigrationFile) throws {
    var buffer = [UInt8](repeating: 0, count: 16 << 10)
    for (i, block) in file.blocks.enumerated() {
      var offset: UInt64 = 0
      for _ in 0..<8 {
        guard let data = file.nextData(block: i, from: offset) else { break }
        let hole = try #require(file.nextHole(block: i, from: data))
        #expect(data < hole && hole <= block.length)
        buffer.withUnsafeMutableBytes { raw in
          _ = try? file.read(block: i, at: data, into: raw)
        }
        offset = hole
        if offset >= block.length { break }
      }
    }
    // The whole document, parsed back: one entry per block, the file's own format.
    let json = InfoDocument(file).json()
    let parsed = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any], "\(json.prefix(200))")
    #expect((parsed["blocks"] as? [Any])?.count == file.blocks.count)
    #expect(parsed["format"] as? String == file.format.rawValue)
    if file.format == .classic {
      _ = try? ClassicPageIndex(file: file)
    }
  }
}

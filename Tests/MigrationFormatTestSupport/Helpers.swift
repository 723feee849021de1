// Helpers the format, guest-view and filesystem tests share: temporary files, opening
// built fixtures, reading whole blocks, and the expected bytes of a fixture block.

import Foundation
import MigrationFormat

/// Writes `bytes` to a new temporary file and returns its path.
public func temporaryFile(_ bytes: [UInt8], name: String = "fixture.bin") throws -> String {
  let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mramfs-tests-\(UUID().uuidString)")
  try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
  let url = dir.appendingPathComponent(name)
  try Data(bytes).write(to: url)
  return url.path
}

/// Opens a built fixture as a migration file.
public func open(_ built: FixtureStream.Built, options: OpenOptions = OpenOptions()) throws -> MigrationFile {
  try MigrationFile(path: try temporaryFile(built.bytes), options: options)
}

/// Opens bytes, expecting a FormatError, and returns it.
public func openError(_ bytes: [UInt8], options: OpenOptions = OpenOptions()) throws -> FormatError? {
  let path = try temporaryFile(bytes)
  do {
    _ = try MigrationFile(path: path, options: options)
    return nil
  } catch {
    return error
  }
}

/// Reads a whole block through the library.
public func readAll(_ file: MigrationFile, _ index: Int) throws -> [UInt8] {
  let length = Int(file.blocks[index].length)
  var out = [UInt8](repeating: 0xEE, count: length)
  var failure: FormatError?
  out.withUnsafeMutableBytes { raw in
    do throws(FormatError) {
      let n = try file.read(block: index, at: 0, into: raw)
      precondition(n == length)
    } catch { failure = error }
  }
  if let failure { throw failure }
  return out
}

/// The bytes a fixture block should read as.
public func expected(_ b: FixtureBlock) -> [UInt8] {
  var out = [UInt8](repeating: 0, count: Int(b.length))
  for (p, content) in b.present where p < b.length / 4096 {
    let page = Array(content.prefix(4096))
    out.replaceSubrange(Int(p) * 4096..<Int(p) * 4096 + page.count, with: page)
  }
  return out
}

/// A block with `pages` pages, every `every`-th page present with its pattern.
public func patternBlock(_ name: String, pages: UInt64, every: UInt64 = 3) -> FixtureBlock {
  var b = FixtureBlock(name: name, length: pages * 4096)
  for p in stride(from: UInt64(0), to: pages, by: Int(every)) {
    b.present[p] = FixtureBlock.pattern(block: name, page: p)
  }
  return b
}

/// A typical small stream: pc.ram not first, names with slashes.
public func typicalStream() -> FixtureStream {
  FixtureStream(blocks: [
    patternBlock("0000:00:02.0/vga.vram", pages: 70, every: 5),
    patternBlock("pc.ram", pages: 65, every: 2),
    patternBlock("/rom@etc/acpi/tables", pages: 32, every: 1),
    patternBlock("pc.bios", pages: 64, every: 7),
  ])
}

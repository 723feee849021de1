import Foundation
@testable import MigrationFormat
import Testing

#if canImport(Glibc)
  import Glibc
#endif

@Suite("Writing through a temporary file")
struct OutputFileTests {
  func exists(_ path: String) -> Bool {
    var st = stat()
    return lstat(path, &st) == 0
  }

  func scratch() throws -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("mramfs-output-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
  }

  // These tests look at the cleanup's table rather than run it: the cleanup removes the
  // temporary file of every output in the process, and other tests write files at the same
  // time. WriterTests sends SIGINT to a real `mramfs synth` for the removal itself.

  @Test("a signal's cleanup covers the temporary file of every output being written, not just the last")
  func cleanupCoversEveryOutput() throws {
    let dir = try scratch()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let first = try OutputFile(path: "\(dir)/a", overwrite: false)
    let second = try OutputFile(path: "\(dir)/b", overwrite: false)
    #expect(exists(first.temporaryPath) && exists(second.temporaryPath))
    let armed = InterruptCleanup.armedPaths()
    #expect(armed.contains(first.temporaryPath), "the first output's temporary file is not in the cleanup")
    #expect(armed.contains(second.temporaryPath))
    withExtendedLifetime((first, second)) {}
  }

  @Test("a committed or abandoned output is no longer the signal cleanup's business")
  func slotsAreReleased() throws {
    let dir = try scratch()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    // More outputs, one after another, than the cleanup has slots: each gives its slot back.
    for i in 0..<20 {
      let out = try OutputFile(path: "\(dir)/f\(i)", overwrite: false)
      try out.write([1, 2, 3], at: 0)
      if i % 2 == 0 { try out.commit(size: 3) }
    }
    let late = try OutputFile(path: "\(dir)/late", overwrite: false)
    let armed = InterruptCleanup.armedPaths()
    #expect(armed.contains(late.temporaryPath), "no slot was free for the 21st output")
    // Committed and abandoned outputs left the cleanup's table; the committed files stay.
    #expect(!armed.contains { $0.hasPrefix("\(dir)/.f") })
    for i in stride(from: 0, to: 20, by: 2) { #expect(exists("\(dir)/f\(i)")) }
    for i in stride(from: 1, to: 20, by: 2) { #expect(!exists("\(dir)/f\(i)")) }
    withExtendedLifetime(late) {}
  }

  @Test("an output directly under / gets its temporary file in /, so the rename never crosses filesystems")
  func outputUnderRoot() throws {
    guard getuid() == 0 else {
      if ProcessInfo.processInfo.environment["CI"] == "true" { Issue.record("this test needs root under CI=true") }
      return
    }
    let name = "/mramfs-output-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    defer { unlink(name) }
    let out = try OutputFile(path: name, overwrite: false)
    #expect(out.temporaryPath.hasPrefix("/."), "temporary file \(out.temporaryPath) is not in /")
    #expect(exists(out.temporaryPath))
    try out.write(Array("hello".utf8), at: 0)
    try out.commit(size: 5)
    #expect(exists(name) && !exists(out.temporaryPath))
  }

  @Test("directories, devices and paths ending in / are refused, with or without --force")
  func refusedOutputs() throws {
    let dir = try scratch()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    for (path, force) in [(dir, true), ("\(dir)/", false), ("", false), ("/dev/null", true), ("/dev/null", false)] {
      #expect(throws: FormatError.self, "\(path) (force \(force))") { _ = try OutputFile(path: path, overwrite: force) }
    }
    #expect(try FileManager.default.contentsOfDirectory(atPath: dir).isEmpty, "no temporary file left behind")
  }
}

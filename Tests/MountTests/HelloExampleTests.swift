// Runs Examples/hello (`hello-fs`) through the real kernel and checks it with plain
// syscalls, errno values included, then stops it with SIGTERM and checks that it left
// no stale mount behind.

import Foundation
import Testing

#if canImport(Glibc)
  import Glibc
#endif

@Suite("hello-fs example, mounted")
struct HelloExampleTests {
  @Test("serves one read-only file and unmounts cleanly on SIGTERM")
  func servesHelloAndUnmountsOnSIGTERM() throws {
    try MountSupport.requireFUSE()
    let mounted = try MountedFileSystem(executable: "hello-fs") { [$0, "-f"] }
    defer { mounted.cleanup() }

    #expect(mounted.info.fileSystemType == "fuse.hello-fs")
    #expect(mounted.info.source == "hello")

    // readdir lists the file (and the dot entries the example adds).
    let names = try MountSupport.listDirectory(mounted.mountpoint)
    #expect(names.sorted() == [".", "..", "hello"])

    // open + read return the content.
    let content = try MountSupport.readFile(mounted.path("hello"))
    #expect(String(decoding: content, as: UTF8.self) == "Hello World!\n")

    // A missing name is ENOENT (a negative entry), for open and stat alike.
    #expect(MountSupport.openError(mounted.path("missing"), flags: O_RDONLY) == .ENOENT)
    var missing = stat()
    #expect(stat(mounted.path("missing"), &missing) == -1)
    #expect(MountSupport.currentErrno == .ENOENT)

    // Opening for writing is refused: EACCES from the handler (EROFS under -o ro).
    let writeError = MountSupport.openError(mounted.path("hello"), flags: O_WRONLY)
    #expect(
      writeError == .EACCES || writeError == .EROFS,
      "open(O_WRONLY) gave \(String(describing: writeError))")

    // stat: a regular file of 13 bytes, mode 0444.
    var attributes = stat()
    #expect(stat(mounted.path("hello"), &attributes) == 0)
    #expect(attributes.st_size == 13)
    #expect(attributes.st_mode & S_IFMT == S_IFREG)
    #expect(attributes.st_mode & 0o7777 == 0o444)

    // SIGTERM: the loop stops, the session unmounts, the process exits 0.
    mounted.process.send(SIGTERM)
    let exited = mounted.process.waitForExit(timeout: .seconds(10))
    #expect(exited, "hello-fs did not exit within 10 s of SIGTERM")
    if exited {
      #expect(mounted.process.exitedNormally)
      #expect(
        mounted.process.terminationStatus == 0,
        "hello-fs exited with \(mounted.process.terminationStatus); stderr:\n\(mounted.process.standardError)"
      )
    }
    #expect(
      MountSupport.mount(at: mounted.mountpoint) == nil, "stale mount left on \(mounted.mountpoint)"
    )
  }

  @Test("fails fast with its stderr when the mount point does not exist")
  func reportsEarlyExit() throws {
    try MountSupport.requireFUSE()
    let error = #expect(throws: MountTestError.self) {
      _ = try MountedFileSystem(executable: "hello-fs", timeout: .seconds(10)) { mountpoint in
        ["\(mountpoint)/does-not-exist"]
      }
    }
    #expect(error?.description.contains("hello-fs exited") == true)
  }
}

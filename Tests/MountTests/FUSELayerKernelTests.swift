// The FUSE layer's promises, through the real kernel: a mount is reported ready only when it
// answers, and a reply answered after its handler returned (from another thread) carries what
// the handler put in it, even while the same worker serves the next request.

import FUSE
import Foundation
import QEMUFixtures
import Synchronization
import SystemPackage
import Testing

#if canImport(Glibc)
  import Glibc
#endif

/// A tiny tree: the root holds two directories, `slow` and `fast`, each with a few names.
///
/// `readdir` of `slow` packs its entries in the handler, then answers from another thread
/// after `delay`; `fast` answers at once. `initialize` can be told to ask for a `max_read`
/// that the mount options do not have, which makes libfuse refuse INIT.
final class ReplyLaterFileSystem: FileSystem {
  static let slow = INode(2)
  static let fast = INode(3)
  static let names: [INode: [String]] = [slow: ["slow-a", "slow-b", "slow-c"], fast: ["fast-1", "fast-2"]]
  let breakInit: Bool
  let delay: Duration

  init(breakInit: Bool = false, delay: Duration = .milliseconds(400)) {
    self.breakInit = breakInit
    self.delay = delay
  }

  func initialize(connection: Connection) {
    if breakInit { connection.maxRead = 12345 }
  }

  func attributes(_ inode: INode) -> FileAttributes {
    let now = FileTime.now
    if inode == .root || Self.names[inode] != nil {
      return FileAttributes(
        inode: inode, mode: FileMode(type: .directory, permissions: FilePermissions(rawValue: 0o555)), linkCount: 2,
        uid: getuid(), gid: getgid(), accessTime: now, modificationTime: now, changeTime: now)
    }
    return FileAttributes(
      inode: inode, mode: FileMode(type: .regular, permissions: FilePermissions(rawValue: 0o444)), uid: getuid(),
      gid: getgid(), accessTime: now, modificationTime: now, changeTime: now)
  }

  func lookup(_ request: Request, parent: INode, name: String, reply: consuming ReplyEntry) {
    let dirs: [String: INode] = ["slow": Self.slow, "fast": Self.fast]
    guard parent == .root, let inode = dirs[name] else { return reply.error(.noSuchFileOrDirectory) }
    reply.entry(attributes(inode), attributeTimeout: .zero, entryTimeout: .zero)
  }

  func getattr(_ request: Request, inode: INode, handle: FUSE.FileHandle?, reply: consuming ReplyAttr) {
    reply.attributes(attributes(inode), timeout: .zero)
  }

  func opendir(_ request: Request, inode: INode, flags: OpenFlags, reply: consuming ReplyOpen) {
    reply.opened()
  }

  func readdir(_ request: Request, inode: INode, handle: FUSE.FileHandle, offset: Int64, reply: consuming ReplyDirectory) {
    var reply = reply
    if offset == 0 {
      _ = reply.add(".", inode: inode, type: .directory, nextOffset: 1)
      _ = reply.add("..", inode: .root, type: .directory, nextOffset: 2)
      if inode == .root {
        _ = reply.add("slow", inode: Self.slow, type: .directory, nextOffset: 3)
        _ = reply.add("fast", inode: Self.fast, type: .directory, nextOffset: 4)
      }
      for (i, name) in (Self.names[inode] ?? []).enumerated() {
        _ = reply.add(name, inode: INode(100 + UInt64(i)), type: .regular, nextOffset: Int64(3 + i))
      }
    }
    guard inode == Self.slow, offset == 0 else { return reply.send() }
    // Answer later, from another thread: the entries are already packed into the reply.
    let later = LaterReply(reply)
    let delay = self.delay
    Thread.detachNewThread {
      Thread.sleep(forTimeInterval: Double(delay.components.attoseconds) / 1e18 + Double(delay.components.seconds))
      later.send()
    }
  }
}

/// Hands a noncopyable reply to another thread once.
final class LaterReply: @unchecked Sendable {
  private var reply: ReplyDirectory?
  init(_ reply: consuming ReplyDirectory) { self.reply = consume reply }
  func send() {
    guard let r = reply.take() else { return }
    r.send()
  }
}

@Suite("The FUSE layer through the kernel", .serialized)
struct FUSELayerKernelTests {
  /// Names in `path`, sorted, without "." and "..".
  static func list(_ path: String) -> [String] {
    ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
  }

  @Test("whenReady runs once the mount answers on its own device, and never when INIT is refused")
  func readiness() throws {
    try MountSupport.requireFUSE()
    // INIT refused: the loop ends, and readiness is never reported.
    let broken = try MountSupport.makeMountpoint(prefix: "mramfs-fuse-broken")
    defer { rmdir(broken) }
    let refused = Atomic<Bool>(false)
    do {
      let session = try FUSESession(fileSystem: ReplyLaterFileSystem(breakInit: true), mountpoint: broken, options: ["ro"])
      try session.mount()
      _ = try? session.run(threads: 2) { _ in refused.store(true, ordering: .relaxed) }
      session.close()
    }
    // The probe may still be looking: give it time to (wrongly) report.
    Thread.sleep(forTimeInterval: 0.5)
    let reportedReady = refused.load(ordering: .relaxed)
    #expect(!reportedReady, "a mount whose INIT was refused was reported ready")
    #expect(MountSupport.mount(at: broken) == nil)

    // A healthy mount: reported once, with the device mountinfo lists for it.
    let healthy = try MountSupport.makeMountpoint(prefix: "mramfs-fuse-ready")
    defer { rmdir(healthy) }
    let seen = Mutex<[MountedDevice]>([])
    let listing = Mutex<[String]>([])
    let session = try FUSESession(fileSystem: ReplyLaterFileSystem(), mountpoint: healthy, options: ["ro"])
    try session.mount()
    let exit = try session.run(threads: 2) { device in
      seen.withLock { $0.append(device) }
      // Listed while the loop runs, then unmounted from here: the loop then returns.
      let names = FUSELayerKernelTests.list(device.mountpoint)
      listing.withLock { $0 = names }
      _ = try? CLI.run(MountSupport.findExecutable("fusermount3") ?? "/bin/fusermount3", ["-u", device.mountpoint])
    }
    session.close()
    #expect(exit == .unmounted)
    #expect(listing.withLock { $0 } == ["fast", "slow"], "the mount answered when it was reported ready")
    let devices = seen.withLock { $0 }
    #expect(devices.count == 1)
    #expect(devices.first?.mountpoint == healthy)
    #expect(devices.first.map { $0.device.contains(":") } == true)
  }

  @Test("a readdir answered after its handler returned keeps its own entries while the worker serves the next one")
  func replyAfterReturn() throws {
    try MountSupport.requireFUSE()
    let mountpoint = try MountSupport.makeMountpoint(prefix: "mramfs-fuse-later")
    defer { rmdir(mountpoint) }
    let session = try FUSESession(fileSystem: ReplyLaterFileSystem(), mountpoint: mountpoint, options: ["ro"])
    try session.mount()
    let slow = Mutex<[String]>([])
    let fast = Mutex<[String]>([])
    // One worker: `fast` is served while `slow`'s answer is still pending on another thread.
    _ = try session.runSingleThreaded { device in
      let group = DispatchGroup()
      group.enter()
      Thread.detachNewThread {
        slow.withLock { $0 = FUSELayerKernelTests.list("\(device.mountpoint)/slow") }
        group.leave()
      }
      Thread.sleep(forTimeInterval: 0.15)
      fast.withLock { $0 = FUSELayerKernelTests.list("\(device.mountpoint)/fast") }
      group.wait()
      _ = try? CLI.run(MountSupport.findExecutable("fusermount3") ?? "/bin/fusermount3", ["-u", device.mountpoint])
    }
    session.close()
    #expect(fast.withLock { $0 } == ["fast-1", "fast-2"])
    #expect(slow.withLock { $0 } == ["slow-a", "slow-b", "slow-c"], "the late reply carried another request's entries")
  }
}

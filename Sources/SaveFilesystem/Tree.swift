import FUSE
import GuestViews
import MigrationFormat

/// One node of a mount: a directory, a RAM block's file, or a generated file.
struct Node: Sendable {
  enum Kind: Sendable {
    /// A directory; its children sorted by name.
    case directory(children: [(name: String, inode: INode)])
    /// The file of RAM block `index`.
    case block(index: Int)
    /// A small file whose bytes are computed once at mount (info.json).
    case generated(bytes: [UInt8])
    /// The guest-physical view of main RAM (`physmem`).
    case physmem
    /// The ELF core file of the guest (`vmcore`).
    case vmcore
    /// The `info --json` document (info.json), computed with the kernel views at first use.
    case info
    /// The guest kernel's VMCOREINFO text (`vmcoreinfo`), hidden when there is none.
    case vmcoreinfo
  }

  var inode: INode
  var parent: INode
  var name: String
  var kind: Kind

  var isDirectory: Bool {
    if case .directory = kind { return true }
    return false
  }

  /// Whether the file serves guest RAM (a block or `physmem`), as opposed to a small generated file.
  var servesRAM: Bool {
    switch kind {
    case .block, .physmem, .vmcore: return true
    case .directory, .generated, .info, .vmcoreinfo: return false
    }
  }
}

/// The mount's whole namespace, built once at mount time in O(blocks).
///
/// Inode *n* is `nodes[n - 1]`; the root is inode 1. Nothing changes after
/// mount, so lookups need no lock.
struct Tree: Sendable {
  private(set) var nodes: [Node] = []
  /// `children[n - 1]` maps a directory's entry names to inodes.
  private var index: [[String: INode]] = []

  /// `views` are further top-level files (`physmem`), whose names ``BlockPaths`` reserves; `files` are
  /// generated files at relative paths under reserved top-level directories (`cpu/0/registers.json`).
  init(
    blockPaths: [[String]], generated: [(name: String, bytes: [UInt8])], views: [(name: String, kind: Node.Kind)] = [],
    files: [(path: [String], bytes: [UInt8])] = []
  ) {
    nodes.append(Node(inode: .root, parent: .root, name: "", kind: .directory(children: [])))
    index.append([:])
    var pending: [INode: [(String, INode)]] = [:]
    func add(_ node: Node) -> INode {
      nodes.append(node)
      index.append([:])
      return node.inode
    }
    func child(_ parent: INode, _ name: String, _ make: (INode) -> Node) -> INode {
      if let existing = index[Int(parent.rawValue) - 1][name] { return existing }
      let ino = INode(rawValue: UInt64(nodes.count + 1))
      let made = add(make(ino))
      index[Int(parent.rawValue) - 1][name] = made
      pending[parent, default: []].append((name, made))
      return made
    }
    for (i, comps) in blockPaths.enumerated() {
      var dir = INode.root
      for c in comps.dropLast() {
        dir = child(dir, c) { Node(inode: $0, parent: dir, name: c, kind: .directory(children: [])) }
      }
      let last = comps[comps.count - 1]
      _ = child(dir, last) { Node(inode: $0, parent: dir, name: last, kind: .block(index: i)) }
    }
    for g in generated {
      _ = child(.root, g.name) { Node(inode: $0, parent: .root, name: g.name, kind: .generated(bytes: g.bytes)) }
    }
    for v in views {
      _ = child(.root, v.name) { Node(inode: $0, parent: .root, name: v.name, kind: v.kind) }
    }
    for f in files where !f.path.isEmpty {
      var dir = INode.root
      for c in f.path.dropLast() {
        dir = child(dir, c) { Node(inode: $0, parent: dir, name: c, kind: .directory(children: [])) }
      }
      let last = f.path[f.path.count - 1]
      _ = child(dir, last) { Node(inode: $0, parent: dir, name: last, kind: .generated(bytes: f.bytes)) }
    }
    for (dir, kids) in pending {
      nodes[Int(dir.rawValue) - 1].kind = .directory(children: kids.sorted { $0.0 < $1.0 })
    }
  }

  /// The node of `inode`, if it exists.
  func node(_ inode: INode) -> Node? {
    let i = Int(truncatingIfNeeded: inode.rawValue) - 1
    return i >= 0 && i < nodes.count ? nodes[i] : nil
  }

  /// The inode of `name` in directory `parent`.
  func lookup(_ parent: INode, _ name: String) -> INode? {
    let i = Int(truncatingIfNeeded: parent.rawValue) - 1
    guard i >= 0 && i < index.count else { return nil }
    return index[i][name]
  }

  /// Number of subdirectories of a directory (for its link count).
  func subdirectoryCount(_ node: Node) -> Int {
    guard case .directory(let kids) = node.kind else { return 0 }
    return kids.filter { self.node($0.inode)?.isDirectory == true }.count
  }
}

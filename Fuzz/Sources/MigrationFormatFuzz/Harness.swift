// The libFuzzer entry points for the format library.
//
// Each input is a whole migration file. It is written to an unlinked file in
// /dev/shm and opened through its /proc/self/fd path, because
// `MigrationFile(path:options:)` is the library's only public way in. After an
// open succeeds the harness reads what a mount, `info` and `convert` read:
// block contents, SEEK_DATA/SEEK_HOLE answers, block paths, the info JSON,
// decoded device state, the classic page index and a conversion plan. Any
// trap, sanitizer report or broken invariant is a crash; a `FormatError` is
// the expected answer to a bad file.
//
// Build and run with scripts/fuzz.sh. With MRAMFS_FUZZ_SEEDS=dir set, the
// binary writes its seed files there and exits instead of fuzzing (Seeds.swift).
#if canImport(Glibc)
  import Glibc
#endif
import GuestViews
import MigrationFormat
import SaveFilesystem

/// The descriptor of the unlinked input file, and the path the library opens it by.
nonisolated(unsafe) private var inputDescriptor: Int32 = -1
nonisolated(unsafe) private var inputPath = ""
/// One buffer for every read, so the harness itself allocates little per input.
private let scratchSize = 64 << 10
nonisolated(unsafe) private let scratch = UnsafeMutableRawBufferPointer.allocate(
  byteCount: 64 << 10, alignment: 4096)

/// Called once by libFuzzer before the first input (`int LLVMFuzzerInitialize(int *argc, char ***argv)`).
@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: OpaquePointer?, _ argv: OpaquePointer?) -> Int32 {
  if let dir = getenv("MRAMFS_FUZZ_SEEDS") {
    let fixtures = getenv("MRAMFS_FIXTURES").map { String(cString: $0) }
    exit(writeSeeds(to: String(cString: dir), fixtures: fixtures))
  }
  let name = "/dev/shm/mramfs-fuzz-\(getpid()).bin"
  let fd = open(name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
  guard fd >= 0 else {
    warn("cannot create \(name): errno \(errno)")
    exit(2)
  }
  // Unlinked at once, so a crash or a kill leaves nothing behind in /dev/shm.
  unlink(name)
  inputDescriptor = fd
  inputPath = "/proc/self/fd/\(fd)"
  return 0
}

/// Called by libFuzzer for every input (`int LLVMFuzzerTestOneInput(const uint8_t *, size_t)`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
  guard ftruncate(inputDescriptor, 0) == 0 else { fatalError("ftruncate: errno \(errno)") }
  var done = 0
  while done < size, let data {
    let n = pwrite(inputDescriptor, data + done, size - done, off_t(done))
    guard n > 0 else { fatalError("pwrite: errno \(errno)") }
    done += n
  }
  // Strict first, as `info` and `mount` open files; then forced, as `--force` does, with the
  // bitmap layout and the device walk chosen from the input's size so each gets its share.
  // (noFollow stays off: the /proc/self/fd path is itself a symbolic link.)
  exercise(OpenOptions())
  var forced = OpenOptions()
  forced.force = true
  forced.bitmapLayout = size & 1 == 0 ? .littleEndian64 : .bigEndian64
  forced.skipDevices = size & 6 == 6
  // Now and then a stream offset as --offset gives it: at the start, after a libvirt header,
  // at or past the end of the file.
  switch (size >> 1) % 16 {
  case 3: forced.streamOffset = 0
  case 5: forced.streamOffset = 92
  case 7: forced.streamOffset = UInt64(size) &- 8
  case 9: forced.streamOffset = UInt64(size) + 1
  case 11: forced.streamOffset = .max - 3
  default: break
  }
  exercise(forced)
  return 0
}

/// Opens the current input with `options` and, if that works, uses every reader on it.
private func exercise(_ options: OpenOptions) {
  let file: MigrationFile
  do {
    file = try MigrationFile(path: inputPath, options: options)
  } catch {
    check(isOneLine(error.description), "an error message is not one printable line: \(error)")
    return
  }
  for warning in file.warnings + [file.devicesUnavailableReason ?? ""] {
    check(isOneLine(warning), "a warning is not one printable line: \(warning)")
  }
  for index in file.blocks.indices.prefix(32) {
    readBlock(file, index)
  }
  _ = file.block(named: "pc.ram")
  // A mount shows each block at its own path, and no file path is also a directory.
  let paths = BlockPaths.assign(file.blocks.map(\.name)).map { $0.joined(separator: "/") }
  check(Set(paths).count == paths.count, "two blocks share a path: \(paths)")
  for path in paths where paths.count <= 256 {
    check(!paths.contains { $0.hasPrefix(path + "/") }, "block path \(path) is also a directory: \(paths)")
  }
  _ = InfoDocument(file).json()
  // The kernel look-up reads notes at addresses and sizes the input gives (the vmcoreinfo
  // device's, or those in populated pages): bounded here so that an input cannot hang the run.
  var limits = VMCoreInfoSearch.Limits()
  limits.maxPages = 4096
  limits.timeLimit = .seconds(1)
  if case .success(let k) = KernelInfo.resolve(file, layout: try? PhysicalLayout(file), limits: limits) {
    check(k.text.count <= VMCoreInfoText.maxBytes, "a \(k.text.count)-byte VMCOREINFO text was read")
  }
  // Device decoding: each located section's body walked field by field with its VM description.
  for state in file.deviceStates().prefix(64) {
    check(state.decodedBytes <= state.bodySize, "decoded \(state.decodedBytes) of \(state.bodySize) bytes")
    _ = state.json()
  }
  if file.format == .classic {
    do {
      let pages = try ClassicPageIndex(file: file)
      check(pages.pages.count == file.blocks.count, "classic index has a list per block")
      for b in pages.pages.indices.prefix(8) {
        let source = ClassicBlockSource(file: file, index: pages, block: b)
        readSource(source, pageCount: file.blocks[b].pageCount)
      }
    } catch {}
  }
  let target: StreamFormat = file.format == .classic ? .mappedRAM : .classic
  if let plan = try? Converter.plan(file, to: target, alignment: 4096, threads: 1) {
    for b in plan.blocks.prefix(8) {
      readSource(b.source, pageCount: b.length / 4096)
    }
  }
}

/// Walks a block's data and hole runs, and reads inside them, checking what a mount relies on.
private func readBlock(_ file: MigrationFile, _ index: Int) {
  let block = file.blocks[index]
  let length = block.length
  var offset: UInt64 = 0
  for _ in 0..<16 {
    guard let data = file.nextData(block: index, from: offset) else { break }
    check(data >= offset && data < length, "nextData \(data) from \(offset), length \(length)")
    guard let hole = file.nextHole(block: index, from: data) else {
      fatalError("no hole after data at \(data) of a block of \(length) bytes")
    }
    check(hole > data && hole <= length, "nextHole \(hole) after data at \(data), length \(length)")
    _ = read(file, index, at: data, count: Int(min(hole - data, UInt64(scratchSize))))
    if hole < length {
      // A hole reads as zeros, whatever the file holds there.
      let n = read(file, index, at: hole, count: Int(min(block.pageSize, UInt64(scratchSize))))
      if let n {
        check(
          !UnsafeRawBufferPointer(rebasing: scratch[0..<n]).contains { $0 != 0 },
          "a hole at \(hole) of block \(index) reads as non-zero")
      }
    }
    offset = hole
    if offset >= length { break }
  }
  if let hole = file.nextHole(block: index, from: 0) {
    check(hole <= length, "nextHole past the end of the block")
  }
  for at in [0, length / 2 | 1, length &- 4097, length &- 1, length] {
    _ = read(file, index, at: at, count: 4096 + 3)
  }
}

/// Reads `count` bytes of a block at `at` into the scratch buffer; nil if the library refused.
private func read(_ file: MigrationFile, _ index: Int, at: UInt64, count: Int) -> Int? {
  let length = file.blocks[index].length
  let buffer = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<min(count, scratchSize)])
  do {
    let n = try file.read(block: index, at: at, into: buffer)
    // Classic blocks have no bitmap and read as nothing; positional ones stop at the block's end.
    let positional = file.blocks[index].bitmap != nil
    let expected = positional && at < length ? Int(min(UInt64(buffer.count), length - at)) : 0
    check(n == expected, "read \(n) bytes at \(at) of a block of \(length), expected \(expected)")
    return n
  } catch {
    check(error.kind == .io, "a read failed with \(error)")
    return nil
  }
}

/// Fetches the first few candidate pages of a conversion source.
private func readSource(_ source: any PageSource, pageCount: UInt64) {
  var page: UInt64 = 0
  let one = UnsafeMutableRawBufferPointer(rebasing: scratch[0..<4096])
  for _ in 0..<4 {
    guard let next = source.nextCandidate(from: page), next < pageCount else { return }
    check(next >= page, "nextCandidate went back from \(page) to \(next)")
    _ = try? source.page(next, into: one)
    page = next + 1
  }
}

/// Whether a message holds no control bytes: errors and warnings are printed one per line,
/// so a name taken from the file must not break the line or reach the terminal raw.
private func isOneLine(_ message: String) -> Bool {
  !message.utf8.contains { $0 < 0x20 || $0 == 0x7f }
}

/// Prints a line on standard error.
func warn(_ message: String) {
  var line = "mramfs-fuzz: \(message)\n"
  line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// Traps with a message when an invariant does not hold; libFuzzer records the input.
private func check(_ condition: Bool, _ message: @autoclosure () -> String) {
  if !condition { fatalError("invariant: \(message())") }
}

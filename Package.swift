// swift-tools-version: 6.0
// mramfs: mount a QEMU mapped-ram save file as a folder of sparse files.
import PackageDescription

let package = Package(
  name: "mramfs",
  platforms: [.macOS(.v13)],
  products: [
    .executable(name: "mramfs", targets: ["mramfs"]),
    .library(name: "MappedRAM", targets: ["MappedRAM"]),
    .library(name: "FUSE", targets: ["FUSE"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    .package(url: "https://github.com/apple/swift-system", from: "1.7.0"),
  ],
  targets: [
    // The format library: parse, validate, read and write QEMU migration streams.
    // Pure Swift; it never imports FUSE, so `info`, the writer and its tests run anywhere.
    .target(
      name: "MappedRAM",
      dependencies: [.product(name: "SystemPackage", package: "swift-system")]
    ),
    // libfuse3, seen through one shim header.
    .systemLibrary(
      name: "CFuse", path: "CFuse", pkgConfig: "fuse3",
      providers: [.apt(["libfuse3-dev"])]
    ),
    // A thin, typed Swift layer over libfuse3's low-level API.
    .target(
      name: "FUSE",
      dependencies: [
        "CFuse",
        .product(name: "SystemPackage", package: "swift-system"),
        .product(name: "Logging", package: "swift-log"),
      ]
    ),
    // The mramfs filesystem: RAM blocks as sparse files, on top of FUSE and MappedRAM.
    .target(
      name: "MramFS",
      dependencies: [
        "MappedRAM", "FUSE",
        .product(name: "SystemPackage", package: "swift-system"),
        .product(name: "Logging", package: "swift-log"),
      ]
    ),
    // The command-line tool.
    .executableTarget(
      name: "mramfs",
      dependencies: [
        "MappedRAM", "MramFS", "FUSE",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        .product(name: "Logging", package: "swift-log"),
        .product(name: "SystemPackage", package: "swift-system"),
      ]
    ),
    // Builds synthetic (and deliberately broken) migration files for tests.
    .target(name: "MappedRAMTestSupport", dependencies: ["MappedRAM"]),
    // Examples/hello: the smallest filesystem on the FUSE layer.
    .executableTarget(name: "hello-fs", dependencies: ["FUSE"], path: "Examples/hello"),

    // Regressions/ holds the fuzzer's regression inputs, read from disk by RegressionTests.
    .testTarget(name: "MappedRAMTests", dependencies: ["MappedRAM", "MappedRAMTestSupport"], exclude: ["Regressions"]),
    // The real QEMU files scripts/make-fixtures.py saves, and helpers to check them.
    .target(name: "QEMUFixtures", dependencies: ["MappedRAM"], path: "Tests/QEMUFixtures"),
    .testTarget(name: "QEMUTests", dependencies: ["MappedRAM", "MappedRAMTestSupport", "QEMUFixtures"]),
    .testTarget(name: "MountTests", dependencies: ["MappedRAM", "MappedRAMTestSupport", "QEMUFixtures"]),
    .testTarget(name: "FUSETests", dependencies: ["FUSE", .product(name: "SystemPackage", package: "swift-system")]),
    .testTarget(
      name: "MramFSTests",
      dependencies: [
        "MramFS", "FUSE", "MappedRAM", "MappedRAMTestSupport",
        .product(name: "Logging", package: "swift-log"),
        .product(name: "SystemPackage", package: "swift-system"),
      ]),
  ]
)

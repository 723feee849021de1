// swift-tools-version: 6.0
// mramfs: mount a QEMU mapped-ram save file as a folder of sparse files.
//
// Linux only: the FUSE layer links libfuse3 and the code calls Glibc directly
// (pread, splice, posix_spawn, /proc). No Apple platform is declared because none builds.
//
// The targets are the architecture, and dependencies point one way:
//
//   MigrationFormat ← GuestViews ← SaveFilesystem ← MramfsCLI (the `mramfs` executable)
//          CFuse    ←    FUSE    ↗
//
// A read request goes kernel → CFuse → FUSE (Operations.swift) → SaveFilesystem
// (MramFileSystem.read) → GuestViews (physmem, vmcore) → MigrationFormat (block reads).
import PackageDescription

let system = Target.Dependency.product(name: "SystemPackage", package: "swift-system")
let logging = Target.Dependency.product(name: "Logging", package: "swift-log")

let package = Package(
  name: "mramfs",
  products: [
    .executable(name: "mramfs", targets: ["MramfsCLI"]),
    .library(name: "MigrationFormat", targets: ["MigrationFormat"]),
    .library(name: "GuestViews", targets: ["GuestViews"]),
    .library(name: "FUSE", targets: ["FUSE"]),
    .library(name: "SaveFilesystem", targets: ["SaveFilesystem"]),
  ],
  dependencies: [
    .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    .package(url: "https://github.com/apple/swift-system", from: "1.7.0"),
  ],
  targets: [
    // The format library: parse, validate, read and write QEMU migration streams
    // (mapped-ram, fixed-ram, RFC fixed-ram, classic, the libvirt header, the VM description).
    // Pure Swift; it knows nothing of guests or mounts, so `info`, the writer and its tests run anywhere.
    .target(name: "MigrationFormat", dependencies: [system]),
    // What the saved bytes mean to the guest: guest-physical layouts per machine type, x86
    // registers, page walks, device-state decoding, the ELF core layout.
    .target(name: "GuestViews", dependencies: ["MigrationFormat"]),
    // libfuse3, seen through one shim header.
    .systemLibrary(
      name: "CFuse", path: "CFuse", pkgConfig: "fuse3",
      providers: [.apt(["libfuse3-dev"])]
    ),
    // A thin, typed Swift layer over libfuse3's low-level API.
    .target(name: "FUSE", dependencies: ["CFuse", system, logging]),
    // The mramfs filesystem: what a mount serves (block files, physmem, vmcore, info.json,
    // registers and devices) and the mounter that starts, daemonizes and stops a mount.
    .target(name: "SaveFilesystem", dependencies: ["MigrationFormat", "GuestViews", "FUSE", system, logging]),
    // The command-line tool: parses arguments and calls the libraries.
    .executableTarget(
      name: "MramfsCLI",
      dependencies: [
        "MigrationFormat", "GuestViews", "SaveFilesystem",
        .product(name: "ArgumentParser", package: "swift-argument-parser"),
        system,
      ]
    ),
    // Examples/hello: the smallest filesystem on the FUSE layer.
    .executableTarget(name: "hello-fs", dependencies: ["FUSE"], path: "Examples/hello"),

    // Builds synthetic (and deliberately broken) migration files for tests.
    .target(name: "MigrationFormatTestSupport", dependencies: ["MigrationFormat"], path: "Tests/MigrationFormatTestSupport"),
    // The real QEMU files scripts/make-fixtures.py saves, and helpers to check them.
    .target(name: "QEMUFixtures", dependencies: ["MigrationFormat"], path: "Tests/QEMUFixtures"),

    .testTarget(name: "MigrationFormatTests", dependencies: ["MigrationFormat", "MigrationFormatTestSupport"]),
    // Device-state tests also check the names and documents a mount gives that state.
    .testTarget(
      name: "GuestViewsTests", dependencies: ["GuestViews", "MigrationFormat", "SaveFilesystem", "MigrationFormatTestSupport"]),
    .testTarget(name: "FUSETests", dependencies: ["FUSE", system]),
    // Regressions/ holds the fuzzer's regression inputs, read from disk by RegressionTests, which
    // open them through every layer (format, guest views, info.json, block paths).
    .testTarget(
      name: "SaveFilesystemTests",
      dependencies: ["SaveFilesystem", "GuestViews", "FUSE", "MigrationFormat", "MigrationFormatTestSupport", logging, system],
      exclude: ["Regressions"]),
    .testTarget(
      name: "QEMUTests",
      dependencies: ["MigrationFormat", "GuestViews", "SaveFilesystem", "MigrationFormatTestSupport", "QEMUFixtures"]),
    .testTarget(
      name: "MountTests",
      dependencies: [
        "MigrationFormat", "GuestViews", "SaveFilesystem", "FUSE", "MigrationFormatTestSupport", "QEMUFixtures", system,
      ]),
  ]
)

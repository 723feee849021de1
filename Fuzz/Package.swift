// swift-tools-version: 5.4
// The libFuzzer harness for the format library, in its own package so that the
// fuzzing flags never reach the main build. Build and run it with scripts/fuzz.sh.
//
// Tools version 5.4 on purpose: from 5.5 on, SwiftPM renames an executable's entry point to
// `<module>_main` and links `main` to it; built with -parse-as-library the harness has no Swift
// entry point, and the link fails. At 5.4 libFuzzer's own main() is used as it is.
import PackageDescription

let package = Package(
  name: "mramfs-fuzz",
  products: [
    .executable(name: "mramfs-fuzz", targets: ["MigrationFormatFuzz"])
  ],
  dependencies: [
    // Named, so the dependency does not take its identity from the checkout's directory name.
    .package(name: "mramfs", path: "..")
  ],
  targets: [
    // The test-support fixture writer, compiled here through a symlink: the main package
    // keeps it internal to its tests, and a second copy would drift.
    .target(
      name: "FuzzFixtures",
      dependencies: [.product(name: "MigrationFormat", package: "mramfs")]
    ),
    // LLVMFuzzerTestOneInput over MigrationFile and everything that parses; libFuzzer supplies main.
    .executableTarget(
      name: "MigrationFormatFuzz",
      dependencies: [
        "FuzzFixtures", .product(name: "MigrationFormat", package: "mramfs"),
        .product(name: "GuestViews", package: "mramfs"), .product(name: "SaveFilesystem", package: "mramfs"),
      ]
    ),
  ]
)

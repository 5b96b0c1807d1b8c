// swift-tools-version: 6.1
import PackageDescription

let strictSwift: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "Strata",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Strata", targets: ["Strata"]),
        .library(name: "StrataDisks", targets: ["StrataDisks"]),
    ],
    targets: [
        // The request system and the topology. Imports the toolchain only.
        .target(name: "Strata", swiftSettings: strictSwift),
        // Linux calls that need _GNU_SOURCE, for the disks.
        .target(name: "CStrataSystem"),
        // Bottom providers: memory, file, null and zero disks (POSIX).
        .target(name: "StrataDisks", dependencies: ["Strata", "CStrataSystem"], swiftSettings: strictSwift),
        .testTarget(name: "StrataTests", dependencies: ["Strata", "StrataDisks"], swiftSettings: strictSwift),
        .testTarget(name: "StrataDisksTests", dependencies: ["Strata", "StrataDisks"], swiftSettings: strictSwift),
    ]
)

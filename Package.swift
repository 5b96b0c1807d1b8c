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
        .executable(name: "strata", targets: ["strata"]),
        .library(name: "Strata", targets: ["Strata"]),
        .library(name: "StrataDisks", targets: ["StrataDisks"]),
        .library(name: "StrataNBD", targets: ["StrataNBD"]),
        .library(name: "StrataNBDClient", targets: ["StrataNBDClient"]),
        .library(name: "StrataNBDProtocol", targets: ["StrataNBDProtocol"]),
        .library(name: "StrataClasses", targets: ["StrataClasses"]),
        .library(name: "StrataConfig", targets: ["StrataConfig"]),
        .library(name: "StrataRBD", targets: ["StrataRBD"]),
        .library(name: "StrataEli", targets: ["StrataEli"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "5.0.1"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
    ],
    targets: [
        // The request system and the topology. Imports the toolchain only.
        .target(name: "Strata", dependencies: ["CStrataThreadState", "CStrataClock"], swiftSettings: strictSwift),
        // The I/O path's per-thread state pointer, a C thread-local (part of Strata).
        .target(name: "CStrataThreadState"),
        // The I/O path's clock: the CPU's time-stamp counter where the kernel keeps
        // time by it, else clock_gettime (part of Strata).
        .target(name: "CStrataClock"),
        // Transform classes: nop, concat, stripe, label, part, mirror, thin.
        .target(name: "StrataClasses", dependencies: ["Strata"], swiftSettings: strictSwift),
        // Linux calls that need _GNU_SOURCE, for the disks.
        .target(name: "CStrataSystem"),
        // Bottom providers: memory, file, null and zero disks (POSIX), and remote disks
        // (NBD exports elsewhere, through the NBD client).
        .target(name: "StrataDisks", dependencies: [
            "Strata", "CStrataSystem", "StrataNBDClient", "StrataNBDProtocol",
            .product(name: "NIOCore", package: "swift-nio"),
        ], swiftSettings: strictSwift),
        // librados and librbd, Ceph's C client libraries (Debian: librbd-dev).
        .systemLibrary(name: "CRBD", path: "Sources/CRBD", providers: [.apt(["librbd-dev"])]),
        // RBD images of a Ceph cluster as disks, through librbd.
        .target(name: "StrataRBD", dependencies: ["Strata", "StrataDisks", "CRBD"], swiftSettings: strictSwift),
        // OpenSSL's libcrypto and libargon2 (Debian: libssl-dev, libargon2-dev).
        .systemLibrary(name: "CCrypto", path: "Sources/CCrypto", providers: [.apt(["libssl-dev", "libargon2-dev"])]),
        // The eli class: sectors encrypted with AES-XTS, in LUKS1 and LUKS2 volumes.
        .target(name: "StrataEli", dependencies: ["Strata", "CCrypto"], swiftSettings: strictSwift),
        // The numbers of the NBD protocol and the listen address, which the server and
        // the client share. Imports the toolchain only.
        .target(name: "StrataNBDProtocol", swiftSettings: strictSwift),
        // The NBD server: its wire codec, the connections (SwiftNIO, like the control
        // socket below) and TLS (swift-nio-ssl; swift-asn1 reads client certificates' names).
        .target(name: "StrataNBD", dependencies: [
            "Strata",
            "CStrataSystem",
            "StrataNBDProtocol",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOTLS", package: "swift-nio"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strictSwift),
        // The NBD client: its wire codec, the handshake (TLS with swift-nio-ssl) and requests
        // over one connection (SwiftNIO). Needs neither the server nor the request system.
        .target(name: "StrataNBDClient", dependencies: [
            "StrataNBDProtocol",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
        ], swiftSettings: strictSwift),
        // The topology file: YAML in, a checked configuration and a built topology out.
        .target(name: "StrataConfig", dependencies: [
            "Strata", "StrataDisks", "StrataNBD", "StrataClasses", "StrataRBD", "StrataEli",
            .product(name: "Yams", package: "Yams"),
        ], swiftSettings: strictSwift),
        // The control endpoint (HTTP/JSON on a Unix socket) and its client.
        .target(name: "StrataControl", dependencies: [
            "Strata", "StrataConfig", "StrataNBD", "CStrataSystem",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
        ], swiftSettings: strictSwift),
        // Fuzz targets of the NBD server and client decoders (docs/NBD.md, "Fuzzing").
        .target(name: "StrataFuzz", dependencies: [
            "Strata", "StrataDisks", "StrataNBD", "StrataNBDClient", "StrataNBDProtocol",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strictSwift + [.enableExperimentalFeature("Extern")]),  // @_extern(c) for libFuzzer's driver
        // libFuzzer binaries when built with -sanitize=fuzzer and -DSTRATA_LIBFUZZER
        // (scripts/check); input replayers in a plain build.
        .executableTarget(name: "strata-fuzz-server", dependencies: ["StrataFuzz"], swiftSettings: strictSwift),
        .executableTarget(name: "strata-fuzz-client", dependencies: ["StrataFuzz"], swiftSettings: strictSwift),
        // The `strata` command.
        .executableTarget(name: "strata", dependencies: [
            "Strata", "StrataDisks", "CStrataSystem", "StrataNBD", "StrataNBDProtocol", "StrataConfig", "StrataControl",
            "StrataClasses",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strictSwift),
        .testTarget(name: "StrataTests", dependencies: ["Strata", "StrataDisks"], swiftSettings: strictSwift),
        .testTarget(name: "StrataDisksTests", dependencies: ["Strata", "StrataDisks", "CStrataSystem", "StrataRBD"],
                    swiftSettings: strictSwift),
        .testTarget(name: "StrataEliTests", dependencies: ["Strata", "StrataDisks", "StrataClasses", "StrataEli", "CCrypto"],
                    exclude: ["Fixtures"], swiftSettings: strictSwift),
        .testTarget(name: "StrataClassesTests", dependencies: ["Strata", "StrataDisks", "StrataClasses"],
                    swiftSettings: strictSwift),
        .testTarget(name: "StrataCLITests", dependencies: [
            "Strata", "StrataConfig", "StrataControl", "StrataNBD",
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
        ], swiftSettings: strictSwift),
        .testTarget(name: "StrataConfigTests", dependencies: ["Strata", "StrataDisks", "StrataConfig", "StrataClasses", "StrataNBD"],
                    swiftSettings: strictSwift),
        .testTarget(name: "StrataNBDTests", dependencies: [
            "Strata", "StrataDisks", "StrataNBD", "StrataNBDClient", "StrataNBDProtocol", "StrataClasses",
            "StrataFuzz",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOTestUtils", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: strictSwift),
    ]
)

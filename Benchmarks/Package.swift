// swift-tools-version: 6.1
// The benchmarks live in their own package so that the main build and `swift test`
// don't build ordo-one/benchmark. Run them from this folder:
//   swift package benchmark                      # every benchmark, with a table
//   swift package benchmark thresholds check     # what scripts/check runs
import PackageDescription

let package = Package(
    name: "StrataBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Strata", path: ".."),
        // MallocInterposer counts allocations; without the trait every malloc count reads 0.
        .package(url: "https://github.com/ordo-one/benchmark.git", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
    ],
    targets: [
        .executableTarget(
            name: "StrataBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "Strata", package: "Strata"),
                .product(name: "StrataDisks", package: "Strata"),
                .product(name: "StrataClasses", package: "Strata"),
                .product(name: "StrataConfig", package: "Strata"),
                .product(name: "StrataNBD", package: "Strata"),
                .product(name: "StrataNBDProtocol", package: "Strata"),
                .product(name: "StrataEli", package: "Strata"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/StrataBenchmarks",
            swiftSettings: [.swiftLanguageMode(.v6)],
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)

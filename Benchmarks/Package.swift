// swift-tools-version:6.3
// Micro-benchmarks (ordo-one/benchmark): `make bench`, or `cd Benchmarks && swift package benchmark`.
//
// A package of its own, referring to the main one by path, so that ordo-one/benchmark and its
// dependencies (malloc interposer, swift-system, atomics, TextTable) never enter the main
// package's build: `make test` and `swift build` at the root stay as lean as before.
// (`stateroom-bench`, the load generator, is a target of the main package: Benchmarks/stateroom-bench.)
import PackageDescription

let package = Package(
    name: "StateroomBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Stateroom", path: ".."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/swiftwasm/WasmKit", exact: "0.4.2"),
    ],
    targets: [
        .executableTarget(
            name: "WireProtocolBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "WireProtocol", package: "Stateroom"),
            ],
            path: "WireProtocolBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        .executableTarget(
            name: "WasmDispatchBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "WasmHost", package: "Stateroom"),
                .product(name: "Stateroom", package: "Stateroom"),
                .product(name: "WAT", package: "WasmKit"),
            ],
            path: "WasmDispatchBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)

// swift-tools-version:6.3
import PackageDescription

let strict: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "Stateroom",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "Stateroom", targets: ["Stateroom"]),
        // The server, embeddable: an outside package serves its own native service with it
        // (Examples/EmbeddedServer). Re-exports Stateroom.
        .library(name: "StateroomServer", targets: ["StateroomServer"]),
        .executable(name: "stateroom-server", targets: ["stateroom-server"]),
        .executable(name: "stateroom-bench", targets: ["stateroom-bench"]),
        .executable(name: "stateroom", targets: ["stateroom"]),
        // For the micro-benchmark package in Benchmarks/ (kept out of this package's build).
        .library(name: "WireProtocol", targets: ["WireProtocol"]),
        .library(name: "WasmHost", targets: ["WasmHost"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/swiftwasm/WasmKit", exact: "0.4.2"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", exact: "0.2.0"),
    ],
    targets: [
        .target(
            name: "CUring",
            linkerSettings: [.linkedLibrary("uring")]
        ),
        .systemLibrary(name: "CLibCrypto", path: "Sources/CLibCrypto"),
        // Redis (Debian libhiredis-dev), for durable rooms: used on the store thread only.
        .systemLibrary(name: "CHiredis", path: "Sources/CHiredis"),
        // TLS over memory (OpenSSL's libssl 3): sessions that never touch a descriptor, so every
        // socket read and write stays on the shard's ring.
        .target(
            name: "CTLS",
            linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]
        ),
        // permessage-deflate (RFC 7692): zlib (streaming inflate, windows below 32 KiB) and
        // libdeflate (one-shot compression), behind a shim since zlib's init functions are macros.
        .target(
            name: "CDeflate",
            linkerSettings: [.linkedLibrary("z"), .linkedLibrary("deflate")]
        ),
        .target(
            name: "WireProtocol",
            dependencies: ["CLibCrypto", "CDeflate"],
            swiftSettings: strict
        ),
        // A pthread-based lock ThreadSanitizer can follow (see Locked.swift).
        .target(name: "Locking", swiftSettings: strict),
        .target(
            name: "IOCore",
            dependencies: [
                "CUring", "Locking",
                .product(name: "DequeModule", package: "swift-collections"),
            ],
            swiftSettings: strict
        ),
        .target(name: "Stateroom", swiftSettings: strict),
        .target(
            name: "StateroomServer",
            dependencies: [
                "IOCore", "WireProtocol", "Stateroom", "CTLS", "CLibCrypto", "CHiredis", "Locking",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "HeapModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "WasmHost",
            dependencies: [
                // StateroomWasm: the ABI codec the guest SDK compiles too (one codec, both sides).
                // CLibCrypto: SHA-256 of the module, which keys its rooms' snapshots.
                "Stateroom", "StateroomWasm", "CLibCrypto", "Locking",
                .product(name: "WasmKit", package: "WasmKit"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "stateroom-server",
            dependencies: [
                "StateroomServer", "WasmHost", "IOCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "stateroom-bench",
            dependencies: [
                "IOCore", "WireProtocol", "CTLS",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Benchmarks/stateroom-bench",
            swiftSettings: strict
        ),
        // The Swift guest SDK's codec (the ABI codec, WasmHost's too), dispatch and script tools,
        // compiled natively (WasmHost, tests, the `stateroom` CLI). `stateroom build` compiles the
        // same files for wasm32 with Embedded Swift, together with the wasm-only Guest/ and Entry/
        // glue and the C runtime/.
        .target(
            name: "StateroomWasm",
            dependencies: ["Stateroom"],
            exclude: ["Guest", "Entry", "Native", "runtime", "IDENTITY.md"],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "stateroom",
            dependencies: [
                "StateroomServer", "WasmHost", "StateroomWasm", "Stateroom",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .testTarget(name: "WireProtocolTests", dependencies: ["WireProtocol"], swiftSettings: strict),
        .testTarget(name: "IOCoreTests", dependencies: ["IOCore"], swiftSettings: strict),
        .testTarget(
            name: "StateroomServerTests",
            dependencies: ["StateroomServer", "Stateroom", "WireProtocol", "IOCore", "Locking"],
            exclude: ["Fixtures"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "WasmHostTests",
            dependencies: ["WasmHost", "Stateroom", "Locking", .product(name: "WAT", package: "WasmKit")],
            resources: [.copy("Fixtures")],
            swiftSettings: strict
        ),
        .testTarget(name: "StateroomWasmTests", dependencies: ["StateroomWasm", "Stateroom"], swiftSettings: strict),
    ]
)

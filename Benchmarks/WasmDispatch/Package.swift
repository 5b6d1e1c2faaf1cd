// swift-tools-version:6.3
// Micro-benchmark of the wasm room dispatch (not a test; prints medians, asserts nothing).
// Its own package so that it builds without the rest of the server: Sources/Stateroom,
// Sources/StateroomWasm (the ABI codec), Sources/CLibCrypto (libcrypto, for the module hash that
// keys snapshots) and Sources/WasmHost are symlinks to the real modules.
//
//   cd Benchmarks/WasmDispatch && swift run -c release WasmDispatch [rounds]
import PackageDescription

let package = Package(
    name: "WasmDispatch",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swiftwasm/WasmKit", exact: "0.4.2"),
    ],
    targets: [
        .target(name: "Stateroom", swiftSettings: [.swiftLanguageMode(.v6)]),
        .systemLibrary(name: "CLibCrypto", path: "Sources/CLibCrypto"),
        .target(name: "Locking", swiftSettings: [.swiftLanguageMode(.v6)]),
        .target(
            name: "StateroomWasm",
            dependencies: ["Stateroom"],
            exclude: ["Guest", "Entry", "Native", "runtime", "IDENTITY.md"],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .target(
            name: "WasmHost",
            dependencies: [
                "Stateroom", "StateroomWasm", "CLibCrypto", "Locking",
                .product(name: "WasmKit", package: "WasmKit"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
        .executableTarget(
            name: "WasmDispatch",
            dependencies: [
                "Stateroom", "StateroomWasm", "WasmHost",
                .product(name: "WasmKit", package: "WasmKit"),
                .product(name: "WAT", package: "WasmKit"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)

// swift-tools-version:6.3
// A package of its own that serves a native Swift service with the StateroomServer library
// (README: "Native services in your own package"). It depends on the Stateroom package by path;
// elsewhere, name it by its URL instead.
import PackageDescription

let package = Package(
    name: "EmbeddedServer",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "poll-server", targets: ["PollServer"]),
    ],
    dependencies: [
        .package(name: "Stateroom", path: "../.."),
    ],
    targets: [
        .executableTarget(
            name: "PollServer",
            dependencies: [.product(name: "StateroomServer", package: "Stateroom")],
            swiftSettings: [.swiftLanguageMode(.v6)]
        ),
    ]
)

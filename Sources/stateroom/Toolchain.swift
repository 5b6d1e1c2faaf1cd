/// The Swift toolchain pieces a guest build needs, found from `swiftc`.
///
/// The root is `SWIFT_TOOLCHAIN` if set (a toolchain's `usr` folder, or a folder holding `usr/`),
/// else `$(dirname $(dirname $(realpath $(which swiftc))))`. `clang` and `wasm-ld` are in the
/// same `bin` folder; the Embedded Swift standard library for wasm32 is under `lib/swift/embedded`.
struct Toolchain {
    let root: String
    var swiftc: String { root + "/bin/swiftc" }
    var clang: String { root + "/bin/clang" }
    var wasmLD: String { root + "/bin/wasm-ld" }
    var embeddedStdlib: String { root + "/lib/swift/embedded/Swift.swiftmodule/wasm32-unknown-none-wasm.swiftmodule" }
    var unicodeTables: String { root + "/lib/swift/embedded/wasm32-unknown-none-wasm/libswiftUnicodeDataTables.a" }

    /// Finds the toolchain; `forWasm` also requires clang, wasm-ld and the embedded stdlib. Every
    /// missing piece is named in one message.
    static func locate(forWasm: Bool = true) throws(CLIError) -> Toolchain {
        let root: String
        if let env = Files.environment("SWIFT_TOOLCHAIN") {
            let usr = env.hasSuffix("/") ? String(env.dropLast()) : env
            root = Files.exists(usr + "/usr/bin/swiftc") ? usr + "/usr" : usr
        } else if let swiftc = findInPath("swiftc") {
            root = Files.dirname(Files.dirname(Files.realPath(swiftc)))
        } else {
            throw CLIError("""
                cannot find swiftc: it is not on PATH and SWIFT_TOOLCHAIN is not set.
                Install a Swift 6 toolchain from swift.org (it includes clang, wasm-ld and the Embedded \
                Swift stdlib for wasm32), then put its usr/bin on PATH or set SWIFT_TOOLCHAIN=/path/to/usr.
                """)
        }
        let t = Toolchain(root: root)
        var missing: [String] = []
        if !Files.exists(t.swiftc) { missing.append("swiftc (\(t.swiftc))") }
        if forWasm {
            if !Files.exists(t.clang) { missing.append("clang (\(t.clang)), which builds the guest's C runtime") }
            if !Files.exists(t.wasmLD) { missing.append("wasm-ld (\(t.wasmLD)), the WebAssembly linker") }
            if !Files.exists(t.embeddedStdlib) {
                missing.append("the Embedded Swift standard library for wasm32 (\(t.embeddedStdlib))")
            }
            if !Files.exists(t.unicodeTables) { missing.append("libswiftUnicodeDataTables.a (\(t.unicodeTables))") }
        }
        if !missing.isEmpty {
            throw CLIError("""
                the Swift toolchain at \(root) cannot build wasm guests; missing: \(missing.joined(separator: "; ")).
                Use a swift.org toolchain (6.0 or later; Linux releases ship all of these) and put its usr/bin \
                on PATH or set SWIFT_TOOLCHAIN=/path/to/usr.
                """)
        }
        return t
    }

    static func findInPath(_ name: String) -> String? {
        for dir in (Files.environment("PATH") ?? "/usr/bin:/bin").split(separator: ":") {
            let p = "\(dir)/\(name)"
            if Files.exists(p) && !Files.isDirectory(p) { return p }
        }
        return nil
    }
}

/// Where the guest SDK's sources are: the `Sources` folder of this checkout (found from this
/// file's path at compile time), or `STATEROOM_SDK`.
struct SDKSources {
    let root: String

    static func locate() throws(CLIError) -> SDKSources {
        let candidates: [String]
        if let env = Files.environment("STATEROOM_SDK") {
            candidates = [env, env + "/Sources"]
        } else {
            candidates = [Files.dirname(Files.dirname(#filePath))]
        }
        for c in candidates where Files.exists(c + "/StateroomWasm/Entry/StateroomMain.swift") && Files.isDirectory(c + "/Stateroom") {
            return SDKSources(root: c)
        }
        throw CLIError("""
            cannot find the guest SDK sources (Stateroom/ and StateroomWasm/) in \(candidates.joined(separator: " or ")).
            Set STATEROOM_SDK to the Sources folder of a Stateroom for Swift checkout.
            """)
    }

    /// Swift files of module `Stateroom` (the service API); `embedded` leaves out those that use
    /// existentials, which Embedded Swift cannot compile.
    func apiFiles(embedded: Bool) -> [String] {
        Files.list(root + "/Stateroom").filter { $0.hasSuffix(".swift") }
            // Host-side API: factories, and snapshots of native services (a wasm guest's state
            // is its memory, which the host snapshots).
            .filter { !embedded || ($0 != "StateroomServiceFactory.swift" && $0 != "SnapshottableService.swift") }
            .map { root + "/Stateroom/" + $0 }
    }

    /// The SDK's codec and dispatch (compiled natively too) and its wasm-only glue.
    var guestFiles: [String] {
        let sdk = root + "/StateroomWasm"
        return Files.list(sdk).filter { $0.hasSuffix(".swift") }.map { sdk + "/" + $0 }
            + Files.list(sdk + "/Guest").filter { $0.hasSuffix(".swift") }.map { sdk + "/Guest/" + $0 }
    }

    /// Compiled with the service: exports `stateroom_recv` for `StateroomMain`.
    var entryFile: String { root + "/StateroomWasm/Entry/StateroomMain.swift" }

    /// The C runtime (libc shims, allocator, ABI data and exports).
    var runtimeFiles: [String] {
        Files.list(root + "/StateroomWasm/runtime").filter { $0.hasSuffix(".c") }.map { root + "/StateroomWasm/runtime/" + $0 }
    }

    /// The native harness: script driver and `main`.
    var harnessFiles: [String] {
        let sdk = root + "/StateroomWasm"
        return Files.list(sdk + "/Script").filter { $0.hasSuffix(".swift") }.map { sdk + "/Script/" + $0 }
            + [sdk + "/Native/HarnessMain.swift"]
    }
}

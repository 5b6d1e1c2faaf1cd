import Glibc

/// Builds a service folder into a Stateroom wasm module (Embedded Swift → wasm32), or natively
/// into a script harness.
///
/// A wasm build is three steps, all with the toolchain's own tools:
/// 1. the SDK — module `Stateroom` for wasm32 (the service API's sources plus the ABI glue) and
///    its C runtime — compiled once per toolchain, SDK version and mode, and cached in
///    `$STATEROOM_CACHE` (default `~/.cache/stateroom`);
/// 2. the service's `.swift` files plus `Entry/StateroomMain.swift` (which exports
///    `stateroom_recv` for the service named by `typealias StateroomMain`), as one module
///    importing `Stateroom`, with the compiler's diagnostics passed through untouched;
/// 3. `wasm-ld` → `dist/<name>.wasm` (written aside, then renamed into place).
struct GuestBuilder {
    enum Mode: String {
        case debug, release
    }

    let toolchain: Toolchain
    let sdk: SDKSources
    var verbose = false

    /// Flags of every Embedded Swift compile (see shared/WASM.md for why each is needed).
    func embeddedFlags(_ mode: Mode) -> [String] {
        ["-target", "wasm32-unknown-none-wasm",
         "-enable-experimental-feature", "Embedded", "-enable-experimental-feature", "Extern",
         "-wmo", "-parse-as-library", "-Xfrontend", "-disable-stack-protector",
         mode == .release ? "-Osize" : "-Onone"]
    }

    // MARK: SDK

    /// The cache folder for SDK builds.
    static var cacheRoot: String {
        if let c = Files.environment("STATEROOM_CACHE") { return c }
        if let x = Files.environment("XDG_CACHE_HOME") { return x + "/stateroom" }
        return (Files.environment("HOME") ?? "/tmp") + "/.cache/stateroom"
    }

    /// A key naming the inputs of an SDK build: the compiler binary, the mode, every source.
    func sdkKey(kind: String, mode: Mode, files: [String]) -> String {
        var h = FNV64()
        h.add(kind)
        h.add(mode.rawValue)
        h.add(toolchain.swiftc)
        if let s = Files.stamp(Files.realPath(toolchain.swiftc)) { h.add(s.mtime); h.add(s.size) }
        for f in files {
            h.add(f)
            h.add(Files.read(f) ?? [])
        }
        return "\(kind)-\(mode.rawValue)-\(h.hex)"
    }

    /// Builds into a temporary folder with `body`, then renames it to `key` in the cache (a
    /// concurrent build of the same key just wins or loses the rename).
    func cached(_ key: String, label: String, _ body: (String) throws(CLIError) -> Void) throws(CLIError) -> String {
        let dir = Self.cacheRoot + "/" + key
        if Files.exists(dir + "/done") { return dir }
        try Files.makeDirectory(Self.cacheRoot)
        let tmp = dir + ".tmp-\(getpid())"
        Files.remove(tmp)
        try Files.makeDirectory(tmp)
        print("stateroom: building \(label) (once; cached in \(dir))")
        do throws(CLIError) {
            try body(tmp)
        } catch {
            Files.remove(tmp)
            throw error
        }
        try Files.write(tmp + "/done", "")
        if !Files.rename(tmp, dir) { Files.remove(tmp) }
        return dir
    }

    /// Module `Stateroom` for wasm32 plus the C runtime objects: `<dir>/Stateroom.swiftmodule`,
    /// `<dir>/Stateroom.o`, `<dir>/runtime/*.o`.
    func wasmSDK(_ mode: Mode) throws(CLIError) -> String {
        let swiftFiles = sdk.apiFiles(embedded: true) + sdk.guestFiles
        let key = sdkKey(kind: "sdk-wasm32", mode: mode, files: swiftFiles + sdk.runtimeFiles + [sdk.entryFile])
        return try cached(key, label: "the guest SDK for wasm32 (\(mode.rawValue))") { (dir: String) throws(CLIError) in
            try run(toolchain.swiftc, embeddedFlags(mode) + [
                "-D", "STATEROOM_GUEST", "-module-name", "Stateroom",
                "-emit-module", "-emit-module-path", dir + "/Stateroom.swiftmodule",
                // Warnings in the SDK are the SDK's business, not the service author's.
                "-suppress-warnings",
                "-c", "-o", dir + "/Stateroom.o",
            ] + swiftFiles, what: "the guest SDK")
            try Files.makeDirectory(dir + "/runtime")
            for c in sdk.runtimeFiles {
                let base = Files.basename(c)
                try run(toolchain.clang, [
                    "--target=wasm32", "-nostdlib", "-ffreestanding", "-fno-builtin", "-mbulk-memory",
                    "-Os", "-Wall", "-c", c, "-o", dir + "/runtime/" + base.dropLast(2) + ".o",
                ], what: "the guest C runtime")
            }
        }
    }

    /// Module `Stateroom` built natively, as a static library (for the native harness).
    func nativeSDK() throws(CLIError) -> String {
        let files = sdk.apiFiles(embedded: false)
        let key = sdkKey(kind: "sdk-native", mode: .release, files: files)
        return try cached(key, label: "module Stateroom natively") { (dir: String) throws(CLIError) in
            try run(toolchain.swiftc, [
                "-parse-as-library", "-module-name", "Stateroom", "-O", "-wmo",
                "-emit-module", "-emit-module-path", dir + "/Stateroom.swiftmodule",
                "-emit-library", "-static", "-o", dir + "/libStateroom.a", "-suppress-warnings",
            ] + files, what: "module Stateroom")
        }
    }

    // MARK: services

    struct Result {
        var output: String
        var upToDate: Bool
        var seconds: Double
        var bytes: Int64
    }

    /// Builds `folder` into `dist/<name>.wasm`, unless it is up to date.
    func buildWasm(_ folder: ServiceFolder, mode: Mode, force: Bool = false) throws(CLIError) -> Result {
        let start = monotonicSeconds()
        let sources = try checkedSources(folder)
        let sdkDir = try wasmSDK(mode)
        let output = folder.wasmOutput
        let stampFile = folder.buildDirectory + "/wasm.stamp"  // one output, whichever mode built it
        let stamp = inputsStamp(folder, sdkDir: sdkDir, mode: mode)
        if !force, Files.exists(output), Files.readText(stampFile) == stamp {
            return Result(output: output, upToDate: true, seconds: monotonicSeconds() - start, bytes: Files.stamp(output)?.size ?? 0)
        }
        let objDir = folder.buildDirectory + "/" + mode.rawValue
        try Files.makeDirectory(objDir)
        try Files.makeDirectory(folder.distDirectory)
        let object = objDir + "/\(folder.moduleName).o"
        // Relative paths, run in the folder: diagnostics read `Counter.swift:12:5: error: …`.
        try run(toolchain.swiftc, embeddedFlags(mode) + [
            "-module-name", folder.moduleName, "-I", sdkDir, "-c", "-o", object,
        ] + sources + [sdk.entryFile], in: folder.path, what: "\(folder.name)")
        let runtimeObjects = Files.list(sdkDir + "/runtime").map { sdkDir + "/runtime/" + $0 }
        let partial = output + ".partial"
        try run(toolchain.wasmLD, [
            "--no-entry", "--gc-sections", "-z", "stack-size=65536", "--stack-first",
            "--export=STATEROOM_API_VERSION", "--export=STATEROOM_API_PROTOCOL",
        ] + (mode == .release ? ["--strip-all"] : []) + [
            object, sdkDir + "/Stateroom.o",
        ] + runtimeObjects + [toolchain.unicodeTables, "-o", partial], what: "\(folder.name) (link)")
        guard Files.rename(partial, output) else { throw CLIError("cannot move \(partial) to \(output)") }
        try Files.write(stampFile, stamp)
        return Result(output: output, upToDate: false, seconds: monotonicSeconds() - start, bytes: Files.stamp(output)?.size ?? 0)
    }

    /// Builds the same sources natively with the script harness: `dist/<name>-native`.
    func buildNative(_ folder: ServiceFolder) throws(CLIError) -> Result {
        let start = monotonicSeconds()
        let sources = try checkedSources(folder)
        let sdkDir = try nativeSDK()
        try Files.makeDirectory(folder.distDirectory)
        try run(toolchain.swiftc, [
            "-parse-as-library", "-O", "-wmo", "-module-name", folder.moduleName,
            "-I", sdkDir, "-L", sdkDir, "-lStateroom", "-o", folder.nativeOutput,
        ] + sources + sdk.harnessFiles, in: folder.path, what: "\(folder.name) (native)")
        return Result(output: folder.nativeOutput, upToDate: false, seconds: monotonicSeconds() - start, bytes: Files.stamp(folder.nativeOutput)?.size ?? 0)
    }

    /// The folder's sources, after checking there are some and that one line registers a service.
    func checkedSources(_ folder: ServiceFolder) throws(CLIError) -> [String] {
        let sources = folder.sourceFiles
        guard !sources.isEmpty else { throw CLIError("no .swift files in \(folder.path)") }
        guard folder.hasRegistration() else {
            throw CLIError("""
                no service registered in \(folder.path): add one line naming the service type, e.g.
                    typealias StateroomMain = SharedCounter
                """)
        }
        return sources
    }

    /// What the output was built from: mode, SDK build, every source's path, time and size.
    func inputsStamp(_ folder: ServiceFolder, sdkDir: String, mode: Mode) -> String {
        var h = FNV64()
        h.add(mode.rawValue)
        h.add(sdkDir)
        for f in folder.watchedFiles {
            h.add(f)
            if let s = Files.stamp(f) { h.add(s.mtime); h.add(s.size) }
        }
        return h.hex
    }

    func run(_ tool: String, _ args: [String], in dir: String? = nil, what: String) throws(CLIError) {
        let status = try runProgram(tool, args, in: dir, echo: verbose)
        guard status == 0 else {
            throw CLIError("building \(what) failed (\(Files.basename(tool)) exited with status \(status))")
        }
    }
}

import ArgumentParser
import Glibc
import Logging
import Stateroom
import StateroomServer
import StateroomWasm
import WasmHost

/// `stateroom`: build Swift services into Stateroom wasm modules and serve them, like
/// Stateroom's own `stateroom` CLI.
@main
struct StateroomCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stateroom",
        abstract: "Build Swift Stateroom services to WebAssembly and serve them.",
        discussion: """
            A service folder holds the service's .swift files (one of them says \
            `typealias StateroomMain = YourService`), optionally a stateroom.toml \
            (name = "…", static = "client") and a client/ folder served at /.
            """,
        subcommands: [Dev.self, Build.self, Serve.self, Replay.self])

    /// Runs `body`, turning a ``CLIError`` into one `stateroom: …` line and exit status 1.
    static func reporting(_ body: () throws(CLIError) -> Void) throws {
        do {
            try body()
        } catch {
            printError("stateroom: \(error.description)")
            throw ExitCode(1)
        }
    }
}

struct FolderOptions: ParsableArguments {
    @Option(name: .customLong("path"), help: "The service folder (default: the current folder).")
    var path: String = "."
    @Flag(name: .shortAndLong, help: "Print the compiler and linker command lines.")
    var verbose = false

    func builder() throws(CLIError) -> (GuestBuilder, ServiceFolder) {
        let folder = try ServiceFolder(path: path)
        let builder = GuestBuilder(toolchain: try Toolchain.locate(), sdk: try SDKSources.locate(), verbose: verbose)
        return (builder, folder)
    }
}

struct ServerOptions: ParsableArguments {
    @Option(help: "Address to listen on.")
    var host = "0.0.0.0"
    @Option(help: "Port to listen on (0 picks a free one).")
    var port: UInt16 = 8080
    @Option(help: "Shard threads (default: 1 for dev, the number of CPUs for serve).")
    var shards: Int?
    @Option(help: "Guest execution budget per callback, in milliseconds.")
    var wasmCallbackBudget: Int = 100
    @Option(help: "Memory cap of one room's instance, in bytes.")
    var wasmMaxMemory: Int = 64 << 20
    @Option(help: "Serve HTTPS and WSS with this certificate chain (PEM; with --tls-key). SIGHUP reloads it.")
    var tlsCert: String?
    @Option(help: "Private key (PEM, RSA or ECDSA) of --tls-cert.")
    var tlsKey: String?
    @Option(help: "Require a JWT signed with this HS256 secret on every WebSocket upgrade (its sub names the client).")
    var jwtSecret: String?
    @Option(help: "Like --jwt-secret, with the secret read from this file.")
    var jwtSecretFile: String?
    @Option(help: "Require a JWT signed with the private half of this public key (PEM: RSA for RS256, P-256 for ES256).")
    var jwtPublicKey: String?
    @Option(help: "Keep rooms in this Redis (redis://HOST:PORT[/DB]): saved when they empty, every --snapshot-interval seconds and on shutdown; restored on their next client.")
    var store: String?
    @Option(help: "With --store: seconds between saves of the rooms that changed.")
    var snapshotInterval: Double = 5
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func validate() throws {
        if let store {
            do { _ = try RedisEndpoint(url: store) } catch { throw ValidationError("--store: \(error)") }
        }
        if !(0.1...3600).contains(snapshotInterval) { throw ValidationError("--snapshot-interval must be between 0.1 and 3600") }
        guard Logger.Level(rawValue: logLevel) != nil else { throw ValidationError("unknown log level '\(logLevel)'") }
        if let s = shards, s < 1 || s > 1024 { throw ValidationError("--shards must be between 1 and 1024") }
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("--tls-cert and --tls-key go together") }
    }

    var limits: WasmLimits {
        WasmLimits(callbackBudgetMilliseconds: wasmCallbackBudget, maxMemoryBytes: wasmMaxMemory)
    }

    func configuration(defaultShards: Int?, staticDirectory: String?, pin: Bool) throws(CLIError) -> ServerConfiguration {
        var config = ServerConfiguration()
        config.host = host
        config.port = port
        if let s = shards ?? defaultShards { config.shards = s }
        config.staticDirectory = staticDirectory
        config.pinThreads = pin
        if let tlsCert, let tlsKey { config.tls = TLSFiles(certificateChain: tlsCert, privateKey: tlsKey) }
        do {
            config.jwt = try JWTVerifier.configured(secret: jwtSecret, secretFile: jwtSecretFile, publicKeyFile: jwtPublicKey)
            config.store = try store.map { try RedisEndpoint(url: $0) }
        } catch {
            throw CLIError("\(error)")
        }
        config.snapshotInterval = snapshotInterval
        return config
    }

    func bootstrapLogging() -> Logger {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        return Logger(label: "stateroom")
    }
}

extension StateroomCommand {
    struct Build: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Build the service in this folder to dist/<name>.wasm.")

        @OptionGroup var folder: FolderOptions
        @Flag(help: "Optimize for size (-Osize, stripped); the default is a fast -Onone build.")
        var release = false
        @Flag(help: "Also build the same sources natively with the script harness: dist/<name>-native.")
        var native = false
        @Flag(help: "Rebuild even if the module is up to date.")
        var force = false

        func run() throws {
            try StateroomCommand.reporting { () throws(CLIError) in
                let (builder, service) = try folder.builder()
                let mode: GuestBuilder.Mode = release ? .release : .debug
                let r = try builder.buildWasm(service, mode: mode, force: force)
                let size = formatSize(r.bytes)
                if r.upToDate {
                    print("\(relative(r.output)) is up to date (\(size), \(mode.rawValue))")
                } else {
                    print("built \(relative(r.output)) (\(size), \(mode.rawValue)) in \(formatSeconds(r.seconds))")
                }
                if native {
                    let n = try builder.buildNative(service)
                    print("built \(relative(n.output)) (native harness) in \(formatSeconds(n.seconds))")
                }
            }
        }
    }

    struct Dev: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Build, serve on :8080 with the client/ folder at /, and rebuild and reload on every change.")

        @OptionGroup var folder: FolderOptions
        @OptionGroup var server: ServerOptions
        @Flag(help: "Build with -Osize instead of the fast -Onone build.")
        var release = false
        @Option(help: "How often to look for changed sources, in milliseconds.")
        var pollInterval: Int = 300

        func run() throws {
            let logger = server.bootstrapLogging()
            try StateroomCommand.reporting { () throws(CLIError) in
                let (builder, service) = try folder.builder()
                let mode: GuestBuilder.Mode = release ? .release : .debug
                let first = try builder.buildWasm(service, mode: mode)
                print("built \(relative(first.output)) (\(formatSize(first.bytes)), \(mode.rawValue)) in \(formatSeconds(first.seconds))")
                let factory = try loadFactory(first.output, limits: server.limits, logger: logger)
                let config = try server.configuration(defaultShards: 1, staticDirectory: service.staticDirectory, pin: false)
                var watched = fingerprint(service)
                try runServer(config: config, factory: factory, logger: logger,
                              banner: "stateroom dev: \(service.name)", tickMilliseconds: max(50, pollInterval)) { server in
                    let now = fingerprint(service)
                    guard now != watched else { return }
                    watched = now
                    print("stateroom dev: change detected, rebuilding \(service.name)")
                    do throws(CLIError) {
                        let r = try builder.buildWasm(service, mode: mode)
                        let newFactory = try loadFactory(r.output, limits: self.server.limits, logger: logger)
                        server.reload(factory: newFactory)
                        print("stateroom dev: reloaded \(relative(r.output)) (\(formatSize(r.bytes))) after \(formatSeconds(r.seconds)); rooms restarted (1012)")
                    } catch {
                        printError("stateroom dev: \(error.description); still serving the previous build")
                    }
                }
            }
        }

        /// Paths, times and sizes of the watched files (new, deleted and changed files all count).
        func fingerprint(_ service: ServiceFolder) -> String {
            var h = FNV64()
            for f in service.watchedFiles {
                h.add(f)
                if let s = Files.stamp(f) { h.add(s.mtime); h.add(s.size) }
            }
            return h.hex
        }
    }

    struct Serve: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Serve a Stateroom wasm module.")

        @Argument(help: "The module (.wasm).")
        var module: String
        @OptionGroup var server: ServerOptions
        @Option(name: .customLong("static"), help: "Serve static files from this folder at /.")
        var staticDirectory: String?
        @Flag(help: "Do not pin shard threads to cores.")
        var noPin = false

        func run() throws {
            let logger = server.bootstrapLogging()
            try StateroomCommand.reporting { () throws(CLIError) in
                if let s = staticDirectory, !Files.isDirectory(s) { throw CLIError("--static \(s) is not a folder") }
                let factory = try loadFactory(module, limits: server.limits, logger: logger)
                let config = try server.configuration(defaultShards: nil, staticDirectory: staticDirectory, pin: !noPin)
                try runServer(config: config, factory: factory, logger: logger,
                              banner: "stateroom serve: \(module)", tickMilliseconds: nil) { _ in }
            }
        }
    }

    struct Replay: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a module on a scripted conversation (transcript), or time one message.",
            discussion: """
                Same arguments and output as the native harness (`stateroom build --native`), so the \
                transcripts of one source compiled both ways can be compared:
                  stateroom replay dist/counter.wasm SCRIPT
                  stateroom replay dist/counter.wasm --bench increment [--count N] [--rounds N] [SCRIPT]
                Script lines: connect N [as IDENTITY] | disconnect N | text N WORDS… | binary N HEX | timer
                """)

        @Argument(help: "The module (.wasm).")
        var module: String
        @Argument(parsing: .captureForPassthrough, help: "SCRIPT and/or --bench TEXT, --client N, --count N, --rounds N.")
        var arguments: [String] = []

        func run() throws {
            // Guest output (`print`, a closeRoom reason) and failures go to stderr; the transcript to stdout.
            LoggingSystem.bootstrap { label in
                var h = StreamLogHandler.standardError(label: label)
                h.logLevel = .info
                return h
            }
            let logger = Logger(label: "stateroom")
            let status = try Self.replay(module: module, arguments: arguments, logger: logger)
            if status != 0 { throw ExitCode(status) }
        }

        static func replay(module: String, arguments: [String], logger: Logger) throws -> Int32 {
            var factory: WasmServiceFactory?
            try StateroomCommand.reporting { () throws(CLIError) in
                // No spare instances: one room, made here; a generous budget for long benches.
                factory = try loadFactory(module, limits: WasmLimits(callbackBudgetMilliseconds: 10_000, spareInstances: 0), logger: logger)
            }
            guard let factory else { return 1 }
            var made: WasmService?
            let status = stateroomScriptMain(arguments: arguments, name: "wasm") { () -> WasmService in
                let s = try? factory.makeWasmService(roomId: "replay", shard: 0)
                made = s
                return s!
            }
            if made?.isTerminated == true { printError("stateroom: the guest failed (see the log above)") }
            return status
        }
    }
}

/// Loads a module, turning a load error into a ``CLIError``.
func loadFactory(_ path: String, limits: WasmLimits, logger: Logger) throws(CLIError) -> WasmServiceFactory {
    guard Files.exists(path) else { throw CLIError("\(path) does not exist") }
    do {
        return try WasmServiceFactory(path: path, limits: limits, logger: logger)
    } catch {
        throw CLIError("cannot load \(path): \(error)")
    }
}

/// Starts a server and waits for SIGINT/SIGTERM (SIGHUP reloads the TLS pair); with
/// `tickMilliseconds`, calls `tick` that often on this thread (the dev loop's polling).
func runServer(config: ServerConfiguration, factory: any StateroomServiceFactory, logger: Logger, banner: String,
               tickMilliseconds: Int?, tick: (Server) -> Void) throws(CLIError) {
    let signals = StopSignals(hangup: true)
    let server = Server(configuration: config, logger: logger)
    do {
        try server.start(factory: factory)
    } catch {
        throw CLIError("cannot start the server: \(error)")
    }
    let shownHost = config.host == "0.0.0.0" ? "localhost" : config.host
    let scheme = config.tls == nil ? "http" : "https"
    print("\(banner): listening on \(scheme)://\(shownHost):\(server.port) (/status, /ws[/<room>]\(config.staticDirectory.map { ", files from \(relative($0)) at /" } ?? ""); shards: \(config.shards))")
    fflush(nil)
    while signals.wait(every: tickMilliseconds, { tick(server); fflush(nil) }) == SIGHUP {
        // A failed reload keeps the current pair; reloadTLS logs why.
        try? server.reloadTLS()
    }
    logger.info("stopping")
    server.stop()
}

func relative(_ path: String) -> String {
    let cwd = Files.currentDirectory()
    return path.hasPrefix(cwd + "/") ? String(path.dropFirst(cwd.count + 1)) : path
}

func formatSize(_ bytes: Int64) -> String {
    bytes >= 10_240 ? "\((bytes + 512) / 1024) KB" : "\(bytes) bytes"
}

func formatSeconds(_ s: Double) -> String {
    let tenths = Int((s * 10).rounded())
    return "\(tenths / 10).\(tenths % 10) s"
}

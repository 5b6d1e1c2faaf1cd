import Foundation
import Glibc
import IOCore

/// A server the bench started (`--spawn`, `--compare`): a shell command with `{port}` replaced by a
/// free port, run as `exec COMMAND` so the shell's pid becomes the server's (and CPU is read from it).
final class SpawnedServer {
    let command: String
    let port: UInt16
    let process: Process
    let logPath: String

    var pid: Int32 { process.processIdentifier }

    init(command template: String, host: String = "127.0.0.1", readyTimeout: Double = 30) throws {
        port = try freePort(host: host)
        command = template.replacingOccurrences(of: "{port}", with: String(port))
        logPath = NSTemporaryDirectory() + "stateroom-bench-server-\(getpid())-\(port).log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = FileHandle(forWritingAtPath: logPath)
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", "exec " + command]
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Ready when a TCP connection succeeds.
        let deadline = monotonicNanos() + UInt64(readyTimeout * 1e9)
        while monotonicNanos() < deadline {
            if !process.isRunning {
                throw BenchError("server exited before it was ready (status \(process.terminationStatus)): \(command)\n\(logTail())")
            }
            if canConnect(host: host, port: port) { return }
            usleep(50_000)
        }
        stop()
        throw BenchError("server did not accept connections within \(Int(readyTimeout)) s: \(command)\n\(logTail())")
    }

    func logTail(_ n: Int = 2000) -> String {
        guard let d = FileManager.default.contents(atPath: logPath) else { return "" }
        return String(decoding: d.suffix(n), as: UTF8.self)
    }

    /// SIGTERM, then SIGKILL after 5 s.
    func stop() {
        if process.isRunning {
            kill(pid, SIGTERM)
            let deadline = monotonicNanos() + 5_000_000_000
            while process.isRunning && monotonicNanos() < deadline { usleep(20_000) }
            if process.isRunning { kill(pid, SIGKILL) }
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(atPath: logPath)
    }
}

/// A port nobody listens on right now (bind to 0, read it back, close).
func freePort(host: String) throws -> UInt16 {
    let (fd, port) = try Socket.listen(host: host, port: 0, backlog: 1)
    Socket.close(fd)
    return port
}

func canConnect(host: String, port: UInt16) -> Bool {
    guard let addr = try? Connector(endpoint: Endpoint(host: host, port: port), window: 1, timeout: 1).address() else { return false }
    let fd = socket(addr.family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    if fd < 0 { return false }
    defer { Glibc.close(fd) }
    var storage = addr.storage
    let rc = withUnsafePointer(to: &storage) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, addr.length) }
    }
    return rc == 0
}

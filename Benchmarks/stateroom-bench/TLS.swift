import CTLS
import Foundation
import Glibc

/// The client side of `--tls`: one OpenSSL client context (CTLS) for every connection of the run.
/// Sessions live in memory (no descriptor): the connector and the workers lend ciphertext in and
/// collect ciphertext out through a ``TLSBuffers``, so every socket read and write stays theirs.
final class TLSClient: @unchecked Sendable {
    // @unchecked Sendable: an SSL_CTX is safe to share between threads once set up (SSL_new from
    // several threads); nothing here mutates it after init.
    let ctx: OpaquePointer
    /// The CA file the server is verified against; nil = no verification.
    let caFile: String?

    init(caFile: String?) throws {
        var err = [CChar](repeating: 0, count: 512)
        guard let ctx = ctls_client_ctx_new(caFile, &err, err.count) else {
            throw BenchError("TLS: \(cString(err))")
        }
        self.ctx = ctx
        self.caFile = caFile
    }

    deinit { ctls_ctx_free(ctx) }

    /// A client session sending `serverName` as SNI and checking the certificate against it
    /// (a DNS name or an IP address).
    func session(serverName: String) -> OpaquePointer? {
        ctls_conn_new(ctx, serverName)
    }

    var verification: String {
        caFile.map { "server certificate verified against \($0)" } ?? "server certificate NOT verified (give --ca-file)"
    }
}

/// One thread's TLS scratch: the `ctls_io` whose out-buffer every session of the thread seals into
/// (then copied to the connection's own pending bytes), and a plaintext buffer that received
/// records are opened into before the frame parser reads them. Allocated once per thread; the
/// out-buffer is malloc'd up front (ctls grows it with realloc, and frees it in `ctls_io_free`).
final class TLSBuffers {
    let io: UnsafeMutablePointer<ctls_io>
    let plain: UnsafeMutableRawPointer
    let plainCapacity: Int

    /// `plainCapacity` holds at least one record (16 KiB); more lets one parser call take several.
    init(plainCapacity: Int = 64 * 1024, outCapacity: Int = 64 * 1024) {
        io = .allocate(capacity: 1)
        io.initialize(to: ctls_io())
        let out = malloc(outCapacity)!
        io.pointee.out = out.assumingMemoryBound(to: UInt8.self)
        io.pointee.out_cap = outCapacity
        self.plainCapacity = max(plainCapacity, 16 * 1024)
        plain = .allocate(byteCount: self.plainCapacity, alignment: 64)
    }

    deinit {
        ctls_io_free(io)
        io.deallocate()
        plain.deallocate()
    }

    /// Lends `bytes` as the input of the next calls.
    @inline(__always)
    func lend(_ bytes: UnsafeRawPointer, _ count: Int) {
        io.pointee.in = bytes.assumingMemoryBound(to: UInt8.self)
        io.pointee.in_len = count
    }

    /// Input not yet consumed by the session.
    @inline(__always)
    var unread: Int { io.pointee.in_len }

    @inline(__always)
    func endLoan() {
        io.pointee.in = nil
        io.pointee.in_len = 0
    }

    /// Ciphertext produced by the last calls.
    @inline(__always)
    var outCount: Int { io.pointee.out_len }
    @inline(__always)
    var outBytes: UnsafeRawPointer { UnsafeRawPointer(io.pointee.out!) }
    @inline(__always)
    func clearOut() { io.pointee.out_len = 0 }

    /// Moves the produced ciphertext to the end of `array` (set-up path only).
    func moveOut(to array: inout [UInt8]) {
        let n = io.pointee.out_len
        if n > 0 {
            array.append(contentsOf: UnsafeRawBufferPointer(start: io.pointee.out, count: n))
            io.pointee.out_len = 0
        }
    }
}

/// OpenSSL's reason for the last failure on this thread.
func tlsLastError() -> String {
    var buf = [CChar](repeating: 0, count: 256)
    ctls_last_error(&buf, buf.count)
    let s = cString(buf)
    return s.isEmpty ? "unknown error" : s
}

/// The text of a NUL-terminated C buffer.
func cString(_ buf: [CChar]) -> String {
    String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// A throwaway self-signed ECDSA P-256 pair (CN=localhost, SAN DNS:localhost, IP:127.0.0.1) made
/// with the openssl CLI, for servers the bench starts itself when no --tls-cert/--tls-key is given.
func makeThrowawayCertificate(log: (String) -> Void) throws -> (cert: String, key: String, directory: String) {
    let dir = NSTemporaryDirectory() + "stateroom-bench-tls-\(getpid())"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    let cert = dir + "/cert.pem", key = dir + "/key.pem"
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost "
        + "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout '\(key)' -out '\(cert)' -days 7 2>/dev/null"]
    p.standardInput = FileHandle.nullDevice
    try p.run()
    p.waitUntilExit()
    guard p.terminationStatus == 0, FileManager.default.fileExists(atPath: cert) else {
        throw BenchError("could not make a throwaway certificate with the openssl CLI (give --tls-cert and --tls-key)")
    }
    log("TLS: throwaway self-signed pair (ECDSA P-256, CN=localhost, IP:127.0.0.1) in \(dir)")
    return (cert, key, dir)
}

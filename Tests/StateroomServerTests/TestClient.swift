import Glibc
import WireProtocol

/// Our own minimal blocking WebSocket client (masked frames, handshake check), built on
/// WireProtocol's client-side encoder and server-frame parser. For tests only.
final class TestClient {
    enum Event: Equatable {
        case text(String)
        case binary([UInt8])
        case ping([UInt8])
        case pong([UInt8])
        case close(UInt16?)
        case eof
        case timeout
    }

    let fd: Int32
    private var parser = FrameParser(role: .client, maxMessageSize: 64 << 20)
    private var pending: [UInt8] = []
    private var pendingOffset = 0

    init(port: UInt16, path: String = "/ws") throws {
        guard let fd = connectLoopback(port: port) else { throw ClientError("connect failed: errno \(errno)") }
        self.fd = fd
        let key = base64Encode((0..<16).map { _ in UInt8.random(in: 0...255) })
        writeAll(Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: \(key)\r\nSec-WebSocket-Version: 13\r\n\r\n".utf8))
        // Read the response head byte by byte up to the blank line; frames may follow it.
        var head: [UInt8] = []
        while !(head.count >= 4 && Array(head.suffix(4)) == [13, 10, 13, 10]) {
            var b: UInt8 = 0
            guard retryingEINTR({ read(fd, &b, 1) }) == 1 else { close(fd); throw ClientError("no handshake response") }
            head.append(b)
        }
        let text = String(decoding: head, as: UTF8.self)
        guard text.hasPrefix("HTTP/1.1 101"), text.contains("Sec-WebSocket-Accept: \(webSocketAccept(key: key))") else {
            close(fd)
            throw ClientError("bad handshake response: \(text)")
        }
    }

    deinit { close(fd) }

    func writeAll(_ bytes: [UInt8]) {
        var off = 0
        while off < bytes.count {
            let n = retryingEINTR { bytes.withUnsafeBytes { write(fd, $0.baseAddress! + off, $0.count - off) } }
            if n <= 0 { return }
            off += n
        }
    }

    func send(_ opcode: Opcode, _ payload: [UInt8], fin: Bool = true) {
        var out: [UInt8] = []
        let key = (UInt8.random(in: 0...255), UInt8.random(in: 0...255), UInt8.random(in: 0...255), UInt8.random(in: 0...255))
        payload.withUnsafeBytes { encodeClientFrame(opcode: opcode, fin: fin, payload: $0, maskKey: key, into: &out) }
        writeAll(out)
    }

    func send(text: String) { send(.text, Array(text.utf8)) }

    /// The next event, skipping nothing; `.timeout` after `seconds` of silence.
    func next(seconds: Int = 5) -> Event {
        var tv = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        while true {
            if pendingOffset < pending.count {
                let event = pending.withUnsafeMutableBytes { buf -> Event? in
                    switch parser.next(buf, offset: &pendingOffset) {
                    case .needMore: return nil
                    case .message(let op, let view):
                        return op == .text ? .text(String(decoding: view, as: UTF8.self)) : .binary(Array(view))
                    case .compressedMessage: return .close(1002)   // this client offers no extension
                    case .ping(let v): return .ping(Array(v))
                    case .pong(let v): return .pong(Array(v))
                    case .close(let code, _): return .close(code)
                    case .protocolError(let code): return .close(code.rawValue)
                    }
                }
                if let event { return event }
            }
            var buf = [UInt8](repeating: 0, count: 65536)
            let n = retryingEINTR { read(fd, &buf, buf.count) }
            if n == 0 { return .eof }
            if n < 0 { return errno == EAGAIN || errno == EWOULDBLOCK ? .timeout : .eof }
            pending = Array(buf[0..<n])
            pendingOffset = 0
        }
    }

    /// The next data message, answering nothing and skipping pings.
    func nextMessage(seconds: Int = 5) -> Event {
        while true {
            let e = next(seconds: seconds)
            if case .ping = e { continue }
            return e
        }
    }
}

struct ClientError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Raw HTTP exchange: sends `request`, returns the status code of the response.
func httpStatus(port: UInt16, _ request: String) -> Int? {
    guard let fd = connectLoopback(port: port) else { return nil }
    defer { close(fd) }
    let bytes = Array(request.utf8)
    _ = retryingEINTR { bytes.withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) } }
    var buf = [UInt8](repeating: 0, count: 4096)
    let n = retryingEINTR { read(fd, &buf, buf.count) }
    guard n > 12 else { return nil }
    return Int(String(decoding: buf[9..<12], as: UTF8.self))
}

/// Repeats a system call interrupted by a signal. A socket with a receive timeout is never
/// restarted after a signal handler runs (signal(7)), whatever SA_RESTART says, and tests run
/// beside others that spawn processes, so their SIGCHLD lands on any thread.
func retryingEINTR(_ call: () -> Int) -> Int {
    while true {
        let n = call()
        if n >= 0 || errno != EINTR { return n }
    }
}

/// A blocking TCP connection to 127.0.0.1:`port` with a 5 s receive timeout, or nil.
func connectLoopback(port: UInt16) -> Int32? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = port.bigEndian
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard rc == 0 else { close(fd); return nil }
    var tv = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    return fd
}

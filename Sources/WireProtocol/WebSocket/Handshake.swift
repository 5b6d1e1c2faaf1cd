// The opening handshake's key check and accept value (RFC 6455 §4.2.2). SHA-1 comes from OpenSSL.

import CLibCrypto

/// The GUID appended to the client's key before hashing (RFC 6455 §1.3).
let webSocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/// The `Sec-WebSocket-Accept` value for a client's `Sec-WebSocket-Key`: base64(SHA-1(key + GUID)).
/// `key` is the header value as sent (already trimmed of whitespace).
public func webSocketAccept(key: UnsafeRawBufferPointer) -> String {
    var input: [UInt8] = []
    input.reserveCapacity(key.count + 36)
    input.append(contentsOf: key)
    input.append(contentsOf: webSocketGUID.utf8)
    var digest = [UInt8](repeating: 0, count: 20)
    input.withUnsafeBufferPointer { inp in
        digest.withUnsafeMutableBufferPointer { out in
            _ = SHA1(inp.baseAddress, inp.count, out.baseAddress)
        }
    }
    return base64Encode(digest)
}

/// The `Sec-WebSocket-Accept` value for a key given as a string.
public func webSocketAccept(key: String) -> String {
    var key = key
    return key.withUTF8 { webSocketAccept(key: UnsafeRawBufferPointer($0)) }
}

let base64Alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

/// Standard padded base64 (RFC 4648 §4).
public func base64Encode(_ bytes: [UInt8]) -> String {
    var out: [UInt8] = []
    out.reserveCapacity((bytes.count + 2) / 3 * 4)
    var i = 0
    while i + 3 <= bytes.count {
        let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
        out.append(base64Alphabet[Int(v >> 18 & 63)])
        out.append(base64Alphabet[Int(v >> 12 & 63)])
        out.append(base64Alphabet[Int(v >> 6 & 63)])
        out.append(base64Alphabet[Int(v & 63)])
        i += 3
    }
    let rest = bytes.count - i
    if rest > 0 {
        let v = UInt32(bytes[i]) << 16 | (rest == 2 ? UInt32(bytes[i + 1]) << 8 : 0)
        out.append(base64Alphabet[Int(v >> 18 & 63)])
        out.append(base64Alphabet[Int(v >> 12 & 63)])
        out.append(rest == 2 ? base64Alphabet[Int(v >> 6 & 63)] : UInt8(ascii: "="))
        out.append(UInt8(ascii: "="))
    }
    return String(decoding: out, as: UTF8.self)
}

@inline(__always)
func isBase64Char(_ c: UInt8) -> Bool {
    switch c {
    case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
         UInt8(ascii: "+"), UInt8(ascii: "/"):
        return true
    default:
        return false
    }
}

/// Whether `key` is base64 that decodes to exactly 16 bytes: 22 base64 characters then `==`.
/// (Non-zero trailing bits in the 22nd character are tolerated, as common decoders do.)
public func isValidWebSocketKey(_ key: UnsafeRawBufferPointer) -> Bool {
    guard key.count == 24, key[22] == UInt8(ascii: "="), key[23] == UInt8(ascii: "=") else { return false }
    for i in 0..<22 where !isBase64Char(key[i]) {
        return false
    }
    return true
}

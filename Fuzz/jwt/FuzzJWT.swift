// Fuzz target: the JWT verifier (`JWTVerifier.verify`, Sources/StateroomServer/Auth/JWT.swift,
// compiled alone as the module StateroomServer).
//
// The first byte chooses what the rest is:
// - even: a token as sent. The HS256, RS256 and ES256 verifiers answer it twice the same way; the
//   RS256 and ES256 ones never accept it (no input made here is signed with their private keys).
// - odd: the JSON texts of a header and a payload (cut at the first NUL; without one, the header
//   is `{"alg":"HS256","typ":"JWT"}`), made into a token here and signed with the HS256 secret
//   (HMAC-SHA256 from libcrypto, computed here). The HS256 verifier never calls that signature bad,
//   whatever the JSON; the other two never accept it.
// For every token accepted: at most 8192 bytes in three parts, a subject of 1 to 1024 bytes,
// `exp`/`nbf` honoured at the clock given, the same answer twice, and the token with any one
// signature character changed is refused.

import CLibCrypto
import StateroomServer

let secret = Array("fuzz-secret-0123456789".utf8)
let now: Double = 2_000_000_000

// Fixed public keys (made by Tests/StateroomServerTests/Fixtures/make_jwt_fixtures.py).
let rsaPEM = """
    -----BEGIN PUBLIC KEY-----
    MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAl2CvRcT8+ouv1Bj8T/iO
    zwbOgb3mv8SjOdyUjaL84+WxTK+tU+sow/jY+/mYU6F/nynnDf8XiauRiR/PIl+u
    162nmxU6sIuDOShZQWN1AnPdo3HbJ+wDIsa949E6jw2VCtmYYhGtuagcSSk1gDg5
    yhNNgMKpuT17hFYEqa6du7p/gkaHsSo11WRIrS203NXdUokyPhRPRibJqH/j93LI
    ysd4jDs53OZMqz0OS0seILQvK305gwjkVDnR30YaPMnds0xqgkpUGfSHG0D8/HZn
    d/YErC/kupWnZSu2+hDV2gTUCPo5elWF6CnPNJQnxiiVtsLPY9soWDbDKWwFdE+A
    YQIDAQAB
    -----END PUBLIC KEY-----
    """
let ecPEM = """
    -----BEGIN PUBLIC KEY-----
    MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEaLGJ4Wdwk7w63SJm6bcdhMbXhgO5
    nXLiYMXH0zmfeIdsq+XO8CMFslMK0YhRQ1kOwORAHxozTSsRd71QSEXsdA==
    -----END PUBLIC KEY-----
    """

let hs256 = try! JWTVerifier(hmacSecret: secret)
let rs256 = try! JWTVerifier(publicKeyPEM: rsaPEM)
let es256 = try! JWTVerifier(publicKeyPEM: ecPEM)

let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

/// Unpadded base64url.
func b64url(_ bytes: [UInt8]) -> String {
    var out: [UInt8] = []
    var i = 0
    while i < bytes.count {
        let n = min(3, bytes.count - i)
        var v = 0
        for k in 0..<3 { v = v << 8 | (k < n ? Int(bytes[i + k]) : 0) }
        for k in 0...n { out.append(alphabet[(v >> (18 - 6 * k)) & 63]) }
        i += 3
    }
    return String(decoding: out, as: UTF8.self)
}

func hmacSHA256(_ data: [UInt8]) -> [UInt8] {
    var mac = [UInt8](repeating: 0, count: 64)
    var length: UInt32 = 0
    let ok = HMAC(EVP_sha256(), secret, Int32(secret.count), data, data.count, &mac, &length)
    require(ok != nil && length == 32, "HMAC failed")
    return Array(mac.prefix(32))
}

func answer(_ v: JWTVerifier, _ token: String) -> Result<JWTClaims, JWTError> {
    Result { () throws(JWTError) in try v.verify(token[...], now: now) }
}

/// The properties every verifier keeps for `token`; returns its answer.
@discardableResult
func check(_ v: JWTVerifier, _ token: String, mayAccept: Bool) -> Result<JWTClaims, JWTError> {
    let first = answer(v, token)
    require(first == answer(v, token), "\(v.algorithm): two answers for one token")
    guard case .success(let claims) = first else { return first }
    require(mayAccept, "\(v.algorithm) accepted a token no one could sign for it: \(token)")
    let bytes = Array(token.utf8)
    require(bytes.count <= 8192 && bytes.filter { $0 == UInt8(ascii: ".") }.count == 2, "accepted a token of the wrong shape")
    require(!claims.subject.isEmpty && claims.subject.utf8.count <= 1024, "accepted subject of \(claims.subject.utf8.count) bytes")
    if let exp = claims.expiresAt { require(now <= exp + v.clockSkew, "accepted past exp \(exp)") }
    if let nbf = claims.notBefore { require(now + v.clockSkew >= nbf, "accepted before nbf \(nbf)") }
    // Any one signature character changed: refused.
    let signatureStart = bytes.lastIndex(of: UInt8(ascii: "."))! + 1
    for i in signatureStart..<bytes.count {
        var altered = bytes
        altered[i] = altered[i] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        if case .success = answer(v, String(decoding: altered, as: UTF8.self)) {
            fail("\(v.algorithm) accepted the token with signature character \(i - signatureStart) changed")
        }
    }
    return first
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var input = ByteCursor(UnsafeRawBufferPointer(start: data, count: size))
    let mode = input.u8()
    let rest = input.rest()
    if mode & 1 == 0 {
        let token = String(decoding: rest, as: UTF8.self)
        check(hs256, token, mayAccept: true)
        check(rs256, token, mayAccept: false)
        check(es256, token, mayAccept: false)
    } else {
        let header: [UInt8], payload: [UInt8]
        if let nul = rest.firstIndex(of: 0) {
            header = Array(rest[..<nul])
            payload = Array(rest[(nul + 1)...])
        } else {
            header = Array(#"{"alg":"HS256","typ":"JWT"}"#.utf8)
            payload = rest
        }
        let signingInput = b64url(header) + "." + b64url(payload)
        let token = signingInput + "." + b64url(hmacSHA256(Array(signingInput.utf8)))
        if case .failure(.badSignature) = check(hs256, token, mayAccept: true) {
            fail("a token signed with the secret was said to have a bad signature: \(token)")
        }
        check(rs256, token, mayAccept: false)
        check(es256, token, mayAccept: false)
    }
    return 0
}

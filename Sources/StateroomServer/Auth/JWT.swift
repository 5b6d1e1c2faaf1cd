import CLibCrypto
import FoundationEssentials

// JSON Web Tokens (RFC 7519) for deciding who may open a room: compact JWS (RFC 7515) signed with
// the one algorithm the configured key implies (HS256, RS256 or ES256, RFC 7518 §3). Every
// cryptographic step is OpenSSL's libcrypto; the JSON is FoundationEssentials' JSONDecoder. Strict
// on purpose: one algorithm per verifier (no `none`, no HS256 with a public key as the secret), no
// header extensions (`crit`), no duplicate member names, one spelling of each base64url part.
// Header members that would name another key (`kid`, `jku`, `jwk`, `x5u`, `x5c`) are ignored: the
// key is the configured one, always.

/// The claims the server uses from a verified token.
public struct JWTClaims: Sendable, Equatable {
    /// `sub`: who the token was issued to (a non-empty string, at most 1024 bytes).
    public var subject: String
    /// `rooms`: the rooms the token opens; nil (no `rooms` claim) places no limit.
    public var rooms: [String]?
    /// `exp` (NumericDate, seconds since the epoch), if the token has one.
    public var expiresAt: Double?
    /// `nbf` (NumericDate), if the token has one.
    public var notBefore: Double?

    public init(subject: String, rooms: [String]? = nil, expiresAt: Double? = nil, notBefore: Double? = nil) {
        self.subject = subject
        self.rooms = rooms
        self.expiresAt = expiresAt
        self.notBefore = notBefore
    }

    /// Whether the token opens `room`: any room without a `rooms` claim, else exactly those listed.
    public func permits(room: String) -> Bool {
        rooms.map { $0.contains(room) } ?? true
    }
}

/// Why a token was refused. `description` is one short line for an HTTP 401 body; it never quotes
/// the token except an `alg` or `typ` value made of at most 32 plain characters.
public enum JWTError: Error, Equatable, CustomStringConvertible {
    /// Not a compact JWS with JSON-object header and payload, or a claim of the wrong JSON type.
    case malformed(String)
    /// The header's `alg` is not the verifier's algorithm (`none` included).
    case algorithmNotAccepted(String, expected: String)
    /// The header's `typ` is present and not `JWT`.
    case typeNotAccepted(String)
    /// The header has a `crit` member: extensions this verifier does not understand.
    case criticalExtension
    /// The signature does not verify with the configured key.
    case badSignature
    /// `exp` (plus the clock skew) is in the past.
    case expired
    /// `nbf` (minus the clock skew) is in the future.
    case notYetValid
    /// No `sub` claim, or an empty one.
    case missingSubject

    public var description: String {
        switch self {
        case .malformed(let why): "malformed token: \(why)"
        case .algorithmNotAccepted(let alg, let expected): "algorithm \(alg) not accepted (this server verifies \(expected))"
        case .typeNotAccepted(let typ): "token type \(typ) not accepted (expected JWT)"
        case .criticalExtension: "token requires extensions this server does not understand (crit)"
        case .badSignature: "bad signature"
        case .expired: "token expired"
        case .notYetValid: "token not yet valid (nbf)"
        case .missingSubject: "token has no subject (sub)"
        }
    }
}

/// A verification key that cannot be used (at startup): unreadable PEM, unsupported key type,
/// RSA below 2048 bits, empty secret.
public struct JWTKeyError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Verifies compact JWS tokens with one key and the one algorithm that key implies.
///
/// Immutable once made and safe to share between shards: every call gets its own digest context.
public final class JWTVerifier: @unchecked Sendable {
    // @unchecked: the only non-Sendable member is the EVP_PKEY, which is never modified after
    // init; OpenSSL 3 allows concurrent verifications with one key (each has its own EVP_MD_CTX).

    /// The longest token accepted, in bytes.
    public static let maxTokenBytes = 8192
    /// The longest `sub` accepted, in bytes.
    public static let maxSubjectBytes = 1024

    /// "HS256", "RS256" or "ES256": the only `alg` this verifier accepts.
    public let algorithm: String
    /// Seconds of tolerance between the issuer's clock and ours, for `exp` and `nbf`.
    public let clockSkew: Double

    private enum Key {
        case hmac([UInt8])
        case rsa(OpaquePointer)  // EVP_PKEY*, owned
        case ec(OpaquePointer)   // EVP_PKEY*, owned, P-256
    }
    private let key: Key

    /// HS256 with a shared secret (the bytes as configured; not base64-decoded).
    public init(hmacSecret: [UInt8], clockSkew: Double = 30) throws(JWTKeyError) {
        guard !hmacSecret.isEmpty else { throw JWTKeyError("the HS256 secret is empty") }
        guard hmacSecret.count <= Int(Int32.max) else { throw JWTKeyError("the HS256 secret is too long") }
        self.clockSkew = try Self.checked(clockSkew)
        key = .hmac(hmacSecret)
        algorithm = "HS256"
    }

    /// RS256 for an RSA public key (at least 2048 bits), ES256 for an EC P-256 one: a PEM
    /// `PUBLIC KEY` (SubjectPublicKeyInfo) or a PEM `CERTIFICATE`, whose key is used (the
    /// certificate itself, its validity and issuer are not checked).
    public init(publicKeyPEM: String, clockSkew: Double = 30) throws(JWTKeyError) {
        self.clockSkew = try Self.checked(clockSkew)
        let pkey = try Self.readPublicKey(publicKeyPEM)
        switch EVP_PKEY_get_base_id(pkey) {
        case EVP_PKEY_RSA:
            let bits = EVP_PKEY_get_bits(pkey)
            guard bits >= 2048 else {
                EVP_PKEY_free(pkey)
                throw JWTKeyError("the RSA key has \(bits) bits; RS256 needs at least 2048")
            }
            key = .rsa(pkey)
            algorithm = "RS256"
        case EVP_PKEY_EC:
            var name = [CChar](repeating: 0, count: 64)
            var length = 0
            let curve = EVP_PKEY_get_group_name(pkey, &name, name.count, &length) == 1
                ? String(decoding: name.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self) : "unknown"
            guard curve == "prime256v1" || curve == "P-256" || curve == "secp256r1" else {
                EVP_PKEY_free(pkey)
                throw JWTKeyError("the EC key is on curve \(curve); ES256 needs P-256 (prime256v1)")
            }
            key = .ec(pkey)
            algorithm = "ES256"
        default:
            let type = EVP_PKEY_get0_type_name(pkey).map { String(cString: $0) } ?? "unknown"
            EVP_PKEY_free(pkey)
            throw JWTKeyError("unsupported key type \(type) (expected RSA of at least 2048 bits, or EC P-256)")
        }
    }

    deinit {
        switch key {
        case .hmac: break
        case .rsa(let pkey), .ec(let pkey): EVP_PKEY_free(pkey)
        }
    }

    /// The claims of `token` if it is a compact JWS signed with this verifier's key and
    /// algorithm, valid at `now` (seconds since the epoch) give or take ``clockSkew``.
    public func verify(_ token: Substring, now: Double) throws(JWTError) -> JWTClaims {
        guard token.utf8.count <= Self.maxTokenBytes else {
            throw .malformed("token longer than \(Self.maxTokenBytes) bytes")
        }
        let bytes = Array(token.utf8)
        var dots: [Int] = []
        for i in bytes.indices where bytes[i] == UInt8(ascii: ".") {
            dots.append(i)
            if dots.count > 2 { break }
        }
        guard dots.count == 2 else { throw .malformed("expected three dot-separated parts") }
        guard let headerJSON = base64URLDecode(bytes[..<dots[0]]),
              let payloadJSON = base64URLDecode(bytes[(dots[0] + 1)..<dots[1]]),
              let signature = base64URLDecode(bytes[(dots[1] + 1)...])
        else { throw .malformed("a part is not unpadded base64url") }

        // The header decides nothing but whether to go on: the algorithm is ours, not its.
        let header = try decodeObject(JOSEHeader.self, from: headerJSON, what: "header")
        guard header.alg.utf8.elementsEqual(algorithm.utf8) else {  // bytes, not canonical equivalence
            throw .algorithmNotAccepted(printable(header.alg), expected: algorithm)
        }
        if let typ = header.typ, !isJWT(typ) { throw .typeNotAccepted(printable(typ)) }
        if header.hasCrit { throw .criticalExtension }

        guard signatureIsValid(signature, over: bytes[..<dots[1]]) else { throw .badSignature }

        // Signed by our key: now the claims.
        let claims = try decodeObject(ClaimSet.self, from: payloadJSON, what: "payload").claims
        guard !claims.subject.isEmpty else { throw .missingSubject }
        // Written so that a NaN anywhere refuses.
        if let exp = claims.expiresAt, !(now <= exp + clockSkew) { throw .expired }
        if let nbf = claims.notBefore, !(now + clockSkew >= nbf) { throw .notYetValid }
        return claims
    }

    // MARK: Signatures

    private func signatureIsValid(_ signature: [UInt8], over input: ArraySlice<UInt8>) -> Bool {
        switch key {
        case .hmac(let secret):
            guard signature.count == 32, let mac = hmacSHA256(key: secret, input) else { return false }
            return CRYPTO_memcmp(mac, signature, 32) == 0
        case .rsa(let pkey):
            // RSASSA-PKCS1-v1_5: the signature is exactly as long as the modulus (RFC 8017 §8.2.2).
            guard signature.count == Int(EVP_PKEY_get_size(pkey)) else { return false }
            return digestVerify(pkey, signature, input, pkcs1: true)
        case .ec(let pkey):
            // JWS carries r || s, 32 bytes each (RFC 7518 §3.4); OpenSSL wants DER.
            guard signature.count == 64, let der = derECDSASignature(signature) else { return false }
            return digestVerify(pkey, der, input, pkcs1: false)
        }
    }

    /// EVP_DigestVerify with SHA-256, in a context of this call's own.
    private func digestVerify(_ pkey: OpaquePointer, _ signature: [UInt8], _ input: ArraySlice<UInt8>, pkcs1: Bool) -> Bool {
        guard let ctx = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(ctx) }
        var pctx: OpaquePointer?
        guard EVP_DigestVerifyInit(ctx, &pctx, EVP_sha256(), nil, pkey) == 1,
              !pkcs1 || EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) == 1
        else {
            ERR_clear_error()
            return false
        }
        let result = signature.withUnsafeBufferPointer { s in
            input.withUnsafeBufferPointer { d in
                EVP_DigestVerify(ctx, s.baseAddress, s.count, d.baseAddress, d.count)
            }
        }
        guard result == 1 else {
            ERR_clear_error()
            return false
        }
        return true
    }

    /// The DER ECDSA-Sig-Value for a JWS ES256 signature (r || s, big-endian, 32 bytes each).
    private func derECDSASignature(_ raw: [UInt8]) -> [UInt8]? {
        guard raw.count == 64, let sig = ECDSA_SIG_new() else { return nil }
        defer { ECDSA_SIG_free(sig) }
        let (r, s) = raw.withUnsafeBufferPointer { p in
            (BN_bin2bn(p.baseAddress, 32, nil), BN_bin2bn(p.baseAddress! + 32, 32, nil))
        }
        guard let r, let s, ECDSA_SIG_set0(sig, r, s) == 1 else {  // set0 takes r and s
            BN_free(r)
            BN_free(s)
            ERR_clear_error()
            return nil
        }
        let length = i2d_ECDSA_SIG(sig, nil)
        guard length > 0 else {
            ERR_clear_error()
            return nil
        }
        var der = [UInt8](repeating: 0, count: Int(length))
        let written = der.withUnsafeMutableBufferPointer { buffer in
            var cursor = buffer.baseAddress
            return i2d_ECDSA_SIG(sig, &cursor)
        }
        return written == length ? der : nil
    }

    // MARK: Keys

    private static func checked(_ skew: Double) throws(JWTKeyError) -> Double {
        guard skew.isFinite, skew >= 0 else { throw JWTKeyError("the clock skew must be a finite number of seconds, at least 0") }
        return skew
    }

    /// The public key of a PEM `PUBLIC KEY` or `CERTIFICATE` (the first such block), owned by the caller.
    private static func readPublicKey(_ pem: String) throws(JWTKeyError) -> OpaquePointer {
        let bytes = Array(pem.utf8)
        guard !bytes.isEmpty, bytes.count <= Int(Int32.max) else { throw JWTKeyError("the public key PEM is empty") }
        let pkey: OpaquePointer? = bytes.withUnsafeBytes { buffer in
            func bio() -> OpaquePointer? { BIO_new_mem_buf(buffer.baseAddress, Int32(buffer.count)) }
            if let b = bio() {
                defer { BIO_free(b) }
                if let key = PEM_read_bio_PUBKEY(b, nil, noPassphrase, nil) { return key }
            }
            ERR_clear_error()
            if let b = bio() {
                defer { BIO_free(b) }
                if let cert = PEM_read_bio_X509(b, nil, noPassphrase, nil) {
                    defer { X509_free(cert) }
                    return X509_get_pubkey(cert)
                }
            }
            return nil
        }
        ERR_clear_error()
        if let pkey { return pkey }
        if pem.contains("PRIVATE KEY-----") {
            throw JWTKeyError("the PEM holds a private key; configure the public key (BEGIN PUBLIC KEY) or a certificate")
        }
        if pem.contains("BEGIN RSA PUBLIC KEY") {
            throw JWTKeyError("PKCS#1 RSA PUBLIC KEY PEM is not read; convert it: openssl rsa -RSAPublicKey_in -pubout")
        }
        throw JWTKeyError("no public key or certificate found in the PEM (expected BEGIN PUBLIC KEY or BEGIN CERTIFICATE)")
    }
}

/// A PEM passphrase callback that never prompts (no public key or certificate has a passphrase).
private func noPassphrase(_: UnsafeMutablePointer<CChar>?, _: Int32, _: Int32, _: UnsafeMutableRawPointer?) -> Int32 { -1 }

// MARK: Encoding and JSON

/// Strict unpadded base64url (RFC 7515 §2): the 64 URL-safe characters only, no `=`, a length
/// that is not 1 mod 4, and zero unused bits in the last character, so that each byte string has
/// exactly one accepted spelling. nil if `text` is not that.
func base64URLDecode(_ text: ArraySlice<UInt8>) -> [UInt8]? {
    guard text.count % 4 != 1 else { return nil }
    var out: [UInt8] = []
    out.reserveCapacity(text.count * 3 / 4)
    var accumulator: UInt32 = 0
    var bits = 0
    for c in text {
        let value: UInt8
        switch c {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = c - UInt8(ascii: "A")
        case UInt8(ascii: "a")...UInt8(ascii: "z"): value = c - UInt8(ascii: "a") + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): value = c - UInt8(ascii: "0") + 52
        case UInt8(ascii: "-"): value = 62
        case UInt8(ascii: "_"): value = 63
        default: return nil
        }
        accumulator = accumulator << 6 | UInt32(value)
        bits += 6
        if bits >= 8 {
            bits -= 8
            out.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
        }
        accumulator &= (1 << UInt32(bits)) - 1
    }
    return accumulator == 0 ? out : nil
}

/// A member name, for reading JSON objects whatever their members.
private struct MemberName: CodingKey, ExpressibleByStringLiteral {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
    init(stringLiteral value: String) { stringValue = value }
}

/// The JOSE header members this verifier reads.
private struct JOSEHeader: Decodable {
    var alg: String
    var typ: String?
    var hasCrit: Bool

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: MemberName.self)
        guard c.contains("alg") else { throw JWTError.malformed("header has no alg") }
        guard let alg = try? c.decode(String.self, forKey: "alg") else { throw JWTError.malformed("header alg is not a string") }
        self.alg = alg
        if c.contains("typ") {
            guard let typ = try? c.decode(String.self, forKey: "typ") else { throw JWTError.malformed("header typ is not a string") }
            self.typ = typ
        }
        hasCrit = c.contains("crit")
    }
}

/// The registered claims this verifier reads, with their JSON types checked.
private struct ClaimSet: Decodable {
    var claims: JWTClaims

    init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: MemberName.self)
        guard c.contains("sub") else { throw JWTError.missingSubject }
        guard let sub = try? c.decode(String.self, forKey: "sub") else { throw JWTError.malformed("sub is not a string") }
        guard sub.utf8.count <= JWTVerifier.maxSubjectBytes else {
            throw JWTError.malformed("sub longer than \(JWTVerifier.maxSubjectBytes) bytes")
        }
        claims = JWTClaims(subject: sub)
        if c.contains("rooms") {
            guard let rooms = try? c.decode([String].self, forKey: "rooms") else {
                throw JWTError.malformed("rooms is not an array of strings")
            }
            claims.rooms = rooms
        }
        func date(_ name: MemberName) throws -> Double? {
            guard c.contains(name) else { return nil }
            guard let value = try? c.decode(Double.self, forKey: name), value.isFinite else {
                throw JWTError.malformed("\(name.stringValue) is not a number")
            }
            return value
        }
        claims.expiresAt = try date("exp")
        claims.notBefore = try date("nbf")
    }
}

/// `json` decoded as `T` (a JSON object), with the errors `T` throws kept and any other failure
/// reported as not an object; objects with a member name twice are refused (RFC 7515 §5.2 allows
/// refusing, and two parsers reading different values of one name is how tokens get confused).
private func decodeObject<T: Decodable>(_: T.Type, from json: [UInt8], what: String) throws(JWTError) -> T {
    let value: T
    do {
        value = try JSONDecoder().decode(T.self, from: Data(json))
    } catch let error as JWTError {
        throw error
    } catch {
        throw .malformed("\(what) is not a JSON object")
    }
    guard topLevelNamesAreUnique(json) else { throw .malformed("\(what) has a member name twice") }
    return value
}

/// Whether the outermost object of `json` (already accepted by JSONDecoder, so well-formed) names
/// each member once. Only skips strings and counts brackets; names with escapes are unescaped by
/// JSONDecoder, and compared as Swift strings (canonically equivalent names count as the same).
func topLevelNamesAreUnique(_ json: [UInt8]) -> Bool {
    var names = Set<String>()
    var depth = 0
    var expectName = false
    var i = 0
    while i < json.count {
        let c = json[i]
        switch c {
        case UInt8(ascii: "\""):
            var end = i + 1
            var escaped = false
            while end < json.count, json[end] != UInt8(ascii: "\"") {
                if json[end] == UInt8(ascii: "\\") {
                    escaped = true
                    end += 1
                }
                end += 1
            }
            guard end < json.count else { return false }
            if depth == 1 && expectName {
                let name: String
                if escaped {
                    guard let unescaped = try? JSONDecoder().decode(String.self, from: Data(json[i...end])) else { return false }
                    name = unescaped
                } else {
                    name = String(decoding: json[(i + 1)..<end], as: UTF8.self)
                }
                guard names.insert(name).inserted else { return false }
                expectName = false
            }
            i = end
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            depth += 1
            if depth == 1 { expectName = c == UInt8(ascii: "{") }
        case UInt8(ascii: "}"), UInt8(ascii: "]"):
            depth -= 1
        case UInt8(ascii: ","):
            if depth == 1 { expectName = true }
        default:
            break
        }
        i += 1
    }
    return true
}

/// `typ` is `JWT`, in any case (RFC 7519 §5.1).
private func isJWT(_ typ: String) -> Bool {
    let u = Array(typ.utf8)
    return u.count == 3 && u[0] | 0x20 == UInt8(ascii: "j") && u[1] | 0x20 == UInt8(ascii: "w") && u[2] | 0x20 == UInt8(ascii: "t")
}

/// A header value fit to quote in a one-line error: at most 32 of `A-Z a-z 0-9 . _ + / -`.
private func printable(_ value: String) -> String {
    let ok = !value.isEmpty && value.utf8.count <= 32 && value.utf8.allSatisfy { c in
        switch c {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "+"), UInt8(ascii: "/"), UInt8(ascii: "-"):
            true
        default:
            false
        }
    }
    return ok ? value : "(unprintable)"
}

/// HMAC-SHA256 of `message` under `key` (OpenSSL): 32 bytes, nil if OpenSSL failed. JWT's HS256
/// and seat tokens (Seats.swift).
func hmacSHA256(key: [UInt8], _ message: ArraySlice<UInt8>) -> [UInt8]? {
    var out = [UInt8](repeating: 0, count: 64)  // EVP_MAX_MD_SIZE
    var length: UInt32 = 0
    let done = key.withUnsafeBytes { k in
        message.withUnsafeBufferPointer { m in
            out.withUnsafeMutableBufferPointer { o in
                HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), m.baseAddress, m.count, o.baseAddress, &length)
            }
        }
    }
    guard done != nil, length == 32 else {
        ERR_clear_error()
        return nil
    }
    return Array(out.prefix(32))
}

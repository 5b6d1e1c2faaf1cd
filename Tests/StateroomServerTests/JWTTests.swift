@testable import StateroomServer
import Testing

// The JWT verifier (Sources/StateroomServer/Auth/JWT.swift) against keys and tokens made by
// PyJWT + cryptography (Fixtures/make_jwt_fixtures.py, pasted at the end of this file), at a
// fixed clock: JWTFixtures.now = 2_000_000_000, tokens expiring at JWTFixtures.exp = now + 3600.

private let now = JWTFixtures.now
private let exp = JWTFixtures.exp

private func hmacVerifier(_ secret: String = JWTFixtures.hmacSecret, clockSkew: Double = 30) throws -> JWTVerifier {
    try JWTVerifier(hmacSecret: Array(secret.utf8), clockSkew: clockSkew)
}
private func rsaVerifier(clockSkew: Double = 30) throws -> JWTVerifier {
    try JWTVerifier(publicKeyPEM: JWTFixtures.rsaPublicPEM, clockSkew: clockSkew)
}
private func ecVerifier() throws -> JWTVerifier {
    try JWTVerifier(publicKeyPEM: JWTFixtures.ecPublicPEM)
}

/// Why `verifier` refuses `token` at `at`; nil if it accepts it.
private func refusal(_ verifier: JWTVerifier, _ token: String, at: Double = now) -> JWTError? {
    do {
        _ = try verifier.verify(token[...], now: at)
        return nil
    } catch {
        return error
    }
}

/// The key error `make` throws, as its description; nil if it throws none.
private func keyError(_ make: () throws -> JWTVerifier) -> String? {
    do {
        _ = try make()
        return nil
    } catch let error as JWTKeyError {
        return error.description
    } catch {
        return "not a JWTKeyError: \(error)"
    }
}

/// Unpadded base64url (RFC 4648 §5), for the few tokens put together here from the generated ones.
private func b64url(_ text: String) -> String {
    let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    let bytes = Array(text.utf8)
    var out = ""
    var i = 0
    while i < bytes.count {
        let n = min(3, bytes.count - i)
        var v = 0
        for k in 0..<3 { v = v << 8 | (k < n ? Int(bytes[i + k]) : 0) }
        for k in 0...n { out.append(alphabet[(v >> (18 - 6 * k)) & 63]) }
        i += 3
    }
    return out
}

private func parts(_ token: String) -> [String] { token.split(separator: ".", omittingEmptySubsequences: false).map(String.init) }

@Suite struct JWTTests {
    // MARK: Valid tokens

    @Test func hs256TokenFromPyJWTVerifiesAndItsClaimsAreRead() throws {
        let v = try hmacVerifier()
        #expect(v.algorithm == "HS256")
        let claims = try v.verify(JWTFixtures.hs256Valid[...], now: now)
        #expect(claims == JWTClaims(subject: "alice", rooms: ["lobby", "game-7"], expiresAt: exp, notBefore: nil))
        #expect(claims.permits(room: "game-7") && !claims.permits(room: "game-8"))
    }

    @Test func rs256TokenVerifiesWithThePublicKeyAndWithACertificateForIt() throws {
        for pem in [JWTFixtures.rsaPublicPEM, JWTFixtures.rsaCertificatePEM] {
            let v = try JWTVerifier(publicKeyPEM: pem)
            #expect(v.algorithm == "RS256")
            let claims = try v.verify(JWTFixtures.rs256Valid[...], now: now)
            #expect(claims == JWTClaims(subject: "bob", rooms: ["lobby"], expiresAt: exp, notBefore: now - 1000))
        }
    }

    @Test func es256TokenVerifiesWithThePublicKeyAndWithACertificateForIt() throws {
        for pem in [JWTFixtures.ecPublicPEM, JWTFixtures.ecCertificatePEM] {
            let v = try JWTVerifier(publicKeyPEM: pem)
            #expect(v.algorithm == "ES256")
            let claims = try v.verify(JWTFixtures.es256Valid[...], now: now)
            #expect(claims == JWTClaims(subject: "carol", rooms: nil, expiresAt: exp, notBefore: nil))
            #expect(claims.permits(room: "anything"))
        }
    }

    @Test func typMayBeAbsentOrJWTInAnyCase() throws {
        let v = try hmacVerifier()
        #expect(try v.verify(JWTFixtures.hs256LowercaseTyp[...], now: now).subject == "alice")
        #expect(try v.verify(JWTFixtures.hs256NoTyp[...], now: now).subject == "alice")
    }

    @Test func anEmptyRoomsListOpensNoRoom() throws {
        let claims = try hmacVerifier().verify(JWTFixtures.hs256EmptyRooms[...], now: now)
        #expect(claims.rooms == [] && !claims.permits(room: "lobby"))
    }

    @Test func aTokenInsideALargerStringIsReadFromTheSubstring() throws {
        let header = "Bearer " + JWTFixtures.rs256Valid + ", more"
        let token = header.dropFirst(7).dropLast(6)
        #expect(try rsaVerifier().verify(token, now: now).subject == "bob")
    }

    @Test func nestedObjectsMayRepeatNamesOfTheOuterOne() throws {
        #expect(try hmacVerifier().verify(JWTFixtures.hs256NestedRepeatedNames[...], now: now).subject == "alice")
    }

    // MARK: Signatures

    @Test func aTokenSignedWithAnotherSecretIsRefused() throws {
        #expect(refusal(try hmacVerifier(), JWTFixtures.hs256WrongSecret) == .badSignature)
        #expect(refusal(try hmacVerifier("another secret"), JWTFixtures.hs256Valid) == .badSignature)
    }

    @Test func aTamperedPayloadIsRefusedByEachAlgorithm() throws {
        #expect(refusal(try hmacVerifier(), JWTFixtures.hs256Tampered) == .badSignature)
        #expect(refusal(try rsaVerifier(), JWTFixtures.rs256Tampered) == .badSignature)
        #expect(refusal(try ecVerifier(), JWTFixtures.es256Tampered) == .badSignature)
    }

    @Test func es256SignaturesMustBeRawRAndSOf64Bytes() throws {
        let v = try ecVerifier()
        #expect(refusal(v, JWTFixtures.es256DERSignature) == .badSignature)  // DER, as OpenSSL makes them
        #expect(refusal(v, JWTFixtures.es256ShortSignature) == .badSignature)  // 63 bytes
        let p = parts(JWTFixtures.es256Valid)
        #expect(refusal(v, p[0] + "." + p[1] + ".") == .badSignature)  // empty
        #expect(refusal(v, p[0] + "." + p[1] + "." + b64url(String(repeating: "\u{0}", count: 64))) == .badSignature)  // r = s = 0
    }

    @Test func rs256SignaturesMustBeAsLongAsTheModulus() throws {
        let p = parts(JWTFixtures.rs256Valid)
        #expect(refusal(try rsaVerifier(), p[0] + "." + p[1] + ".") == .badSignature)
        #expect(refusal(try rsaVerifier(), p[0] + "." + p[1] + "." + p[2] + "AAAA") == .badSignature)
    }

    @Test func claimsAreNotReadBeforeTheSignatureVerifies() throws {
        // Malformed claims under a signature made with another secret: the signature is what fails.
        let v = try hmacVerifier("not the fixtures' secret")
        for token in [JWTFixtures.hs256NoSub, JWTFixtures.hs256StringExp, JWTFixtures.hs256RoomsString,
                      JWTFixtures.hs256PayloadNotJSON, JWTFixtures.hs256DuplicateSub] {
            #expect(refusal(v, token) == .badSignature)
        }
    }

    // MARK: Algorithms

    @Test func algNoneIsRefusedByEveryVerifier() throws {
        for v in [try hmacVerifier(), try rsaVerifier(), try ecVerifier()] {
            #expect(refusal(v, JWTFixtures.noneToken) == .algorithmNotAccepted("none", expected: v.algorithm))
            #expect(refusal(v, JWTFixtures.noneUppercase) == .algorithmNotAccepted("NONE", expected: v.algorithm))
            // none with a signature from the HMAC key attached still names none.
            let p = parts(JWTFixtures.noneToken), signed = parts(JWTFixtures.hs256Valid)
            #expect(refusal(v, p[0] + "." + p[1] + "." + signed[2]) == .algorithmNotAccepted("none", expected: v.algorithm))
        }
        #expect(JWTError.algorithmNotAccepted("none", expected: "RS256").description
            == "algorithm none not accepted (this server verifies RS256)")
    }

    @Test func hs256KeyedWithThePublicKeyPEMIsRefusedByTheRSAAndECVerifiers() throws {
        // The token is a genuine HMAC over the PEM text: an HS256 verifier given that text accepts it.
        let confused = try hmacVerifier(JWTFixtures.rsaPublicPEM + "\n")
        #expect(try confused.verify(JWTFixtures.hs256KeyedWithRSAPublicPEM[...], now: now).subject == "mallory")
        for pem in [JWTFixtures.rsaPublicPEM, JWTFixtures.rsaCertificatePEM] {
            #expect(refusal(try JWTVerifier(publicKeyPEM: pem), JWTFixtures.hs256KeyedWithRSAPublicPEM)
                == .algorithmNotAccepted("HS256", expected: "RS256"))
        }
        #expect(refusal(try ecVerifier(), JWTFixtures.hs256KeyedWithECPublicPEM) == .algorithmNotAccepted("HS256", expected: "ES256"))
    }

    @Test func aTokenOfAnotherAlgorithmIsRefusedWhateverItsSignature() throws {
        #expect(refusal(try ecVerifier(), JWTFixtures.rs256Valid) == .algorithmNotAccepted("RS256", expected: "ES256"))
        #expect(refusal(try rsaVerifier(), JWTFixtures.es256Valid) == .algorithmNotAccepted("ES256", expected: "RS256"))
        #expect(refusal(try hmacVerifier(), JWTFixtures.rs256Valid) == .algorithmNotAccepted("RS256", expected: "HS256"))
        #expect(refusal(try rsaVerifier(), JWTFixtures.hs256Valid) == .algorithmNotAccepted("HS256", expected: "RS256"))
        #expect(refusal(try rsaVerifier(), JWTFixtures.rs384) == .algorithmNotAccepted("RS384", expected: "RS256"))
        #expect(refusal(try rsaVerifier(), JWTFixtures.ps256) == .algorithmNotAccepted("PS256", expected: "RS256"))
    }

    @Test func anAlgThatIsNotPlainTextIsNotQuotedInTheError() throws {
        let token = b64url(#"{"alg":"HS256\r\nX-Injected: 1"}"#) + "." + b64url(#"{"sub":"a"}"#) + "."
        let error = refusal(try hmacVerifier(), token)
        #expect(error == .algorithmNotAccepted("(unprintable)", expected: "HS256"))
        #expect(error?.description.contains("\n") == false)
        let long = b64url(#"{"alg":"\#(String(repeating: "A", count: 33))"}"#) + "." + b64url(#"{"sub":"a"}"#) + "."
        #expect(refusal(try hmacVerifier(), long) == .algorithmNotAccepted("(unprintable)", expected: "HS256"))
    }

    // MARK: Times

    @Test func expIsHonouredWithTheClockSkew() throws {
        let v = try rsaVerifier()  // exp = now, skew 30 s
        #expect(refusal(v, JWTFixtures.rs256ExpiredAtNow, at: now) == nil)
        #expect(refusal(v, JWTFixtures.rs256ExpiredAtNow, at: now + 29) == nil)
        #expect(refusal(v, JWTFixtures.rs256ExpiredAtNow, at: now + 30) == nil)
        #expect(refusal(v, JWTFixtures.rs256ExpiredAtNow, at: now + 30.001) == .expired)
        #expect(refusal(v, JWTFixtures.rs256ExpiredAtNow, at: now + 86400) == .expired)
        let strict = try rsaVerifier(clockSkew: 0)
        #expect(strict.clockSkew == 0)
        #expect(refusal(strict, JWTFixtures.rs256ExpiredAtNow, at: now) == nil)
        #expect(refusal(strict, JWTFixtures.rs256ExpiredAtNow, at: now + 1) == .expired)
        #expect(JWTError.expired.description == "token expired")
    }

    @Test func nbfInTheFutureIsRefusedBeyondTheClockSkew() throws {
        let v = try rsaVerifier()  // nbf = now + 100
        #expect(refusal(v, JWTFixtures.rs256NotBeforeNowPlus100, at: now) == .notYetValid)
        #expect(refusal(v, JWTFixtures.rs256NotBeforeNowPlus100, at: now + 69) == .notYetValid)
        #expect(refusal(v, JWTFixtures.rs256NotBeforeNowPlus100, at: now + 70) == nil)
        #expect(refusal(v, JWTFixtures.rs256NotBeforeNowPlus100, at: now + 1000) == nil)
    }

    @Test func fractionalTimesAreKeptAndANaNClockRefuses() throws {
        let v = try ecVerifier()
        #expect(try v.verify(JWTFixtures.es256FractionalExp[...], now: now).expiresAt == now + 0.5)
        #expect(refusal(v, JWTFixtures.es256FractionalExp, at: .nan) == .expired)
        #expect(refusal(try rsaVerifier(), JWTFixtures.rs256NotBeforeNowPlus100, at: .nan) == .notYetValid)
    }

    @Test func aNegativeOrNonFiniteClockSkewIsAKeyError() {
        #expect(keyError { try JWTVerifier(hmacSecret: [1], clockSkew: -1) } != nil)
        #expect(keyError { try JWTVerifier(publicKeyPEM: JWTFixtures.rsaPublicPEM, clockSkew: .infinity) } != nil)
        #expect(keyError { try JWTVerifier(hmacSecret: [1]) } == nil)
        #expect((try? JWTVerifier(hmacSecret: [1]))?.clockSkew == 30)
    }

    // MARK: Claims

    @Test func subIsRequiredNonEmptyAndAString() throws {
        let v = try hmacVerifier()
        #expect(refusal(v, JWTFixtures.hs256NoSub) == .missingSubject)
        #expect(refusal(v, JWTFixtures.hs256EmptySub) == .missingSubject)
        #expect(refusal(v, JWTFixtures.hs256NumericSub) == .malformed("sub is not a string"))
        #expect(try v.verify(JWTFixtures.hs256Subject1024[...], now: now).subject.utf8.count == 1024)
        #expect(refusal(v, JWTFixtures.hs256Subject1025) == .malformed("sub longer than 1024 bytes"))
        #expect(JWTError.missingSubject.description == "token has no subject (sub)")
    }

    @Test func expAndNbfMustBeNumbers() throws {
        let v = try hmacVerifier()
        #expect(refusal(v, JWTFixtures.hs256StringExp) == .malformed("exp is not a number"))
        #expect(refusal(v, JWTFixtures.hs256NullExp) == .malformed("exp is not a number"))
        #expect(refusal(v, JWTFixtures.hs256StringNbf) == .malformed("nbf is not a number"))
        #expect(JWTError.malformed("exp is not a number").description == "malformed token: exp is not a number")
    }

    @Test func roomsMustBeAnArrayOfStrings() throws {
        let v = try hmacVerifier()
        #expect(refusal(v, JWTFixtures.hs256RoomsString) == .malformed("rooms is not an array of strings"))
        #expect(refusal(v, JWTFixtures.hs256RoomsNumbers) == .malformed("rooms is not an array of strings"))
    }

    @Test func thePayloadMustBeAJSONObject() throws {
        let v = try hmacVerifier()
        #expect(refusal(v, JWTFixtures.hs256PayloadArray) == .malformed("payload is not a JSON object"))
        #expect(refusal(v, JWTFixtures.hs256PayloadNotJSON) == .malformed("payload is not a JSON object"))
    }

    @Test func duplicateMemberNamesAreRefusedInTheHeaderAndThePayload() throws {
        let v = try hmacVerifier()
        #expect(refusal(v, JWTFixtures.hs256DuplicateAlg) == .malformed("header has a member name twice"))
        #expect(refusal(v, JWTFixtures.hs256DuplicateSub) == .malformed("payload has a member name twice"))
        #expect(refusal(v, JWTFixtures.hs256EscapedDuplicateSub) == .malformed("payload has a member name twice"))
    }

    // MARK: Header

    @Test func critIsRefused() throws {
        #expect(refusal(try hmacVerifier(), JWTFixtures.hs256Crit) == .criticalExtension)
    }

    @Test func aTypOtherThanJWTIsRefused() throws {
        #expect(refusal(try hmacVerifier(), JWTFixtures.hs256TypAtJWT) == .typeNotAccepted("at+jwt"))
        #expect(JWTError.typeNotAccepted("at+jwt").description == "token type at+jwt not accepted (expected JWT)")
    }

    @Test func theHeaderMustBeAnObjectWithAStringAlg() throws {
        let v = try hmacVerifier()
        #expect(refusal(v, JWTFixtures.hs256HeaderArray) == .malformed("header is not a JSON object"))
        #expect(refusal(v, JWTFixtures.hs256AlgNumber) == .malformed("header alg is not a string"))
        let noAlg = b64url(#"{"typ":"JWT"}"#) + "." + parts(JWTFixtures.hs256Valid)[1] + "." + parts(JWTFixtures.hs256Valid)[2]
        #expect(refusal(v, noAlg) == .malformed("header has no alg"))
        let deep = b64url(#"{"alg":"HS256","x":"# + String(repeating: "[", count: 2000) + String(repeating: "]", count: 2000) + "}")
        #expect(refusal(v, deep + "." + parts(JWTFixtures.hs256Valid)[1] + ".") == .malformed("header is not a JSON object"))
    }

    // MARK: Structure

    @Test func exactlyThreeParts() throws {
        let v = try hmacVerifier()
        let p = parts(JWTFixtures.hs256Valid)
        let threeParts = JWTError.malformed("expected three dot-separated parts")
        #expect(refusal(v, p[0] + "." + p[1]) == threeParts)
        #expect(refusal(v, JWTFixtures.hs256Valid + "." + p[2]) == threeParts)
        #expect(refusal(v, JWTFixtures.hs256Valid + ".") == threeParts)
        #expect(refusal(v, "") == threeParts)
        #expect(refusal(v, "..") == .malformed("header is not a JSON object"))
        #expect(threeParts.description == "malformed token: expected three dot-separated parts")
    }

    @Test func onlyUnpaddedCanonicalBase64URL() throws {
        let v = try hmacVerifier()
        let p = parts(JWTFixtures.hs256Valid)
        let notBase64 = JWTError.malformed("a part is not unpadded base64url")
        // The header is 36 characters: padding would be legal base64, not base64url in a JWS.
        for token in [p[0] + "=." + p[1] + "." + p[2], p[0] + "." + p[1] + "." + p[2] + "=",
                      p[0] + "." + p[1] + "==." + p[2],
                      p[0] + "." + p[1].replacing("-", with: "+").replacing("_", with: "/") + "A+/." + p[2],
                      " " + JWTFixtures.hs256Valid, JWTFixtures.hs256Valid + "\n", p[0] + ".\(p[1])\u{00E9}." + p[2],
                      p[0] + "." + p[1] + "." + p[2] + "AA"] {  // 45 characters: 1 mod 4
            #expect(refusal(v, token) == notBase64, "\(token)")
        }
        // The signature is 32 bytes, 43 characters: the last one carries 2 unused bits, which must be 0.
        let last = p[2].last!
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        let value = alphabet.firstIndex(of: last)!
        #expect(value & 3 == 0)
        let sloppy = p[0] + "." + p[1] + "." + p[2].dropLast() + String(alphabet[value | 1])
        #expect(refusal(v, sloppy) == notBase64)
    }

    @Test func tokensLongerThan8192BytesAreRefusedBeforeAnythingElse() throws {
        let v = try hmacVerifier()
        #expect(JWTFixtures.hs256AtLimit.utf8.count == 8192)
        #expect(try v.verify(JWTFixtures.hs256AtLimit[...], now: now).subject == "alice")
        #expect(JWTFixtures.hs256OverLimit.utf8.count == 8193)
        #expect(refusal(v, JWTFixtures.hs256OverLimit) == .malformed("token longer than 8192 bytes"))
        #expect(refusal(v, String(repeating: "a", count: 1 << 20)) == .malformed("token longer than 8192 bytes"))
    }

    @Test func everyRefusalReadsAsOneShortLine() {
        let all: [JWTError] = [.malformed("expected three dot-separated parts"), .algorithmNotAccepted("HS256", expected: "RS256"),
                               .typeNotAccepted("at+jwt"), .criticalExtension, .badSignature, .expired, .notYetValid, .missingSubject]
        for e in all {
            #expect(!e.description.contains("\n") && !e.description.contains("\r") && e.description.utf8.count <= 100)
        }
        #expect(JWTError.badSignature.description == "bad signature")
    }

    // MARK: Keys

    @Test func keysThatCannotBeUsedAreReportedAtStartup() throws {
        #expect(keyError { try JWTVerifier(hmacSecret: []) } == "the HS256 secret is empty")
        let rsa1024 = keyError { try JWTVerifier(publicKeyPEM: JWTFixtures.rsa1024PublicPEM) }
        #expect(rsa1024 == "the RSA key has 1024 bits; RS256 needs at least 2048")
        let ed = keyError { try JWTVerifier(publicKeyPEM: JWTFixtures.ed25519PublicPEM) }
        #expect(ed == "unsupported key type ED25519 (expected RSA of at least 2048 bits, or EC P-256)")
        let p384 = keyError { try JWTVerifier(publicKeyPEM: JWTFixtures.ecP384PublicPEM) }
        #expect(p384?.contains("secp384r1") == true, "\(p384 ?? "")")
        let k256 = keyError { try JWTVerifier(publicKeyPEM: JWTFixtures.ecSecp256k1PublicPEM) }
        #expect(k256?.contains("secp256k1") == true, "\(k256 ?? "")")
        let garbage = keyError {
            try JWTVerifier(publicKeyPEM: "-----BEGIN PUBLIC KEY-----\nbm90IGEga2V5\n-----END PUBLIC KEY-----\n")
        }
        #expect(garbage?.hasPrefix("no public key or certificate found") == true)
        #expect(keyError { try JWTVerifier(publicKeyPEM: "hello") }?.hasPrefix("no public key") == true)
        #expect(keyError { try JWTVerifier(publicKeyPEM: "") } == "the public key PEM is empty")
        let privateKey = keyError { try JWTVerifier(publicKeyPEM: JWTFixtures.rsaPrivatePEM) }
        #expect(privateKey?.contains("private key") == true)
    }

    // MARK: Internals

    @Test func base64URLDecodingIsStrict() {
        func decode(_ s: String) -> [UInt8]? { base64URLDecode(Array(s.utf8)[...]) }
        #expect(decode("") == [])
        #expect(decode("YQ") == Array("a".utf8))
        #expect(decode("YWI") == Array("ab".utf8))
        #expect(decode("YWJj") == Array("abc".utf8))
        #expect(decode("-_8") == [0xFB, 0xFF])
        #expect(decode("Y") == nil)       // 1 mod 4
        #expect(decode("YR") == nil)      // unused bits set
        #expect(decode("YQ==") == nil)
        #expect(decode("+/8") == nil)
    }

    @Test func oneVerifierIsUsedFromManyThreadsAtOnce() async throws {
        let verifiers = [try hmacVerifier(), try rsaVerifier(), try ecVerifier()]
        let tokens = [JWTFixtures.hs256Valid, JWTFixtures.rs256Valid, JWTFixtures.es256Valid]
        let bad = [JWTFixtures.hs256Tampered, JWTFixtures.rs256Tampered, JWTFixtures.es256Tampered]
        let failures = await withTaskGroup(of: Int.self) { group in
            for task in 0..<8 {
                group.addTask {
                    var failures = 0
                    for i in 0..<150 {
                        let k = (i + task) % 3
                        if (try? verifiers[k].verify(tokens[k][...], now: now)) == nil { failures += 1 }
                        if (try? verifiers[k].verify(bad[k][...], now: now)) != nil { failures += 1 }
                    }
                    return failures
                }
            }
            return await group.reduce(0, +)
        }
        #expect(failures == 0)
    }
}

// BEGIN GENERATED by Fixtures/make_jwt_fixtures.py (PyJWT 2.15.1); do not edit by hand.
enum JWTFixtures {
    static let now: Double = 2000000000
    static let exp: Double = 2000003600
    static let hmacSecret = "stateroom-test-secret-0123456789abcdef"
    static let rsaPublicPEM = """
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
    static let rsaCertificatePEM = """
    -----BEGIN CERTIFICATE-----
    MIICqTCCAZGgAwIBAgIBATANBgkqhkiG9w0BAQsFADAXMRUwEwYDVQQDDAxqd3Qt
    dGVzdC1yc2EwIBcNMjQwMTAxMDAwMDAwWhgPMjEyMzEyMDgwMDAwMDBaMBcxFTAT
    BgNVBAMMDGp3dC10ZXN0LXJzYTCCASIwDQYJKoZIhvcNAQEBBQADggEPADCCAQoC
    ggEBAJdgr0XE/PqLr9QY/E/4js8GzoG95r/EoznclI2i/OPlsUyvrVPrKMP42Pv5
    mFOhf58p5w3/F4mrkYkfzyJfrtetp5sVOrCLgzkoWUFjdQJz3aNx2yfsAyLGvePR
    Oo8NlQrZmGIRrbmoHEkpNYA4OcoTTYDCqbk9e4RWBKmunbu6f4JGh7EqNdVkSK0t
    tNzV3VKJMj4UT0Ymyah/4/dyyMrHeIw7OdzmTKs9DktLHiC0Lyt9OYMI5FQ50d9G
    GjzJ3bNMaoJKVBn0hxtA/Px2Z3f2BKwv5LqVp2UrtvoQ1doE1Aj6OXpVhegpzzSU
    J8YolbbCz2PbKFg2wylsBXRPgGECAwEAATANBgkqhkiG9w0BAQsFAAOCAQEAlU63
    ordDJJ/qKfseZc1l0OGWSZKcwyECM3qDk08dir03vLIefBNI86pQD80DZkTNCbot
    cbasq/+WGSiSTpTH8v2R3hk4lgYqGbUjKWEWRh1YDU7dsjABz2MU6Q8RFelNQRFq
    qVTkCJCgb1oG7ZtgnURdjeSX4EgP/6jQRU2EAmEVpuMUv2tQUjVTI9twR5NhzBww
    9p2PheESG1y2OOpO1h5fkKcgTDlHTkzre7uXM5wXqhNfxswyvf3JY3H5OyEMsU2j
    HjI3ZRyFWZrL9t3PLUD/0krJfTSL38IcY/Pm4UuQeaEi54o2TbdH4NXB6SmQ8yAj
    6uFY/DPslriJTtPs9Q==
    -----END CERTIFICATE-----
    """
    static let rsaPrivatePEM = """
    -----BEGIN PRIVATE KEY-----
    MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQCXYK9FxPz6i6/U
    GPxP+I7PBs6Bvea/xKM53JSNovzj5bFMr61T6yjD+Nj7+ZhToX+fKecN/xeJq5GJ
    H88iX67XraebFTqwi4M5KFlBY3UCc92jcdsn7AMixr3j0TqPDZUK2ZhiEa25qBxJ
    KTWAODnKE02Awqm5PXuEVgSprp27un+CRoexKjXVZEitLbTc1d1SiTI+FE9GJsmo
    f+P3csjKx3iMOznc5kyrPQ5LSx4gtC8rfTmDCORUOdHfRho8yd2zTGqCSlQZ9Icb
    QPz8dmd39gSsL+S6ladlK7b6ENXaBNQI+jl6VYXoKc80lCfGKJW2ws9j2yhYNsMp
    bAV0T4BhAgMBAAECggEAKaRuwu4sO44mud1/t04klv4D2/wOGK3yyw2LjiUKlXTP
    380qDL5RkguIQVTJmyP/tBy2U4rbgkNAv2yRMh8JPYqnY0mlQgC3Age/+fVusFSI
    YZiGFcbem/f5L80UY1r0p63xNfUwCbUdxuB/t7x/5T+HIAcs4mjv7BkvojAHcycv
    5UgBZqBiL12+U7dNjqrOROvRN2YjvMEyxJzIytu2xNOC0Ses/nCvkXwl3d+3Om/2
    L7tMnc11tHIAf8nMTmfh4dHC70apMsXqnGSJeh/fUhPz9SWl2rD1/HgGQVqJyLNT
    OxdOvuP91JHUbbgWtycApzPVjghDE3vIT0NtpBRakwKBgQDLD3xuHFx3tP9sQj+b
    L1RlCssX4bDgCTROvF0WVAUkwzLc3HUZHQyLtYkLzWtpKA/cKys9gD/0Bc+OEV46
    h7QmF6MBdzdQa5/YghGFrIncrQPfdDhyM5YTRVMgzy3cBFG/hQMhLdglxBGdvPGA
    C19mE5aO6LQ5LbUxT0Xz0o+oDwKBgQC+19Juvgkiwaz27A22TvOdh7Cce/atQcao
    0ZMYnjsoqzbd1XBYXj8DEHH/S+O8+kzxwjmZOMrkHC46qaR7BW5u38afaAuzrjrR
    n+9vJvPpoF00LTdEoQPQkQvUjHhcwPzXdwO2tVDidyANhR4muLlMoV6i0O9wq9ix
    9tX9pUVgjwKBgQDKng85CA+0WuSrr4csYBPEJvr0P31wb37EOexgxUHEpwnvnAM0
    JepI1cGEB1twOEtrE6A34+rsoYezaN0vZg16HQfIBJ8rHdkH/vFhAwMlMXa115Aj
    VBoh7IDAMjq+WYkAo8a1qrsNJBG35brMW4y7nDwVKVn73AH6y/EvFCHIPQKBgQCS
    gI+UX+IXgmJLM67bEwTFG5Mira8SFfpxQmEPdvinIbh+1wjlbYQl0AwTFakAO42x
    0Y3x570pG9EJS41uux6pkrOhT3gcOVYB8isWQurfoDGsikFxN8H77D0Or77+RVBT
    /5MkQVCUaSp79oLM6uWkxAQoLQiCkAlLpNdlXehCVQKBgQC6a6PSTHZQpNDP2xw+
    36GnLLUtLM4DYXVzC8ZKPpk0sEoEs8F+mZahiLDM+AdhBvtc5B6DD4UQv0sJ+BQA
    i5qBt5p/AbkMp3v7nfAWRMP74Ol2S8FnjoDbYoJMPWETgOahTOrot3EdFWnIvF33
    09ju3E6bCSRqcdD95xgWfI0REQ==
    -----END PRIVATE KEY-----
    """
    static let ecPublicPEM = """
    -----BEGIN PUBLIC KEY-----
    MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEaLGJ4Wdwk7w63SJm6bcdhMbXhgO5
    nXLiYMXH0zmfeIdsq+XO8CMFslMK0YhRQ1kOwORAHxozTSsRd71QSEXsdA==
    -----END PUBLIC KEY-----
    """
    static let ecCertificatePEM = """
    -----BEGIN CERTIFICATE-----
    MIIBGjCBwaADAgECAgEBMAoGCCqGSM49BAMCMBYxFDASBgNVBAMMC2p3dC10ZXN0
    LWVjMCAXDTI0MDEwMTAwMDAwMFoYDzIxMjMxMjA4MDAwMDAwWjAWMRQwEgYDVQQD
    DAtqd3QtdGVzdC1lYzBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABGixieFncJO8
    Ot0iZum3HYTG14YDuZ1y4mDFx9M5n3iHbKvlzvAjBbJTCtGIUUNZDsDkQB8aM00r
    EXe9UEhF7HQwCgYIKoZIzj0EAwIDSAAwRQIhAPQwEEW/opyBdZKxIpBMU1azpGFi
    ByGjwomjSQtNF0DPAiB9+LhWqc5n80pMGB/XAf0J0YiB1OP/5LIWRdwccQr9MA==
    -----END CERTIFICATE-----
    """
    static let rsa1024PublicPEM = """
    -----BEGIN PUBLIC KEY-----
    MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQD3k4YCf2hoxwqcOMeTm56H9acl
    H8Ei7EbpHwi7N9W98MhazuvM9OjaWfeFbTdCG+eddNSoCEPoHcPjYILBxW5c++dX
    jMdFsny7KnqerOoiMu3Q8+5hMowJO8UZ1S0xGsEy4kKICYsYzackPqRj6qBdsbiv
    hnFcC2DpG4Vi/KH4AwIDAQAB
    -----END PUBLIC KEY-----
    """
    static let ecP384PublicPEM = """
    -----BEGIN PUBLIC KEY-----
    MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEQ2Ovcy7JeGLp1Y6CLUaPzG1QB34sDLKi
    lXh4uHply3eB/GoRqHormnwZ67Xex1S44RgOMgKa9r4lzT+HPTKUBk2RR71vK9G3
    vd79bN+sB6ojcHt1v/fdlcxm9hFfdYem
    -----END PUBLIC KEY-----
    """
    static let ecSecp256k1PublicPEM = """
    -----BEGIN PUBLIC KEY-----
    MFYwEAYHKoZIzj0CAQYFK4EEAAoDQgAEahs22Yx0B6PG+4bvfJHy+HhsK2D+sLQ0
    YKM7Vi95pFVkDWgBXBuFWj4CRp331G7q+ucvY/NwvkgzBZgelAtutQ==
    -----END PUBLIC KEY-----
    """
    static let ed25519PublicPEM = """
    -----BEGIN PUBLIC KEY-----
    MCowBQYDK2VwAyEA0ADbT1Iot7tzRuD2QlAZPRMQ51TBTLWPqFfMV6/v7wo=
    -----END PUBLIC KEY-----
    """
    static let hs256Valid = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsInJvb21zIjpbImxvYmJ5IiwiZ2FtZS03Il0sImlhdCI6MjAwMDAwMDAwMCwiZXhwIjoyMDAwMDAzNjAwfQ.Kzu-_GqTQkiPWeRTOq5iOpBfezdzUANa14Q8PQk62S0"
    static let rs256Valid = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJib2IiLCJyb29tcyI6WyJsb2JieSJdLCJleHAiOjIwMDAwMDM2MDAsIm5iZiI6MTk5OTk5OTAwMH0.V3LCAgfmnE-O2Mays859WmRc-mXM_hJ-i0-bYeKByec8WgQW2P_AxI_Lc4Z3_tZKCxaAQHD4lcS84a_Thf3i79AT_KVi_88UVrtELpZeq6yeQt9F_Iinhqj6LVP-Ovjpc3N_tTDgKVL_M1AjyAJP3jDYFNOsIgIdq5iYvExMdSb3MjfQDN5nqukq3A8MEnmt5dtOzt7B6VW8I1tuOI4Qfx91TGABWanEjCmMWNSpu-2d7UkXJ1fXGR937-3Q1s5xTUldoc8JK8qnzOs_eY6aSdwUGcBfUcEuYlFfw-zhx7BpVZaL--w9O1Simfh03Uy27121kT99ue8k6vZxWi1B9w"
    static let es256Valid = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjYXJvbCIsImV4cCI6MjAwMDAwMzYwMH0.x5SZbdIywNZ2MF0MFOhlXKLxv2A48nTEZdGElD8WHAuSHBmC-_yzwPchiaNkbZsxPtMdTFGZaC48yz7M5dS3ww"
    static let hs256LowercaseTyp = "eyJhbGciOiJIUzI1NiIsInR5cCI6Imp3dCJ9.eyJzdWIiOiJhbGljZSJ9.zNM5JzJ-0gzekbQU5CFmqLWu-YtcU2e-dGIsl90VTY8"
    static let hs256NoTyp = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.yug6xSOnPR7gMnJiWMskQwYQAcZPOLXp4zEvnAHXkzw"
    static let hs256Subject1024 = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3NzIn0.aEi_G8iwYcJnQ0oBY3OFFWDDqau1kbr5dNH4OXbGr1U"
    static let hs256EmptyRooms = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsInJvb21zIjpbXX0.Uz86k8C0vh6nfeCLXBDc-8PqsXnMIoKdIzv_rsaRci0"
    static let hs256WrongSecret = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsInJvb21zIjpbImxvYmJ5IiwiZ2FtZS03Il0sImlhdCI6MjAwMDAwMDAwMCwiZXhwIjoyMDAwMDAzNjAwfQ.oThf9B-Xsf6dok9RrJItVVA9SF4OI4sO0mDWjVY4itQ"
    static let hs256Tampered = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJtYWxsb3J5Iiwicm9vbXMiOlsibG9iYnkiLCJnYW1lLTciXSwiaWF0IjoyMDAwMDAwMDAwLCJleHAiOjIwMDAwMDM2MDB9.Kzu-_GqTQkiPWeRTOq5iOpBfezdzUANa14Q8PQk62S0"
    static let rs256Tampered = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJib2IiLCJyb29tcyI6WyJsb2JieSIsImFkbWluIl0sImV4cCI6MjAwMDAwMzYwMCwibmJmIjoxOTk5OTk5MDAwfQ.V3LCAgfmnE-O2Mays859WmRc-mXM_hJ-i0-bYeKByec8WgQW2P_AxI_Lc4Z3_tZKCxaAQHD4lcS84a_Thf3i79AT_KVi_88UVrtELpZeq6yeQt9F_Iinhqj6LVP-Ovjpc3N_tTDgKVL_M1AjyAJP3jDYFNOsIgIdq5iYvExMdSb3MjfQDN5nqukq3A8MEnmt5dtOzt7B6VW8I1tuOI4Qfx91TGABWanEjCmMWNSpu-2d7UkXJ1fXGR937-3Q1s5xTUldoc8JK8qnzOs_eY6aSdwUGcBfUcEuYlFfw-zhx7BpVZaL--w9O1Simfh03Uy27121kT99ue8k6vZxWi1B9w"
    static let es256Tampered = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJtYWxsb3J5IiwiZXhwIjoyMDAwMDAzNjAwfQ.x5SZbdIywNZ2MF0MFOhlXKLxv2A48nTEZdGElD8WHAuSHBmC-_yzwPchiaNkbZsxPtMdTFGZaC48yz7M5dS3ww"
    static let es256DERSignature = "eyJhbGciOiAiRVMyNTYiLCAidHlwIjogIkpXVCJ9.eyJzdWIiOiAiY2Fyb2wifQ.MEQCIBz2ew3UlA6rB4tanZJGl3X0cRF8e2mm4hIo8rOY65F_AiAqcfC22rWa_Txk1S5H5HkEuNPld_XRUT5wflkQV_mZmg"
    static let es256ShortSignature = "eyJhbGciOiAiRVMyNTYiLCAidHlwIjogIkpXVCJ9.eyJzdWIiOiAiY2Fyb2wifQ.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    static let noneToken = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMzYwMH0."
    static let noneUppercase = "eyJhbGciOiJOT05FIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSJ9."
    static let hs256KeyedWithRSAPublicPEM = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJtYWxsb3J5In0.cawuG_KipBdVaOkW-4aav3ArjMGyq4DU6p0JELRtYFQ"
    static let hs256KeyedWithECPublicPEM = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJtYWxsb3J5In0.YDGg6SwQb8DXcziAaWgxVoG7HSB3gKhSB5s8yALUpig"
    static let rs384 = "eyJhbGciOiJSUzM4NCIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJib2IifQ.Eaa37q5f53x8VyZc-JSzmUDuEeRhVPPZlbjH40bCZOy7kR5sI22VdkU4hQJt0ycs7CyoerL7GGhnxXoWcDB_TL1J-yPu8BgB2K7Q_NFxdLkWQ7RHmLneZVR4CIaxVlAoN2wTREZiELtx4_KPI2ESCb988id5VEEUDB_UKNCBTTHokMROkQiNp78iLAY4ADjHxbEiwsesnGDeyrC2MP7SpHUQd2E25zkf2TaSCXUDPMCIWYPEZ7DLU0rkf-Op8_vRQlWGydh76m1fS5bAtyFNgzYnK-VqcZSfMJ7pKcMZr2MGGipHgWBfAxt3RM1gIxpoRPaohgymsgmttTZzqdkZbA"
    static let ps256 = "eyJhbGciOiJQUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJib2IifQ.SPHgKXyG529lALRnIRXKnjAlvjldjnCmHZOwgtDMioQJDoOcY202AtDpnbMR9WjoWM7OxhMK6Tj-2Mf-Ix9hj51fYbLM2z2A8wGvnMU_S1DtZiObh4h55P_Q2t0qUH1VcwWiGnDkC_0Ofdusi6VxGU9P-mVPDsldZV_oXLOwxM8DAyeDh9g4qXxzzzddIsukUrKcyqKJVDPPG7fFVmKp5-X11YQPrP4Xv_kxSL4eXc0373AT_zaMCMJjxTAc2UMa1GsGDn_03qth6WJLvbxhIMPqho8g8paaDlKMpwAS1I1PUL2QOO46orlVuuFrWr69nx8wRQfGVKLX6IclV80pPw"
    static let rs256ExpiredAtNow = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJib2IiLCJleHAiOjIwMDAwMDAwMDB9.Ib6GwveNKMmMe1v0hXLZOafGprcoF5qQXMLASxpVe5lTp8-c_emkRhnhmZo_v3rexKlAP-IZGwUKnOhcGHL33yrkAkCrT40mB53lu7yuBHTlXHB1rRWRmZ74t32ORTjnnyGnnqFrRxEFA_PZqQIk8TyIuDdmaA0_oP3dsqp8Au70xToGbajZ3w87st6uftCyUrjaxLWFYAJO4MJY2SOJFbhJkNpqP0zGvrdaenRbbxmSjKrL1bGINwv1lmuBDWfvDa9gHOjXKcDeiDlEkFac8ApHdevNxMY61GAz4ygwLrwe4eNTHinwrTV0c9DIFWw4qz5AaK0eUJgpjy9BGoinNA"
    static let rs256NotBeforeNowPlus100 = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJib2IiLCJuYmYiOjIwMDAwMDAxMDB9.NeGxnH59Tgu5Rd_E46m8Rl88j-o9NmShjcPLhMvGFmQ6-cyXf6kJ_ALVe6ThLbDxHepZSaupEwuPQKciZYr7c-jWE5vkM7KG4HbOM8PYKaZmeQwoFeeJocGrSRkh4ksYadGSlCbEPck8yQ8O2dbz4rdJybPQ07MiOokUJnH1Kd4jKbIpA7nkgOf13jeGA8mu3fihKhgqlsp2pjM610TSwTwwaeMUy9huyjCRwTG73onxmhWaW5sKnFbJOJvMMxJEyFmuWtyIRe3uMJGOi7UD8UT-83Go1X3coaC7tsoWKZNlvlBNJzyQzXW3H5gB3gARKIc9Hb9S2wNWkqQSIGzzHg"
    static let es256FractionalExp = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJjYXJvbCIsImV4cCI6MjAwMDAwMDAwMC41fQ.5KVwTWUmjHKvFwCAi6tmoyoBlB-lzBl0sUyChhUXjI-s95yHVz-kdngJeW1F7IivbIdBWBkSPpsWyx1B-7fwNw"
    static let hs256NoSub = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJyb29tcyI6WyJsb2JieSJdLCJleHAiOjIwMDAwMDM2MDB9.hsV_Qnj4EnMKxGY0W757m8cuQNyOzt0UnT-3_0EWItY"
    static let hs256EmptySub = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIifQ.xUSYOsC9HgLN2NgynLjBvVFQrEjIY0g_Wi1UOUNiOiE"
    static let hs256NumericSub = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOjQyfQ.nhit4AlrzeuZAs9sy2EXtvC2WOxosFwI6Z4NGWK9dcY"
    static let hs256Subject1025 = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3NzcyJ9.gIg2tBY4cpeiZK90Ov6sX2IdS-qonYJYYDDHp5-IoQY"
    static let hs256StringExp = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6IjIwMDAwMDM2MDAifQ.Opz17mX2t0tPByX533c_GXuNJZBenZpO5tkuqpj_6Xw"
    static let hs256NullExp = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6bnVsbH0.UBjSRoujrq5a_jVhR57PDbrcy-dbe-gzvou6_rIloU8"
    static let hs256StringNbf = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsIm5iZiI6InNvb24ifQ.ep8CJ8lDGi9rFDIeT1TUScUjlVTH0j4kN1dPVqTsqsk"
    static let hs256RoomsString = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsInJvb21zIjoibG9iYnkifQ.SMAW4FqOugXkEIrwGcTQrcV9QOlscLpBXh_SRs1iY7Q"
    static let hs256RoomsNumbers = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsInJvb21zIjpbImxvYmJ5Iiw3XX0.VVaRkRQwrtde7_J6b3vK1PkBgiAHZtZ4veqWjMms0B4"
    static let hs256PayloadArray = "eyJhbGciOiJIUzI1NiJ9.WyJzdWIiLCJhbGljZSJd.stfy_Q8u-uaU0qbiFvZaoTnXciMa17CoIbl1dFGKR6Q"
    static let hs256PayloadNotJSON = "eyJhbGciOiJIUzI1NiJ9.c3ViPWFsaWNl.5_snfaz0sjVR2-RIFevprCZHFX6Wdwz1RvnxnLK1a-8"
    static let hs256Crit = "eyJhbGciOiJIUzI1NiIsImNyaXQiOlsiZXhwIl0sInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSJ9.EvHzy3wx-UzeFOYCbdgSCfHTODtO2qr5Gr3GlfIEoaU"
    static let hs256TypAtJWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6ImF0K2p3dCJ9.eyJzdWIiOiJhbGljZSJ9.olNMS6O93Kie30hO4DaCN5UCu9WI__rSi0RPjhwXSK0"
    static let hs256DuplicateAlg = "eyJhbGciOiJIUzI1NiIsImFsZyI6Im5vbmUifQ.eyJzdWIiOiJhbGljZSJ9.ZaVjGnpgZvFieIs9DW6E7fyDkNOKPIDFRz17U6yoP48"
    static let hs256DuplicateSub = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsInN1YiI6ImFkbWluIn0.9_l46T3yORig-Wo5cnUf5Xq8nb60u8Xu8u-LmnZ2w1A"
    static let hs256EscapedDuplicateSub = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsIlx1MDA3M3ViIjoiYWRtaW4ifQ.EpCSY-da5rakLr-giKv5dGmHY68Wdsph4kOJQFpqW2U"
    static let hs256NestedRepeatedNames = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsIngiOnsic3ViIjoxLCJ5IjpbeyJzdWIiOjJ9XX0sInkiOiJzdWIifQ.z3oiDhOo4IklssQMYaqZ3NI489qMe7h6DNTi62wan4I"
    static let hs256HeaderArray = "WyJhbGciLCJIUzI1NiJd.eyJzdWIiOiJhbGljZSJ9.QVMBvd80wNatokb9kfRl_uPIOECZbwl0p794iknkO9I"
    static let hs256AlgNumber = "eyJhbGciOjI1Nn0.eyJzdWIiOiJhbGljZSJ9.Yi0d-iD-qZrdIHJALBtaWgwftSDlEQbKWUKfopp5kNc"
    static let hs256AtLimit = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMzYwMCwicGFkIjoieHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4In0.mhJdUTs3zh1wyoHg95FpQrzDuMtF61LD7_s8V2s4mlI"
    static let hs256OverLimit = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MjAwMDAwMzYwMCwicGFkIjoieHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eCJ9.LZvMBojsge13ngbzj_mZigxLayPIdW7K40HeLagyz5A"
}
// END GENERATED

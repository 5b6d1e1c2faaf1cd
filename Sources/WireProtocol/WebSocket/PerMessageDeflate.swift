// permessage-deflate negotiation (RFC 7692 §5, §7.1) over the `Sec-WebSocket-Extensions` header
// grammar of RFC 6455 §9.1.

/// What a connection agreed to (RFC 7692 §7).
public struct DeflateParameters: Equatable, Sendable {
    /// Always true in our responses: the server compresses every message on its own (no context
    /// takeover), so a broadcast compresses to the same bytes for every recipient.
    public var serverNoContextTakeover: Bool
    /// The client resets its compressor per message (only if its offer had client_no_context_takeover).
    public var clientNoContextTakeover: Bool
    /// LZ77 window the server compresses with (9...15; we use 15 unless the client limited it with
    /// server_max_window_bits). A message compressed with a window of 2^n bytes is valid for every
    /// client whose window is at least n bits, so one compressed copy can serve several windows if
    /// it is made with the smallest.
    public var serverMaxWindowBits: Int
    /// LZ77 window the client compresses with: 15, or what we asked for in client_max_window_bits
    /// when the offer allowed us to.
    public var clientMaxWindowBits: Int

    public init(serverNoContextTakeover: Bool = true, clientNoContextTakeover: Bool = false,
                serverMaxWindowBits: Int = 15, clientMaxWindowBits: Int = 15) {
        self.serverNoContextTakeover = serverNoContextTakeover
        self.clientNoContextTakeover = clientNoContextTakeover
        self.serverMaxWindowBits = serverMaxWindowBits
        self.clientMaxWindowBits = clientMaxWindowBits
    }
}

/// The server's side of the negotiation.
public struct DeflatePolicy: Sendable {
    /// Agree to permessage-deflate at all. Off: every request is answered without it (the header
    /// is not even parsed).
    public var enabled: Bool = true
    /// Ask clients that allow it (client_max_window_bits in their offer) to compress with this
    /// window (8...15): smaller bounds the server's inflate memory per connection (2^bits bytes of
    /// window). 8 is asked as 9 (values outside 9...15 are clamped) because zlib ≥ 1.2.9, what most
    /// clients compress with, refuses an 8-bit raw deflate window; a client that offers
    /// `client_max_window_bits=8` itself is answered with 8.
    public var clientMaxWindowBits: Int = 15

    public init(enabled: Bool = true, clientMaxWindowBits: Int = 15) {
        self.enabled = enabled
        self.clientMaxWindowBits = clientMaxWindowBits
    }
}

/// The outcome of permessage-deflate negotiation for one upgrade request.
///
/// What fails the handshake and what only declines an offer:
/// - **Declined offer** (RFC 7692 §7: the server "MUST decline an extension negotiation offer" for
///   these): a `permessage-deflate` offer with a parameter not defined for an offer, a parameter
///   with an invalid value (a value on `server_no_context_takeover` / `client_no_context_takeover`,
///   `server_max_window_bits` without a value, a window-bits value that is not a decimal 8...15
///   without leading zeroes, RFC 7692 §7.1.2), the same parameter twice, or a configuration we do not
///   support (`server_max_window_bits=8`: zlib cannot produce raw deflate for an 8-bit window — it
///   refuses it since 1.2.9 and used to make it 9, which would be invalid for the client — and
///   libdeflate always uses 32 KiB). The next offer is tried; with none left the answer is
///   ``declined``, and the connection goes on uncompressed.
/// - **Malformed** (the handshake fails, `400`): a `Sec-WebSocket-Extensions` value that breaks
///   RFC 6455 §9.1's grammar (`1#extension`, `extension = token *(";" param)`,
///   `param = token ["=" (token / quoted-string)]`, a quoted value that is not a token once
///   unquoted), in any extension's part of the header: RFC 6455 §4.2.1 has a server stop at any
///   violation of the handshake's ABNF. Empty list elements (`a, , b`) and an empty header value
///   are allowed (HTTP's `#rule`), and optional whitespace around `,` `;` `=`.
///
/// Extension and parameter names compare case-insensitively. Other extensions are ignored.
public enum DeflateNegotiation: Equatable, Sendable {
    /// The first acceptable offer, and the `Sec-WebSocket-Extensions` value to answer with, e.g.
    /// `permessage-deflate; server_no_context_takeover; client_max_window_bits=15`.
    case accepted(DeflateParameters, responseHeader: String)
    /// No acceptable permessage-deflate offer (or policy off): answer without the extension.
    case declined
    /// An extension header the handshake fails for (the reason, for logs); the server answers 400.
    case malformed(String)

    /// Decides from every `Sec-WebSocket-Extensions` header value of the request, in order (several
    /// headers, each a comma list of offers, each with `;` parameters, quoted-string values allowed
    /// per RFC 6455 §9.1).
    ///
    /// The accepted response always has `server_no_context_takeover` (RFC 7692 §7.1.1.1 lets a
    /// server include it whether or not it was offered); `client_no_context_takeover` when the offer
    /// had it (§7.1.1.2); `server_max_window_bits` with the offered value when the offer had it
    /// (§7.1.2.1: accepting it means answering it); `client_max_window_bits` only when the offer had
    /// it (§7.1.2.2), with min(offered value, policy) — the policy's value when offered without one.
    public static func negotiate(_ headerValues: [String], policy: DeflatePolicy) -> DeflateNegotiation {
        guard policy.enabled else { return .declined }
        var offers: [ExtensionOffer] = []
        for value in headerValues {
            switch parseExtensionList(value) {
            case .success(let list): offers.append(contentsOf: list)
            case .failure(let error): return .malformed(error.reason)
            }
        }
        for offer in offers where asciiLowercased(offer.name) == "permessage-deflate" {
            if let accepted = accept(offer, policy: policy) { return accepted }
        }
        return .declined
    }

    /// The answer to one permessage-deflate offer, or nil to decline it (RFC 7692 §7).
    static func accept(_ offer: ExtensionOffer, policy: DeflatePolicy) -> DeflateNegotiation? {
        var clientNoContextTakeover = false
        var serverMaxWindowBits: Int?
        var clientMaxWindowBitsOffered = false
        var clientMaxWindowBits: Int?
        var seen: [String] = []
        for param in offer.parameters {
            let name = asciiLowercased(param.name)
            if seen.contains(name) { return nil }  // the same parameter twice
            seen.append(name)
            switch name {
            case "server_no_context_takeover":
                if param.value != nil { return nil }  // we never take over context, asked or not
            case "client_no_context_takeover":
                if param.value != nil { return nil }
                clientNoContextTakeover = true
            case "server_max_window_bits":
                guard let value = param.value, let bits = windowBits(value) else { return nil }
                serverMaxWindowBits = bits
            case "client_max_window_bits":
                clientMaxWindowBitsOffered = true
                if let value = param.value {
                    guard let bits = windowBits(value) else { return nil }
                    clientMaxWindowBits = bits
                }
            default:
                return nil  // not defined for an offer
            }
        }
        if serverMaxWindowBits == 8 { return nil }  // a window zlib cannot compress for

        var parameters = DeflateParameters(serverNoContextTakeover: true,
                                           clientNoContextTakeover: clientNoContextTakeover,
                                           serverMaxWindowBits: serverMaxWindowBits ?? 15,
                                           clientMaxWindowBits: 15)
        var header = "permessage-deflate; server_no_context_takeover"
        if clientNoContextTakeover { header += "; client_no_context_takeover" }
        if let bits = serverMaxWindowBits { header += "; server_max_window_bits=\(bits)" }
        if clientMaxWindowBitsOffered {
            let ours = min(max(policy.clientMaxWindowBits, 9), 15)
            let bits = min(clientMaxWindowBits ?? ours, ours)
            parameters.clientMaxWindowBits = bits
            header += "; client_max_window_bits=\(bits)"
        }
        return .accepted(parameters, responseHeader: header)
    }

    /// A window-bits value (RFC 7692 §7.1.2): a decimal integer 8...15 without leading zeroes.
    static func windowBits(_ value: String) -> Int? {
        let u = Array(value.utf8)
        guard (1...2).contains(u.count), u.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), u[0] != 0x30 else { return nil }
        let n = u.reduce(0) { $0 * 10 + Int($1 - 0x30) }
        return (8...15).contains(n) ? n : nil
    }
}

// MARK: - The Sec-WebSocket-Extensions grammar (RFC 6455 §9.1)

/// One element of an extension list: its token and its parameters in order (values unquoted).
struct ExtensionOffer: Equatable {
    struct Parameter: Equatable {
        var name: String
        var value: String?
    }
    var name: String
    var parameters: [Parameter]
}

struct ExtensionHeaderError: Error, Equatable {
    var reason: String
}

/// Parses one `Sec-WebSocket-Extensions` value:
/// `extension-list = 1#extension`, `extension = token *( ";" extension-param )`,
/// `extension-param = token [ "=" (token | quoted-string) ]` with HTTP's implied whitespace, empty
/// list elements skipped, a quoted value required to be a token once unescaped.
func parseExtensionList(_ value: String) -> Result<[ExtensionOffer], ExtensionHeaderError> {
    let b = Array(value.utf8)
    var i = 0
    var offers: [ExtensionOffer] = []

    func skipSpace() { while i < b.count && (b[i] == 0x20 || b[i] == 0x09) { i += 1 } }
    func token() -> String? {
        let start = i
        while i < b.count && isTokenByte(b[i]) { i += 1 }
        return i > start ? String(decoding: b[start..<i], as: UTF8.self) : nil
    }
    func failure(_ what: String) -> Result<[ExtensionOffer], ExtensionHeaderError> {
        .failure(ExtensionHeaderError(reason: "Sec-WebSocket-Extensions: \(what) at byte \(i)"))
    }

    while true {
        skipSpace()
        if i == b.count { break }
        if b[i] == UInt8(ascii: ",") { i += 1; continue }  // an empty element
        guard let name = token() else { return failure("expected an extension name") }
        var parameters: [ExtensionOffer.Parameter] = []
        skipSpace()
        while i < b.count && b[i] == UInt8(ascii: ";") {
            i += 1
            skipSpace()
            guard let paramName = token() else { return failure("expected a parameter name") }
            skipSpace()
            var paramValue: String?
            if i < b.count && b[i] == UInt8(ascii: "=") {
                i += 1
                skipSpace()
                if i < b.count && b[i] == UInt8(ascii: "\"") {
                    i += 1
                    var unquoted: [UInt8] = []
                    var closed = false
                    while i < b.count {
                        let c = b[i]
                        if c == UInt8(ascii: "\"") { closed = true; i += 1; break }
                        if c == UInt8(ascii: "\\") {
                            // quoted-pair = "\" CHAR
                            guard i + 1 < b.count, b[i + 1] < 0x80 else { return failure("bad escape in a quoted string") }
                            unquoted.append(b[i + 1])
                            i += 2
                            continue
                        }
                        if (c < 0x20 && c != 0x09) || c == 0x7F { return failure("control character in a quoted string") }
                        unquoted.append(c)
                        i += 1
                    }
                    guard closed else { return failure("unterminated quoted string") }
                    // RFC 6455 §9.1: the value after unescaping MUST conform to the token ABNF.
                    guard !unquoted.isEmpty, unquoted.allSatisfy(isTokenByte) else {
                        return failure("quoted value of \(paramName) is not a token")
                    }
                    paramValue = String(decoding: unquoted, as: UTF8.self)
                } else {
                    guard let v = token() else { return failure("expected a value for \(paramName)") }
                    paramValue = v
                }
                skipSpace()
            }
            parameters.append(.init(name: paramName, value: paramValue))
        }
        offers.append(ExtensionOffer(name: name, parameters: parameters))
        if i == b.count { break }
        guard b[i] == UInt8(ascii: ",") else { return failure("unexpected character") }
        i += 1
    }
    return .success(offers)
}

/// `token` characters (RFC 2616 §2.2): visible ASCII except the separators.
@inline(__always)
func isTokenByte(_ c: UInt8) -> Bool {
    guard c > 0x20 && c < 0x7F else { return false }
    switch c {
    case UInt8(ascii: "("), UInt8(ascii: ")"), UInt8(ascii: "<"), UInt8(ascii: ">"), UInt8(ascii: "@"),
         UInt8(ascii: ","), UInt8(ascii: ";"), UInt8(ascii: ":"), UInt8(ascii: "\\"), UInt8(ascii: "\""),
         UInt8(ascii: "/"), UInt8(ascii: "["), UInt8(ascii: "]"), UInt8(ascii: "?"), UInt8(ascii: "="),
         UInt8(ascii: "{"), UInt8(ascii: "}"):
        return false
    default:
        return true
    }
}

func asciiLowercased(_ s: String) -> String {
    String(decoding: s.utf8.map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 }, as: UTF8.self)
}

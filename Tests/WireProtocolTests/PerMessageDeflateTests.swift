import Testing
import WireProtocol

/// permessage-deflate negotiation (RFC 7692 §5, §7.1; the header grammar of RFC 6455 §9.1):
/// offers in, response header (and agreed parameters) out, or declined, or malformed.
@Suite struct PerMessageDeflateTests {
    enum Outcome: Sendable {
        /// The response header, and the agreed (serverMaxWindowBits, clientMaxWindowBits, clientNoContextTakeover).
        case accept(String, server: Int, client: Int, clientReset: Bool)
        case decline
        case malformed
    }

    struct Case: Sendable, CustomTestStringConvertible {
        let name: String
        let headers: [String]
        let policyBits: Int
        let outcome: Outcome
        init(_ name: String, _ headers: [String], policyBits: Int = 15, _ outcome: Outcome) {
            self.name = name
            self.headers = headers
            self.policyBits = policyBits
            self.outcome = outcome
        }
        var testDescription: String { name }
    }

    static let base = "permessage-deflate; server_no_context_takeover"

    static func accept(_ suffix: String = "", server: Int = 15, client: Int = 15, clientReset: Bool = false) -> Outcome {
        .accept(base + suffix, server: server, client: client, clientReset: clientReset)
    }

    static let cases: [Case] = [
        // What clients send
        Case("bare offer (Firefox)", ["permessage-deflate"], accept()),
        Case("Chromium's offer", ["permessage-deflate; client_max_window_bits"], accept("; client_max_window_bits=15")),
        Case("Python websockets' offer", ["permessage-deflate; client_max_window_bits"], accept("; client_max_window_bits=15")),
        Case("socketify/uWS-style offer", ["permessage-deflate; client_no_context_takeover; server_no_context_takeover"],
             accept("; client_no_context_takeover", clientReset: true)),
        Case("no header", [], .decline),
        Case("empty header", [""], .decline),
        Case("only empty elements", [" , ,, "], .decline),

        // Each parameter with and without a value
        Case("server_no_context_takeover", ["permessage-deflate; server_no_context_takeover"], accept()),
        Case("server_no_context_takeover with a value", ["permessage-deflate; server_no_context_takeover=1"], .decline),
        Case("client_no_context_takeover", ["permessage-deflate; client_no_context_takeover"],
             accept("; client_no_context_takeover", clientReset: true)),
        Case("client_no_context_takeover with a value", ["permessage-deflate; client_no_context_takeover=true"], .decline),
        Case("server_max_window_bits=10", ["permessage-deflate; server_max_window_bits=10"],
             accept("; server_max_window_bits=10", server: 10)),
        Case("server_max_window_bits=15", ["permessage-deflate; server_max_window_bits=15"],
             accept("; server_max_window_bits=15")),
        Case("server_max_window_bits=9", ["permessage-deflate; server_max_window_bits=9"],
             accept("; server_max_window_bits=9", server: 9)),
        Case("server_max_window_bits without a value", ["permessage-deflate; server_max_window_bits"], .decline),
        Case("server_max_window_bits=8 (zlib cannot)", ["permessage-deflate; server_max_window_bits=8"], .decline),
        Case("client_max_window_bits without a value", ["permessage-deflate; client_max_window_bits"],
             accept("; client_max_window_bits=15")),
        Case("client_max_window_bits=10", ["permessage-deflate; client_max_window_bits=10"],
             accept("; client_max_window_bits=10", client: 10)),
        Case("client_max_window_bits=8", ["permessage-deflate; client_max_window_bits=8"],
             accept("; client_max_window_bits=8", client: 8)),
        Case("every parameter", ["permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=12; client_max_window_bits=11"],
             accept("; client_no_context_takeover; server_max_window_bits=12; client_max_window_bits=11", server: 12, client: 11, clientReset: true)),

        // The policy's client window
        Case("policy 12, offer without a value", ["permessage-deflate; client_max_window_bits"], policyBits: 12,
             accept("; client_max_window_bits=12", client: 12)),
        Case("policy 12, offer 10", ["permessage-deflate; client_max_window_bits=10"], policyBits: 12,
             accept("; client_max_window_bits=10", client: 10)),
        Case("policy 12, offer 14", ["permessage-deflate; client_max_window_bits=14"], policyBits: 12,
             accept("; client_max_window_bits=12", client: 12)),
        Case("policy 12, no client_max_window_bits offered", ["permessage-deflate"], policyBits: 12, accept()),
        Case("policy 8 is asked as 9", ["permessage-deflate; client_max_window_bits"], policyBits: 8,
             accept("; client_max_window_bits=9", client: 9)),
        Case("policy 8, offer 8", ["permessage-deflate; client_max_window_bits=8"], policyBits: 8,
             accept("; client_max_window_bits=8", client: 8)),

        // Bad window bits: the offer is declined
        Case("server_max_window_bits=16", ["permessage-deflate; server_max_window_bits=16"], .decline),
        Case("server_max_window_bits=7", ["permessage-deflate; server_max_window_bits=7"], .decline),
        Case("server_max_window_bits=08 (leading zero)", ["permessage-deflate; server_max_window_bits=08"], .decline),
        Case("server_max_window_bits=0", ["permessage-deflate; server_max_window_bits=0"], .decline),
        Case("server_max_window_bits=abc", ["permessage-deflate; server_max_window_bits=abc"], .decline),
        Case("server_max_window_bits=+9", ["permessage-deflate; server_max_window_bits=+9"], .decline),
        Case("server_max_window_bits=100", ["permessage-deflate; server_max_window_bits=100"], .decline),
        Case("client_max_window_bits=16", ["permessage-deflate; client_max_window_bits=16"], .decline),
        Case("client_max_window_bits=-1", ["permessage-deflate; client_max_window_bits=-1"], .decline),
        Case("client_max_window_bits=9.5", ["permessage-deflate; client_max_window_bits=9.5"], .decline),

        // Duplicated and unknown parameters: declined (RFC 7692 §7)
        Case("duplicated client_max_window_bits", ["permessage-deflate; client_max_window_bits; client_max_window_bits=10"], .decline),
        Case("duplicated, differing in case", ["permessage-deflate; server_no_context_takeover; SERVER_NO_CONTEXT_TAKEOVER"], .decline),
        Case("duplicated server_max_window_bits", ["permessage-deflate; server_max_window_bits=10; server_max_window_bits=10"], .decline),
        Case("unknown parameter", ["permessage-deflate; foo"], .decline),
        Case("unknown parameter with a value", ["permessage-deflate; mem_level=5"], .decline),
        Case("parameter of the draft x-webkit-deflate-frame", ["permessage-deflate; no_context_takeover"], .decline),

        // Several offers, several header lines: the first acceptable one
        Case("declined offer, then an acceptable one", ["permessage-deflate; server_max_window_bits=8; client_max_window_bits, permessage-deflate; client_max_window_bits"],
             accept("; client_max_window_bits=15")),
        Case("unknown parameter, then a bare offer", ["permessage-deflate; foo, permessage-deflate"], accept()),
        Case("the first of two acceptable offers", ["permessage-deflate; server_max_window_bits=10, permessage-deflate"],
             accept("; server_max_window_bits=10", server: 10)),
        Case("offers across header lines", ["permessage-deflate; server_max_window_bits=8", "permessage-deflate; client_max_window_bits=9"],
             accept("; client_max_window_bits=9", client: 9)),
        Case("first line's offer wins", ["permessage-deflate; client_no_context_takeover", "permessage-deflate"],
             accept("; client_no_context_takeover", clientReset: true)),
        Case("every offer declined", ["permessage-deflate; server_max_window_bits=8", "permessage-deflate; client_max_window_bits=20"], .decline),

        // Other extensions mixed in: ignored
        Case("other extensions before and after", ["x-webkit-deflate-frame, foo; bar=baz; q=\"x\", permessage-deflate; client_max_window_bits, mux"],
             accept("; client_max_window_bits=15")),
        Case("only other extensions", ["deflate-stream", "mux; max-channels=4; flow-control"], .decline),
        Case("another extension on a line of its own", ["foo", "permessage-deflate"], accept()),
        Case("an extension whose name contains ours", ["permessage-deflate-v2, x-permessage-deflate"], .decline),

        // Quoted values (RFC 6455 §9.1: a token once unescaped)
        Case("quoted client window", ["permessage-deflate; client_max_window_bits=\"10\""],
             accept("; client_max_window_bits=10", client: 10)),
        Case("quoted server window with an escape", ["permessage-deflate; server_max_window_bits=\"1\\2\""],
             accept("; server_max_window_bits=12", server: 12)),
        Case("quoted invalid value", ["permessage-deflate; client_max_window_bits=\"08\""], .decline),
        Case("quoted value on a no-value parameter", ["permessage-deflate; server_no_context_takeover=\"x\""], .decline),
        Case("quoted value that is not a token", ["permessage-deflate; client_max_window_bits=\"1 0\""], .malformed),
        Case("empty quoted value", ["permessage-deflate; client_max_window_bits=\"\""], .malformed),
        Case("unterminated quoted value", ["permessage-deflate; client_max_window_bits=\"10"], .malformed),
        Case("quoted separator in another extension", ["foo; bar=\"a,b\", permessage-deflate"], .malformed),

        // Case-insensitive tokens, whitespace
        Case("mixed-case names", ["PerMessage-Deflate; Client_Max_Window_Bits=10; SERVER_NO_CONTEXT_TAKEOVER"],
             accept("; client_max_window_bits=10", client: 10)),
        Case("whitespace around separators", ["  permessage-deflate ;client_max_window_bits = 11\t, "],
             accept("; client_max_window_bits=11", client: 11)),
        Case("no whitespace", ["permessage-deflate;client_no_context_takeover;client_max_window_bits=12"],
             accept("; client_no_context_takeover; client_max_window_bits=12", client: 12, clientReset: true)),

        // Malformed headers fail the handshake (RFC 6455 §4.2.1), wherever they are
        Case("trailing semicolon", ["permessage-deflate;"], .malformed),
        Case("leading semicolon", ["; permessage-deflate"], .malformed),
        Case("parameter without a name", ["permessage-deflate; =10"], .malformed),
        Case("missing semicolon", ["permessage-deflate client_max_window_bits"], .malformed),
        Case("missing value after =", ["permessage-deflate; client_max_window_bits="], .malformed),
        Case("two = in a parameter", ["permessage-deflate; a=b=c"], .malformed),
        Case("separator in a name", ["permessage/deflate"], .malformed),
        Case("space inside a value", ["permessage-deflate; client_max_window_bits=1 0"], .malformed),
        Case("non-ASCII in a name", ["permessage-déflate"], .malformed),
        Case("control character", ["permessage-deflate;\u{1}foo"], .malformed),
        Case("malformed second line after an acceptable first", ["permessage-deflate", "foo;"], .malformed),
        Case("malformed other extension before ours", ["foo;;bar, permessage-deflate"], .malformed),
    ]

    @Test(arguments: cases)
    func negotiationTable(_ c: Case) {
        let result = DeflateNegotiation.negotiate(c.headers, policy: DeflatePolicy(enabled: true, clientMaxWindowBits: c.policyBits))
        switch c.outcome {
        case let .accept(header, server, client, clientReset):
            let expected = DeflateParameters(serverNoContextTakeover: true, clientNoContextTakeover: clientReset,
                                             serverMaxWindowBits: server, clientMaxWindowBits: client)
            #expect(result == .accepted(expected, responseHeader: header))
        case .decline:
            #expect(result == .declined)
        case .malformed:
            guard case .malformed(let reason) = result else {
                Issue.record("expected malformed, got \(result)")
                return
            }
            #expect(reason.hasPrefix("Sec-WebSocket-Extensions:"))
        }
    }

    @Test func policyOffDeclinesWithoutParsing() {
        let off = DeflatePolicy(enabled: false)
        #expect(DeflateNegotiation.negotiate(["permessage-deflate"], policy: off) == .declined)
        #expect(DeflateNegotiation.negotiate(["permessage-deflate;"], policy: off) == .declined)
    }

    @Test func defaultPolicy() {
        let p = DeflatePolicy()
        #expect(p.enabled && p.clientMaxWindowBits == 15)
        #expect(DeflateNegotiation.negotiate(["permessage-deflate; client_max_window_bits"], policy: p)
            == .accepted(DeflateParameters(), responseHeader: "permessage-deflate; server_no_context_takeover; client_max_window_bits=15"))
    }

    @Test func malformedReasonSaysWhere() {
        #expect(DeflateNegotiation.negotiate(["permessage-deflate; client_max_window_bits=\"10"], policy: DeflatePolicy())
            == .malformed("Sec-WebSocket-Extensions: unterminated quoted string at byte 46"))
    }
}

import Stateroom
import StateroomWasm
import Testing

/// `"01000000 0200..."` → bytes (spaces ignored).
func hex(_ s: String) -> [UInt8] {
    let digits = Array(s.utf8.filter { $0 != UInt8(ascii: " ") })
    return stride(from: 0, to: digits.count, by: 2).map { i in
        UInt8(String(decoding: digits[i..<i + 2], as: UTF8.self), radix: 16)!
    }
}

func encode(_ command: GuestCommand) -> [UInt8] {
    var w = BincodeWriter()
    command.encode(into: &w)
    return w.bytes
}

/// Calls `body` with a view of `bytes`, returning its result or its decoding error.
func withBytes<R>(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(BincodeError) -> R) -> Result<R, BincodeError> {
    bytes.withUnsafeBytes { raw in
        do throws(BincodeError) {
            return .success(try body(raw))
        } catch {
            return .failure(error)
        }
    }
}

struct Decoded: Equatable {
    var tag: String
    var detail: String
    init(_ tag: String, _ detail: String) { self.tag = tag; self.detail = detail }
}

func decodeEvent(_ bytes: [UInt8]) throws(BincodeError) -> Decoded {
    try withBytes(bytes) { (raw) throws(BincodeError) -> Decoded in
        switch try GuestEvent(decoding: raw) {
        case .initialize: return Decoded("init", "")
        case .connect(let c): return Decoded("connect", "\(c)")
        case .disconnect(let c): return Decoded("disconnect", "\(c)")
        case .message(let c, let p): return Decoded("message", "\(c) \(describe(p))")
        case .timer: return Decoded("timer", "")
        }
    }.get()
}

/// The worked examples of shared/ABI.md, byte for byte.
@Suite struct ABIWorkedExamples {
    @Test func eventsFromTheHostDecode() throws {
        #expect(try decodeEvent(hex("00000000")) == Decoded("init", ""))
        #expect(try decodeEvent(hex("01000000 07000000")) == Decoded("connect", "ClientId(7)"))
        #expect(try decodeEvent(hex("02000000 07000000")) == Decoded("disconnect", "ClientId(7)"))
        #expect(try decodeEvent(hex("03000000 02000000 01000000 0200000000000000 6869"))
                == Decoded("message", "ClientId(2) text \"hi\""))
        #expect(try decodeEvent(hex("03000000 02000000 00000000 0200000000000000 0102"))
                == Decoded("message", "ClientId(2) binary 0102"))
        #expect(try decodeEvent(hex("04000000")) == Decoded("timer", ""))
    }

    @Test func commandsFromTheGuestEncode() {
        #expect(encode(.send(.broadcast, .text("new value: 1")))
                == hex("00000000 00000000 01000000 0c00000000000000 6e65772076616c75653a2031"))
        #expect(encode(.send(.client(ClientId(3)), .text("ok")))
                == hex("00000000 01000000 03000000 01000000 0200000000000000 6f6b"))
        #expect(encode(.send(.everyoneExcept(ClientId(3)), .binary([255])))
                == hex("00000000 02000000 03000000 00000000 0100000000000000 ff"))
        #expect(encode(.setTimer(milliseconds: 4000)) == hex("01000000 a00f0000"))
    }

    @Test func eventsRoundTripThroughTheEncoder() throws {
        let events: [GuestEvent] = [.initialize, .connect(ClientId(9)), .disconnect(ClientId(1)),
                                    .message(ClientId(4), .text("héllo")), .message(ClientId(4), .binary([0, 1, 255])), .timer]
        for e in events {
            var w = BincodeWriter()
            e.encode(into: &w)
            let again = try withBytes(w.bytes) { (raw) throws(BincodeError) -> [UInt8] in
                var again = BincodeWriter()
                try GuestEvent(decoding: raw).encode(into: &again)
                return again.bytes
            }.get()
            #expect(again == w.bytes)
        }
    }

    @Test func commandsRoundTripThroughTheDecoder() throws {
        let bytes = encode(.send(.everyoneExcept(ClientId(2)), .text("x")))
        let ok = try withBytes(bytes) { (raw) throws(BincodeError) -> Bool in
            guard case .send(let to, let payload) = try GuestCommand(decoding: raw) else { return false }
            return to == .everyoneExcept(ClientId(2)) && payload.isText("x")
        }.get()
        #expect(ok)
    }
}

@Suite struct MalformedInput {
    func error(_ bytes: [UInt8]) -> BincodeError? {
        do {
            _ = try decodeEvent(bytes)
            return nil
        } catch {
            return error
        }
    }

    @Test func truncatedFieldsAreReportedWithTheirOffset() {
        #expect(error([]) == .truncated(offset: 0))
        #expect(error(hex("010000")) == .truncated(offset: 0))
        #expect(error(hex("01000000 0700")) == .truncated(offset: 4))
        #expect(error(hex("03000000 02000000 01000000 0500000000000000 6869")) == .truncated(offset: 20))
    }

    @Test func unknownTagsAreNamed() {
        #expect(error(hex("05000000")) == .unknownVariant(type: "MessageToProcess", tag: 5))
        #expect(error(hex("03000000 02000000 02000000 0000000000000000")) == .unknownVariant(type: "MessagePayload", tag: 2))
    }

    @Test func trailingBytesAreRejected() {
        #expect(error(hex("04000000 00")) == .trailingBytes(count: 1))
    }

    @Test func absurdLengthsDoNotTrap() {
        #expect(error(hex("03000000 02000000 01000000 ffffffffffffffff")) != nil)
    }
}

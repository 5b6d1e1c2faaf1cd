import Stateroom
@testable import StateroomServer
import Testing

/// Records the texts a service sends.
final class TextsContext: StateroomContext {
    var texts: [String] = []
    var names: [ClientId: String] = [:]
    func send(_ message: MessagePayload, to recipient: MessageRecipient) { texts.append(message.text ?? "<binary>") }
    func setTimer(milliseconds: UInt32) {}
    func closeRoom(reason: String) {}
    func identity(of client: ClientId) -> String? { names[client] }
}

@Suite struct NativeSnapshots {
    @Test func aCounterContinuesFromItsSnapshot() throws {
        let context = TextsContext()
        var counter = CounterService()
        for _ in 0..<5 { counter.message(client: ClientId(1), message: .text("increment"), context: context) }
        counter.message(client: ClientId(1), message: .text("decrement"), context: context)
        let snapshot = counter.snapshot()
        var restored = try CounterService(snapshot: snapshot)
        restored.message(client: ClientId(9), message: .text("increment"), context: context)
        #expect(context.texts.last == "new value: 5")
        // The original goes on independently.
        counter.message(client: ClientId(1), message: .text("decrement"), context: context)
        #expect(context.texts.last == "new value: 3")
        var negative = try CounterService(snapshot: restored.snapshot())
        for _ in 0..<10 { negative.message(client: ClientId(1), message: .text("decrement"), context: context) }
        #expect(try CounterService(snapshot: negative.snapshot()).snapshot() == negative.snapshot())
        #expect(context.texts.last == "new value: -5")
    }

    @Test func aChatKeepsTheNamesOfItsClients() throws {
        let context = TextsContext()
        context.names[ClientId(2)] = "bob"
        var chat = ChatService()
        chat.connect(client: ClientId(1), context: context)
        chat.connect(client: ClientId(2), context: context)
        chat.message(client: ClientId(1), message: .text("/nick Zoë ✓"), context: context)
        var restored = try ChatService(snapshot: chat.snapshot())
        restored.message(client: ClientId(1), message: .text("hi"), context: context)
        restored.message(client: ClientId(2), message: .text("yo"), context: context)
        restored.disconnect(client: ClientId(2), context: context)
        #expect(context.texts.suffix(3) == ["Zoë ✓: hi", "bob: yo", "bob has left the chat"])
    }

    @Test func statelessServicesHaveEmptySnapshotsAndRefuseOthers() throws {
        #expect(RelayService().snapshot().isEmpty)
        _ = try RelayService(snapshot: [])
        #expect(throws: SnapshotError("a relay snapshot is empty, not 2 bytes")) { try RelayService(snapshot: [1, 2]) }
        #expect(throws: SnapshotError("an echo snapshot is empty, not 1 bytes")) { try EchoService(snapshot: [0]) }
        // Through a factory: the snapshot's kind picks the type, another kind is refused.
        let factory = BuiltinService.relay.factory
        let snapshot = try #require(try factory.snapshot(of: RelayService()))
        #expect(snapshot == ServiceSnapshot(kind: "stateroom.relay/1", bytes: []))
        _ = try factory.restoreService(roomId: "r", shard: 0, from: snapshot)
        #expect(throws: SnapshotError("a snapshot of stateroom.counter/1 cannot be restored into stateroom.relay/1")) {
            try factory.restoreService(roomId: "r", shard: 0, from: ServiceSnapshot(kind: "stateroom.counter/1", bytes: []))
        }
    }

    @Test func snapshotsThatDoNotDecodeAreRefusedWithTheFieldAtFault() {
        var w = SnapshotWriter()
        w.write(7)
        let good = w.bytes
        #expect(throws: SnapshotError("snapshot ends inside value")) { try CounterService(snapshot: Array(good.prefix(5))) }
        #expect(throws: SnapshotError("1 bytes after the end of the snapshot")) { try CounterService(snapshot: good + [0]) }
        #expect(throws: SnapshotError("snapshot ends inside value")) { try CounterService(snapshot: []) }

        var lying = SnapshotWriter()
        lying.write(1_000_000)  // a million nicknames, none there
        #expect(throws: SnapshotError("nickname count 1000000 does not fit the snapshot")) { try ChatService(snapshot: lying.bytes) }

        var longName = SnapshotWriter()
        longName.write(1)
        longName.write(UInt32(3))
        longName.write(Int64(1 << 40))  // a name longer than the snapshot
        longName.write(Int64(0))
        #expect(throws: SnapshotError("nickname length 1099511627776 does not fit the 8 bytes left")) {
            try ChatService(snapshot: longName.bytes)
        }

        var badUTF8 = SnapshotWriter()
        badUTF8.write(1)
        badUTF8.write(UInt32(3))
        badUTF8.write(bytes: [0x66, 0xFF, 0x66])
        #expect(throws: SnapshotError("nickname is not UTF-8")) { try ChatService(snapshot: badUTF8.bytes) }
    }
}

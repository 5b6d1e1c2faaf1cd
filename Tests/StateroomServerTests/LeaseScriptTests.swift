import Glibc
import Stateroom
@testable import StateroomServer
import Testing

/// The fencing scripts against a real `redis-server`: every acquisition takes a new epoch, and a
/// save, renewal or release of an older epoch changes nothing, however late it arrives.
@Suite("Lease scripts (fencing)", .serialized)
struct LeaseScriptTests {
    let redis: RedisProcess
    let store: RedisStore

    init() throws {
        redis = try RedisProcess()
        store = RedisStore(RedisEndpoint(host: "127.0.0.1", port: redis.port))
    }

    private func keys(_ id: String) -> [[UInt8]] { [StoredRoom.leaseKey(id), StoredRoom.key(id), StoredRoom.epochKey(id)] }

    private func acquire(_ id: String, node: String, ttl: Int = 10_000) throws -> LoadReply {
        let reply = try store.commandAndWait(LeaseScript.command(LeaseScript.acquire, keys: keys(id),
                                                                 [Array(node.utf8), Array(String(ttl).utf8)])).get()
        return try LoadReply(reply)
    }

    private func save(_ id: String, node: String, epoch: UInt64, value: Int, release: Bool = false, ttl: Int = 10_000) throws -> Bool {
        let stored = StoredRoom(nextClientId: 1, service: ServiceSnapshot(kind: "n", bytes: [UInt8(value)]), epoch: epoch)
        let reply = try store.commandAndWait(LeaseScript.command(LeaseScript.save, keys: keys(id),
            [Array(node.utf8), Array(String(epoch).utf8), stored.encoded(), Array((release ? "1" : "0").utf8), Array(String(ttl).utf8)])).get()
        return reply == .integer(1)
    }

    private func renew(_ id: String, node: String, epoch: UInt64) throws -> Bool {
        try store.commandAndWait(LeaseScript.command(LeaseScript.renew, keys: keys(id),
            [Array(node.utf8), Array(String(epoch).utf8), Array("10000".utf8)])).get() == .integer(1)
    }

    private func stored(_ id: String) throws -> StoredRoom? {
        guard case .bytes(let b) = try store.commandAndWait([Array("GET".utf8), StoredRoom.key(id)]).get() else { return nil }
        return try StoredRoom(decoding: b)
    }

    private func redisCommand(_ args: String...) throws -> RedisReply {
        try store.commandAndWait(args.map { Array($0.utf8) }).get()
    }

    @Test func eachAcquisitionTakesTheNextEpochAndAnotherNodeIsToldWhoHoldsIt() throws {
        defer { store.stop() }
        #expect(try acquire("r", node: "a") == .owned(epoch: 1, nil))
        #expect(try acquire("r", node: "b node") == .heldBy("a"))
        #expect(try save("r", node: "a", epoch: 1, value: 3, release: true))
        #expect(try stored("r")?.epoch == 1)
        guard case .owned(let epoch, let bytes?) = try acquire("r", node: "b node") else {
            Issue.record("b could not take the released room")
            return
        }
        #expect(epoch == 2)
        #expect(try StoredRoom(decoding: bytes).service.bytes == [3])
        #expect(try acquire("r", node: "a") == .heldBy("b node"))
        // The same node taking its own lease again gets a new epoch, fencing its older holding.
        #expect(try acquire("r", node: "b node") == .owned(epoch: 3, [UInt8]((try stored("r"))!.encoded())))
        #expect(try !save("r", node: "b node", epoch: 2, value: 9))
    }

    @Test func aHolderPausedPastItsLeaseCanNeitherSaveNorRenewOnceAnotherTookTheRoom() throws {
        defer { store.stop() }
        #expect(try acquire("p", node: "a", ttl: 50) == .owned(epoch: 1, nil))
        #expect(try save("p", node: "a", epoch: 1, value: 3, ttl: 50))
        usleep(120_000)  // a's lease (50 ms) runs out: a is "paused"
        guard case .owned(2, _) = try acquire("p", node: "b", ttl: 10_000) else {
            Issue.record("b could not take the lapsed room")
            return
        }
        #expect(try save("p", node: "b", epoch: 2, value: 7, release: true))  // b hibernates it
        // a wakes: its renewal and its save are refused, the lease is not taken back, b's 7 stays.
        #expect(try !renew("p", node: "a", epoch: 1))
        #expect(try !save("p", node: "a", epoch: 1, value: 4))
        #expect(try redisCommand("EXISTS", "stateroom:lease:p") == .integer(0))
        #expect(try stored("p")?.service.bytes == [7])
        #expect(try stored("p")?.epoch == 2)
    }

    @Test func aLapsedLeaseNobodyTookIsKeptByItsHolderUnderTheSameEpoch() throws {
        defer { store.stop() }
        #expect(try acquire("k", node: "a", ttl: 50) == .owned(epoch: 1, nil))
        usleep(120_000)
        // Nobody acquired since (the counter still reads 1): a may go on, and holds the lease again.
        #expect(try renew("k", node: "a", epoch: 1))
        #expect(try acquire("k", node: "b") == .heldBy("a"))
        #expect(try save("k", node: "a", epoch: 1, value: 5))
    }

    @Test func releaseLetsGoOnlyOfTheCallersOwnEpoch() throws {
        defer { store.stop() }
        #expect(try acquire("l", node: "a", ttl: 50) == .owned(epoch: 1, nil))
        usleep(120_000)
        guard case .owned(2, _) = try acquire("l", node: "b") else {
            Issue.record("b could not take the lapsed room")
            return
        }
        let release = LeaseScript.command(LeaseScript.release, keys: [StoredRoom.leaseKey("l")], [Array("a".utf8), Array("1".utf8)])
        _ = store.commandAndWait(release)
        #expect(try redisCommand("GET", "stateroom:lease:l") == .bytes(Array("2 b".utf8)))
    }

    @Test func aStoreThatLostItsDataTakesTheFirstHolderBackAndFencesTheRest() throws {
        defer { store.stop() }
        #expect(try acquire("d", node: "a") == .owned(epoch: 1, nil))
        _ = try redisCommand("FLUSHALL")
        #expect(try save("d", node: "a", epoch: 1, value: 2))  // the counter is set to a's epoch again
        #expect(try redisCommand("GET", "stateroom:epoch:d") == .bytes(Array("1".utf8)))
        #expect(try !save("d", node: "z", epoch: 7, value: 1))
    }

    @Test func storedRoomsOfFormatOneReadAsEpochZero() throws {
        defer { store.stop() }
        var w = SnapshotWriter()
        w.write(UInt32(1))
        w.write(UInt32(4))
        w.write("stateroom.counter/1")
        w.write(bytes: [1, 2])
        let old = try StoredRoom(decoding: StoredRoom.magic + w.bytes)
        #expect(old == StoredRoom(nextClientId: 4, service: ServiceSnapshot(kind: "stateroom.counter/1", bytes: [1, 2]), epoch: 0))
        let now = StoredRoom(nextClientId: 4, service: old.service, epoch: 1 << 40)
        #expect(try StoredRoom(decoding: now.encoded()) == now)
        #expect(now.sameState(as: old))
    }
}

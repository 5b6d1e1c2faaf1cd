import Stateroom

/// A durable room as it is stored: its service's snapshot, the id its next client gets, the
/// fencing epoch of the lease under which it was written, and — in the last save before a
/// hand-over, a shutdown or hibernation — its seats.
///
/// Layout (``encoded()``): the magic `SRROOM`, a format version (`u32`), the next client id
/// (`u32`), the writer's epoch (`i64`, format 2 on), the snapshot's kind and its bytes (each an
/// `i64` length and the bytes), then (format 3) the seats: a `u32` 0 or 1, and when 1
/// ``StoredSeats``. Formats 1 (no epoch, read as epoch 0) and 2 (no seats) are still read.
struct StoredRoom: Equatable, Sendable {
    var nextClientId: UInt32
    var service: ServiceSnapshot
    /// The epoch of the lease its writer held (``LeaseScript``).
    var epoch: UInt64
    /// The room's seats, when it was saved to be let go with clients that may resume.
    var seats: StoredSeats?

    static let magic: [UInt8] = Array("SRROOM".utf8)
    static let version: UInt32 = 3

    func encoded() -> [UInt8] {
        var w = SnapshotWriter()
        w.write(Self.version)
        w.write(nextClientId)
        w.write(Int64(bitPattern: epoch))
        w.write(service.kind)
        w.write(bytes: service.bytes)
        if let seats {
            w.write(UInt32(1))
            seats.write(to: &w)
        } else {
            w.write(UInt32(0))
        }
        return Self.magic + w.bytes
    }

    init(nextClientId: UInt32, service: ServiceSnapshot, epoch: UInt64 = 0, seats: StoredSeats? = nil) {
        self.nextClientId = nextClientId
        self.service = service
        self.epoch = epoch
        self.seats = seats
    }

    /// Reads what ``encoded()`` wrote; anything else is refused, naming what is wrong.
    init(decoding bytes: [UInt8]) throws(SnapshotError) {
        guard bytes.count >= Self.magic.count, Array(bytes.prefix(Self.magic.count)) == Self.magic else {
            throw SnapshotError("not a stored room (no SRROOM header)")
        }
        var r = SnapshotReader(Array(bytes.dropFirst(Self.magic.count)))
        let version = try r.uint32("format version")
        guard (1...Self.version).contains(version) else {
            throw SnapshotError("stored room format \(version) is not \(Self.version)")
        }
        nextClientId = try r.uint32("next client id")
        epoch = version >= 2 ? UInt64(bitPattern: try r.int64("epoch")) : 0
        let kind = try r.string("snapshot kind")
        service = ServiceSnapshot(kind: kind, bytes: try r.bytes("snapshot"))
        seats = nil
        if version >= 3, try r.uint32("seats present") == 1 {
            seats = try StoredSeats(reading: &r)
        }
        try r.finish()
    }

    /// The same state (the writer's epoch aside): a save of it would change nothing.
    func sameState(as other: StoredRoom) -> Bool {
        nextClientId == other.nextClientId && service == other.service
    }

    /// The store key of room `id`.
    static func key(_ id: String) -> [UInt8] { Array("stateroom:room:\(id)".utf8) }
    /// The key of room `id`'s lease: `"<epoch> <node>"`, with a time to live.
    static func leaseKey(_ id: String) -> [UInt8] { Array("stateroom:lease:\(id)".utf8) }
    /// The key of room `id`'s fencing counter: the epoch of its latest lease (only grows).
    static func epochKey(_ id: String) -> [UInt8] { Array("stateroom:epoch:\(id)".utf8) }
    /// The channel node `node` listens on for rooms other nodes ask it to hand over.
    static func channel(of node: String) -> String { "stateroom:node:\(node)" }
}

/// A room's seats as stored with it (``StoredRoom``): the room's token secret, each distinct
/// message frame once, and per seat its client id, identity, count of messages sent to it, the
/// numbers of the messages it keeps (from `firstKept` on, as indices into the frames), and when
/// its grace ends.
///
/// Layout: the secret (bytes); a `u32` frame count, each frame's bytes; a `u32` seat count, each
/// seat: client id (`u32`), identity (`u32` 0 or 1, then a string), delivered and first kept
/// (`i64` each), the grace's end in Unix milliseconds (`i64`), a `u32` count of kept messages
/// and each one's frame index (`u32`).
struct StoredSeats: Equatable, Sendable {
    struct Seat: Equatable, Sendable {
        var clientId: UInt32
        var identity: String?
        var delivered: UInt64
        var firstKept: UInt64
        var deadlineMilliseconds: Int64
        var kept: [UInt32]
    }

    var secret: [UInt8]
    /// Complete WebSocket frames (header and payload), as they were sent.
    var frames: [[UInt8]] = []
    var seats: [Seat] = []

    func write(to w: inout SnapshotWriter) {
        w.write(bytes: secret)
        w.write(UInt32(frames.count))
        for f in frames { w.write(bytes: f) }
        w.write(UInt32(seats.count))
        for s in seats {
            w.write(s.clientId)
            if let identity = s.identity {
                w.write(UInt32(1))
                w.write(identity)
            } else {
                w.write(UInt32(0))
            }
            w.write(Int64(bitPattern: s.delivered))
            w.write(Int64(bitPattern: s.firstKept))
            w.write(s.deadlineMilliseconds)
            w.write(UInt32(s.kept.count))
            for k in s.kept { w.write(k) }
        }
    }

    init(secret: [UInt8], frames: [[UInt8]] = [], seats: [Seat] = []) {
        self.secret = secret
        self.frames = frames
        self.seats = seats
    }

    init(reading r: inout SnapshotReader) throws(SnapshotError) {
        secret = try r.bytes("seat secret")
        guard secret.count == 32 else { throw SnapshotError("seat secret of \(secret.count) bytes, not 32") }
        let frameCount = try r.uint32("seat frame count")
        for _ in 0..<frameCount { frames.append(try r.bytes("seat frame")) }
        let seatCount = try r.uint32("seat count")
        for _ in 0..<seatCount {
            let clientId = try r.uint32("seat client id")
            let identity: String? = try r.uint32("seat identity present") == 1 ? try r.string("seat identity") : nil
            let delivered = UInt64(bitPattern: try r.int64("seat delivered"))
            let firstKept = UInt64(bitPattern: try r.int64("seat first kept"))
            let deadline = try r.int64("seat deadline")
            let keptCount = try r.uint32("seat kept count")
            var kept: [UInt32] = []
            for _ in 0..<keptCount {
                let k = try r.uint32("seat kept frame")
                guard k < frames.count else { throw SnapshotError("seat kept frame \(k) out of range") }
                kept.append(k)
            }
            guard firstKept &+ UInt64(kept.count) == delivered &+ 1 else {
                throw SnapshotError("seat \(clientId): \(kept.count) kept messages do not end at \(delivered)")
            }
            seats.append(Seat(clientId: clientId, identity: identity, delivered: delivered,
                              firstKept: firstKept, deadlineMilliseconds: deadline, kept: kept))
        }
    }
}

/// The scripts that keep a room's lease and its snapshot consistent. Each runs atomically in
/// Redis, and together they fence: every acquisition of a room's lease takes the next **epoch**
/// from the room's counter (`INCR`), and a save, renewal or release goes through only while the
/// counter still holds the caller's epoch. A node that was paused past its lease, cut off from
/// Redis, or slow to hand a room over therefore cannot renew, save or release once another node
/// has taken the room, however late its command arrives.
///
/// Renewal and save do not need the lease key itself to still be there: an expired lease with
/// the counter unchanged means nobody took the room since (any acquisition increments it), so
/// the holder may go on, and its lease is set again. A counter that is missing means the store
/// lost its data (a Redis restarted without persistence): the first holder to come back sets it
/// to its epoch, and every other epoch is refused from then on.
enum LeaseScript {
    /// KEYS: lease, snapshot, counter; ARGV: node, ttl ms. Takes the lease, with the next epoch,
    /// unless another node holds it: `{1, epoch, snapshot}` / `{1, epoch}` (nothing stored) when
    /// taken, `{0, owner}` when held elsewhere. A lease this node holds is taken again with a
    /// new epoch, which fences anything its earlier holding still has in flight.
    static let acquire = """
        local held = redis.call('GET', KEYS[1])
        if held then
          local owner = string.match(held, '^%d+ (.*)$') or held
          if owner ~= ARGV[1] then return {0, owner} end
        end
        local epoch = redis.call('INCR', KEYS[3])
        redis.call('SET', KEYS[1], epoch .. ' ' .. ARGV[1], 'PX', ARGV[2])
        local snapshot = redis.call('GET', KEYS[2])
        if snapshot then return {1, epoch, snapshot} end
        return {1, epoch}
        """
    /// The check every write starts with (KEYS[1] lease, KEYS[3] counter, ARGV[1] node,
    /// ARGV[2] epoch): the caller's epoch is still the room's latest.
    private static let fence = """
        local mine = ARGV[2] .. ' ' .. ARGV[1]
        local current = redis.call('GET', KEYS[3])
        if current and current ~= ARGV[2] then return 0 end
        local held = redis.call('GET', KEYS[1])
        if held and held ~= mine then return 0 end
        if not current then redis.call('SET', KEYS[3], ARGV[2]) end
        """
    /// KEYS: lease, snapshot, counter; ARGV: node, epoch, snapshot, release ("1" or "0"), ttl
    /// ms. Stores the snapshot and releases or renews the lease: 1, or 0 (nothing written) when
    /// another epoch has the room.
    static let save = fence + """

        redis.call('SET', KEYS[2], ARGV[3])
        if ARGV[4] == '1' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], mine, 'PX', ARGV[5]) end
        return 1
        """
    /// KEYS: lease, (unused), counter; ARGV: node, epoch, ttl ms. Renews the lease: 1, or 0 when
    /// another epoch has the room.
    static let renew = fence + """

        redis.call('SET', KEYS[1], mine, 'PX', ARGV[3])
        return 1
        """
    /// KEYS: lease; ARGV: node, epoch. Releases the lease if it is still this epoch's.
    static let release = """
        if redis.call('GET', KEYS[1]) == ARGV[2] .. ' ' .. ARGV[1] then redis.call('DEL', KEYS[1]) end
        return 1
        """

    /// The `EVAL` command running `source`.
    static func command(_ source: String, keys: [[UInt8]], _ args: [[UInt8]]) -> [[UInt8]] {
        [Array("EVAL".utf8), Array(source.utf8), Array(String(keys.count).utf8)] + keys + args
    }
}

/// What a read of a room's lease and snapshot found.
enum LoadReply: Sendable, Equatable {
    /// This node owns the room now, under `epoch`; its snapshot, if one is stored.
    case owned(epoch: UInt64, [UInt8]?)
    /// Another node (this id) owns it.
    case heldBy(String)

    init(_ reply: RedisReply) throws(StoreError) {
        guard case .array(let items) = reply, let first = items.first, case .integer(let taken) = first else {
            throw StoreError("unexpected lease reply \(reply)")
        }
        if taken == 1 {
            guard items.count > 1, case .integer(let epoch) = items[1], epoch > 0 else {
                throw StoreError("lease reply without an epoch: \(reply)")
            }
            self = .owned(epoch: UInt64(epoch), items.count > 2 ? items[2].data : nil)
        } else {
            guard items.count > 1, let owner = items[1].data else { throw StoreError("lease held by no one") }
            self = .heldBy(String(decoding: owner, as: UTF8.self))
        }
    }
}

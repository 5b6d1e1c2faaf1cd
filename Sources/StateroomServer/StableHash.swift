/// FNV-1a, 64 bit, over the room id's UTF-8 bytes: the same on every run, machine and node, so a
/// proxy can route a room to the node (and shard) that owns it.
public func stableHash(_ roomId: String) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in roomId.utf8 {
        h ^= UInt64(b)
        h &*= 0x0000_0100_0000_01b3
    }
    return h
}

/// The shard that owns `roomId` among `shards`.
public func ownerShard(of roomId: String, shards: Int) -> Int {
    Int(stableHash(roomId) % UInt64(max(shards, 1)))
}

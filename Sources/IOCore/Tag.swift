/// What a submitted operation was, carried in its completion's `user_data`.
public enum OpKind: UInt8, Sendable {
    case accept = 1
    case recv = 2
    case send = 3
    case wake = 4
    case cancel = 5
}

/// The tagged `user_data` of every operation: kind, slot and generation.
///
/// Bit layout (pinned by ``Tag/assertLayout()`` at start-up and by a unit test):
/// `[63..56] op kind | [55..32] generation (24 bits) | [31..0] slot`. A slot is reused after its
/// connection closes; its generation changes, so a stale completion for an old occupant of the
/// slot is recognised and dropped.
public struct Tag: Hashable, Sendable {
    public static let generationBits = 24
    public static let generationMask: UInt32 = (1 << 24) - 1

    public var op: OpKind
    public var slot: UInt32
    public var generation: UInt32

    @inlinable
    public init(op: OpKind, slot: UInt32, generation: UInt32) {
        self.op = op
        self.slot = slot
        self.generation = generation & Tag.generationMask
    }

    /// The packed value for `user_data`.
    @inlinable
    public var rawValue: UInt64 {
        UInt64(op.rawValue) << 56 | UInt64(generation & Tag.generationMask) << 32 | UInt64(slot)
    }

    /// Unpacks `user_data`; `nil` for a value no ``Tag`` produced.
    @inlinable
    public init?(rawValue: UInt64) {
        guard let op = OpKind(rawValue: UInt8(truncatingIfNeeded: rawValue >> 56)) else { return nil }
        self.op = op
        self.generation = UInt32(truncatingIfNeeded: rawValue >> 32) & Tag.generationMask
        self.slot = UInt32(truncatingIfNeeded: rawValue)
    }

    /// Checks the bit layout round-trips at its extremes; called once when a loop starts.
    public static func assertLayout() {
        let t = Tag(op: .cancel, slot: .max, generation: generationMask)
        precondition(Tag(rawValue: t.rawValue) == t, "user_data layout broken")
        precondition(t.rawValue >> 56 == UInt64(OpKind.cancel.rawValue), "op kind must sit in the top byte")
    }
}

/// One completion, backend-neutral: what happened to the operation `tag`.
public struct Completion: Sendable {
    /// The operation's tag.
    public var tag: Tag
    /// The result: bytes, a file descriptor, or a negative errno.
    public var result: Int32
    /// The provided buffer holding received bytes, if any.
    public var bufferID: UInt16?
    /// `true` while a multishot operation stays armed (more completions will follow).
    public var more: Bool

    public init(tag: Tag, result: Int32, bufferID: UInt16?, more: Bool) {
        self.tag = tag
        self.result = result
        self.bufferID = bufferID
        self.more = more
    }
}

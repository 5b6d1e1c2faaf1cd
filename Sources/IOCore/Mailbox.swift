import Synchronization
import Locking

/// A cross-thread multi-producer, single-consumer queue with an eventfd doorbell.
///
/// Producers append under a mutex and ring the doorbell when the queue was empty; the owning
/// loop keeps an eventfd read armed and drains the queue when it completes. Used for connection
/// handoff and control messages, never per WebSocket message.
public final class Mailbox<Item: Sendable>: Sendable {
    private let items = Locked<[Item]>([])
    /// The doorbell the owner's loop listens on.
    public let doorbell: EventFD

    public init() throws {
        doorbell = try EventFD()
    }

    /// Queues `item` and wakes the owner.
    public func post(_ item: sending Item) {
        let wasEmpty = items.withLock { list -> Bool in
            let e = list.isEmpty
            list.append(item)
            return e
        }
        if wasEmpty { doorbell.signal() }
    }

    /// Takes everything queued (owner only).
    public func drain() -> [Item] {
        items.withLock { list in
            let out = list
            list.removeAll(keepingCapacity: true)
            return out
        }
    }
}

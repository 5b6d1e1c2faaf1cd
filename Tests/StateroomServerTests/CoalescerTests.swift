@testable import StateroomServer
import Testing

/// A clock that moves only when told to.
final class ManualClock: ShardClock {
    var now: UInt64 = 1_000_000_000
    var cpu: UInt64 = 0
    func monotonicNanos() -> UInt64 { now }
    func threadCPUNanos() -> UInt64 { cpu }
}

final class FakeSocket: Paced {
    let name: String
    var pacing = SendPacing()
    init(_ name: String) { self.name = name }
}

private let ms: UInt64 = 1_000_000

/// The hold-queue rules of send coalescing, with time that only moves when the test says so.
@Suite struct CoalescerTests {
    typealias C = Coalescer<FakeSocket, ManualClock>

    func make(base: UInt64 = 8 * ms, limit: UInt64 = 8 * ms, clock: ManualClock = ManualClock()) -> C {
        C(window: CoalesceWindow(base: base, limit: limit), holdBytesCap: 64 << 10, maxFrames: 64, clock: clock)
    }

    /// A socket whose last send, `ago` before `now`, carried `frames` frames.
    func busy(_ name: String, frames: Int, sentAt: UInt64, in c: C) -> FakeSocket {
        let s = FakeSocket(name)
        c.sent(s, frames: frames, now: sentAt)
        return s
    }

    @Test func aSocketWhoseLastSendCarriedFourFramesWaitsUntilOneWindowAfterIt() {
        var c = make()
        let t0: UInt64 = 5_000 * ms
        let s = busy("a", frames: 4, sentAt: t0, in: c)
        do {
            let r = c.hold(s, queuedFrames: 1, queuedBytes: 60, lastHeard: 0, closing: false, now: t0 + 2 * ms)
            #expect(r)
        }
        #expect(s.pacing.heldUntil == t0 + 8 * ms)
        #expect(c.nextDeadline == t0 + 8 * ms)
        var released: [String] = []
        c.releaseDue(now: t0 + 7 * ms) { released.append($0.name) }
        #expect(released.isEmpty, "not before its deadline")
        c.releaseDue(now: t0 + 8 * ms) { released.append($0.name) }
        #expect(released == ["a"])
        #expect(!s.pacing.isHeld && c.nextDeadline == nil)
    }

    @Test func quietSocketsAreSentToAtOnce() {
        var c = make()
        let t0: UInt64 = 5_000 * ms
        // Fewer than four frames last time: not busy.
        let few = busy("few", frames: 3, sentAt: t0, in: c)
        do {
            let r = c.hold(few, queuedFrames: 1, queuedBytes: 60, lastHeard: 0, closing: false, now: t0 + ms)
            #expect(!r)
        }
        // Busy, but the last send was a whole window ago.
        let old = busy("old", frames: 16, sentAt: t0, in: c)
        do {
            let r = c.hold(old, queuedFrames: 1, queuedBytes: 60, lastHeard: 0, closing: false, now: t0 + 8 * ms)
            #expect(!r)
        }
        // Never sent to.
        do {
            let r = c.hold(FakeSocket("new"), queuedFrames: 1, queuedBytes: 60, lastHeard: 0, closing: false, now: t0)
            #expect(!r)
        }
        #expect(c.heldCount == 0)
    }

    @Test func aTalkingClientAClosingSocketAndAFullQueueAreNotHeld() {
        var c = make()
        let t0: UInt64 = 5_000 * ms
        let s = busy("a", frames: 8, sentAt: t0, in: c)
        // The client sent something within the window: it may be waiting for an answer.
        do {
            let r = c.hold(s, queuedFrames: 1, queuedBytes: 60, lastHeard: t0 - ms, closing: false, now: t0 + ms)
            #expect(!r)
        }
        do {
            let r = c.hold(s, queuedFrames: 1, queuedBytes: 60, lastHeard: 0, closing: true, now: t0 + ms)
            #expect(!r)
        }
        do {
            let r = c.hold(s, queuedFrames: 64, queuedBytes: 60, lastHeard: 0, closing: false, now: t0 + ms)
            #expect(!r)
        }
        do {
            let r = c.hold(s, queuedFrames: 1, queuedBytes: 64 << 10, lastHeard: 0, closing: false, now: t0 + ms)
            #expect(!r)
        }
        do {
            let r = c.hold(s, queuedFrames: 63, queuedBytes: (64 << 10) - 1, lastHeard: t0 - 8 * ms, closing: false, now: t0 + ms)
            #expect(r)
        }
    }

    @Test func aHeldSocketWhoseQueueReachesTheCapIsLetGoAndItsStaleEntryHoldsUpNobody() {
        var c = make()
        let t0: UInt64 = 5_000 * ms
        let a = busy("a", frames: 4, sentAt: t0, in: c)
        let b = busy("b", frames: 4, sentAt: t0 + 2 * ms, in: c)
        do {
            let r = c.hold(a, queuedFrames: 1, queuedBytes: 100, lastHeard: 0, closing: false, now: t0 + 3 * ms)
            #expect(r)
        }
        do {
            let r = c.hold(b, queuedFrames: 1, queuedBytes: 100, lastHeard: 0, closing: false, now: t0 + 3 * ms)
            #expect(r)
        }
        #expect(!c.queueGrew(a, queuedBytes: 1000), "under the cap it stays held")
        #expect(c.queueGrew(a, queuedBytes: 64 << 10), "at the cap it is let go")
        #expect(!a.pacing.isHeld)
        // a is sent now and held again with a later deadline; its old entry must not keep b
        // waiting past b's own deadline, nor release a early.
        c.sent(a, frames: 4, now: t0 + 4 * ms)
        do {
            let r = c.hold(a, queuedFrames: 1, queuedBytes: 100, lastHeard: 0, closing: false, now: t0 + 5 * ms)
            #expect(r)
        }
        var released: [String] = []
        c.releaseDue(now: t0 + 10 * ms) { released.append($0.name) }
        #expect(released == ["b"], "the stale entry of a is dropped, b is due, the new entry of a is not")
        #expect(a.pacing.heldUntil == t0 + 12 * ms)
        c.releaseDue(now: t0 + 12 * ms) { released.append($0.name) }
        #expect(released == ["b", "a"])
        #expect(c.heldCount == 0)
    }

    @Test func everyHeldSocketIsReleasedWithinOneWindowOfBeingHeld() {
        // Deadlines in hold order need not be monotonic (a socket sent to earlier may be held
        // later); the front-first release must still let each go no later than a window after it
        // was held.
        var c = make()
        let t0: UInt64 = 5_000 * ms
        var sockets: [(FakeSocket, UInt64)] = []
        for i in 0..<20 {
            let sentAt = t0 + UInt64((i * 7) % 5) * ms
            let s = busy("s\(i)", frames: 4, sentAt: sentAt, in: c)
            let heldAt = t0 + 5 * ms
            do {
                let r = c.hold(s, queuedFrames: 1, queuedBytes: 10, lastHeard: 0, closing: false, now: heldAt)
                #expect(r)
            }
            sockets.append((s, heldAt))
        }
        var releasedAt: [String: UInt64] = [:]
        var t = t0 + 5 * ms
        while c.heldCount > 0 && t < t0 + 100 * ms {
            c.releaseDue(now: t) { releasedAt[$0.name] = t }
            t += ms / 2
        }
        #expect(releasedAt.count == 20)
        for (s, heldAt) in sockets {
            let at = try! #require(releasedAt[s.name])
            #expect(at >= s.pacing.lastSendAt + 8 * ms - ms / 2 && at <= heldAt + 8 * ms, "\(s.name)")
        }
    }

    @Test func aZeroWindowNeverHolds() {
        var c = make(base: 0, limit: 16 * ms)
        let s = busy("a", frames: 64, sentAt: 5_000 * ms, in: c)
        do {
            let r = c.hold(s, queuedFrames: 1, queuedBytes: 10, lastHeard: 0, closing: false, now: 5_000 * ms)
            #expect(!r)
        }
    }

    @Test func theWindowFollowsTheThreadsBusyShareOncePerEpoch() {
        let clock = ManualClock()
        var c = make(base: 8 * ms, limit: 16 * ms, clock: clock)
        let epoch = CoalesceWindow.epoch
        // Half an epoch later nothing is measured yet.
        clock.now += epoch / 2
        do {
            let r = c.measureLoad(now: clock.now)
            #expect(!r)
        }
        // 90% of the epoch on a CPU: the window grows by a quarter.
        clock.now += epoch / 2
        clock.cpu += epoch * 9 / 10
        do {
            let r = c.measureLoad(now: clock.now)
            #expect(r)
        }
        #expect(c.current == 10 * ms)
        #expect(abs(c.busy - 0.9) < 0.001)
        #expect(c.needsEpochWake && c.epochEnd == clock.now + epoch)
        // Idle for several epochs: the first turn after counts the gap as one epoch, nearly idle.
        clock.now += epoch * 5
        clock.cpu += 1_000
        do {
            let r = c.measureLoad(now: clock.now)
            #expect(r)
        }
        #expect(c.current == 8 * ms && c.busy < 0.01)
    }
}

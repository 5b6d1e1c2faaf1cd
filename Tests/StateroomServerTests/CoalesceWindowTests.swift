@testable import StateroomServer
import Testing

@Suite struct CoalesceWindowTests {
    @Test func growsWhileBusyUpToTheLimitAndShrinksBackToTheBase() {
        var w = CoalesceWindow(base: 8_000_000, limit: 16_000_000)
        #expect(w.adapts && w.current == 8_000_000)
        w.update(busy: 0.5)  // between the thresholds: unchanged
        #expect(w.current == 8_000_000)
        var seen = [w.current]
        for _ in 0..<10 { w.update(busy: 0.95); seen.append(w.current) }
        #expect(seen.prefix(5) == [8_000_000, 10_000_000, 12_500_000, 15_625_000, 16_000_000])
        #expect(w.current == 16_000_000)
        w.update(busy: 0.5)
        #expect(w.current == 16_000_000)
        for _ in 0..<10 { w.update(busy: 0.1) }
        #expect(w.current == 8_000_000)
    }

    @Test func aLimitAtOrBelowTheBaseMeansAFixedWindow() {
        for limit: UInt64 in [0, 4_000_000, 8_000_000] {
            var w = CoalesceWindow(base: 8_000_000, limit: limit)
            #expect(!w.adapts)
            #expect(w.limit == 8_000_000)
            w.update(busy: 1)  // even if asked to, it does not move
            #expect(w.current == 8_000_000)
        }
    }

    @Test func aZeroBaseIsOffWhateverTheLimit() {
        var w = CoalesceWindow(base: 0, limit: 16_000_000)
        #expect(!w.adapts)
        w.update(busy: 1)
        #expect(w.current == 0)
    }
}

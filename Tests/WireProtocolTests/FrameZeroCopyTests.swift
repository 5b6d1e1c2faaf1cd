import Testing
import WireProtocol

@Suite struct FrameZeroCopyTests {
    @Test func completeSingleFrameMessageIsAViewIntoTheInputBuffer() {
        var frame = clientFrame(.text, "Hello, zero copy")
        frame.withUnsafeMutableBytes { buffer in
            var parser = FrameParser(role: .server, maxMessageSize: 1024)
            var offset = 0
            guard case let .message(opcode, view) = parser.next(buffer, offset: &offset) else {
                Issue.record("expected a message")
                return
            }
            #expect(opcode == .text)
            let start = UnsafeRawPointer(buffer.baseAddress!)
            #expect(view.baseAddress! >= start && view.baseAddress! + view.count <= start + buffer.count)
            #expect(view.baseAddress! == start + 6)
            #expect(String(decoding: view, as: UTF8.self) == "Hello, zero copy")
            #expect(offset == buffer.count)
            #expect(!parser.hasBufferedData)
            guard case .needMore = parser.next(buffer, offset: &offset) else {
                Issue.record("expected needMore")
                return
            }
        }
    }

    @Test func controlFrameBetweenFragmentsIsAlsoAViewIntoTheInputBuffer() {
        var stream = clientFrame(.text, "a", fin: false) + clientFrame(.ping, "ping!")
        stream.withUnsafeMutableBytes { buffer in
            var parser = FrameParser(role: .server, maxMessageSize: 1024)
            var offset = 0
            guard case let .ping(view) = parser.next(buffer, offset: &offset) else {
                Issue.record("expected a ping")
                return
            }
            #expect(view.baseAddress! == UnsafeRawPointer(buffer.baseAddress!) + 7 + 6)
            #expect(parser.hasBufferedData, "the open fragment is held")
        }
    }

    @Test func frameSplitAcrossBuffersIsAssembledInParserStorage() {
        let frame = clientFrame(.binary, [UInt8](repeating: 5, count: 50))
        var parser = FrameParser(role: .server, maxMessageSize: 1024)
        var first = Array(frame[..<20])
        var second = Array(frame[20...])
        first.withUnsafeMutableBytes { buffer in
            var offset = 0
            guard case .needMore = parser.next(buffer, offset: &offset) else {
                Issue.record("expected needMore")
                return
            }
            #expect(offset == buffer.count)
        }
        #expect(parser.hasBufferedData)
        second.withUnsafeMutableBytes { buffer in
            var offset = 0
            guard case let .message(_, view) = parser.next(buffer, offset: &offset) else {
                Issue.record("expected a message")
                return
            }
            let start = UnsafeRawPointer(buffer.baseAddress!)
            #expect(!(view.baseAddress! >= start && view.baseAddress! < start + buffer.count))
            #expect(Array(view) == [UInt8](repeating: 5, count: 50))
        }
        #expect(!parser.hasBufferedData)
    }

    @Test func partialHeaderIsCarriedAndPayloadInNextBufferIsStillZeroCopy() {
        let frame = clientFrame(.binary, [UInt8](repeating: 7, count: 40))
        var parser = FrameParser(role: .server, maxMessageSize: 1024)
        var first = Array(frame[..<1])
        var second = Array(frame[1...])
        first.withUnsafeMutableBytes { buffer in
            var offset = 0
            if case .needMore = parser.next(buffer, offset: &offset) {} else { Issue.record("expected needMore") }
        }
        #expect(parser.hasBufferedData)
        second.withUnsafeMutableBytes { buffer in
            var offset = 0
            guard case let .message(_, view) = parser.next(buffer, offset: &offset) else {
                Issue.record("expected a message")
                return
            }
            #expect(view.baseAddress! == UnsafeRawPointer(buffer.baseAddress!) + 5)
            #expect(Array(view) == [UInt8](repeating: 7, count: 40))
        }
    }

    @Test func emptyBufferIsNeedMore() {
        var parser = FrameParser(role: .server, maxMessageSize: 10)
        var offset = 0
        if case .needMore = parser.next(UnsafeMutableRawBufferPointer(start: nil, count: 0), offset: &offset) {} else {
            Issue.record("expected needMore")
        }
    }

    @Test func assemblyStorageIsReusedAcrossLargeAndSmallMessages() {
        // A large message (released after delivery) followed by fragmented small ones stays correct.
        let big = [UInt8](repeating: 1, count: 200_000)
        var stream = clientFrame(.binary, Array(big[..<100_000]), fin: false) + clientFrame(.continuation, Array(big[100_000...]))
        for i in 0..<5 {
            stream += clientFrame(.text, "m\(i)-", fin: false) + clientFrame(.continuation, "end")
        }
        let expected: [Ev] = [.message(.binary, big)] + (0..<5).map { .text("m\($0)-end") }
        #expect(parse(stream) == expected)
        #expect(parse(stream, chunks: [99_999, 7]) == expected)
    }

    @Test func releaseMemoryKeepsHeldFragmentsAndFreesIdleStorage() {
        var parser = FrameParser(role: .server, maxMessageSize: 1 << 20)
        var events: [Ev] = []
        let stream = clientFrame(.text, "abc", fin: false) + clientFrame(.continuation, "def")
        feed(&parser, stream[..<9], into: &events)
        parser.releaseMemory()                    // data held: must be a no-op
        #expect(parser.hasBufferedData)
        feed(&parser, stream[9...], into: &events)
        #expect(events == [.text("abcdef")])
        parser.releaseMemory()                    // idle: storage freed, parser still works
        feed(&parser, clientFrame(.binary, [1, 2, 3], fin: false)[...], into: &events)
        feed(&parser, clientFrame(.continuation, [4])[...], into: &events)
        #expect(events == [.text("abcdef"), .message(.binary, [1, 2, 3, 4])])
    }

    @Test func anIdleParserOwnsNoStorageAndStaysSmall() {
        // A server keeps one parser per connection: idle ones must cost a few words, not buffers.
        #expect(MemoryLayout<FrameParser>.size <= 24)
        var parser = FrameParser(role: .server, maxMessageSize: 1024)
        var events: [Ev] = []
        feed(&parser, clientFrame(.text, "whole")[...], into: &events)
        #expect(events == [.text("whole")])
        #expect(!parser.holdsStorage, "a frame wholly inside one buffer needs no parser storage")
        let split = clientFrame(.text, "split")
        feed(&parser, split[..<3], into: &events)
        #expect(parser.holdsStorage && parser.hasBufferedData)
        feed(&parser, split[3...], into: &events)
        #expect(events == [.text("whole"), .text("split")])
        parser.releaseMemory()
        #expect(!parser.holdsStorage)
    }
}

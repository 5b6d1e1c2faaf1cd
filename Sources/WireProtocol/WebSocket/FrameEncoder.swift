// Frame encoding: server frames (unmasked) for the broadcast path, masked client frames for test clients
// and the load generator.

/// The size of an unmasked frame header for a payload of `payloadLength` bytes: 2, 4 or 10.
@inlinable
public func frameHeaderSize(payloadLength: Int) -> Int {
    payloadLength <= 125 ? 2 : (payloadLength <= 0xFFFF ? 4 : 10)
}

/// Writes an unmasked (server) frame header for `payloadLength` bytes at `into`, using the shortest length
/// encoding, and returns its size (``frameHeaderSize(payloadLength:)`` bytes: 2, 4 or 10).
@inlinable
@discardableResult
public func encodeFrameHeader(opcode: Opcode, fin: Bool = true, payloadLength: Int, into: UnsafeMutableRawPointer) -> Int {
    into.storeBytes(of: (fin ? 0x80 : 0) | opcode.rawValue, as: UInt8.self)
    if payloadLength <= 125 {
        into.storeBytes(of: UInt8(truncatingIfNeeded: payloadLength), toByteOffset: 1, as: UInt8.self)
        return 2
    }
    if payloadLength <= 0xFFFF {
        into.storeBytes(of: 126, toByteOffset: 1, as: UInt8.self)
        into.storeBytes(of: UInt16(truncatingIfNeeded: payloadLength).bigEndian, toByteOffset: 2, as: UInt16.self)
        return 4
    }
    into.storeBytes(of: 127, toByteOffset: 1, as: UInt8.self)
    into.storeBytes(of: UInt64(payloadLength).bigEndian, toByteOffset: 2, as: UInt64.self)
    return 10
}

/// Appends a whole unmasked (server) frame to `into`.
@inlinable
public func encodeServerFrame(opcode: Opcode, fin: Bool = true, payload: UnsafeRawBufferPointer, into: inout [UInt8]) {
    let start = into.count
    let headerSize = frameHeaderSize(payloadLength: payload.count)
    into.append(contentsOf: repeatElement(0, count: headerSize))
    into.withUnsafeMutableBytes { out in
        _ = encodeFrameHeader(opcode: opcode, fin: fin, payloadLength: payload.count, into: out.baseAddress! + start)
    }
    into.append(contentsOf: payload)
}

/// A whole server close frame: `code` followed by `reason`, truncated at a UTF-8 character boundary so the
/// payload fits the 125-byte control-frame limit.
public func closeFrame(_ code: CloseCode, reason: String = "") -> [UInt8] {
    var reasonBytes = Array(reason.utf8)
    if reasonBytes.count > 123 {
        var cut = 123
        while cut > 0 && reasonBytes[cut] & 0xC0 == 0x80 { cut -= 1 }
        reasonBytes.removeSubrange(cut...)
    }
    var out: [UInt8] = [0x88, UInt8(2 + reasonBytes.count), UInt8(code.rawValue >> 8), UInt8(code.rawValue & 0xFF)]
    out.append(contentsOf: reasonBytes)
    return out
}

/// Appends a whole masked (client) frame to `into`: header with the mask bit, `maskKey`, masked payload.
public func encodeClientFrame(opcode: Opcode, fin: Bool = true, payload: UnsafeRawBufferPointer,
                              maskKey: (UInt8, UInt8, UInt8, UInt8), into: inout [UInt8]) {
    let start = into.count
    let headerSize = frameHeaderSize(payloadLength: payload.count)
    into.append(contentsOf: repeatElement(0, count: headerSize))
    into.withUnsafeMutableBytes { out in
        let h = out.baseAddress! + start
        _ = encodeFrameHeader(opcode: opcode, fin: fin, payloadLength: payload.count, into: h)
        h.storeBytes(of: h.load(fromByteOffset: 1, as: UInt8.self) | 0x80, toByteOffset: 1, as: UInt8.self)
    }
    into.append(maskKey.0)
    into.append(maskKey.1)
    into.append(maskKey.2)
    into.append(maskKey.3)
    let payloadStart = into.count
    into.append(contentsOf: payload)
    into.withUnsafeMutableBytes { out in
        unmask(UnsafeMutableRawBufferPointer(rebasing: out[payloadStart...]), key: maskKey, phase: 0)
    }
}

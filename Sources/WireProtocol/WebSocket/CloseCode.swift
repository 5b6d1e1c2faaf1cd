/// A WebSocket close status code (RFC 6455 §7.4).
public struct CloseCode: RawRepresentable, Hashable, Sendable {
    /// The numeric code sent in the first two bytes of a close payload.
    public var rawValue: UInt16

    /// Wraps any code.
    @inlinable
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// 1000: normal closure.
    public static let normal = CloseCode(rawValue: 1000)
    /// 1001: the endpoint is going away (server shutdown, page navigation).
    public static let goingAway = CloseCode(rawValue: 1001)
    /// 1002: protocol error.
    public static let protocolError = CloseCode(rawValue: 1002)
    /// 1003: a data type the endpoint cannot accept.
    public static let unsupportedData = CloseCode(rawValue: 1003)
    /// 1007: data inconsistent with the message type (invalid UTF-8 in text).
    public static let invalidPayload = CloseCode(rawValue: 1007)
    /// 1008: policy violation (e.g. a slow consumer past its outbound cap).
    public static let policyViolation = CloseCode(rawValue: 1008)
    /// 1009: a message too big to process.
    public static let messageTooBig = CloseCode(rawValue: 1009)
    /// 1011: an unexpected condition on the server (e.g. a trapped room).
    public static let internalError = CloseCode(rawValue: 1011)
    /// 1012: the service is restarting.
    public static let serviceRestart = CloseCode(rawValue: 1012)
    /// 1013: try again later (temporary overload).
    public static let tryAgainLater = CloseCode(rawValue: 1013)

    /// Whether `code` may appear in a received close frame (RFC 6455 §7.4.1–2 and the IANA registry):
    /// 1000–1003, 1007–1014 and 3000–4999. 1004–1006, 1015, 0–999, other 1xxx and 2xxx are invalid.
    @inlinable
    public static func isValidReceived(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1014, 3000...4999: return true
        default: return false
        }
    }
}

/// An HTTP response status: the numeric code and its reason phrase.
public struct HTTPStatus: Equatable, Sendable {
    /// The three-digit status code, e.g. `404`.
    public let code: Int
    /// The reason phrase sent after the code, e.g. `"Not Found"`.
    public let reason: String

    /// Creates a status with any code and reason phrase.
    @inlinable
    public init(code: Int, reason: String) {
        self.code = code
        self.reason = reason
    }

    /// 200 OK.
    public static let ok = HTTPStatus(code: 200, reason: "OK")
    /// 101 Switching Protocols (the WebSocket upgrade).
    public static let switchingProtocols = HTTPStatus(code: 101, reason: "Switching Protocols")
    /// 400 Bad Request: a malformed head, a bad room id, a bad upgrade request.
    public static let badRequest = HTTPStatus(code: 400, reason: "Bad Request")
    /// 401 Unauthorized: the request carries no valid credentials.
    public static let unauthorized = HTTPStatus(code: 401, reason: "Unauthorized")
    /// 403 Forbidden: the credentials do not allow this.
    public static let forbidden = HTTPStatus(code: 403, reason: "Forbidden")
    /// 404 Not Found.
    public static let notFound = HTTPStatus(code: 404, reason: "Not Found")
    /// 405 Method Not Allowed.
    public static let methodNotAllowed = HTTPStatus(code: 405, reason: "Method Not Allowed")
    /// 426 Upgrade Required: unsupported `Sec-WebSocket-Version`.
    public static let upgradeRequired = HTTPStatus(code: 426, reason: "Upgrade Required")
    /// 429 Too Many Requests.
    public static let tooManyRequests = HTTPStatus(code: 429, reason: "Too Many Requests")
    /// 431 Request Header Fields Too Large: the head exceeds the parser's limit.
    public static let requestHeaderFieldsTooLarge = HTTPStatus(code: 431, reason: "Request Header Fields Too Large")
    /// 500 Internal Server Error.
    public static let internalServerError = HTTPStatus(code: 500, reason: "Internal Server Error")
    /// 503 Service Unavailable.
    public static let serviceUnavailable = HTTPStatus(code: 503, reason: "Service Unavailable")
}

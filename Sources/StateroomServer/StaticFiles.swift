import IOCore

/// Static files for `--static DIR` (the `stateroom dev` client folder). Small files read whole;
/// meant for development, not a CDN.
enum StaticFiles {
    struct File {
        var bytes: [UInt8]
        var contentType: String
    }

    static let maxSize = 16 << 20

    /// The file at `path` under `root`, or nil (missing, a directory without index.html, a path
    /// that climbs out with `..`, or too large).
    static func read(root: String, path: String) -> File? {
        var parts: [Substring] = []
        for seg in path.split(separator: "/", omittingEmptySubsequences: true) {
            if seg == "." { continue }
            if seg == ".." || seg.contains("\0") { return nil }
            parts.append(seg)
        }
        var full = root + "/" + parts.joined(separator: "/")
        if FileIO.kind(of: full) == .directory { full += "/index.html" }
        guard let bytes = FileIO.read(full, maxSize: maxSize) else { return nil }
        return File(bytes: bytes, contentType: contentType(full))
    }

    static func contentType(_ path: String) -> String {
        guard let dot = path.lastIndex(of: ".") else { return "application/octet-stream" }
        switch path[path.index(after: dot)...].lowercased() {
        case "html", "htm": return "text/html; charset=utf-8"
        case "js", "mjs": return "text/javascript; charset=utf-8"
        case "css": return "text/css; charset=utf-8"
        case "json": return "application/json"
        case "svg": return "image/svg+xml"
        case "png": return "image/png"
        case "jpg", "jpeg": return "image/jpeg"
        case "wasm": return "application/wasm"
        case "txt": return "text/plain; charset=utf-8"
        default: return "application/octet-stream"
        }
    }
}

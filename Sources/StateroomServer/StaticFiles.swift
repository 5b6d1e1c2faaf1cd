import Glibc

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
        var st = stat()
        guard stat(full, &st) == 0 else { return nil }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            full += "/index.html"
            guard stat(full, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { return nil }
        }
        guard (st.st_mode & S_IFMT) == S_IFREG, st.st_size <= maxSize else { return nil }
        let fd = open(full, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        var got = 0
        while got < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + got, $0.count - got) }
            if n <= 0 { return nil }
            got += n
        }
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

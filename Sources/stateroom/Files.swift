import Glibc

/// Small file-system helpers (POSIX; the CLI does not need Foundation).
enum Files {
    /// `true` if `path` exists (following symlinks).
    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    /// `true` if `path` is a directory.
    static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    /// Modification time in nanoseconds and size, or nil if missing.
    static func stamp(_ path: String) -> (mtime: Int64, size: Int64)? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return (Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec), Int64(st.st_size))
    }

    /// Entries of a directory (no `.`/`..`), sorted; empty if unreadable.
    static func list(_ dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    static func read(_ path: String) -> [UInt8]? {
        guard let f = fopen(path, "rb") else { return nil }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { fread($0.baseAddress, 1, 65536, f) }
            if n <= 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return bytes
    }

    static func readText(_ path: String) -> String? {
        read(path).map { String(decoding: $0, as: UTF8.self) }
    }

    static func write(_ path: String, _ text: String) throws(CLIError) {
        guard let f = fopen(path, "wb") else { throw CLIError("cannot write \(path): \(String(cString: strerror(errno)))") }
        defer { fclose(f) }
        var t = text
        let ok = t.withUTF8 { fwrite($0.baseAddress, 1, $0.count, f) == $0.count }
        if !ok { throw CLIError("cannot write \(path)") }
    }

    /// `mkdir -p`.
    static func makeDirectory(_ path: String) throws(CLIError) {
        if isDirectory(path) { return }
        let parent = dirname(path)
        if parent != path && !parent.isEmpty { try makeDirectory(parent) }
        if mkdir(path, 0o755) != 0 && errno != EEXIST {
            throw CLIError("cannot create \(path): \(String(cString: strerror(errno)))")
        }
    }

    /// `rm -rf`.
    static func remove(_ path: String) {
        if isDirectory(path) {
            for name in list(path) { remove(path + "/" + name) }
            rmdir(path)
        } else {
            unlink(path)
        }
    }

    static func rename(_ from: String, _ to: String) -> Bool { Glibc.rename(from, to) == 0 }

    static func dirname(_ path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    static func basename(_ path: String) -> String {
        var p = Substring(path)
        while p.count > 1 && p.hasSuffix("/") { p = p.dropLast() }
        guard let slash = p.lastIndex(of: "/") else { return String(p) }
        return String(p[p.index(after: slash)...])
    }

    /// An absolute, symlink-free path (the path itself if it cannot be resolved).
    static func realPath(_ path: String) -> String {
        guard let r = realpath(path, nil) else { return path }
        defer { free(r) }
        return String(cString: r)
    }

    static func currentDirectory() -> String {
        var buf = [CChar](repeating: 0, count: 4096)
        return getcwd(&buf, buf.count).map { String(cString: $0) } ?? "."
    }

    static func environment(_ name: String) -> String? {
        guard let v = getenv(name) else { return nil }
        let s = String(cString: v)
        return s.isEmpty ? nil : s
    }
}

/// FNV-1a 64, for cache keys and change detection (not security).
struct FNV64 {
    private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325
    mutating func add(_ bytes: some Sequence<UInt8>) {
        for b in bytes {
            value ^= UInt64(b)
            value &*= 0x0000_0100_0000_01b3
        }
    }
    mutating func add(_ s: String) { add(s.utf8); add([0]) }
    mutating func add(_ v: Int64) { withUnsafeBytes(of: v.littleEndian) { add($0) } }
    var hex: String {
        let s = String(value, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}

import Glibc

/// Whole-file reads for the few files a server serves (static files in development), kept beside
/// the other system calls.
public enum FileIO {
    /// What a path names.
    public enum Kind: Equatable, Sendable {
        case regular(size: Int)
        case directory
        case other
    }

    /// What `path` names, following symbolic links; nil if it does not exist or cannot be read.
    public static func kind(of path: String) -> Kind? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        switch st.st_mode & S_IFMT {
        case S_IFREG: return .regular(size: Int(st.st_size))
        case S_IFDIR: return .directory
        default: return .other
        }
    }

    /// The bytes of the regular file at `path` if it holds at most `maxSize` bytes; nil otherwise
    /// (missing, not a regular file, too large, or a read error).
    public static func read(_ path: String, maxSize: Int) -> [UInt8]? {
        guard case .regular(let size)? = kind(of: path), size <= maxSize else { return nil }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: size)
        var got = 0
        while got < size {
            let n = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + got, $0.count - got) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return nil }
            got += n
        }
        return bytes
    }
}

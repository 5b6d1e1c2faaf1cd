/// A service folder: its `.swift` files, optionally a `stateroom.toml`, and a `client/` folder.
///
/// `stateroom.toml` (all keys optional):
/// ```toml
/// name = "counter"     # the module is dist/counter.wasm (default: the folder's name)
/// static = "client"    # served at / by `stateroom dev` (default: client/ if it exists)
/// ```
struct ServiceFolder {
    let path: String
    let name: String
    let staticDirectory: String?

    init(path given: String) throws(CLIError) {
        let path = Files.realPath(given)
        guard Files.isDirectory(path) else { throw CLIError("\(given) is not a folder") }
        self.path = path
        let toml = Files.readText(path + "/stateroom.toml").map(Self.parseTOML) ?? [:]
        let name = toml["name"] ?? Files.basename(path)
        guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "." }) else {
            throw CLIError("stateroom.toml: name '\(name)' must be letters, digits, '-', '_' or '.'")
        }
        self.name = name
        if let s = toml["static"] {
            let dir = s.hasPrefix("/") ? s : path + "/" + s
            guard Files.isDirectory(dir) else { throw CLIError("stateroom.toml: static folder \(dir) does not exist") }
            staticDirectory = dir
        } else {
            staticDirectory = Files.isDirectory(path + "/client") ? path + "/client" : nil
        }
    }

    /// The service's Swift files, relative to the folder (sub-folders included, except `dist`,
    /// `client`, the static folder and hidden ones).
    var sourceFiles: [String] {
        var out: [String] = []
        func walk(_ rel: String) {
            let dir = rel.isEmpty ? path : path + "/" + rel
            for entry in Files.list(dir) where !entry.hasPrefix(".") {
                let r = rel.isEmpty ? entry : rel + "/" + entry
                let full = path + "/" + r
                if Files.isDirectory(full) {
                    if rel.isEmpty && (entry == "dist" || entry == "client") { continue }
                    if let s = staticDirectory, Files.realPath(full) == Files.realPath(s) { continue }
                    walk(r)
                } else if entry.hasSuffix(".swift") {
                    out.append(r)
                }
            }
        }
        walk("")
        return out
    }

    /// The files whose change means a rebuild: sources and stateroom.toml.
    var watchedFiles: [String] {
        sourceFiles.map { path + "/" + $0 } + [path + "/stateroom.toml"]
    }

    /// The Swift module name of the service (its name as an identifier).
    var moduleName: String {
        var s = String(name.map { $0.isLetter || $0.isNumber || $0 == "_" ? $0 : "_" })
        if let f = s.first, f.isNumber { s = "_" + s }
        return s
    }

    var distDirectory: String { path + "/dist" }
    var wasmOutput: String { distDirectory + "/\(name).wasm" }
    var nativeOutput: String { distDirectory + "/\(name)-native" }
    var buildDirectory: String { path + "/.stateroom" }

    /// `true` if some source declares `typealias StateroomMain = …`, the registration line.
    func hasRegistration() -> Bool {
        for file in sourceFiles {
            guard let text = Files.readText(path + "/" + file) else { continue }
            for line in text.split(separator: "\n") {
                let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                if let i = words.firstIndex(of: "typealias"), i + 1 < words.count,
                   words[i + 1] == "StateroomMain" || words[i + 1].hasPrefix("StateroomMain=") {
                    return true
                }
            }
        }
        return false
    }

    /// A minimal TOML reader: `key = "string"` pairs (sections and comments ignored).
    static func parseTOML(_ text: String) -> [String: String] {
        var out: [String: String] = [:]
        for raw in text.split(separator: "\n") {
            let line = raw.trimmingSpaces
            guard !line.hasPrefix("#"), !line.hasPrefix("["), let eq = line.firstIndex(of: "=") else { continue }
            let key = line[..<eq].trimmingSpaces
            var value = line[line.index(after: eq)...].trimmingSpaces
            if let q = value.first, q == "\"" || q == "'" {
                value = value.dropFirst()
                if let end = value.firstIndex(of: q) { value = value[..<end] }
            } else if let hash = value.firstIndex(of: "#") {
                value = value[..<hash].trimmingSpaces
            }
            out[String(key)] = String(value)
        }
        return out
    }
}

extension Substring {
    var trimmingSpaces: Substring {
        var s = self
        while let f = s.first, f == " " || f == "\t" || f == "\r" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\r" { s = s.dropLast() }
        return s
    }
}

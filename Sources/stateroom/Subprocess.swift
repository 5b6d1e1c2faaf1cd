import Glibc

/// Runs a program with the terminal's stdin/stdout/stderr (so compiler diagnostics appear exactly
/// as the compiler prints them), a clean signal mask, and an optional working directory.
/// Returns the exit status (128 + signal when killed).
func runProgram(_ path: String, _ arguments: [String], in directory: String? = nil, echo: Bool = false) throws(CLIError) -> Int32 {
    if echo {
        let line = ([path] + arguments).map { $0.contains(" ") ? "'\($0)'" : $0 }.joined(separator: " ")
        print(directory.map { "(cd \($0) && \(line))" } ?? line)
        fflush(nil)
    }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    // Callers may block SIGINT/SIGTERM in this process (the server's signal handling): the child
    // gets an empty mask and default dispositions, so Ctrl-C still stops a compile.
    var empty = sigset_t()
    sigemptyset(&empty)
    posix_spawnattr_setsigmask(&attributes, &empty)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    sigaddset(&defaults, SIGINT)
    sigaddset(&defaults, SIGTERM)
    sigaddset(&defaults, SIGPIPE)
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

    fflush(nil)
    // A working directory through the shell (glibc's addchdir_np is not visible to Swift).
    let program = directory == nil ? path : "/bin/sh"
    let full = directory.map { ["/bin/sh", "-c", "cd \"$0\" && exec \"$@\"", $0, path] } ?? [path]
    let argv: [UnsafeMutablePointer<CChar>?] = (full + arguments).map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, program, &actions, &attributes, argv, environ)
    guard rc == 0 else {
        throw CLIError("cannot run \(path): \(String(cString: strerror(rc)))")
    }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 {
        if errno != EINTR { throw CLIError("waiting for \(path) failed: \(String(cString: strerror(errno)))") }
    }
    // WIFEXITED / WEXITSTATUS / WTERMSIG by hand (macros are not imported).
    let signal = status & 0x7f
    return signal == 0 ? (status >> 8) & 0xff : 128 + signal
}

/// A failure the CLI reports as one line (`stateroom: …`) and exit status 1.
struct CLIError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Writes to stderr.
func printError(_ message: String) {
    var line = message + "\n"
    line.withUTF8 { buf in
        var done = 0
        while done < buf.count {
            let n = write(2, buf.baseAddress! + done, buf.count - done)
            if n <= 0 { break }
            done += n
        }
    }
}

/// Seconds on the monotonic clock.
func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

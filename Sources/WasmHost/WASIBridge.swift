#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif
import WasmKit

// A deliberately small WASI preview 1 bridge for `wasm32-wasi` guests (what Rust's std links):
// stdout/stderr become log lines of the room, clocks and `random_get` work, arguments and the
// environment are empty, there are no preopened directories and no other file descriptors
// (every other fd operation answers EBADF, sockets and polling ENOTSUP), and `proc_exit` ends
// the instance. WasmKitWASI's bridge was not used: it is built around a real or in-memory file
// system and real stdio descriptors; this one grants nothing by construction, and every guest
// pointer goes through HostState's bounds checks.

/// WASI errno values used by the bridge.
enum WASIErrno {
    static let success: UInt32 = 0
    static let badf: UInt32 = 8
    static let inval: UInt32 = 28
    static let nosys: UInt32 = 52
    static let notsup: UInt32 = 58
}

/// Every `wasi_snapshot_preview1` function; a guest may import any of them.
enum WASIFunction: String, CaseIterable, Sendable {
    static let moduleName = "wasi_snapshot_preview1"

    case args_get, args_sizes_get, environ_get, environ_sizes_get
    case clock_res_get, clock_time_get
    case fd_advise, fd_allocate, fd_close, fd_datasync, fd_fdstat_get, fd_fdstat_set_flags
    case fd_fdstat_set_rights, fd_filestat_get, fd_filestat_set_size, fd_filestat_set_times
    case fd_pread, fd_prestat_dir_name, fd_prestat_get, fd_pwrite, fd_read, fd_readdir
    case fd_renumber, fd_seek, fd_sync, fd_tell, fd_write
    case path_create_directory, path_filestat_get, path_filestat_set_times, path_link, path_open
    case path_readlink, path_remove_directory, path_rename, path_symlink, path_unlink_file
    case poll_oneoff, proc_exit, proc_raise, random_get, sched_yield
    case sock_accept, sock_recv, sock_send, sock_shutdown

    /// The preview 1 signature.
    var type: FunctionType {
        let p: [ValueType]
        switch self {
        case .args_get, .args_sizes_get, .environ_get, .environ_sizes_get, .clock_res_get,
            .fd_fdstat_get, .fd_fdstat_set_flags, .fd_filestat_get, .fd_prestat_get, .fd_renumber,
            .fd_tell, .random_get, .sock_shutdown:
            p = [.i32, .i32]
        case .clock_time_get: p = [.i32, .i64, .i32]
        case .fd_advise: p = [.i32, .i64, .i64, .i32]
        case .fd_allocate, .fd_fdstat_set_rights: p = [.i32, .i64, .i64]
        case .fd_close, .fd_datasync, .fd_sync, .proc_raise: p = [.i32]
        case .fd_filestat_set_size: p = [.i32, .i64]
        case .fd_filestat_set_times: p = [.i32, .i64, .i64, .i32]
        case .fd_pread, .fd_pwrite, .fd_readdir: p = [.i32, .i32, .i32, .i64, .i32]
        case .fd_prestat_dir_name, .path_create_directory, .path_remove_directory,
            .path_unlink_file, .sock_accept:
            p = [.i32, .i32, .i32]
        case .fd_read, .fd_write, .poll_oneoff: p = [.i32, .i32, .i32, .i32]
        case .fd_seek: p = [.i32, .i64, .i32, .i32]
        case .path_filestat_get, .path_symlink, .sock_send: p = [.i32, .i32, .i32, .i32, .i32]
        case .path_filestat_set_times: p = [.i32, .i32, .i32, .i32, .i64, .i64, .i32]
        case .path_link: p = [.i32, .i32, .i32, .i32, .i32, .i32, .i32]
        case .path_open: p = [.i32, .i32, .i32, .i32, .i32, .i64, .i64, .i32, .i32]
        case .path_readlink, .path_rename, .sock_recv: p = [.i32, .i32, .i32, .i32, .i32, .i32]
        case .proc_exit: return FunctionType(parameters: [.i32], results: [])
        case .sched_yield: p = []
        }
        return FunctionType(parameters: p, results: [.i32])
    }

    /// Runs the function for the guest; returns its errno. Throws ``GuestExit`` to end the guest
    /// (`proc_exit`, or a pointer outside its memory).
    func call(_ args: UnsafeBufferPointer<Value>, state: HostState) throws -> UInt32 {
        switch self {
        case .fd_write:
            return try fdWrite(fd: args[0].i32, iovs: args[1].i32, iovsCount: args[2].i32, nwritten: args[3].i32, state: state)
        case .args_sizes_get, .environ_sizes_get:
            try state.storeU32(0, at: args[0].i32, "wasi sizes_get")
            try state.storeU32(0, at: args[1].i32, "wasi sizes_get")
            return WASIErrno.success
        case .args_get, .environ_get:
            return WASIErrno.success  // nothing to write: no arguments, no environment
        case .clock_res_get:
            guard args[0].i32 <= 1 else { return WASIErrno.inval }
            try state.storeU64(1, at: args[1].i32, "clock_res_get")
            return WASIErrno.success
        case .clock_time_get:
            guard let now = Self.clockNanoseconds(id: args[0].i32) else { return WASIErrno.inval }
            try state.storeU64(now, at: args[2].i32, "clock_time_get")
            return WASIErrno.success
        case .random_get:
            try state.write(args[0].i32, args[1].i32, "random_get") { buffer in
                var rng = SystemRandomNumberGenerator()
                var i = 0
                while i < buffer.count {
                    var word = rng.next()
                    let n = min(8, buffer.count - i)
                    withUnsafeBytes(of: &word) { buffer[i..<i + n].copyBytes(from: $0.prefix(n)) }
                    i += n
                }
            }
            return WASIErrno.success
        case .fd_fdstat_get:
            let fd = args[0].i32
            guard fd == 1 || fd == 2 else { return WASIErrno.badf }
            try state.write(args[1].i32, 24, "fd_fdstat_get") { out in
                out.initializeMemory(as: UInt8.self, repeating: 0)
                out[0] = 2  // filetype: character_device
                out.storeBytes(of: UInt64(1 << 6).littleEndian, toByteOffset: 8, as: UInt64.self)  // rights: fd_write
            }
            return WASIErrno.success
        case .proc_exit:
            throw GuestExit.procExit(code: args[0].i32)
        case .sched_yield:
            return WASIErrno.success
        case .poll_oneoff, .sock_accept, .sock_recv, .sock_send, .sock_shutdown:
            return WASIErrno.notsup
        case .proc_raise:
            return WASIErrno.nosys
        default:
            // fd_* on any descriptor, fd_prestat_get (no preopens), path_* (no directory fd).
            return WASIErrno.badf
        }
    }

    private func fdWrite(fd: UInt32, iovs: UInt32, iovsCount: UInt32, nwritten: UInt32, state: HostState) throws -> UInt32 {
        guard fd == 1 || fd == 2 else { return WASIErrno.badf }
        guard iovsCount <= 1024 else { return WASIErrno.inval }
        var total: UInt32 = 0
        // The whole iovec array is checked first, so no address below can wrap.
        try state.read(iovs, iovsCount * 8, "fd_write iovecs") { array in
            for index in 0..<Int(iovsCount) {
                let base = UInt32(littleEndian: array.loadUnaligned(fromByteOffset: index * 8, as: UInt32.self))
                let length = UInt32(littleEndian: array.loadUnaligned(fromByteOffset: index * 8 + 4, as: UInt32.self))
                try state.read(base, length, "fd_write buffer") { state.appendLog(fd: fd, $0) }
                total &+= length
            }
        }
        try state.storeU32(total, at: nwritten, "fd_write nwritten")
        return WASIErrno.success
    }

    /// Realtime (0), monotonic (1), process (2) and thread (3) CPU clocks, in nanoseconds.
    static func clockNanoseconds(id: UInt32) -> UInt64? {
        let clock: clockid_t
        switch id {
        case 0: clock = CLOCK_REALTIME
        case 1: clock = CLOCK_MONOTONIC
        case 2: clock = CLOCK_PROCESS_CPUTIME_ID
        case 3: clock = CLOCK_THREAD_CPUTIME_ID
        default: return nil
        }
        var ts = timespec()
        guard clock_gettime(clock, &ts) == 0 else { return nil }
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }
}

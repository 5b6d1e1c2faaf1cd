import Synchronization
import Locking

/// Counters of one shard. The shard bumps plain integers on its hot path and publishes them
/// here once per loop turn, under an uncontended lock; `/metrics` (on any shard) reads them.
final class ShardStats: Sendable {
    enum Counter: Int, CaseIterable {
        case connectionsAccepted, connectionsOpen, webSocketsOpen, handoffsOut, handoffsIn
        case roomsActive, roomsCreated, roomFailures, messagesReceived, framesQueued, bytesQueued
        case sendsSubmitted, slowClientCloses, protocolErrorCloses, heartbeatTimeouts, httpErrors
        case acceptErrors, pingsSent, sendsHeld, coalesceWindowMicros, busyPermille, upgradesRefused
        case tlsHandshakes, tlsResumptions, tlsHandshakeFailures, tlsPlaintextRejected
        case tlsHandshakeTimeouts, tlsHandshakesAbandoned, tlsRecordErrors
        case deflateWebSockets, messagesCompressed, compressionsSkipped, messagesInflated
        case inflateLimitCloses, inflateErrors, inflateMemoryBytes
        case authFailures, authForbidden, upgradesRateLimited, upgradesAddressLimited, upgradesServerFull
        case upgradesRoomFull, acceptPauses
        case roomsSaved, roomsRestored, roomsHibernated, storeErrors, roomsUnsaved
        case roomsFenced, leaseRevalidations, callbacksDeferred, framesGated
        case seatsHeld, seatBytesKept, resumesRecovered, resumesRefused, seatsExpired

        var name: String {
            switch self {
            case .connectionsAccepted: "stateroom_connections_accepted_total"
            case .connectionsOpen: "stateroom_connections_open"
            case .webSocketsOpen: "stateroom_websockets_open"
            case .handoffsOut: "stateroom_handoffs_total"
            case .handoffsIn: "stateroom_handoffs_received_total"
            case .roomsActive: "stateroom_rooms_active"
            case .roomsCreated: "stateroom_rooms_created_total"
            case .roomFailures: "stateroom_room_failures_total"
            case .messagesReceived: "stateroom_messages_received_total"
            case .framesQueued: "stateroom_frames_queued_total"
            case .bytesQueued: "stateroom_bytes_queued_total"
            case .sendsSubmitted: "stateroom_sends_submitted_total"
            case .slowClientCloses: "stateroom_slow_client_closes_total"
            case .protocolErrorCloses: "stateroom_protocol_error_closes_total"
            case .heartbeatTimeouts: "stateroom_heartbeat_timeouts_total"
            case .httpErrors: "stateroom_http_errors_total"
            case .acceptErrors: "stateroom_accept_errors_total"
            case .pingsSent: "stateroom_pings_sent_total"
            case .sendsHeld: "stateroom_sends_held_total"
            case .coalesceWindowMicros: "stateroom_coalesce_window_microseconds"
            case .busyPermille: "stateroom_shard_busy_permille"
            case .upgradesRefused: "stateroom_upgrades_refused_total"
            case .tlsHandshakes: "stateroom_tls_handshakes_total"
            case .tlsResumptions: "stateroom_tls_resumptions_total"
            case .tlsHandshakeFailures: "stateroom_tls_handshake_failures_total"
            case .tlsPlaintextRejected: "stateroom_tls_plaintext_rejected_total"
            case .tlsHandshakeTimeouts: "stateroom_tls_handshake_timeouts_total"
            case .tlsHandshakesAbandoned: "stateroom_tls_handshakes_abandoned_total"
            case .tlsRecordErrors: "stateroom_tls_record_errors_total"
            case .deflateWebSockets: "stateroom_websockets_deflate"
            case .messagesCompressed: "stateroom_messages_compressed_total"
            case .compressionsSkipped: "stateroom_compressions_skipped_total"
            case .messagesInflated: "stateroom_messages_inflated_total"
            case .inflateLimitCloses: "stateroom_inflate_too_big_closes_total"
            case .inflateErrors: "stateroom_inflate_errors_total"
            case .inflateMemoryBytes: "stateroom_inflate_memory_bytes"
            case .authFailures: "stateroom_auth_failures_total"
            case .authForbidden: "stateroom_auth_forbidden_total"
            case .upgradesRateLimited: "stateroom_upgrades_rate_limited_total"
            case .upgradesAddressLimited: "stateroom_upgrades_address_limited_total"
            case .upgradesServerFull: "stateroom_upgrades_server_full_total"
            case .upgradesRoomFull: "stateroom_upgrades_room_full_total"
            case .acceptPauses: "stateroom_accept_pauses_total"
            case .roomsSaved: "stateroom_room_snapshots_saved_total"
            case .roomsRestored: "stateroom_rooms_restored_total"
            case .roomsHibernated: "stateroom_rooms_hibernated_total"
            case .storeErrors: "stateroom_store_errors_total"
            case .roomsUnsaved: "stateroom_room_snapshots_unsaved"
            case .roomsFenced: "stateroom_rooms_fenced_total"
            case .leaseRevalidations: "stateroom_lease_revalidations_total"
            case .callbacksDeferred: "stateroom_callbacks_deferred_total"
            case .framesGated: "stateroom_frames_gated_total"
            case .seatsHeld: "stateroom_seats_held"
            case .seatBytesKept: "stateroom_seat_bytes_kept"
            case .resumesRecovered: "stateroom_resumes_recovered_total"
            case .resumesRefused: "stateroom_resumes_refused_total"
            case .seatsExpired: "stateroom_seats_expired_total"
            }
        }

        var isGauge: Bool {
            self == .connectionsOpen || self == .webSocketsOpen || self == .roomsActive || isPerShard
                || self == .deflateWebSockets || self == .inflateMemoryBytes || self == .roomsUnsaved
                || self == .seatsHeld || self == .seatBytesKept
        }

        /// A shard's own state, with no meaningful sum: rendered per shard only.
        var isPerShard: Bool { self == .coalesceWindowMicros || self == .busyPermille }
    }

    private let values = Locked([Int](repeating: 0, count: Counter.allCases.count))

    func publish(_ local: [Int]) {
        values.withLock { v in
            for i in 0..<v.count { v[i] = local[i] }
        }
    }

    func value(_ c: Counter) -> Int { values.withLock { $0[c.rawValue] } }
}

/// Counters of the whole process (not of one shard): certificate reloads.
final class ProcessStats: Sendable {
    let tlsReloads = Atomic<Int>(0)
    let tlsReloadFailures = Atomic<Int>(0)
}

/// The Prometheus text exposition of all shards' counters, with a `shard` label and a sum, then
/// the process-wide ones.
func renderMetrics(_ shards: [ShardStats], _ process: ProcessStats) -> String {
    var out = ""
    for c in ShardStats.Counter.allCases {
        out += "# TYPE \(c.name) \(c.isGauge ? "gauge" : "counter")\n"
        var total = 0
        for (i, s) in shards.enumerated() {
            let v = s.value(c)
            total += v
            out += "\(c.name){shard=\"\(i)\"} \(v)\n"
        }
        if !c.isPerShard { out += "\(c.name) \(total)\n" }
    }
    for (name, value) in [("stateroom_tls_reloads_total", process.tlsReloads.load(ordering: .relaxed)),
                          ("stateroom_tls_reload_failures_total", process.tlsReloadFailures.load(ordering: .relaxed))] {
        out += "# TYPE \(name) counter\n\(name) \(value)\n"
    }
    return out
}

// The core's control protocol, shared by the core (server) and xend (client), so that
// neither formats nor parses the other's lines by hand. One command per line, one reply
// line per command, over the Unix socket given with `xenith-core --control`.

/// A command xend sends to a running core.
public enum CoreControlCommand: String, Sendable, CaseIterable {
    /// Stop running the vCPUs (Xen's pause); reply `ok`.
    case pause
    /// Run them again; reply `ok`.
    case unpause
    /// Press the ACPI power button; reply `ok`.
    case shutdown
    /// Reset the domain (the core exits with the reboot status); reply `ok`.
    case reboot
    /// Stop at once (exit status 4); reply `ok`.
    case destroy
    /// The run state and CPU use: reply ``CoreControlStatus/line``.
    case query

    /// The command as sent, newline-terminated.
    public var line: String { rawValue + "\n" }
}

/// Replies other than a status line.
public enum CoreControlReply {
    /// The reply to a command that was done.
    public static let ok = "ok"
    /// The reply to a command the core does not know or cannot do: `error TEXT`.
    public static func error(_ text: String) -> String { "error " + text }
    /// Whether `reply` reports success (`ok`, possibly followed by fields).
    public static func isOK(_ reply: String) -> Bool { reply == ok || reply.hasPrefix(ok + " ") }
}

/// What `query` answers: `ok state=running|paused|stopped vcpus=N vcpu_time_ns=T0,T1,...
/// uptime_ns=U pid=P vcpu_tids=I0,I1,...` (fields separated by one space; unknown fields are ignored when parsing,
/// so the core may add some).
public struct CoreControlStatus: Sendable, Equatable {
    /// The domain's run state as the core sees it.
    public enum RunState: String, Sendable { case running, paused, stopped }
    public var state: RunState
    /// vCPUs the domain has.
    public var vcpus: Int
    /// CPU time of each vCPU thread, nanoseconds, by vCPU index.
    public var vcpuTimeNs: [UInt64]
    /// Time since the core started running the guest, nanoseconds.
    public var uptimeNs: UInt64
    /// The core's process id.
    public var pid: Int32
    /// With a balloon device: the RAM the host asks the guest to keep and the RAM the guest's
    /// driver says it keeps (`actual`), KiB; nil without one (fields `balloon_target_kib=`,
    /// `balloon_actual_kib=`).
    public var balloonTargetKiB: UInt64? = nil
    public var balloonActualKiB: UInt64? = nil
    /// Linux thread id of each vCPU thread, by vCPU index (0: not started yet); empty from
    /// a core that does not report them.
    public var vcpuThreadIDs: [Int32]

    public init(state: RunState, vcpus: Int, vcpuTimeNs: [UInt64], uptimeNs: UInt64, pid: Int32, vcpuThreadIDs: [Int32] = []) {
        self.state = state; self.vcpus = vcpus; self.vcpuTimeNs = vcpuTimeNs; self.uptimeNs = uptimeNs; self.pid = pid
        self.vcpuThreadIDs = vcpuThreadIDs
    }

    /// Total CPU time of all vCPUs, nanoseconds.
    public var totalVcpuTimeNs: UInt64 { vcpuTimeNs.reduce(0, &+) }

    /// The reply line (without the newline).
    public var line: String {
        "ok state=\(state.rawValue) vcpus=\(vcpus) vcpu_time_ns=\(vcpuTimeNs.map(String.init).joined(separator: ",")) "
            + "uptime_ns=\(uptimeNs) pid=\(pid)"
            + (balloonTargetKiB.map { " balloon_target_kib=\($0)" } ?? "") + (balloonActualKiB.map { " balloon_actual_kib=\($0)" } ?? "")
            + (vcpuThreadIDs.isEmpty ? "" : " vcpu_tids=" + vcpuThreadIDs.map(String.init).joined(separator: ","))
    }

    /// Parses a `query` reply; nil when it is not `ok ...` or lacks `state=`.
    public init?(parsing reply: String) {
        guard CoreControlReply.isOK(reply) else { return nil }
        var state: RunState?
        var vcpus = 0, uptime: UInt64 = 0, pid: Int32 = 0
        var times: [UInt64] = []
        var target: UInt64?, actual: UInt64?
        var tids: [Int32] = []
        for field in reply.split(separator: " ").dropFirst() {
            guard let eq = field.firstIndex(of: "=") else { continue }
            let key = field[..<eq], value = field[field.index(after: eq)...]
            switch key {
            case "state": state = RunState(rawValue: String(value))
            case "vcpus": vcpus = Int(value) ?? 0
            case "vcpu_time_ns": times = value.split(separator: ",").compactMap { UInt64($0) }
            case "uptime_ns": uptime = UInt64(value) ?? 0
            case "pid": pid = Int32(value) ?? 0
            case "balloon_target_kib": target = UInt64(value)
            case "balloon_actual_kib": actual = UInt64(value)
            case "vcpu_tids": tids = value.split(separator: ",").compactMap { Int32($0) }
            default: continue
            }
        }
        guard let state else { return nil }
        self.init(state: state, vcpus: vcpus, vcpuTimeNs: times, uptimeNs: uptime, pid: pid, vcpuThreadIDs: tids)
        balloonTargetKiB = target; balloonActualKiB = actual
    }
}

/// Commands that carry a descriptor (SCM_RIGHTS, one, on the command line's bytes): the
/// state stream's write end (`save`, `save-live`) or read end (`restore`). The reply is
/// ``CoreStateReply/line`` or `error TEXT`, sent when the stream is complete.
public enum CoreStateCommand: Sendable, Equatable {
    /// Stop the vCPUs and write the whole state (`save`).
    case save
    /// Pre-copy RAM while the guest runs, then stop it for the rest
    /// (`save-live MAXROUNDS MAXBYTES DOWNTIME_MS`; rounds 1...1000, MAXBYTES 0 = 3 × RAM,
    /// downtime 0...3 600 000 ms).
    case saveLive(maxRounds: Int, maxBytes: UInt64, downtimeLimitMs: Int)
    /// Load a state into a core started with `--incoming` (`restore`).
    case restore

    /// The command as sent, newline-terminated.
    public var line: String {
        switch self {
        case .save: "save\n"
        case let .saveLive(r, b, d): "save-live \(r) \(b) \(d)\n"
        case .restore: "restore\n"
        }
    }

    /// Parses a command line (without the newline); nil when it is not one of these.
    public init?(parsing line: String) {
        let f = line.split(separator: " ")
        switch f.first {
        case "save" where f.count == 1: self = .save
        case "restore" where f.count == 1: self = .restore
        case "save-live" where f.count == 4:
            guard let r = Int(f[1]), r >= 1, r <= 1000, let b = UInt64(f[2]), let d = Int(f[3]), d >= 0, d <= 3_600_000
            else { return nil }
            self = .saveLive(maxRounds: r, maxBytes: b, downtimeLimitMs: d)
        default: return nil
        }
    }
}

/// The reply to a ``CoreStateCommand``: `ok bytes=N rounds=R downtime_ms=D was_running=0|1`.
public struct CoreStateReply: Sendable, Equatable {
    /// Stream bytes written or read.
    public var bytes: UInt64
    /// RAM passes (save; 0 for restore).
    public var rounds: Int
    /// Milliseconds the vCPUs were stopped while saving.
    public var downtimeMs: Int
    /// Whether the guest ran when the save began.
    public var wasRunning: Bool

    public init(bytes: UInt64, rounds: Int, downtimeMs: Int, wasRunning: Bool) {
        self.bytes = bytes; self.rounds = rounds; self.downtimeMs = downtimeMs; self.wasRunning = wasRunning
    }

    /// The reply line (without the newline).
    public var line: String { "ok bytes=\(bytes) rounds=\(rounds) downtime_ms=\(downtimeMs) was_running=\(wasRunning ? 1 : 0)" }

    /// Parses a reply; nil when it is not `ok ...` with these fields.
    public init?(parsing reply: String) {
        guard CoreControlReply.isOK(reply) else { return nil }
        var b: UInt64?, r: Int?, d: Int?, w: Bool?
        for field in reply.split(separator: " ").dropFirst() {
            let kv = field.split(separator: "=", maxSplits: 1)
            guard kv.count == 2 else { continue }
            switch kv[0] {
            case "bytes": b = UInt64(kv[1])
            case "rounds": r = Int(kv[1])
            case "downtime_ms": d = Int(kv[1])
            case "was_running": w = kv[1] == "1"
            default: continue
            }
        }
        guard let b, let r, let d, let w else { return nil }
        self.init(bytes: b, rounds: r, downtimeMs: d, wasRunning: w)
    }
}

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

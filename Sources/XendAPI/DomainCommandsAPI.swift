// Wire types of the domain commands beyond the lifecycle (`xm rename`, `sysrq`,
// `dump-core`, `reset`) and of the per-domain counters `xm top` and `/metrics` show.

/// `POST /api/v1/domains/{domain}/rename` body (`xm rename`).
public struct RenameRequest: Codable, Sendable, Equatable {
    /// The new name (Xen's rules: 1–64 of letters, digits and `_-.:+`, not all digits).
    public var name: String
    public init(name: String) { self.name = name }
}

/// `POST /api/v1/domains/{domain}/sysrq` body (`xm sysrq`).
public struct SysrqRequest: Codable, Sendable, Equatable {
    /// One character: the magic SysRq key (`h` help, `s` sync, `b` reboot, ...).
    public var key: String
    public init(key: String) { self.key = key }
}

/// `POST /api/v1/domains/{domain}/dump-core` body (`xm dump-core`). The reply is a
/// `TextReply` holding the path written.
public struct DumpCoreRequest: Codable, Sendable, Equatable {
    /// Absolute path of the ELF core file to write; nil: Xen's default
    /// `/var/xen/dump/YYYY-MMDD-HHMM.SS-NAME.DOMID.core` under `$XENITH_ROOT`.
    public var file: String?
    public init(file: String? = nil) { self.file = file }
}

/// One domain's counters (`GET /api/v1/stats`, `xm top`, `/metrics`).
public struct DomainStats: Codable, Sendable, Equatable {
    public var domid: Int
    public var name: String
    /// Xen's six state letters, as in `DomainInfo`.
    public var state: String
    /// Total vCPU time, seconds.
    public var cpuTime: Double
    /// Current memory (the balloon target) and maximum, KiB.
    public var memoryKib: Int
    public var maxmemKib: Int
    public var vcpus: Int
    /// Number of vifs, and bytes the domain sent and received on them (from the host's
    /// side of each tap: what the tap received is what the domain transmitted).
    public var nets: Int
    public var netTxBytes: UInt64
    public var netRxBytes: UInt64
    /// Number of vbds, and bytes the domain's blkback processes read and wrote
    /// (`/proc/PID/io` rchar/wchar of each blkback; 0 for disks the engine serves itself).
    public var vbds: Int
    public var vbdReadBytes: UInt64
    public var vbdWriteBytes: UInt64

    public init(domid: Int, name: String, state: String, cpuTime: Double, memoryKib: Int, maxmemKib: Int, vcpus: Int,
                nets: Int, netTxBytes: UInt64, netRxBytes: UInt64, vbds: Int, vbdReadBytes: UInt64, vbdWriteBytes: UInt64) {
        self.domid = domid; self.name = name; self.state = state; self.cpuTime = cpuTime; self.memoryKib = memoryKib
        self.maxmemKib = maxmemKib; self.vcpus = vcpus; self.nets = nets; self.netTxBytes = netTxBytes
        self.netRxBytes = netRxBytes; self.vbds = vbds; self.vbdReadBytes = vbdReadBytes; self.vbdWriteBytes = vbdWriteBytes
    }
}

/// `GET /api/v1/stats` reply.
public struct DomainStatsList: Codable, Sendable, Equatable {
    /// The host's RAM, KiB (MEM(%) is a domain's memory over this).
    public var hostMemoryKib: Int
    /// The host's CPUs.
    public var hostCpus: Int
    /// Domain-0 first, then by domid.
    public var domains: [DomainStats]
    public init(hostMemoryKib: Int, hostCpus: Int, domains: [DomainStats]) {
        self.hostMemoryKib = hostMemoryKib; self.hostCpus = hostCpus; self.domains = domains
    }
}

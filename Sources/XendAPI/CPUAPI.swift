// Wire types of the CPU routes: `xm vcpu-list`, `vcpu-pin`, `vcpu-set` and `sched-credit`
// (Xen 3.x XendDomain getVCPUInfo, pincpu, setVCpuCount, sched_credit_get/_set).

/// One vCPU of a domain (Xen's `(vcpu (number N) (online) (blocked) (running) (cpu_time)
/// (cpu) (cpumap))`).
public struct VcpuInfo: Codable, Sendable, Equatable {
    /// vCPU index, 0-based.
    public var number: Int
    /// Whether the vCPU is plugged in (`vcpu-set` removes vCPUs above the count).
    public var online: Bool
    /// Whether its host thread is running now (state `r`) rather than waiting (`b`).
    public var running: Bool
    public var blocked: Bool
    /// CPU time of its host thread, seconds.
    public var cpuTime: Double
    /// The host CPU it last ran on; -1 when offline.
    public var cpu: Int
    /// Host CPUs its thread may run on, sorted.
    public var affinity: [Int]
    public init(number: Int, online: Bool, running: Bool, blocked: Bool, cpuTime: Double, cpu: Int, affinity: [Int]) {
        self.number = number; self.online = online; self.running = running; self.blocked = blocked
        self.cpuTime = cpuTime; self.cpu = cpu; self.affinity = affinity
    }
}

/// `GET /api/v1/domains/{domain}/vcpus` reply, and the reply of the `vcpus` POSTs.
public struct DomainVcpus: Codable, Sendable, Equatable {
    public var domid: Int
    public var name: String
    /// The host's CPU count (`any cpu` means an affinity of all of them).
    public var hostCpus: Int
    /// By number; offline vCPUs up to the domain's maximum are listed too.
    public var vcpus: [VcpuInfo]
    public init(domid: Int, name: String, hostCpus: Int, vcpus: [VcpuInfo]) {
        self.domid = domid; self.name = name; self.hostCpus = hostCpus; self.vcpus = vcpus
    }
}

/// `POST /api/v1/domains/{domain}/vcpus/pin` body (`xm vcpu-pin DOM VCPU CPUS`).
public struct VcpuPinRequest: Codable, Sendable, Equatable {
    /// A vCPU number, or `all`.
    public var vcpu: String
    /// A CPU list (``CPUList``): `all`, `0-1,3`, `^0`.
    public var cpus: String
    public init(vcpu: String, cpus: String) { self.vcpu = vcpu; self.cpus = cpus }
}

/// `POST /api/v1/domains/{domain}/vcpus` body (`xm vcpu-set DOM N`).
public struct VcpuSetRequest: Codable, Sendable, Equatable {
    /// vCPUs to have online, 1...the domain's maximum (`maxvcpus`, else `vcpus`).
    public var count: Int
    public init(count: Int) { self.count = count }
}

/// A domain's credit-scheduler parameters (`GET`/`POST /api/v1/domains/{domain}/sched-credit`).
public struct SchedCredit: Codable, Sendable, Equatable {
    public var domid: Int
    public var name: String
    /// Relative share of CPU time, 1...65535 (Xen's default 256).
    public var weight: Int
    /// Most CPU time it may use, percent of one CPU; 0 = no cap.
    public var cap: Int
    public init(domid: Int, name: String, weight: Int, cap: Int) {
        self.domid = domid; self.name = name; self.weight = weight; self.cap = cap
    }
}

/// `POST /api/v1/domains/{domain}/sched-credit` body: the parameters to change (nil keeps).
public struct SchedCreditRequest: Codable, Sendable, Equatable {
    public var weight: Int?
    public var cap: Int?
    public init(weight: Int? = nil, cap: Int? = nil) { self.weight = weight; self.cap = cap }
}

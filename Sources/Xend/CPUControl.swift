// CPU requests on domains (Xen's XendDomain getVCPUInfo, pincpu, setVCpuCount,
// sched_credit_get/_set): `xm vcpu-list`, `vcpu-pin`, `vcpu-set`, `sched-credit`, and the
// `cpus`, `cpu_weight` and `cpu_cap` config keys applied when a domain starts. A vCPU is its
// engine's host thread (DomainEngineDriver.vcpuThreads): its affinity is the thread's,
// its time and state the thread's; weight and cap are the domain's CPU control group
// (CPUGroups.swift).
import CLinux
import DomainConfig
import Foundation
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

/// Linux thread CPU affinity and facts from /proc.
enum ThreadCPU {
    /// 64-bit words of the affinity masks used (4096 CPUs).
    static let words = 64

    /// The CPUs thread `tid` (0: the calling thread) may run on, sorted; nil when it is gone.
    static func affinity(_ tid: Int32) -> [Int]? {
        var mask = [UInt64](repeating: 0, count: words)
        guard clinux_get_affinity(tid, &mask, Int32(words)) == 0 else { return nil }
        return (0..<(words * 64)).filter { mask[$0 / 64] & (1 << UInt64($0 % 64)) != 0 }
    }

    /// Sets thread `tid`'s (0: the calling thread's) affinity to `cpus`.
    /// - Throws: `CPUGroupError` with errno's text.
    static func setAffinity(_ tid: Int32, _ cpus: [Int]) throws {
        var mask = [UInt64](repeating: 0, count: words)
        for c in cpus where c >= 0 && c < words * 64 { mask[c / 64] |= 1 << UInt64(c % 64) }
        guard clinux_set_affinity(tid, &mask, Int32(words)) == 0 else {
            throw CPUGroupError(message: "cannot set the CPU affinity of thread \(tid): \(String(cString: strerror(errno)))")
        }
    }

    /// Sets the affinity of every thread of process `pid`; returns how many it set.
    @discardableResult
    static func setProcessAffinity(_ pid: Int32, _ cpus: [Int]) -> Int {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.compactMap(Int32.init).filter { (try? setAffinity($0, cpus)) != nil }.count
    }

    /// The CPUs xend had before `dom0-cpus` confined it (what engines get); nil when not confined.
    nonisolated(unsafe) static var engineCPUs: [Int]?

    /// Runs `body` with the calling thread allowed on the CPUs xend had before `dom0-cpus`
    /// confined it (what a child spawned in it inherits), then restores its affinity; just
    /// runs `body` when xend is not confined.
    static func withAllCPUs<T>(_ body: () throws -> T) rethrows -> T {
        guard let all = engineCPUs else { return try body() }
        let saved = affinity(0)
        try? setAffinity(0, all)
        defer { if let saved { try? setAffinity(0, saved) } }
        return try body()
    }

    /// State letter (`R`, `S`, ...), the CPU it last ran on and its CPU time in seconds, from
    /// /proc/PID/task/TID/stat and schedstat; nil when the thread is gone.
    static func stat(pid: Int32, tid: Int32) -> (state: Character, cpu: Int, seconds: Double)? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return nil }
        let f = s[s.index(after: close)...].split(separator: " ")
        guard f.count > 36, let state = f[0].first else { return nil }
        let ns = (try? String(contentsOfFile: "/proc/\(pid)/task/\(tid)/schedstat", encoding: .utf8))
            .flatMap { $0.split(separator: " ").first.flatMap { UInt64($0) } } ?? 0
        return (state, Int(f[36]) ?? 0, Double(ns) / 1e9)
    }
}

extension HostFacts {
    /// CPUs the kernel may bring up (numbers 0..<possibleCPUs), for affinity masks.
    static var possibleCPUs: Int { max(onlineCPUs, Int(sysconf(Int32(_SC_NPROCESSORS_CONF)))) }
}

extension DomainManager {
    /// The most vCPUs `cfg` allows (`maxvcpus`, else `vcpus`).
    static func maxVcpus(_ cfg: DomainConfiguration) -> Int { max(cfg.vcpus, cfg.maxvcpus ?? 0) }

    /// `xm vcpu-list DOM`: one row per vCPU up to the domain's maximum (offline ones too);
    /// none for a domain that is not running. Domain-0's vCPUs are the host's CPUs, with
    /// xend's own affinity (dom0-cpus) and each CPU's busy time from /proc/stat.
    /// - Throws: `XendError` 404 no such domain, 500 when the engine cannot tell.
    /// The engine's vCPU threads that xend may act on: a vCPU number the domain can have
    /// (0..<maxvcpus) and a thread of the engine's own process (`/proc/PID/task/TID`).
    /// What the engine reports is not trusted — a compromised QEMU could name thread 0
    /// (xend itself for sched_setaffinity), another process's thread, or a huge index.
    static func engineThreads(_ reported: [Int: Int32], of p: EngineProcess, config: DomainConfiguration) -> [Int: Int32] {
        engineThreads(reported, of: p, maxVcpus: maxVcpus(config))
    }
    static func engineThreads(_ reported: [Int: Int32], of p: EngineProcess, maxVcpus maxV: Int) -> [Int: Int32] {
        reported.filter { k, tid in
            k >= 0 && k < maxV && tid > 0 && access("/proc/\(p.pid)/task/\(tid)", F_OK) == 0
        }
    }

    public func vcpuList(_ dom: String) throws(XendError) -> DomainVcpus {
        let n = HostFacts.onlineCPUs
        if dom == "0" || dom == "Domain-0" { return DomainVcpus(domid: 0, name: "Domain-0", hostCpus: n, vcpus: Self.dom0Vcpus(xendConfig.dom0CPUs)) }
        guard let r = find(dom) else { throw .noDomain(dom) }
        guard let p = r.process, let e = engines[r.engine] else { return DomainVcpus(domid: r.domid, name: r.name, hostCpus: n, vcpus: []) }
        let threads: [Int: Int32]
        do { threads = Self.engineThreads(try e.vcpuThreads(p), of: p, config: r.config) } catch { throw XendError(.internalError, "Cannot list the vCPUs of domain \(r.name): \(error)") }
        let paused = statuses[r.domid]?.paused ?? false
        var rows: [VcpuInfo] = []
        for k in 0..<Self.maxVcpus(r.config) {
            guard let tid = threads[k], let st = ThreadCPU.stat(pid: p.pid, tid: tid) else {
                // Offline: the affinity it would come back with (the config's cpus, else any).
                let aff = r.config.cpus.flatMap { try? CPUList.parse($0, hostCPUs: n) } ?? Array(0..<n)
                rows.append(VcpuInfo(number: k, online: false, running: false, blocked: false, cpuTime: 0, cpu: -1, affinity: aff))
                continue
            }
            let running = !paused && st.state == "R"
            rows.append(VcpuInfo(number: k, online: true, running: running, blocked: !running && !paused, cpuTime: st.seconds,
                                 cpu: st.cpu, affinity: ThreadCPU.affinity(tid) ?? []))
        }
        return DomainVcpus(domid: r.domid, name: r.name, hostCpus: n, vcpus: rows)
    }

    /// Domain-0's vCPUs: one per host CPU, online below `dom0CPUs` (0: all).
    static func dom0Vcpus(_ dom0CPUs: Int) -> [VcpuInfo] {
        let n = HostFacts.onlineCPUs
        let aff = ThreadCPU.affinity(0) ?? Array(0..<n)
        var busy: [Int: Double] = [:]
        // 2 is _SC_CLK_TCK (glibc's bits/confname.h): the release build's Glibc module does not export that name.
        let tick = Double(sysconf(Int32(2)))
        for l in ((try? String(contentsOfFile: "/proc/stat", encoding: .utf8)) ?? "").split(separator: "\n") where l.hasPrefix("cpu") {
            let f = l.split(separator: " ")
            guard let id = Int(f[0].dropFirst(3)), f.count > 7 else { continue }
            busy[id] = [1, 2, 3, 6, 7].compactMap { Double(f[$0]) }.reduce(0, +) / tick
        }
        return (0..<n).map { i in
            let on = dom0CPUs == 0 || i < dom0CPUs
            return VcpuInfo(number: i, online: on, running: on, blocked: false, cpuTime: busy[i] ?? 0, cpu: on ? i : -1,
                            affinity: on ? aff : [])
        }
    }

    /// `xm vcpu-pin DOM VCPU CPUS`: sets the affinity of vCPU `vcpu`'s host thread (`all`: of
    /// every online vCPU) to the CPUs `cpus` names (CPUList).
    /// - Throws: `XendError` 400 for a bad CPU list, a CPU the host lacks, an unknown or
    ///   offline vCPU, Domain-0; 404 no such domain; 409 not running. Nothing changed then.
    public func vcpuPin(_ dom: String, vcpu: String, cpus: String) throws(XendError) -> DomainVcpus {
        if dom == "0" || dom == "Domain-0" {
            throw XendError(.badRequest, "Cannot pin the vCPUs of privileged domain 0: set dom0-cpus in xend-config.sxp")
        }
        let (r, p, e) = try live(dom, for: "pin the vCPUs of")
        cpuPlacements.wait(r.domid)   // a restore's pinning, still under way, would undo this one
        let set: [Int]
        do { set = try CPUList.parse(cpus, hostCPUs: HostFacts.onlineCPUs) } catch { throw XendError(.badRequest, error.description) }
        let threads: [Int: Int32]
        do { threads = Self.engineThreads(try e.vcpuThreads(p), of: p, config: r.config) } catch { throw XendError(.internalError, "Cannot pin the vCPUs of domain \(r.name): \(error)") }
        let maxV = Self.maxVcpus(r.config)
        var targets: [Int32] = []
        if vcpu.lowercased() == "all" {
            targets = threads.keys.sorted().map { threads[$0]! }
        } else {
            guard let k = Int(vcpu), k >= 0, k < maxV else {
                throw XendError(.badRequest, "Invalid VCPU number '\(vcpu)' for domain \(r.name): it has VCPUs 0-\(maxV - 1)")
            }
            guard let t = threads[k] else { throw XendError(.badRequest, "VCPU \(k) of domain \(r.name) is offline (see xm vcpu-set)") }
            targets = [t]
        }
        for t in targets {
            do { try ThreadCPU.setAffinity(t, set) } catch { throw XendError(.internalError, "Cannot pin vcpu \(vcpu) of domain \(r.name): \(error)") }
        }
        dmesg("Domain \(r.name) (\(r.domid)): vCPU \(vcpu) pinned to CPUs \(CPUList.ranges(set))")
        return try vcpuList(String(r.domid))
    }

    /// `xm vcpu-set DOM N`: makes vCPUs 0..<N of a running domain online (hot-plug), keeps N
    /// as the domain's `vcpus` (and its former maximum as `maxvcpus`), pins new vCPUs to
    /// `cpus` when set.
    /// - Throws: `XendError` 400 for N < 1 or above the maximum (Xen's words), 503 when the
    ///   engine cannot hot-plug vCPUs, 500 when the guest refused; nothing changed then.
    public func vcpuSet(_ dom: String, count: Int) throws(XendError) -> DomainVcpus {
        let (r, p, e) = try live(dom, for: "set the vCPUs of")
        var cfg = r.config
        let maxV = Self.maxVcpus(cfg)
        guard count >= 1 else { throw XendError(.badRequest, "Invalid VCPUs: \(count) (a domain keeps at least 1)") }
        guard count <= maxV else {
            throw XendError(.badRequest, "Cannot set vcpus greater than max vcpus on running domain: \(count) > \(maxV) (raise maxvcpus and restart it for more)")
        }
        do { try e.setVcpuCount(p, count: count, config: cfg) } catch {
            let kind: XendError.Kind = !e.capabilities.contains(.vcpuHotplug) ? .unavailable
                : (error as? EngineError)?.isBadRequest == true ? .badRequest : .internalError
            throw XendError(kind, "Cannot set the vCPUs of domain \(r.name): \(error)")
        }
        if count < maxV || cfg.maxvcpus != nil { cfg.maxvcpus = maxV }
        cfg.vcpus = count
        // Only the fields changed: a block-attach or rename meanwhile must not be undone.
        registry.update(r.domid) { $0.config.vcpus = cfg.vcpus; $0.config.maxvcpus = cfg.maxvcpus }
        if let c = cfg.cpus { pinVcpus(r.name, p, e, c) }
        for k in 0..<maxV {   // Xen's per-vCPU entries, as its xend wrote them
            try? xenstore?.write("/local/domain/\(r.domid)/cpu/\(k)/availability", k < count ? "online" : "offline")
        }
        dmesg("Domain \(r.name) (\(r.domid)): \(count) vCPUs online")
        return try vcpuList(String(r.domid))
    }

    /// Pins every online vCPU of a started domain to `cpus` (the config's key); failures go
    /// to xend's log and dmesg (the config was checked at create).
    func pinVcpus(_ name: String, _ p: EngineProcess, _ e: any DomainEngineDriver, _ cpus: String) {
        do {
            let set = try CPUList.parse(cpus, hostCPUs: HostFacts.onlineCPUs)
            var threads: [Int: Int32] = [:]
            // The core starts its vCPU threads just after it answers: wait for them briefly.
            let deadline = Date().addingTimeInterval(3)
            repeat {
                threads = Self.engineThreads((try? e.vcpuThreads(p)) ?? [:], of: p, maxVcpus: 4096)
                if !threads.isEmpty { break }
                // An engine that ended will not start any: no point holding a destroy up.
                if p.hasExited { throw CPUGroupError(message: "its engine has exited") }
                usleep(20_000)
            } while Date() < deadline
            if threads.isEmpty { throw CPUGroupError(message: "its engine reports no vCPU threads") }
            for t in threads.values { try ThreadCPU.setAffinity(t, set) }
        } catch {
            dmesg("Domain \(name): cannot apply cpus = '\(cpus)': \(error)")
        }
    }

    /// ``applyCPUSettings(_:_:_:)`` on a background thread, for an engine that keeps its
    /// guest stopped while it loads a restored state: the move into the CPU control group
    /// (7-25 ms on cgroup v1, mostly a wait for an RCU grace period) then overlaps the
    /// load instead of adding to it. Whatever runs or removes the domain's CPU settings
    /// afterwards waits for it first (``CPUPlacements/wait(_:)``).
    func applyCPUSettingsInBackground(_ r: DomainRecord, _ p: EngineProcess, _ e: any DomainEngineDriver) {
        cpuPlacements.start(r.domid) { [self] in applyCPUSettings(r, p, e) }
    }

    /// Puts a started domain's engine processes in its CPU control group with the config's
    /// weight and cap (defaults 256 and none), and pins its vCPUs to `cpus`. Failures are
    /// reported in xend's log and dmesg; the domain runs on.
    func applyCPUSettings(_ r: DomainRecord, _ p: EngineProcess, _ e: any DomainEngineDriver) {
        let cfg = r.config
        if let c = cfg.cpus { pinVcpus(r.name, p, e, c) }
        guard let groups = cpuGroups else {
            if cfg.cpuWeight != nil || (cfg.cpuCap ?? 0) > 0 {
                dmesg("Domain \(r.name): cpu_weight/cpu_cap not applied: no cgroup cpu controller here (or xend is not root)")
            }
            return
        }
        do { try groups.apply(domid: r.domid, pids: e.cpuProcesses(p), weight: cfg.cpuWeight ?? 256, cap: cfg.cpuCap ?? 0) }
        catch { dmesg("Domain \(r.name): CPU control group: \(error)") }
    }

    /// `xm sched-credit -d DOM`: the domain's weight and cap (Domain-0: 256, no cap).
    /// - Throws: `XendError` 404 no such domain.
    public func schedCredit(_ dom: String) throws(XendError) -> SchedCredit {
        if dom == "0" || dom == "Domain-0" { return SchedCredit(domid: 0, name: "Domain-0", weight: 256, cap: 0) }
        guard let r = find(dom) else { throw .noDomain(dom) }
        return SchedCredit(domid: r.domid, name: r.name, weight: r.config.cpuWeight ?? 256, cap: r.config.cpuCap ?? 0)
    }

    /// `xm sched-credit -d DOM [-w WEIGHT] [-c CAP]`: sets the weight (1...65535) and cap
    /// (percent of one CPU, 0 = none, at most 100 per vCPU), enforced at once on a running
    /// domain by its CPU control group and kept in its configuration.
    /// - Throws: `XendError` 400 out of range (Xen's words) or Domain-0, 404 no such domain,
    ///   503 when a running domain cannot be controlled (no cpu controller). Nothing changed then.
    public func setSchedCredit(_ dom: String, weight: Int?, cap: Int?) throws(XendError) -> SchedCredit {
        if dom == "0" || dom == "Domain-0" { throw XendError(.badRequest, "Cannot set the scheduler parameters of privileged domain 0") }
        guard let r = find(dom) else { throw .noDomain(dom) }
        cpuPlacements.wait(r.domid)   // a restore's placement, still under way, would undo this one
        var cfg = r.config
        if let w = weight, !(1...65535).contains(w) { throw XendError(.badRequest, "weight is out of range: \(w) (1-65535)") }
        let capMax = Self.maxVcpus(cfg) * 100
        if let c = cap, !(0...capMax).contains(c) {
            throw XendError(.badRequest, "cap is out of range: \(c) (0-\(capMax): percent of one CPU, 0 for none)")
        }
        if let w = weight { cfg.cpuWeight = w }
        if let c = cap { cfg.cpuCap = c }
        if let p = r.process, let e = engines[r.engine] {
            guard let groups = cpuGroups else {
                throw XendError(.unavailable, "Cannot set the scheduler parameters of domain \(r.name): no cgroup cpu controller on this host (or xend is not root)")
            }
            do { try groups.apply(domid: r.domid, pids: e.cpuProcesses(p), weight: cfg.cpuWeight ?? 256, cap: cfg.cpuCap ?? 0) }
            catch { throw XendError(.internalError, "Cannot set the scheduler parameters of domain \(r.name): \(error)") }
        }
        registry.update(r.domid) { $0.config.cpuWeight = cfg.cpuWeight; $0.config.cpuCap = cfg.cpuCap }
        dmesg("Domain \(r.name) (\(r.domid)): weight \(cfg.cpuWeight ?? 256), cap \(cfg.cpuCap ?? 0)")
        return SchedCredit(domid: r.domid, name: r.name, weight: cfg.cpuWeight ?? 256, cap: cfg.cpuCap ?? 0)
    }

    /// Checks a configuration's `cpus` against this host before anything starts.
    /// - Throws: `XendError` 400 naming the list.
    func checkCPUSettings(_ cfg: DomainConfiguration) throws(XendError) {
        if let c = cfg.cpus {
            do { _ = try CPUList.parse(c, hostCPUs: HostFacts.onlineCPUs) } catch { throw XendError(.badRequest, "cpus: \(error.description)") }
        }
        if let cap = cfg.cpuCap, cap > Self.maxVcpus(cfg) * 100 {
            throw XendError(.badRequest, "cpu_cap: cap is out of range: \(cap) (0-\(Self.maxVcpus(cfg) * 100))")
        }
    }

    /// Confines xend's own threads (and so every service it starts from now on),
    /// xenstored and xenconsoled to the first `dom0CPUs` CPUs (xend-config `dom0-cpus`;
    /// 0 = all). Engines are started outside the confinement (``ThreadCPU/withAllCPUs(_:)``).
    /// - Returns: the CPUs Domain-0 keeps, nil when `dom0CPUs` is 0 (nothing changed).
    @discardableResult
    static func confineDom0(_ dom0CPUs: Int, servicePids: [Int32]) -> [Int]? {
        guard dom0CPUs > 0 else { return nil }
        let set = Array(0..<min(dom0CPUs, HostFacts.onlineCPUs))
        if ThreadCPU.engineCPUs == nil { ThreadCPU.engineCPUs = ThreadCPU.affinity(0) ?? Array(0..<HostFacts.possibleCPUs) }
        ThreadCPU.setProcessAffinity(getpid(), set)
        for p in servicePids where p > 0 { ThreadCPU.setProcessAffinity(p, set) }
        return set
    }
}

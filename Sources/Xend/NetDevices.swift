// Virtual network interfaces (vifs) of domains on either engine: one sandboxed netback
// per vif, served to the core or QEMU over vhost-user (DESIGN.md "Processes",
// "Supervision"; services/scripts/README.md "How xend attaches a vif").
//
// For vif DEVID of domain DOMID, xend (privileged; netback never is):
//   1. checks the whole request before making anything (interface name, MAC, bridge,
//      duplicates across the running domains);
//   2. creates the persistent tap `vifDOMID.DEVID` (or `vifname=`) with TUNSETIFF +
//      TUNSETPERSIST and keeps its descriptor;
//   3. writes the backend entries under /local/domain/0/backend/vif/DOMID/DEVID and runs
//      the vif script (`online vif= bridge= mac= ip=`, XENBUS_PATH in the environment),
//      which must exit 0 (its stderr becomes the error otherwise) and not report
//      `hotplug-status` = `error`;
//   4. binds the listening socket `$ROOT/run/xenith/netback-DOMID-DEVID.sock` and starts
//      netback on it (fd 3) and the tap (fd 4), sandboxed by manifests/netback.manifest;
//   5. writes the frontend entries and sets both states to Connected (4).
// Teardown (domain end, destroy, detach, or a failure halfway) runs the same steps backwards:
// netback stopped, script `offline`, tap removed, xenstore entries gone.
// A netback that dies is started again on the same two descriptors (the front-end
// reconnects; frames in flight are lost, TCP recovers). After an xend restart the running
// netbacks are re-adopted from the registry (pid + start time).
import CLinux
import DomainConfig
import Foundation
import Logging
import Sandbox
import Spawn
import XendAPI
import XenStore
#if canImport(Glibc)
import Glibc
#endif

/// One vif's host side as the registry stores it (`DomainRecord.vifs`).
public struct VifRecord: Codable, Sendable, Equatable {
    /// Device id (the index in the domain's vif list, or the one `network-attach` gave).
    public var devid: Int
    /// Host-side interface (the tap): `vifDOMID.DEVID` or `vifname=`.
    public var vifname: String
    /// The guest's MAC, `xx:xx:xx:xx:xx:xx` lower case.
    public var mac: String
    /// The bridge handed to the script (nil: the script is not a bridging one and none was given).
    public var bridge: String?
    /// Guest IP address(es), space separated, as given in the vif spec.
    public var ip: String?
    /// The vif script as given (`vif-bridge`, or an absolute path) and the file run.
    public var script: String
    public var scriptPath: String
    /// `rate=` as given (`1Mb/s`), nil for none.
    public var rate: String?
    /// The vhost-user socket the engine connects to.
    public var socket: String
    /// The netback process (its sandbox reaper) and its start time in clock ticks; pid 0
    /// when none runs.
    public var pid: Int32
    public var startTicks: UInt64
    /// netback's stderr log.
    public var log: String
    /// Set when netback kept dying and xend gave up on it (the domain runs on without link).
    public var broken: Bool
    /// A NIC QEMU emulates itself (rtl8139, ne2k_pci, e1000, …) on the tap: no netback, no
    /// socket; the engine holds the tap. nil (false) in records of older xends.
    public var emulated: Bool? = nil
    /// Owner given to the socket file so an unprivileged QEMU (`-runas`) can reconnect to
    /// it after a netback restart and hot-plug it; nil: root's.
    public var socketOwner: SocketOwner? = nil
}

/// A checked vif, ready to be made (`NetSupervisor.plan`).
public struct VifPlan: Sendable, Equatable {
    public var devid: Int
    /// The tap name (≤ 15 bytes).
    public var vifname: String
    public var mac: String
    public var bridge: String?
    public var ip: String?
    /// Script as given and the path that will run.
    public var script: String
    public var scriptPath: String
    public var rate: VifRate?
    /// QEMU emulates the NIC on the tap itself (see `VifRecord.emulated`); `rate=` is then
    /// not enforced (netback enforces it).
    public var emulated: Bool = false
}

/// Persistent taps through /dev/net/tun (linux/if_tun.h).
enum Tap {
    static let iffTap: UInt16 = 0x0002, iffNoPI: UInt16 = 0x1000, iffVnetHdr: UInt16 = 0x4000
    /// _IOW('T', 203, int).
    static let tunSetPersist: UInt = 0x4004_54cb

    /// Opens /dev/net/tun attached to `name` with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
    /// (creating the tap when it does not exist); `persist` makes it outlive the descriptor.
    /// - Returns: the descriptor (close-on-exec).
    /// - Throws: `EngineError` naming the step that failed.
    static func open(_ name: String, persist: Bool) throws -> Int32 {
        let bytes = Array(name.utf8)
        guard !bytes.isEmpty, bytes.count < 16 else { throw EngineError("interface name '\(name)' must be 1...15 bytes") }
        let fd = Glibc.open("/dev/net/tun", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw EngineError("/dev/net/tun: \(String(cString: strerror(errno)))") }
        var ifr = [UInt8](repeating: 0, count: 40)   // struct ifreq: name[16], flags at 16
        for (i, b) in bytes.enumerated() { ifr[i] = b }
        let flags = iffTap | iffNoPI | iffVnetHdr
        ifr[16] = UInt8(flags & 0xff); ifr[17] = UInt8(flags >> 8)
        if ifr.withUnsafeMutableBytes({ clinux_ioctl_ptr(fd, CLINUX_TUNSETIFF, $0.baseAddress) }) != 0 {
            let e = errno; close(fd)
            throw EngineError("cannot create tap \(name): \(String(cString: strerror(e)))")
        }
        if persist && clinux_ioctl_int(fd, tunSetPersist, 1) != 0 {
            let e = errno; close(fd)
            throw EngineError("cannot make tap \(name) persistent: \(String(cString: strerror(e)))")
        }
        return fd
    }

    /// Removes a persistent tap: clears TUNSETPERSIST on `fd` (or on a fresh attachment
    /// when `fd` < 0) and closes it, after which the kernel deletes the interface.
    static func remove(_ name: String, fd: Int32) {
        var f = fd
        if f < 0 {
            guard interfaceExists(name), let g = try? open(name, persist: false) else { return }
            f = g
        }
        _ = clinux_ioctl_int(f, tunSetPersist, 0)
        close(f)
    }

    /// Whether a network interface `name` exists in xend's network namespace.
    static func interfaceExists(_ name: String) -> Bool { if_nametoindex(name) != 0 }

    /// Whether `name` is a Linux bridge (`/sys/class/net/NAME/bridge`).
    static func isBridge(_ name: String) -> Bool {
        interfaceExists(name) && access("/sys/class/net/\(name)/bridge", F_OK) == 0
    }
}

/// The scripts directory search: `$ROOT/etc/xen/scripts` (Xen's place), `$XENITH_SCRIPTS`,
/// `BINDIR/../share/xenith/scripts` (make install), then the source tree's services/scripts.
public func resolveScript(_ script: String, paths: XenithPaths, binDir: String, sourceFile: String = #filePath) -> String? {
    if script.hasPrefix("/") { return access(script, X_OK) == 0 ? script : nil }
    var dirs = [paths.resolve("/etc/xen/scripts")]
    if let env = getenv("XENITH_SCRIPTS") { dirs.append(String(cString: env)) }
    dirs.append(binDir + "/../share/xenith/scripts")
    let repo = (((sourceFile as NSString).deletingLastPathComponent as NSString).deletingLastPathComponent as NSString)
        .deletingLastPathComponent
    dirs.append(repo + "/services/scripts")
    for d in dirs where access(d + "/" + script, X_OK) == 0 {
        return URL(fileURLWithPath: d + "/" + script).standardizedFileURL.path
    }
    return nil
}

/// The result of one script run.
struct ScriptResult {
    var status: Int32
    var stderr: String
}

/// Runs `argv` (an executable and its arguments) to completion with `env` added to xend's
/// environment, stdin /dev/null, stdout appended to `log`; collects stderr. Kills it after
/// `timeout` seconds (status 124 then).
func runScript(_ argv: [String], env extra: [String: String], log: String, timeout: Double = 30) -> ScriptResult {
    var p: [Int32] = [0, 0]
    guard pipe(&p) == 0 else { return ScriptResult(status: 127, stderr: "pipe: \(String(cString: strerror(errno)))") }
    for fd in p { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    var env = currentEnvironment()
    env["PATH"] = (env["PATH"].map { $0 + ":" } ?? "") + "/usr/sbin:/sbin:/usr/bin:/bin"
    for (k, v) in extra { env[k] = v }
    let pid: pid_t
    do {
        pid = try spawnProcess(argv, SpawnOptions(stdout: .file(log), stderr: .descriptor(p[1]), environment: env, newSession: false))
    } catch {
        close(p[0]); close(p[1])
        return ScriptResult(status: 127, stderr: error.message)
    }
    close(p[1])
    var err: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 4096)
    let deadline = Date().addingTimeInterval(timeout)
    var timedOut = false
    while true {
        var pfd = pollfd(fd: p[0], events: Int16(POLLIN), revents: 0)
        let left = Int32(max(0, deadline.timeIntervalSinceNow) * 1000)
        let n = poll(&pfd, 1, left)
        if n < 0 && errno == EINTR { continue }
        if n == 0 { timedOut = true; kill(pid, SIGKILL); break }
        let r = read(p[0], &buf, buf.count)
        if r <= 0 { break }
        if err.count < 65536 { err += buf[..<r] }
    }
    close(p[0])
    var st: Int32 = 0
    while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
    let status: Int32 = timedOut ? 124 : (st & 0x7f == 0 ? (st >> 8) & 0xff : 128 + (st & 0x7f))
    return ScriptResult(status: status, stderr: String(decoding: err, as: UTF8.self)
        .trimmingCharacters(in: .whitespacesAndNewlines) + (timedOut ? " (killed after \(Int(timeout)) s)" : ""))
}

/// Creates, supervises and removes the host side of vifs: taps, vif scripts, xenstore
/// entries and netback processes.
public final class NetSupervisor: @unchecked Sendable {

    /// One vif: its record (pid and start time from `proc`), the descriptors xend holds
    /// for it, its netback process.
    final class Backend: @unchecked Sendable {
        let domid: Int
        let domainName: String
        var rec: VifRecord
        var tapFD: Int32 = -1
        var listenFD: Int32 = -1
        let proc: BackendProcess
        init(domid: Int, domainName: String, record: VifRecord, lock: NSRecursiveLock, budget: RestartBudget) {
            self.domid = domid; self.domainName = domainName; self.rec = record
            proc = BackendProcess(service: "netback", device: "vif",
                                  label: "domain \(domainName) (\(domid)) vif \(record.devid) (\(record.vifname))",
                                  logPath: record.log, lock: lock, budget: budget)
        }
        var label: String { proc.label }
        /// The record as stored: `rec` with the current process.
        var record: VifRecord {
            var r = rec
            r.pid = proc.pid; r.startTicks = proc.startTicks
            return r
        }
    }

    let host: BackendHost
    var paths: XenithPaths { host.paths }
    var xenstore: XenStoreClient? { host.xenstore }
    var log: Logger { host.log }
    /// Where the vif scripts are looked for besides the root's (BINDIR/../share/xenith/scripts).
    let binDir: String
    let defaultScript: String
    private let lock = NSRecursiveLock()
    private var backends: [Int: [Backend]] = [:]
    /// Devids being attached (network-attach in progress), per domain.
    private var reserved: [Int: Set<Int>] = [:]
    /// Called (without locks held) when a domain's vif records change: persist them.
    var onChange: (@Sendable (Int, [VifRecord]) -> Void)?
    /// Test hooks for the host checks (interface exists, is a bridge).
    var interfaceExists: @Sendable (String) -> Bool = { Tap.interfaceExists($0) }
    var isBridge: @Sendable (String) -> Bool = { Tap.isBridge($0) }

    /// - Parameters:
    ///   - binary: the netback executable (beside xend's).
    ///   - manifest: `netback.manifest`; nil runs netback with `--no-sandbox` (logged).
    ///   - defaultScript: xend-config's `vif-script` (`vif-bridge`).
    public init(paths: XenithPaths, binary: String, manifest: String?, xenstore: XenStoreClient?,
                defaultScript: String = "vif-bridge", logger: Logger) {
        host = BackendHost(paths: paths, binary: binary, manifest: manifest, xenstore: xenstore, log: logger)
        self.binDir = (binary as NSString).deletingLastPathComponent
        self.defaultScript = defaultScript
    }

    /// The socket path of domain `domid`'s vif `devid`.
    public func socketPath(domid: Int, devid: Int) -> String { host.socketPath("netback", domid: domid, device: String(devid)) }

    /// The records of a domain's vifs (for the registry and `xm network-list`), by devid.
    public func records(_ domid: Int) -> [VifRecord] {
        lock.lock(); defer { lock.unlock() }
        return (backends[domid] ?? []).map(\.record).sorted { $0.devid < $1.devid }
    }

    func changed(_ domid: Int) { onChange?(domid, records(domid)) }

    // MARK: checks

    /// Why a vif cannot be connected, in Xen's words, naming the device.
    static func refuse(_ devid: Int, _ why: String) -> XendError {
        XendError(.badRequest, "Device \(devid) (vif) could not be connected. \(why)")
    }

    /// Checks a domain's new vifs against each other, the running domains' vifs and the
    /// host, before anything is made.
    /// - Parameters:
    ///   - vifs: (devid, spec) pairs.
    ///   - inUse: the vifs of the running domains (including this domain's existing ones
    ///     for `network-attach`), by domain name.
    ///   - resolve: script name → path that runs (nil: not found).
    /// - Returns: one plan per vif, in the given order.
    /// - Throws: `XendError` (400) naming the device and the reason: interface name too long
    ///   or in use, MAC not unicast or used on the same bridge, bridge missing, script not found.
    public static func plan(domid: Int, vifs: [(devid: Int, spec: VifSpec)], defaultScript: String,
                            inUse: [(domain: String, vif: VifRecord)],
                            interfaceExists: (String) -> Bool, isBridge: (String) -> Bool,
                            resolve: (String) -> String?) throws(XendError) -> [VifPlan] {
        var out: [VifPlan] = []
        for (devid, spec) in vifs {
            let name = spec.vifname ?? "vif\(domid).\(devid)"
            guard !name.isEmpty, name.utf8.count <= 15, !name.contains("/"), !name.contains(where: \.isWhitespace),
                  name != ".", name != ".." else {
                throw refuse(devid, "Interface name '\(name)' is not valid (at most 15 characters, no '/' or spaces).")
            }
            let mac = spec.mac
            guard mac.isUnicast, mac.octets != [0, 0, 0, 0, 0, 0] else {
                throw refuse(devid, "MAC address \(mac) is not a unicast address.")
            }
            if let other = inUse.first(where: { $0.vif.vifname == name }) {
                throw refuse(devid, "Interface name \(name) is already in use by domain \(other.domain).")
            }
            if out.contains(where: { $0.vifname == name }) {
                throw refuse(devid, "Interface name \(name) is given twice.")
            }
            if interfaceExists(name) {
                throw refuse(devid, "Interface name \(name) is already in use on this host.")
            }
            let script = spec.script ?? defaultScript
            guard let scriptPath = resolve(script) else {
                throw refuse(devid, "Hotplug script \(script) not found (looked in /etc/xen/scripts).")
            }
            let bridging = (script as NSString).lastPathComponent.hasPrefix("vif-bridge")
            let bridge = spec.bridge ?? (bridging ? "xenbr0" : nil)
            if let b = bridge, spec.bridge != nil || bridging, !isBridge(b) {
                throw refuse(devid, "Bridge \(b) does not exist (create it first: network-bridge start bridge=\(b) netdev=none makes one without an uplink; netdev=eth0 moves eth0's address onto it).")
            }
            let macText = mac.description
            if let other = inUse.first(where: { $0.vif.mac == macText && $0.vif.bridge == bridge }) {
                throw refuse(devid, "MAC address \(macText) is already used by domain \(other.domain)\(bridge.map { " on bridge \($0)" } ?? "").")
            }
            if out.contains(where: { $0.mac == macText && $0.bridge == bridge }) {
                throw refuse(devid, "MAC address \(macText) is given twice\(bridge.map { " on bridge \($0)" } ?? "").")
            }
            out.append(VifPlan(devid: devid, vifname: name, mac: macText, bridge: bridge, ip: spec.ip, script: script,
                               scriptPath: scriptPath, rate: spec.rate))
        }
        return out
    }

    // MARK: start

    /// Checks, then makes every vif of a new domain (tap, script, xenstore, netback).
    /// - Parameters:
    ///   - inUse: the vifs of the other running domains, by domain name.
    ///   - emulated: devids whose NIC the engine emulates on the tap (no netback); their
    ///     taps are `tapDescriptor(domid:devid:)`.
    /// - Returns: the vhost-user sockets in vif order, for the engine ("" for emulated NICs).
    /// - Throws: `XendError` (400) when a vif is refused or its script fails (the script's
    ///   stderr in the message), 500 when netback does not come up; nothing is left behind.
    ///   - planned: called with the interface names once every vif passed its checks and
    ///     before the first tap is made (the launcher writes them into its intent record).
    public func start(domid: Int, name: String, vifs: [(devid: Int, spec: VifSpec)],
                      inUse: [(domain: String, vif: VifRecord)], emulated: Set<Int> = [],
                      socketOwner: (uid: uid_t, gid: gid_t)? = nil,
                      planned: ([String]) -> Void = { _ in }) throws(XendError) -> [String] {
        var plans = try Self.plan(domid: domid, vifs: vifs, defaultScript: defaultScript, inUse: inUse,
                                  interfaceExists: interfaceExists, isBridge: isBridge,
                                  resolve: { resolveScript($0, paths: paths, binDir: binDir) })
        planned(plans.map(\.vifname))
        for i in plans.indices where emulated.contains(plans[i].devid) { plans[i].emulated = true }
        var made: [Backend] = []
        do throws(XendError) {
            for p in plans {
                made.append(try make(domid: domid, name: name, p, socketOwner: socketOwner))
                FaultInjection.crashPoint("vif-\(p.devid)")
            }
        } catch {
            for b in made.reversed() { teardown(b) }
            throw error
        }
        lock.lock(); backends[domid, default: []] += made; lock.unlock()
        for b in made { watch(b) }
        return made.map(\.rec.socket)
    }

    /// Makes one vif; on failure undoes what it made and throws.
    private func make(domid: Int, name: String, _ p: VifPlan, socketOwner: (uid: uid_t, gid: gid_t)?) throws(XendError) -> Backend {
        let rec = VifRecord(devid: p.devid, vifname: p.vifname, mac: p.mac, bridge: p.bridge, ip: p.ip, script: p.script,
                            scriptPath: p.scriptPath, rate: p.rate?.text, socket: p.emulated ? "" : socketPath(domid: domid, devid: p.devid),
                            pid: 0, startTicks: 0, log: paths.logDir + "/netback-\(domid)-\(p.devid).log", broken: false,
                            emulated: p.emulated ? true : nil,
                            socketOwner: socketOwner.map(SocketOwner.init))
        let b = Backend(domid: domid, domainName: name, record: rec, lock: lock, budget: host.restartBudget())
        var online = false
        do throws(XendError) {
            do { b.tapFD = try Tap.open(p.vifname, persist: true) }
            catch { throw Self.refuse(p.devid, "\(error)") }
            writeBackendEntries(b, rate: p.rate)
            let r = script(b, "online")
            if r.status != 0 {
                let why = r.stderr.isEmpty ? "exit status \(r.status)" : r.stderr
                throw Self.refuse(p.devid, "Hotplug script \(p.script) failed: \(why)")
            }
            online = true
            if let xs = xenstore, let hs = try? xs.readIfPresent(backendPath(b) + "/hotplug-status") {
                if hs == "error" {
                    let why = (try? xs.readIfPresent(backendPath(b) + "/hotplug-error")) ?? nil
                    throw Self.refuse(p.devid, "Hotplug script \(p.script) reported an error\(why.map { ": \($0)" } ?? "").")
                }
            } else if let xs = xenstore {
                // A site script that does not write hotplug-status: exit 0 is its answer.
                try? xs.write(backendPath(b) + "/hotplug-status", "connected")
            }
            if p.emulated {
                connectXenstore(b)
                log.info("\(b.label): online\(p.bridge.map { " on \($0)" } ?? ""), NIC emulated by the engine on the tap")
                return b
            }
            XenithPaths.makeDirectories(host.runDir)
            do { b.listenFD = try host.listen(rec.socket, owner: socketOwner) }
            catch { throw XendError(.internalError, "Device \(p.devid) (vif) could not be connected. \(rec.socket): \(error)") }
            do { try spawn(b) } catch { throw XendError(.internalError, "Device \(p.devid) (vif) could not be connected. \(error)") }
            try waitReady(b)
            connectXenstore(b)
        } catch {
            teardown(b, scriptOffline: online)
            throw error
        }
        log.info("\(b.label): online\(p.bridge.map { " on \($0)" } ?? ""), netback pid \(b.proc.pid)")
        return b
    }

    func backendPath(_ b: Backend) -> String {
        XenStoreLayout.backend(type: "vif", domid: UInt32(b.domid), devid: b.rec.devid)
    }

    func device(_ b: Backend) -> XenStoreDevice {
        var d = XenStoreDevice.vif(domid: UInt32(b.domid), devid: b.rec.devid, mac: b.rec.mac, bridge: b.rec.bridge,
                                   script: b.rec.scriptPath)
        if let r = b.rec.rate { d.backendEntries["rate"] = r }
        if let ip = b.rec.ip { d.backendEntries["ip"] = ip }
        return d
    }

    /// Backend and frontend directories (state Initialising / InitWait) before the script runs.
    private func writeBackendEntries(_ b: Backend, rate: VifRate?) {
        guard let xs = xenstore else { return }
        let dev = device(b)
        do {
            try xs.writeDevice(dev)
            try xs.write(dev.backendPath + "/vifname", b.rec.vifname)
            if let rate {
                try xs.write(dev.backendPath + "/rate", "\(rate.bytesPerInterval),\(rate.intervalMicroseconds)")
            }
            try xs.setState(dev.backendPath, .initWait)
        } catch { log.error("\(b.label): xenstore: \(error)") }
    }

    /// Writes the vif entries of a domain's working vifs again (a new xenstored).
    public func republish(domid: Int) {
        lock.lock(); let bs = backends[domid] ?? []; lock.unlock()
        for b in bs where !b.rec.broken {
            writeBackendEntries(b, rate: b.rec.rate.flatMap { VifRate($0) })
            try? xenstore?.write(backendPath(b) + "/hotplug-status", "connected")
            connectXenstore(b)
        }
    }

    private func connectXenstore(_ b: Backend) {
        guard let xs = xenstore else { return }
        let dev = device(b)
        do {
            try xs.setState(dev.backendPath, .connected)
            try xs.setState(dev.frontendPath, .connected)
        } catch { log.error("\(b.label): xenstore: \(error)") }
    }

    /// Runs the vif script with Xen's arguments and environment.
    private func script(_ b: Backend, _ command: String) -> ScriptResult {
        var argv = [b.rec.scriptPath, command, "vif=\(b.rec.vifname)", "mac=\(b.rec.mac)"]
        if let br = b.rec.bridge { argv.append("bridge=\(br)") }
        if let ip = b.rec.ip { argv.append("ip=\(ip)") }
        let env = ["XENBUS_PATH": backendPath(b), "XENSTORED_PATH": paths.xenstoredSocket, "vif": b.rec.vifname,
                   "script": b.rec.scriptPath]
        let r = runScript(argv, env: env, log: paths.logDir + "/xen-hotplug.log")
        if r.status != 0 { log.error("\(b.label): \(b.rec.script) \(command): status \(r.status): \(r.stderr)") }
        return r
    }

    /// Starts netback on the descriptors of `b` (listener at 3, tap at 4, readiness at 5).
    private func spawn(_ b: Backend) throws {
        var argv = [host.binary, "--listen-fd", "3", "--tap-fd", "4", "--mac", b.rec.mac]
        if let r = b.rec.rate, let rate = VifRate(r) { argv += ["--rate", "\(rate.bytesPerInterval)/\(rate.intervalMicroseconds)"] }
        argv += host.sandboxArguments
        try b.proc.spawn(argv, descriptors: [(b.listenFD, 3), (b.tapFD, 4)])
    }

    /// Waits (up to 10 s) for netback's readiness message (sent once its sandbox is applied
    /// and it serves the socket).
    /// - Throws: `XendError` 500 naming the device and netback's reason.
    private func waitReady(_ b: Backend) throws(XendError) {
        do { try b.proc.waitReady() } catch {
            throw XendError(.internalError, "Device \(b.rec.devid) (vif) could not be connected. \(error.message)")
        }
    }

    // MARK: supervision

    private func watch(_ b: Backend) {
        b.proc.watch(log: log, restart: { [self] _ in try reopen(b); try spawn(b) },
                     giveUp: { [self] why in markBroken(b, why) }, restarted: { [self] in changed(b.domid) })
    }

    /// After an xend restart this xend holds no descriptors: attach to the tap again and
    /// bind the socket again (the front-end reconnects to the path).
    private func reopen(_ b: Backend) throws {
        if b.tapFD < 0 { b.tapFD = try Tap.open(b.rec.vifname, persist: true) }
        if b.listenFD < 0 {
            XenithPaths.makeDirectories(host.runDir)
            let owner = b.rec.socketOwner?.ids
            b.listenFD = try host.listen(b.rec.socket, owner: owner)
        }
    }


    /// Gives up on a vif: nothing serves its socket any more, so the socket is closed and
    /// removed (a front-end connecting into an unserved listen queue would block: QEMU's
    /// main loop waits on it); the domain runs on without that link.
    private func markBroken(_ b: Backend, _ why: String) {
        lock.lock()
        b.rec.broken = true; b.proc.pid = 0
        if b.listenFD >= 0 { close(b.listenFD); b.listenFD = -1 }
        if !b.rec.socket.isEmpty { unlink(b.rec.socket) }
        lock.unlock()
        if let xs = xenstore {
            let be = backendPath(b)
            do {
                try xs.write([XenStoreEntry(be + "/hotplug-status", "error"), XenStoreEntry(be + "/hotplug-error", why)])
                try xs.setState(be, .closed)
            } catch { log.error("\(b.label): xenstore: \(error)") }
        }
        changed(b.domid)
    }

    // MARK: stop, detach, adopt

    /// Stops netback: SIGTERM, SIGKILL after 2 s.
    private func halt(_ b: Backend) { b.proc.halt() }

    /// Undoes one vif: netback stopped, script offline, tap removed, socket and xenstore
    /// entries gone.
    private func teardown(_ b: Backend, scriptOffline: Bool = true) {
        halt(b)
        if scriptOffline { _ = script(b, "offline") }
        lock.lock()
        if b.listenFD >= 0 { close(b.listenFD); b.listenFD = -1 }
        let tap = b.tapFD; b.tapFD = -1
        lock.unlock()
        Tap.remove(b.rec.vifname, fd: tap)
        if !b.rec.socket.isEmpty { unlink(b.rec.socket) }
        if let xs = xenstore {
            let d = device(b)
            try? xs.rm(d.frontendPath)
            try? xs.rm(d.backendPath)
        }
    }

    /// Removes empty `backend/vif/DOMID`, `backend/vif`, `backend` directories.
    private func pruneXenstore(_ domid: Int) {
        host.pruneBackendDirectories(type: "vif", domid: domid)
        guard let xs = xenstore else { return }
        let fe = "/local/domain/\(domid)/device/vif"
        if (try? xs.directory(fe))?.isEmpty == true { try? xs.rm(fe) }
    }

    /// Tears down every vif of `domid` (its engine process is gone or going).
    public func stop(domid: Int) {
        lock.lock(); let bs = backends.removeValue(forKey: domid) ?? []; lock.unlock()
        for b in bs.reversed() { teardown(b) }
        if !bs.isEmpty { pruneXenstore(domid) }
    }

    /// Adds one vif to a running domain (`xm network-attach`), after the same checks as at
    /// create. The engine is told afterwards by the caller; `detach` undoes this.
    /// - Returns: the new record.
    /// - Throws: `XendError` as `start`.
    public func attach(domid: Int, name: String, spec: VifSpec, inUse: [(domain: String, vif: VifRecord)],
                       socketOwner: (uid: uid_t, gid: gid_t)? = nil) throws(XendError) -> VifRecord {
        // The devid is reserved under the lock until the vif is made or refused: concurrent
        // attaches each get their own.
        lock.lock()
        let used = Set((backends[domid] ?? []).map(\.rec.devid)).union(reserved[domid] ?? [])
        let devid = (0...).first { !used.contains($0) }!
        reserved[domid, default: []].insert(devid)
        lock.unlock()
        defer { lock.lock(); reserved[domid]?.remove(devid); lock.unlock() }
        let p = try Self.plan(domid: domid, vifs: [(devid, spec)], defaultScript: defaultScript, inUse: inUse,
                              interfaceExists: interfaceExists, isBridge: isBridge,
                              resolve: { resolveScript($0, paths: paths, binDir: binDir) })
        let b = try make(domid: domid, name: name, p[0], socketOwner: socketOwner)
        lock.lock(); backends[domid, default: []].append(b); lock.unlock()
        watch(b)
        changed(domid)
        return b.record
    }

    /// Removes vif `devid` of `domid` (`xm network-detach`).
    /// - Throws: `XendError` (404-like bad request) when the domain has no such vif.
    public func detach(domid: Int, devid: Int) throws(XendError) {
        lock.lock()
        guard let i = backends[domid]?.firstIndex(where: { $0.rec.devid == devid }) else {
            lock.unlock()
            throw XendError(.badRequest, "Device \(devid) not connected")
        }
        let b = backends[domid]!.remove(at: i)
        lock.unlock()
        teardown(b)
        pruneXenstore(domid)
        changed(domid)
    }

    /// After an xend restart: takes over a domain's netbacks from its registry records.
    public func adopt(domid: Int, name: String, records: [VifRecord]) {
        var bs: [Backend] = []
        for r in records {
            let b = Backend(domid: domid, domainName: name, record: r, lock: lock, budget: host.restartBudget())
            if !r.broken && r.pid > 0 && ProcessInfo2.startTicks(r.pid) == r.startTicks {
                b.proc.adoptRunning(pid: r.pid, startTicks: r.startTicks)
                log.info("\(b.label): re-adopted netback, pid \(r.pid)")
            } else if r.emulated == true {
                log.info("\(b.label): re-adopted (NIC emulated by the engine on the tap)")
            } else if !r.broken {
                do {
                    try reopen(b)
                    try spawn(b)
                    log.info("\(b.label): netback was gone; started a new one, pid \(b.proc.pid)")
                } catch {
                    log.error("\(b.label): cannot restart netback: \(error)")
                    b.rec.broken = true
                }
            }
            bs.append(b)
        }
        lock.lock(); backends[domid] = bs; lock.unlock()
        for b in bs where b.proc.pid > 0 { watch(b) }
        changed(domid)
    }

    /// Tears down the vifs of a domain whose engine ended while xend was away (from its
    /// registry records): netbacks killed, scripts offline, taps removed.
    public func release(domid: Int, name: String, records: [VifRecord]) {
        for r in records {
            if r.pid > 0 && ProcessInfo2.startTicks(r.pid) == r.startTicks { kill(r.pid, SIGKILL) }
            let b = Backend(domid: domid, domainName: name, record: r, lock: lock, budget: host.restartBudget())
            teardown(b)
        }
        if !records.isEmpty { pruneXenstore(domid) }
    }

    /// Undoes the vifs of a creation xend did not finish, from the configuration (their
    /// records may never have been written; their netbacks are already killed): vif script
    /// `offline` where the tap exists, taps removed, sockets and xenstore entries gone. A
    /// custom `vifname=` tap is removed only when a record or `planned` (the names that
    /// passed the checks, so none was another program's then) names it; the default
    /// `vifDOMID.DEVID` is xend's by construction.
    public func releaseUnfinished(domid: Int, name: String, vifs: [(devid: Int, spec: VifSpec)], records: [VifRecord],
                                  planned: [String] = []) {
        for (devid, spec) in vifs {
            var rec: VifRecord
            if let r = records.first(where: { $0.devid == devid }) {
                rec = r
            } else {
                if let custom = spec.vifname, !planned.contains(custom) { continue }
                let script = spec.script ?? defaultScript
                rec = VifRecord(devid: devid, vifname: spec.vifname ?? "vif\(domid).\(devid)", mac: spec.mac.description, bridge: spec.bridge,
                                ip: spec.ip, script: script, scriptPath: resolveScript(script, paths: paths, binDir: binDir) ?? "",
                                rate: nil, socket: socketPath(domid: domid, devid: devid), pid: 0, startTicks: 0, log: "",
                                broken: false)
            }
            rec.pid = 0
            let b = Backend(domid: domid, domainName: name, record: rec, lock: lock, budget: host.restartBudget())
            teardown(b, scriptOffline: !rec.scriptPath.isEmpty && Tap.interfaceExists(rec.vifname))
        }
        if !vifs.isEmpty { pruneXenstore(domid) }
    }

    /// xend's descriptor of the tap of vif `devid` (made by `start`), for an engine that
    /// emulates the NIC on it; nil when there is none. The caller dups it to hand it over.
    public func tapDescriptor(domid: Int, devid: Int) -> Int32? {
        lock.lock(); defer { lock.unlock() }
        return backends[domid]?.first { $0.rec.devid == devid }.map(\.tapFD).flatMap { $0 >= 0 ? $0 : nil }
    }

    /// The pids of a domain's running netbacks (tests, diagnostics).
    public func pids(domid: Int) -> [Int32] {
        lock.lock(); defer { lock.unlock() }
        return (backends[domid] ?? []).map(\.proc.pid).filter { $0 > 0 }
    }

    /// Runs xend-config's `network-script` (`network-bridge netdev=eth1`) with `start`
    /// before the first word's arguments, as Xen 3.0's xend did at start-up; the script
    /// gets `XENSTORED_PATH` and `XENITH_ROOT` (where it keeps state, e.g. dnsmasq's pid).
    /// - Returns: nil on success, else the error text (logged by the caller).
    public static func runNetworkScript(_ line: String, paths: XenithPaths, binDir: String) -> String? {
        let words = line.split(whereSeparator: \.isWhitespace).map(String.init)
        guard let name = words.first else { return nil }
        guard let path = resolveScript(name, paths: paths, binDir: binDir) else { return "network-script \(name) not found" }
        XenithPaths.makeDirectories(paths.logDir)
        let r = runScript([path, "start"] + words.dropFirst(), env: ["XENSTORED_PATH": paths.xenstoredSocket, "XENITH_ROOT": paths.root],
                          log: paths.logDir + "/xen-hotplug.log")
        return r.status == 0 ? nil : "network-script \(line) start: status \(r.status): \(r.stderr)"
    }
}

// Engines run domains (DESIGN.md "Two engines, one toolstack"). xend talks to them only
// through `DomainEngineDriver`, so the qemu engine can plug in beside the core.
import CLinux
import DomainConfig
import Foundation
import Spawn
#if canImport(Glibc)
import Glibc
#endif

/// What an engine needs to start one domain.
public struct EngineLaunch: Sendable {
    public var domid: Int
    public var name: String
    public var uuid: String
    public var config: DomainConfiguration
    /// The kernel command line (`DomainConfiguration.kernelCommandLine`).
    public var commandLine: String
    /// Control socket path, stop-status file path, console log, engine's own stderr log.
    public var controlPath: String
    public var statusFile: String
    public var consoleLog: String
    public var engineLog: String
    /// The console ring the engine puts the guest's serial console on (ring memfd,
    /// outEvent, inEvent; see ConsoleBackend.ConsoleRingChannel), nil for none.
    public var consoleFDs: [Int32]? = nil
    /// vhost-user-blk sockets (one blkback each), in the order of the config's disks.
    public var blockSockets: [String] = []
    /// vhost-user-net sockets (one netback each), in the order of the config's vifs; the
    /// MAC is in netback's config space (and on QEMU's device line from the config).
    public var netSockets: [String] = []
    /// Per vif, xend's tap descriptor when the engine emulates the NIC on the tap itself
    /// (qemu: rtl8139, ne2k_pci, …; the socket is "" then), nil for a netback vif.
    public var netTapFDs: [Int32?] = []
    /// qemu engine: blkback's vhost-user socket per disk it serves, by vdev (the other
    /// disks stay QEMU's own drives).
    public var diskSockets: [String: String] = [:]
    /// qemu engine: QEMU's end of the serial socketpair whose other end xenconsoled serves
    /// (`ConsoleSupervisor.createStream`); nil puts the serial line in `consoleLog`.
    public var serialFD: Int32? = nil
    /// Start as the target of a restore: the engine waits for the guest's state
    /// (``DomainEngineDriver/restoreState(_:from:onProgress:)``) instead of booting it,
    /// and keeps the guest stopped until ``DomainEngineDriver/unpause(_:)``.
    public var incoming: Bool = false
}

/// A running engine process, as the registry keeps it (enough to re-adopt it).
public struct EngineProcess: Codable, Sendable, Equatable {
    public var pid: Int32
    /// Field 22 of /proc/PID/stat (start time in clock ticks): tells a reused pid apart.
    public var startTicks: UInt64
    public var controlPath: String
    public var statusFile: String
    /// Size of the engine's stderr log when this process started: its own lines follow
    /// (nil in records of older xends, and for the core).
    public var logOffset: Int? = nil

    /// Whether this process has ended (its pid gone, a zombie, or reused by another).
    var hasExited: Bool { ProcessInfo2.startTicks(pid) != startTicks }
}

/// Why an engine process ended (the core's status file / exit status).
public enum EngineStop: Sendable, Equatable {
    case poweroff
    case reboot(String)
    case crash(String)
    case destroyed
}

/// A live domain's run state and CPU use.
public struct EngineStatus: Sendable, Equatable {
    public var paused: Bool
    /// Total vCPU time in nanoseconds.
    public var cpuTimeNs: UInt64
}

/// Errors engines raise; `message` is shown to the user as is.
public struct EngineError: Error, Sendable, CustomStringConvertible {
    public var message: String
    /// Whether the request was at fault (a missing file, a port in use: 400) rather than
    /// the engine (500).
    public var isBadRequest = false
    public init(_ m: String, badRequest: Bool = false) { message = m; isBadRequest = badRequest }
    public var description: String { message }
}

/// What an engine can do beyond starting, pausing and stopping a domain. xend checks these
/// instead of asking which engine a domain runs on.
public struct EngineCapabilities: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// `xm mem-set`: a balloon device in the guest (``DomainEngineDriver/setMemoryTarget(_:mib:)``).
    public static let balloon = EngineCapabilities(rawValue: 1 << 0)
    /// `xm network-attach`/`-detach` on a running domain (``DomainEngineDriver/attachNet(_:devid:socket:mac:)``).
    public static let netHotplug = EngineCapabilities(rawValue: 1 << 1)
    /// `xm block-attach`/`-detach` on a running domain (``DomainEngineDriver/attachBlock(_:vdev:socket:)``).
    public static let blockHotplug = EngineCapabilities(rawValue: 1 << 2)
    /// `xm save`/`restore`: the engine writes and reads its state stream.
    public static let save = EngineCapabilities(rawValue: 1 << 3)
    /// `xm migrate --live`: pre-copy with dirty logging.
    public static let liveMigrate = EngineCapabilities(rawValue: 1 << 4)
    /// `xm vcpu-set`: vCPUs added and removed at run time.
    public static let vcpuHotplug = EngineCapabilities(rawValue: 1 << 5)
    /// `xm sysrq`: a magic SysRq key reaches the guest's kernel (``DomainEngineDriver/sendSysrq(_:key:)``).
    public static let sysrq = EngineCapabilities(rawValue: 1 << 6)
    /// `xm dump-core`: the engine writes the guest's RAM as an ELF core (``DomainEngineDriver/dumpCore(_:into:)``).
    public static let dumpCore = EngineCapabilities(rawValue: 1 << 7)
    /// `pci = [...]`: the engine gives the guest host PCI functions bound to vfio-pci.
    public static let pciPassthrough = EngineCapabilities(rawValue: 1 << 8)
    /// `xm pci-attach`/`pci-detach` on a running domain (``DomainEngineDriver/attachPci(_:address:guestSlot:memlockBytes:)``).
    public static let pciHotplug = EngineCapabilities(rawValue: 1 << 9)
}

/// How an engine takes a domain's console.
public enum ConsoleAttachment: String, Sendable, Codable {
    /// A console ring (ConsoleBackend.ConsoleRingChannel) the engine's UART writes into.
    case ring
    /// A byte stream (one end of a socketpair) on the engine's serial line.
    case stream
}

/// What xend must make for one domain before its engine starts, decided by the engine from
/// the domain's configuration (DESIGN.md "Two engines, one toolstack").
public struct DevicePlan: Sendable {
    /// The disks blkback serves over vhost-user, in configuration order; every other disk
    /// of the configuration is the engine's own (an emulated controller, a CD-ROM).
    public var servedDisks: [DiskSpec]
    /// Request queues per served disk (1...64).
    public var diskQueues: Int
    /// Indices into the configuration's vifs whose NIC the engine emulates on the tap itself
    /// (no netback: vhost-user serves virtio only).
    public var emulatedVifs: Set<Int>
    /// Owner given to the back-ends' socket files (mode 0600: only that engine process
    /// connects, and reconnects after dropping privileges); nil keeps them root's. With a
    /// uid of its own per domain (xend-config `qemu-uid-base`), one domain's engine cannot
    /// reach another domain's back-ends.
    public var socketOwner: (uid: uid_t, gid: gid_t)?
    /// How the console reaches xenconsoled.
    public var console: ConsoleAttachment

    public init(servedDisks: [DiskSpec], diskQueues: Int, emulatedVifs: Set<Int> = [],
                socketOwner: (uid: uid_t, gid: gid_t)? = nil, console: ConsoleAttachment) {
        self.servedDisks = servedDisks; self.diskQueues = max(1, min(diskQueues, 64)); self.emulatedVifs = emulatedVifs
        self.socketOwner = socketOwner; self.console = console
    }
}

/// One engine: starts domain processes and drives them. Implementations must be
/// thread-safe; every call may block briefly (a control-socket round trip). Callers never
/// ask which engine they hold: what differs is in ``devicePlan(for:domid:)`` and ``capabilities``.
public protocol DomainEngineDriver: Sendable {
    /// `core` or `qemu`: the name domain records and `xm list -l` carry.
    var name: String { get }
    /// What the engine can do besides the lifecycle (default: nothing more).
    var capabilities: EngineCapabilities { get }
    /// The devices xend makes for domain `domid` with configuration `config` (default:
    /// blkback serves every disk with one queue per vCPU, the console is a ring, sockets
    /// stay root's). The plan may depend on the domid (the engine's per-domain uid).
    func devicePlan(for config: DomainConfiguration, domid: Int) -> DevicePlan
    /// Starts the domain running (detached: own session and process group).
    /// - Throws: `EngineError` with the engine's own message when it fails to start;
    ///   nothing is left behind then.
    func start(_ launch: EngineLaunch) throws -> EngineProcess
    func pause(_ p: EngineProcess) throws
    func unpause(_ p: EngineProcess) throws
    /// Asks the guest to power off (ACPI power button).
    func requestShutdown(_ p: EngineProcess) throws
    func reboot(_ p: EngineProcess) throws
    /// Stops the domain at once.
    func destroy(_ p: EngineProcess) throws
    func query(_ p: EngineProcess) throws -> EngineStatus
    /// True when `p` is still the process xend started and answers its control socket.
    func adopt(_ p: EngineProcess) -> Bool
    /// Why `p` stopped, after it exited (`waitStatus` is the wait(2) status when xend
    /// was its parent).
    func stopReason(_ p: EngineProcess, waitStatus: Int32?) -> EngineStop
    /// Sets the guest's memory target (`xm mem-set`): the balloon driver in the guest gives
    /// back or takes up RAM until it has `mib` MiB.
    /// - Throws: `EngineError` when the engine has no balloon device (the default).
    func setMemoryTarget(_ p: EngineProcess, mib: Int) throws
    /// Adds a virtio-net device with `mac` served at `socket`, id derived from `devid`.
    /// - Returns: the hot-plug slot it went into (kept as the vif's `hotplugPort`, so a
    ///   restart, restore or migration puts it back there), nil when the engine cannot.
    /// - Throws: `EngineError` when the engine cannot hot-plug NICs (the default).
    func attachNet(_ p: EngineProcess, devid: Int, socket: String, mac: String) throws -> String?
    /// Removes the device `attachNet` added.
    func detachNet(_ p: EngineProcess, devid: Int) throws
    /// Adds a virtio-blk device named `vdev` (its QEMU id) served by blkback at `socket`
    /// (`xm block-attach`).
    /// - Throws: `EngineError` when the engine cannot hot-plug disks (the default), no
    ///   hot-plug slot is free or the engine refused; nothing is left added then.
    /// - Returns: the hot-plug slot it went into (see `attachNet`), nil when the engine cannot.
    func attachBlock(_ p: EngineProcess, vdev: String, socket: String) throws -> String?
    /// Removes disk `vdev` from the guest and waits until the guest released it
    /// (`xm block-detach`); `force` does not wait for the guest.
    /// - Throws: `EngineError` when the engine cannot hot-unplug it or the guest did not
    ///   release it in time.
    func detachBlock(_ p: EngineProcess, vdev: String, force: Bool) throws
    /// Gives the running guest host function `address` (bound to vfio-pci, its group node
    /// the engine's), at guest device number `guestSlot` when asked (`xm pci-attach`).
    /// - Parameter memlockBytes: the engine process's RLIMIT_MEMLOCK needed to pin guest RAM.
    /// - Returns: the hot-plug slot it went into (see `attachNet`), nil when the engine picked it.
    /// - Throws: `EngineError` when the engine cannot hot-plug PCI devices (the default), no
    ///   slot is free, the slot asked for cannot be had, or the engine refused; nothing is
    ///   left added then.
    func attachPci(_ p: EngineProcess, address: PciAddress, guestSlot: Int?, memlockBytes: UInt64) throws -> String?
    /// Removes host function `address` from the guest and waits up to `timeout` seconds
    /// until the guest released it and the engine closed it (`xm pci-detach`).
    /// - Throws: `EngineError` when the engine cannot hot-unplug it (a device on a bus
    ///   without hot-plug) or the guest did not release it in time (the device stays then).
    func detachPci(_ p: EngineProcess, address: PciAddress, timeout: Double) throws
    /// The address of the domain's graphical console (`127.0.0.1:1`), nil without one.
    func displayAddress(_ p: EngineProcess) -> String?
    /// Paths the running engine process holds open (control socket, pid file), for the
    /// clean-up of a domain whose creation xend did not finish.
    func runFiles(controlPath: String) -> [String]
    /// `xm save`: writes the domain's whole state as the engine's state stream into `fd`
    /// (the write end of a pipe; the caller keeps and closes its copy), with the vCPUs
    /// stopped (Xen 3.0 saves are not live). On success the engine has closed its copy
    /// and the guest stays stopped: the caller destroys it or resumes it with
    /// ``unpause(_:)``. `onProgress` gets the engine's bytes so far (about every 100 ms).
    /// - Returns: whether the guest was running before the save.
    /// - Throws: `EngineError` when the engine cannot save (the default) or the save
    ///   failed; the guest is then running again (if it was) and nothing else changed.
    func saveState(_ p: EngineProcess, into fd: Int32, onProgress: @escaping (UInt64) -> Void) throws -> Bool
    /// `xm restore`: loads the guest's state stream from `fd` (the read end of a pipe)
    /// into an engine started with ``EngineLaunch/incoming``; returns once all of it is in.
    /// The guest stays stopped until ``unpause(_:)``.
    /// - Throws: `EngineError` when the engine cannot restore (the default) or refused the
    ///   stream; the caller then destroys the domain.
    func restoreState(_ p: EngineProcess, from fd: Int32, onProgress: @escaping (UInt64) -> Void) throws
    /// `xm migrate --live`: writes the domain's state stream into `fd` (the write end of a
    /// pipe; the caller keeps and closes its copy) while the guest runs, pre-copying memory
    /// over the engine's dirty log. Pre-copy is bounded as Xen 3.0's: after `maxRounds`
    /// passes over memory or `maxBytes` bytes sent (Xen: 29 rounds, 3× the guest's memory),
    /// the guest is stopped and the rest copied; before that the engine stops the guest as
    /// soon as what is left fits in `downtimeLimitMs` milliseconds. Incoming migrations use
    /// ``restoreState(_:from:onProgress:)``.
    ///
    /// On success the engine has closed its copy of `fd` and the guest is stopped: the
    /// caller destroys it once the target runs it, or resumes it with ``unpause(_:)``.
    /// - Parameter onProgress: the engine's bytes so far (about every 100 ms).
    /// - Returns: passes over memory made (`rounds`) and the time the guest was stopped,
    ///   as the engine measured it (`downtimeMs`, milliseconds).
    /// - Throws: `EngineError` when the engine cannot migrate live (the default) or the
    ///   migration failed; the guest is then running again (if it was) and nothing changed.
    func sendLive(_ p: EngineProcess, into fd: Int32, maxRounds: Int, maxBytes: UInt64, downtimeLimitMs: Int, onProgress: @escaping (UInt64) -> Void) throws -> (rounds: Int, downtimeMs: Int)
    /// `xm sysrq`: the magic SysRq `key` (one printable ASCII character) reaches the guest's
    /// kernel. Defaults in DomainCommands.swift.
    /// - Throws: `EngineError` when the engine cannot send it (the default).
    func sendSysrq(_ p: EngineProcess, key: Character) throws
    /// `xm dump-core`: writes the guest's RAM as an ELF core file (one `PT_LOAD` per RAM
    /// range, guest-physical addresses in `p_paddr`) into `fd`, a regular file opened for
    /// writing by the caller (who keeps and closes it). The guest is stopped while it is
    /// written and runs on afterwards if it was running.
    /// - Throws: `EngineError` when the engine cannot (the default) or the dump failed.
    func dumpCore(_ p: EngineProcess, into fd: Int32) throws
    /// The Linux thread ids of the domain's online vCPUs, by vCPU index (`xm vcpu-list`,
    /// `xm vcpu-pin`: xend sets those threads' affinity).
    /// - Throws: `EngineError` when the engine cannot tell (the default).
    func vcpuThreads(_ p: EngineProcess) throws -> [Int: Int32]
    /// `xm vcpu-set`: plugs in or unplugs vCPUs so that vCPUs 0..<count are online, at most
    /// `config`'s `maxvcpus` (the caller checked 1...max).
    /// - Throws: `EngineError` when the engine cannot hot-plug vCPUs (the default) or the
    ///   guest refused; nothing changed then.
    func setVcpuCount(_ p: EngineProcess, count: Int, config: DomainConfiguration) throws
    /// The processes whose CPU time is the domain's: the ones xend puts in the domain's CPU
    /// controller group for `cpu_weight`/`cpu_cap` (default: the engine process itself).
    func cpuProcesses(_ p: EngineProcess) -> [Int32]
    /// Why the domain's state cannot be saved or migrated now, in a sentence that follows
    /// "Cannot save domain NAME: " (nil: it can). Asked before `xm save` or `xm migrate`
    /// touches the domain. Default: nil.
    func stateTransferRefusal(_ p: EngineProcess) -> String?
}

extension DomainEngineDriver {
    public var capabilities: EngineCapabilities { [] }
    public func devicePlan(for config: DomainConfiguration, domid: Int) -> DevicePlan {
        DevicePlan(servedDisks: config.disks, diskQueues: config.vcpus, console: .ring)
    }
    public func setMemoryTarget(_ p: EngineProcess, mib: Int) throws {
        throw EngineError("the \(name) engine has no balloon device: a domain's memory is set when it is created")
    }
    public func attachNet(_ p: EngineProcess, devid: Int, socket: String, mac: String) throws -> String? {
        throw EngineError("the \(name) engine cannot hot-plug network devices")
    }
    public func detachNet(_ p: EngineProcess, devid: Int) throws {
        throw EngineError("the \(name) engine cannot hot-unplug network devices")
    }
    public func attachBlock(_ p: EngineProcess, vdev: String, socket: String) throws -> String? {
        throw EngineError("the \(name) engine cannot hot-plug block devices")
    }
    public func detachBlock(_ p: EngineProcess, vdev: String, force: Bool) throws {
        throw EngineError("the \(name) engine cannot hot-unplug block devices")
    }
    public func attachPci(_ p: EngineProcess, address: PciAddress, guestSlot: Int?, memlockBytes: UInt64) throws -> String? {
        throw EngineError("the \(name) engine cannot hot-plug PCI devices")
    }
    public func detachPci(_ p: EngineProcess, address: PciAddress, timeout: Double) throws {
        throw EngineError("the \(name) engine cannot hot-unplug PCI devices")
    }
    public func displayAddress(_ p: EngineProcess) -> String? { nil }
    public func runFiles(controlPath: String) -> [String] { [controlPath] }
    public func saveState(_ p: EngineProcess, into fd: Int32, onProgress: @escaping (UInt64) -> Void) throws -> Bool {
        throw EngineError("the \(name) engine cannot save a domain's state")
    }
    public func restoreState(_ p: EngineProcess, from fd: Int32, onProgress: @escaping (UInt64) -> Void) throws {
        throw EngineError("the \(name) engine cannot restore a domain's state")
    }
    public func sendLive(_ p: EngineProcess, into fd: Int32, maxRounds: Int, maxBytes: UInt64, downtimeLimitMs: Int, onProgress: @escaping (UInt64) -> Void) throws -> (rounds: Int, downtimeMs: Int) {
        throw EngineError("the \(name) engine cannot migrate a domain live")
    }
    public func vcpuThreads(_ p: EngineProcess) throws -> [Int: Int32] {
        throw EngineError("the \(name) engine does not report its vCPU threads")
    }
    public func setVcpuCount(_ p: EngineProcess, count: Int, config: DomainConfiguration) throws {
        throw EngineError("the \(name) engine cannot hot-plug vCPUs: a domain's vCPUs are set when it is created")
    }
    public func cpuProcesses(_ p: EngineProcess) -> [Int32] { [p.pid] }
    public func stateTransferRefusal(_ p: EngineProcess) -> String? { nil }
}

extension EngineError {
    /// Checks a file an engine boots from (kernel, ramdisk, CD-ROM image): it must exist, be
    /// readable and be a regular file (`/dev/zero` as a kernel would never finish loading).
    /// - Parameters:
    ///   - what: `Kernel image`, `Kernel ramdisk`, `CD-ROM image`, for the message.
    ///   - blockDeviceAllowed: a block device will do too (a CD-ROM drive, `/dev/sr0`).
    /// - Throws: `EngineError` (the request's fault) naming the file.
    static func checkBootFile(_ path: String, _ what: String, blockDeviceAllowed: Bool = false) throws {
        var st = stat()
        guard stat(path, &st) == 0, access(path, R_OK) == 0 else {
            throw EngineError("\(what) does not exist: \(path)", badRequest: true)
        }
        guard st.st_mode & S_IFMT == S_IFREG || (blockDeviceAllowed && st.st_mode & S_IFMT == S_IFBLK) else {
            throw EngineError("\(what) is not a regular file: \(path)", badRequest: true)
        }
    }
}

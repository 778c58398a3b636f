// The xm ↔ xend management API (HTTP/JSON, version 1): routes and wire types.
// services/xend-api.json (OpenAPI 3.0) documents it; XendTests checks the two agree.

/// One route of the API. `path` uses OpenAPI templating (`{domain}`).
public struct XendRoute: Sendable, Hashable {
    public var method: String
    public var path: String
    public init(_ method: String, _ path: String) { self.method = method; self.path = path }
}

/// The API's routes and constants.
public enum XendAPI {
    /// URL prefix of every route.
    public static let prefix = "/api/v1"
    /// Every route xend serves; the server registers exactly these.
    public static let routes: [XendRoute] = [
        XendRoute("GET", "/api/v1/info"),
        XendRoute("GET", "/api/v1/domains"),
        XendRoute("POST", "/api/v1/domains"),
        XendRoute("GET", "/api/v1/domains/{domain}"),
        XendRoute("POST", "/api/v1/domains/{domain}/pause"),
        XendRoute("POST", "/api/v1/domains/{domain}/unpause"),
        XendRoute("POST", "/api/v1/domains/{domain}/shutdown"),
        XendRoute("POST", "/api/v1/domains/{domain}/memory"),
        XendRoute("POST", "/api/v1/domains/{domain}/destroy"),
        XendRoute("POST", "/api/v1/domains/{domain}/save"),
        XendRoute("POST", "/api/v1/restore"),
        XendRoute("POST", "/api/v1/domains/{domain}/migrate"),
        XendRoute("GET", "/api/v1/transfers"),
        XendRoute("GET", "/api/v1/domains/{domain}/vifs"),
        XendRoute("POST", "/api/v1/domains/{domain}/vifs"),
        XendRoute("DELETE", "/api/v1/domains/{domain}/vifs/{devid}"),
        XendRoute("GET", "/api/v1/domains/{domain}/vcpus"),
        XendRoute("POST", "/api/v1/domains/{domain}/vcpus"),
        XendRoute("POST", "/api/v1/domains/{domain}/vcpus/pin"),
        XendRoute("GET", "/api/v1/domains/{domain}/sched-credit"),
        XendRoute("POST", "/api/v1/domains/{domain}/sched-credit"),
        XendRoute("GET", "/api/v1/domains/{domain}/vbds"),
        XendRoute("POST", "/api/v1/domains/{domain}/vbds"),
        XendRoute("DELETE", "/api/v1/domains/{domain}/vbds/{dev}"),
        XendRoute("GET", "/api/v1/domains/{domain}/pci"),
        XendRoute("POST", "/api/v1/domains/{domain}/pci"),
        XendRoute("DELETE", "/api/v1/domains/{domain}/pci/{bdf}"),
        XendRoute("GET", "/api/v1/pci/assignable"),
        XendRoute("GET", "/api/v1/dmesg"),
        XendRoute("POST", "/api/v1/dmesg/clear"),
        XendRoute("GET", "/api/v1/log"),
        XendRoute("GET", "/api/v1/vnets"),
        XendRoute("POST", "/api/v1/vnets"),
        XendRoute("GET", "/api/v1/vnets/{id}"),
        XendRoute("DELETE", "/api/v1/vnets/{id}"),
        XendRoute("POST", "/api/v1/domains/{domain}/rename"),
        XendRoute("POST", "/api/v1/domains/{domain}/sysrq"),
        XendRoute("POST", "/api/v1/domains/{domain}/dump-core"),
        XendRoute("POST", "/api/v1/domains/{domain}/reset"),
        XendRoute("GET", "/api/v1/stats"),
        XendRoute("GET", "/metrics"),
    ]
}

/// A domain as `xm list` and the API show it (JSON keys are snake_case).
public struct DomainInfo: Codable, Sendable, Equatable {
    /// Domain id; 0 is Domain-0 (the host).
    public var domid: Int
    public var name: String
    public var uuid: String
    /// Current memory in MiB.
    public var memory: Int
    /// Maximum memory in MiB.
    public var maxmem: Int
    public var vcpus: Int
    public var onlineVcpus: Int
    /// Xen's six state letters `rbpscd` with `-` for each one off (e.g. `r-----`, `--p---`).
    public var state: String
    /// Total vCPU time in seconds.
    public var cpuTime: Double
    /// Start time, seconds since the Unix epoch.
    public var startTime: Double
    /// How many times xend restarted this domain (on_reboot/on_crash = restart).
    public var restartCount: Int
    /// `core` or `qemu`; empty for Domain-0.
    public var engine: String
    /// Process id of the engine process; nil for Domain-0 and stopped domains.
    public var pid: Int?
    /// The console log file (until xenconsoled serves consoles).
    public var consoleLog: String?
    /// The domain's configuration as SXP text (`xm list -l`); only when asked (`?long=1`).
    public var sxp: String?
    /// VNC server of a qemu-engine domain, `HOST:DISPLAY` (TCP port 5900 + DISPLAY); nil without one.
    public var vnc: String?
    /// Devices whose back-end xend gave up on (it kept dying): `vbd 51728 (xvdb)`, `vif 0`;
    /// nil when there are none. Xen has no state letter for this: `xm list` names them in a
    /// note on stderr, and block-list/network-list show them Closed (6).
    public var brokenDevices: [String]? = nil

    public init(domid: Int, name: String, uuid: String, memory: Int, maxmem: Int, vcpus: Int, onlineVcpus: Int,
                state: String, cpuTime: Double, startTime: Double, restartCount: Int, engine: String,
                pid: Int? = nil, consoleLog: String? = nil, sxp: String? = nil, vnc: String? = nil) {
        self.domid = domid; self.name = name; self.uuid = uuid; self.memory = memory; self.maxmem = maxmem
        self.vcpus = vcpus; self.onlineVcpus = onlineVcpus; self.state = state; self.cpuTime = cpuTime
        self.startTime = startTime; self.restartCount = restartCount; self.engine = engine; self.pid = pid
        self.consoleLog = consoleLog; self.sxp = sxp; self.vnc = vnc
    }
}

/// `GET /api/v1/domains` reply.
public struct DomainList: Codable, Sendable, Equatable {
    /// Domain-0 first, then by domid.
    public var domains: [DomainInfo]
    public init(domains: [DomainInfo]) { self.domains = domains }
}

/// `POST /api/v1/domains` body: the domain configuration as SXP text (what `xm create -n`
/// prints), paths already absolute.
public struct CreateRequest: Codable, Sendable, Equatable {
    public var config: String
    /// Leave the domain paused (`xm create -p`).
    public var paused: Bool
    public init(config: String, paused: Bool = false) { self.config = config; self.paused = paused }
}

/// `POST /api/v1/domains/{domain}/shutdown` body.
public struct ShutdownRequest: Codable, Sendable, Equatable {
    /// `poweroff`, `halt` or `reboot`.
    public var mode: String
    public init(mode: String) { self.mode = mode }
}

/// `POST /api/v1/domains/{domain}/memory` body (`xm mem-set`, `xm mem-max`): one of the two.
public struct MemoryRequest: Codable, Sendable, Equatable {
    /// New memory target (balloon), MiB.
    public var target: Int?
    /// New maximum memory, MiB.
    public var max: Int?
    public init(target: Int? = nil, max: Int? = nil) { self.target = target; self.max = max }
}

/// `POST /api/v1/domains/{domain}/save` body (`xm save`). The reply is the domain's
/// `DomainInfo` as it was before the save.
public struct SaveRequest: Codable, Sendable, Equatable {
    /// Absolute path of the save file to write (replaced only once the save succeeded).
    public var file: String
    /// Leave the domain running after the save (`xm save -c`, a checkpoint).
    public var checkpoint: Bool
    public init(file: String, checkpoint: Bool = false) { self.file = file; self.checkpoint = checkpoint }
}

/// `POST /api/v1/restore` body (`xm restore`). The reply (201) is the restored domain's `DomainInfo`.
public struct RestoreRequest: Codable, Sendable, Equatable {
    /// Absolute path of the save file to read.
    public var file: String
    /// Leave the restored domain paused (`xm restore -p`).
    public var paused: Bool
    public init(file: String, paused: Bool = false) { self.file = file; self.paused = paused }
}

/// A save, restore or migration in progress (`GET /api/v1/transfers`).
public struct TransferInfo: Codable, Sendable, Equatable {
    /// `save`, `restore`, `migrate` (a domain leaving this host) or `receive` (one arriving).
    public var kind: String
    /// The save file's absolute path; for a migration a key naming it
    /// (`migrate:HOST:PORT:DOMID` on the source, `receive:PEER:...` on the target).
    public var file: String
    /// The domain's name (without the `migrating-` prefix `xm list` shows during a save).
    public var domain: String
    /// Its domid; nil for a restore whose domain does not exist yet.
    public var domid: Int?
    /// Bytes of the engine's state stream moved so far.
    public var bytes: UInt64
    /// The current rate, bytes per second.
    public var bytesPerSecond: UInt64
    /// When it started, seconds since the Unix epoch.
    public var startTime: Double
    public init(kind: String, file: String, domain: String, domid: Int?, bytes: UInt64, bytesPerSecond: UInt64, startTime: Double) {
        self.kind = kind; self.file = file; self.domain = domain; self.domid = domid
        self.bytes = bytes; self.bytesPerSecond = bytesPerSecond; self.startTime = startTime
    }
}

/// `GET /api/v1/transfers` reply.
public struct TransferList: Codable, Sendable, Equatable {
    /// Oldest first.
    public var transfers: [TransferInfo]
    public init(transfers: [TransferInfo]) { self.transfers = transfers }
}

/// `GET /api/v1/info` reply: `xm info`'s ordered key/value pairs.
public struct HostInfo: Codable, Sendable, Equatable {
    public var entries: [HostInfoEntry]
    public init(entries: [HostInfoEntry]) { self.entries = entries }
}

public struct HostInfoEntry: Codable, Sendable, Equatable {
    public var key: String
    public var value: String
    public init(_ key: String, _ value: String) { self.key = key; self.value = value }
}

/// A domain's virtual network interface (`xm network-list`; Xen 3.x getDeviceSxprs 'vif').
public struct VifInfo: Codable, Sendable, Equatable {
    /// Device id (`Idx`), the same as `handle`.
    public var idx: Int
    /// Backend domain id (0: the host).
    public var backendId: Int
    /// Guest MAC, `xx:xx:xx:xx:xx:xx`.
    public var mac: String
    public var handle: Int
    /// Backend xenbus state (4 = Connected, 6 = Closed).
    public var state: Int
    /// Xen's event channel and ring grant references: -1 here (virtqueues over vhost-user).
    public var eventChannel: Int
    public var txRingRef: Int
    public var rxRingRef: Int
    /// Backend xenstore directory (`/local/domain/0/backend/vif/DOMID/DEVID`).
    public var bePath: String
    /// Host-side interface (`vifDOMID.DEVID`).
    public var vifname: String
    public var bridge: String?
    public var ip: String?
    public var script: String
    public var rate: String?
    /// netback's vhost-user socket and pid (nil when none runs).
    public var socket: String
    public var pid: Int?
    /// netback kept dying and was given up.
    public var broken: Bool

    public init(idx: Int, backendId: Int, mac: String, handle: Int, state: Int, eventChannel: Int = -1, txRingRef: Int = -1,
                rxRingRef: Int = -1, bePath: String, vifname: String, bridge: String?, ip: String?, script: String,
                rate: String?, socket: String, pid: Int?, broken: Bool) {
        self.idx = idx; self.backendId = backendId; self.mac = mac; self.handle = handle; self.state = state
        self.eventChannel = eventChannel; self.txRingRef = txRingRef; self.rxRingRef = rxRingRef; self.bePath = bePath
        self.vifname = vifname; self.bridge = bridge; self.ip = ip; self.script = script; self.rate = rate
        self.socket = socket; self.pid = pid; self.broken = broken
    }
}

/// `GET /api/v1/domains/{domain}/vifs` and `DELETE .../vifs/{devid}` reply.
public struct VifList: Codable, Sendable, Equatable {
    /// By devid.
    public var vifs: [VifInfo]
    public init(vifs: [VifInfo]) { self.vifs = vifs }
}

/// `POST /api/v1/domains/{domain}/vifs` body (`xm network-attach`).
public struct NetworkAttachRequest: Codable, Sendable, Equatable {
    /// A vif spec as in a config's `vif = [...]` entry: `mac=..,bridge=..,ip=..,script=..,vifname=..,rate=..`.
    public var spec: String
    public init(spec: String) { self.spec = spec }
}

/// A domain's virtual block device (`xm block-list`; Xen 3.x getDeviceSxprs 'vbd').
public struct VbdInfo: Codable, Sendable, Equatable {
    /// Xen's virtual device number (`Vdev`: xvda = 51712, hda = 768, sda = 2048).
    public var vdev: Int
    /// The guest device name as configured (`xvdb`).
    public var dev: String
    /// Backend domain id (0: the host).
    public var backendId: Int
    /// Backend xenbus state (4 = Connected, 6 = Closed: a vbd whose blkback was given up).
    public var state: Int
    /// Xen's event channel and ring grant reference: -1 here (virtqueues over vhost-user).
    public var eventChannel: Int
    public var ringRef: Int
    /// Backend xenstore directory (`/local/domain/0/backend/vbd/DOMID/VDEV`).
    public var bePath: String
    /// Xen's `uname` (`file:/img`, `phy:/dev/x`) and mode (`r`, `w`, `w!`).
    public var uname: String
    public var mode: String
    /// `disk` or `cdrom`.
    public var deviceType: String
    /// blkback's vhost-user socket and pid; nil for a disk the engine emulates itself.
    public var socket: String?
    public var pid: Int?
    /// blkback kept dying and was given up: the guest's I/O to this disk fails.
    public var broken: Bool

    public init(vdev: Int, dev: String, backendId: Int = 0, state: Int, eventChannel: Int = -1, ringRef: Int = -1,
                bePath: String, uname: String, mode: String, deviceType: String, socket: String?, pid: Int?, broken: Bool) {
        self.vdev = vdev; self.dev = dev; self.backendId = backendId; self.state = state; self.eventChannel = eventChannel
        self.ringRef = ringRef; self.bePath = bePath; self.uname = uname; self.mode = mode; self.deviceType = deviceType
        self.socket = socket; self.pid = pid; self.broken = broken
    }
}

/// `GET /api/v1/domains/{domain}/vbds` and `DELETE .../vbds/{dev}` reply.
public struct VbdList: Codable, Sendable, Equatable {
    /// In configuration order (attached disks last).
    public var vbds: [VbdInfo]
    public init(vbds: [VbdInfo]) { self.vbds = vbds }
}

/// `POST /api/v1/domains/{domain}/vbds` body (`xm block-attach DOM BACKDEV FRONTDEV MODE`).
public struct BlockAttachRequest: Codable, Sendable, Equatable {
    /// `file:/img` or `phy:/dev/x` (Xen's uname).
    public var backdev: String
    /// The guest device name (`xvdb`, `hdb`, `sdb`).
    public var frontdev: String
    /// `r`, `w` or `w!`.
    public var mode: String
    public init(backdev: String, frontdev: String, mode: String) {
        self.backdev = backdev; self.frontdev = frontdev; self.mode = mode
    }
}

/// Text replies (`dmesg`, `log`).
public struct TextReply: Codable, Sendable, Equatable {
    public var text: String
    public init(text: String) { self.text = text }
}

/// Every non-2xx reply.
public struct APIErrorReply: Codable, Sendable, Equatable, Error {
    /// The message, in Xen's words where Xen had them (xm prints `Error: <error>`).
    public var error: String
    /// `no_such_domain` (404; `domain` names it), `bad_request` (400), `conflict` (409),
    /// `unavailable` (503), `internal` (500).
    public var kind: String
    public var domain: String?
    public init(error: String, kind: String, domain: String? = nil) {
        self.error = error; self.kind = kind; self.domain = domain
    }
}

/// `POST /api/v1/domains/{domain}/migrate` body (`xm migrate`).
public struct MigrateRequest: Codable, Sendable, Equatable {
    /// The target host: a name or an address its relocation server listens on.
    public var host: String
    /// The target's `xend-relocation-port` (Xen's default 8002).
    public var port: Int
    /// Pre-copy while the guest runs (`xm migrate -l`); otherwise it is stopped first.
    public var live: Bool
    /// Pace the connection to this many Mbit/s (`-r`, 1...1000000); nil for no pacing.
    public var resource: Int?
    public init(host: String, port: Int = 8002, live: Bool = false, resource: Int? = nil) {
        self.host = host; self.port = port; self.live = live; self.resource = resource
    }
}

/// The reply to a migration: the figures of the move (the domain no longer runs here).
public struct MigrateReply: Codable, Sendable, Equatable {
    public var domain: String
    public var host: String
    public var port: Int
    /// Bytes of the engine's state stream sent.
    public var bytes: UInt64
    /// Pre-copy passes over memory (1 for a stopped copy).
    public var rounds: Int
    /// Milliseconds the guest ran nowhere: stopped here until running on the target.
    public var downtimeMs: Int
    /// Seconds from the request to the target running the guest.
    public var seconds: Double
    public init(domain: String, host: String, port: Int, bytes: UInt64, rounds: Int, downtimeMs: Int, seconds: Double) {
        self.domain = domain; self.host = host; self.port = port; self.bytes = bytes; self.rounds = rounds
        self.downtimeMs = downtimeMs; self.seconds = seconds
    }
}

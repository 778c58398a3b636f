// A domain's standard xenstore entries (Xen docs/misc/xenstore-paths.pandoc) and the
// split-device handshake layout (frontend ~/device/TYPE/ID, backend
// /local/domain/BACKEND/backend/TYPE/DOMID/ID, each with a XenbusState `state` node).

/// Device connection states of the xenbus handshake (`enum xenbus_state`,
/// xen/include/public/io/xenbus.h). The decimal number is what `state` nodes hold.
public enum XenbusState: Int, Sendable, CaseIterable, CustomStringConvertible {
    case unknown = 0
    case initialising = 1
    /// Backend: waiting for information from the frontend / hotplug before connecting.
    case initWait = 2
    /// Ring and event channel published, waiting for the peer.
    case initialised = 3
    case connected = 4
    /// The device is being closed.
    case closing = 5
    case closed = 6
    case reconfiguring = 7
    case reconfigured = 8

    /// Parses a `state` node's value (decimal); nil for anything else.
    public init?(value: String) {
        guard let n = Int(value) else { return nil }
        self.init(rawValue: n)
    }

    /// The decimal text written to `state` nodes.
    public var value: String { String(rawValue) }

    public var description: String {
        switch self {
        case .unknown: return "Unknown"
        case .initialising: return "Initialising"
        case .initWait: return "InitWait"
        case .initialised: return "Initialised"
        case .connected: return "Connected"
        case .closing: return "Closing"
        case .closed: return "Closed"
        case .reconfiguring: return "Reconfiguring"
        case .reconfigured: return "Reconfigured"
        }
    }
}

/// One node to write: path, value and (optionally) the permission list to set on it.
public struct XenStoreEntry: Sendable, Equatable {
    public var path: String
    public var value: String
    /// Set after writing; nil keeps the inherited permissions.
    public var permissions: [XenStorePermission]?
    public init(_ path: String, _ value: String, permissions: [XenStorePermission]? = nil) {
        self.path = path
        self.value = value
        self.permissions = permissions
    }
}

/// Standard paths (xenstore-paths.pandoc).
public enum XenStoreLayout {
    /// `/local/domain/<domid>`.
    public static func home(_ domid: UInt32) -> String { XenStorePath.home(domid) }
    /// `/vm/<uuid>`.
    public static func vm(_ uuid: String) -> String { "/vm/" + uuid }
    /// Frontend directory: `/local/domain/<domid>/device/<type>/<devid>`.
    public static func frontend(domid: UInt32, type: String, devid: Int) -> String {
        "\(home(domid))/device/\(type)/\(devid)"
    }
    /// Backend directory: `/local/domain/<backend>/backend/<type>/<domid>/<devid>`.
    public static func backend(backendDomid: UInt32 = 0, type: String, domid: UInt32, devid: Int) -> String {
        "\(home(backendDomid))/backend/\(type)/\(domid)/\(devid)"
    }

    /// Xen's virtual-device number of a disk name (`xvda` → 51712, `hda` → 768, `sdb` →
    /// 2064, `xvdq`+ → extended 1<<28 form); nil if the name is not a disk name.
    public static func virtualDeviceNumber(_ name: String) -> Int? {
        func index(_ letters: Substring) -> Int? {
            guard !letters.isEmpty, letters.count <= 2, letters.allSatisfy({ $0 >= "a" && $0 <= "z" }) else { return nil }
            var v = 0
            for c in letters.unicodeScalars { v = v * 26 + Int(c.value - 97) + 1 }
            return v - 1
        }
        // Optional partition number after the letters.
        func split(_ s: Substring) -> (Substring, Int)? {
            let letters = s.prefix { $0 >= "a" && $0 <= "z" }
            let digits = s.dropFirst(letters.count)
            if digits.isEmpty { return (letters, 0) }
            guard digits.allSatisfy({ $0.isASCII && $0.isNumber }), let p = Int(digits) else { return nil }
            return (letters, p)
        }
        if name.hasPrefix("xvd"), let (l, p) = split(name.dropFirst(3)), let d = index(l) {
            if d < 16 && p < 16 { return (202 << 8) | (d << 4) | p }
            guard p < 256 else { return nil }
            return (1 << 28) | (d << 8) | p
        }
        if name.hasPrefix("hd"), let (l, p) = split(name.dropFirst(2)), let d = index(l), d < 4, p < 64 {
            let majors = [3, 3, 22, 22]
            return (majors[d] << 8) | ((d % 2) << 6) | p
        }
        if name.hasPrefix("sd"), let (l, p) = split(name.dropFirst(2)), let d = index(l), d < 16, p < 16 {
            return (8 << 8) | (d << 4) | p
        }
        return nil
    }
}

/// A domain's home entries (xenstore-paths.pandoc "General Paths").
public struct XenStoreDomainInfo: Sendable, Equatable {
    public var domid: UInt32
    public var name: String
    /// The domain's UUID, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`; `~/vm` points at `/vm/<uuid>`.
    public var uuid: String
    /// Balloon target in KiB (`~/memory/target`).
    public var memoryTargetKiB: UInt64
    /// `~/memory/static-max` in KiB; defaults to the target.
    public var memoryStaticMaxKiB: UInt64?
    /// Number of vCPUs (`~/cpu/0..N-1/availability`).
    public var vcpus: Int
    /// vCPUs online at boot (the first `vcpusOnline` are "online"); default all.
    public var vcpusOnline: Int?
    /// Console: the console ring's event channel (`~/console/port`) and ring reference,
    /// and the pty path `xenconsoled` writes to `~/console/tty`.
    public var consolePort: UInt32?
    public var consoleRingRef: UInt64?
    /// Extra `/vm/<uuid>` entries (e.g. `on_poweroff`, `image`), relative names.
    public var vmExtra: [String: String]

    public init(domid: UInt32, name: String, uuid: String, memoryTargetKiB: UInt64, memoryStaticMaxKiB: UInt64? = nil,
                vcpus: Int = 1, vcpusOnline: Int? = nil, consolePort: UInt32? = nil, consoleRingRef: UInt64? = nil,
                vmExtra: [String: String] = [:]) {
        self.domid = domid
        self.name = name
        self.uuid = uuid
        self.memoryTargetKiB = memoryTargetKiB
        self.memoryStaticMaxKiB = memoryStaticMaxKiB
        self.vcpus = vcpus
        self.vcpusOnline = vcpusOnline
        self.consolePort = consolePort
        self.consoleRingRef = consoleRingRef
        self.vmExtra = vmExtra
    }

    /// The entries, in write order. Permissions follow xenstore-paths.pandoc: the home and
    /// everything in it (console included) are owned by dom0 and read-only for the domain;
    /// `device`, `control` and `data` are writable by it (owned by the domain, others none).
    public func entries() -> [XenStoreEntry] {
        let home = XenStoreLayout.home(domid)
        let ro = [XenStorePermission(domid: 0, access: .none), XenStorePermission(domid: domid, access: .read)]
        let rw = [XenStorePermission(domid: domid, access: .none)]
        let vmPath = XenStoreLayout.vm(uuid)
        var e: [XenStoreEntry] = [
            XenStoreEntry(vmPath, "", permissions: ro),
            XenStoreEntry(vmPath + "/uuid", uuid),
            XenStoreEntry(vmPath + "/name", name),
            XenStoreEntry(vmPath + "/memory", String(memoryTargetKiB / 1024)),
            XenStoreEntry(vmPath + "/vcpus", String(vcpus)),
            XenStoreEntry(vmPath + "/vcpu_avail", String((1 << min(vcpusOnline ?? vcpus, 62)) - 1)),
        ]
        for (k, v) in vmExtra.sorted(by: { $0.key < $1.key }) { e.append(XenStoreEntry(vmPath + "/" + k, v)) }
        e += [
            XenStoreEntry(home, "", permissions: ro),
            XenStoreEntry(home + "/name", name),
            XenStoreEntry(home + "/domid", String(domid)),
            XenStoreEntry(home + "/vm", vmPath),
            XenStoreEntry(home + "/memory/target", String(memoryTargetKiB)),
            XenStoreEntry(home + "/memory/static-max", String(memoryStaticMaxKiB ?? memoryTargetKiB)),
        ]
        let online = vcpusOnline ?? vcpus
        for k in 0..<max(vcpus, 0) {
            e.append(XenStoreEntry("\(home)/cpu/\(k)/availability", k < online ? "online" : "offline"))
        }
        e.append(XenStoreEntry(home + "/console", ""))
        e.append(XenStoreEntry(home + "/console/type", "xenconsoled"))
        e.append(XenStoreEntry(home + "/console/limit", "1048576"))
        if let consolePort { e.append(XenStoreEntry(home + "/console/port", String(consolePort))) }
        if let consoleRingRef { e.append(XenStoreEntry(home + "/console/ring-ref", String(consoleRingRef))) }
        for dir in ["device", "control", "data"] {
            e.append(XenStoreEntry("\(home)/\(dir)", "", permissions: rw))
        }
        e.append(XenStoreEntry(home + "/control/shutdown", ""))
        e.append(XenStoreEntry(home + "/device/suspend/event-channel", ""))
        return e
    }
}

/// A split device: a frontend in the guest's `~/device/<type>/<devid>` and a backend in
/// `/local/domain/<backend>/backend/<type>/<domid>/<devid>`, both starting `Initialising`.
public struct XenStoreDevice: Sendable, Equatable {
    /// `vbd` (block), `vif` (network), `console`, `vfb`, ...
    public var type: String
    public var domid: UInt32
    public var devid: Int
    public var backendDomid: UInt32
    /// Type-specific frontend entries beyond backend/backend-id/state.
    public var frontendEntries: [String: String]
    /// Type-specific backend entries beyond frontend/frontend-id/online/state.
    public var backendEntries: [String: String]

    public init(type: String, domid: UInt32, devid: Int, backendDomid: UInt32 = 0,
                frontendEntries: [String: String] = [:], backendEntries: [String: String] = [:]) {
        self.type = type
        self.domid = domid
        self.devid = devid
        self.backendDomid = backendDomid
        self.frontendEntries = frontendEntries
        self.backendEntries = backendEntries
    }

    public var frontendPath: String { XenStoreLayout.frontend(domid: domid, type: type, devid: devid) }
    public var backendPath: String { XenStoreLayout.backend(backendDomid: backendDomid, type: type, domid: domid, devid: devid) }

    /// A virtual block device (blkif.h): `dev` is the guest name (`xvda`); the devid is its
    /// virtual-device number. `params` is the image path or device, `mode` `r` or `w`.
    public static func vbd(domid: UInt32, dev: String, params: String, mode: String = "w", backendType: String = "file",
                           deviceType: String = "disk", backendDomid: UInt32 = 0) -> XenStoreDevice? {
        guard let devid = XenStoreLayout.virtualDeviceNumber(dev) else { return nil }
        return XenStoreDevice(type: "vbd", domid: domid, devid: devid, backendDomid: backendDomid,
                              frontendEntries: ["virtual-device": String(devid), "device-type": deviceType],
                              backendEntries: ["params": params, "mode": mode, "type": backendType, "dev": dev,
                                               "device-type": deviceType, "removable": deviceType == "cdrom" ? "1" : "0",
                                               "bootable": "1"])
    }

    /// A virtual network interface (netif.h): `mac` as `aa:bb:cc:dd:ee:ff`, `bridge` the
    /// host bridge the backend attaches to, `script` the hotplug script name.
    public static func vif(domid: UInt32, devid: Int, mac: String, bridge: String? = nil, script: String = "vif-bridge",
                           backendDomid: UInt32 = 0) -> XenStoreDevice {
        var be = ["mac": mac, "handle": String(devid), "script": script]
        if let bridge { be["bridge"] = bridge }
        return XenStoreDevice(type: "vif", domid: domid, devid: devid, backendDomid: backendDomid,
                              frontendEntries: ["mac": mac, "handle": String(devid)], backendEntries: be)
    }

    /// A domain's passed-through PCI devices (pciif.h; one device, devid 0, for all of them,
    /// as Xen's xend made it): backend `dev-N` = `DDDD:BB:SS.F` for each host function in
    /// order, `num_devs`, and `vdevfn-N` (`0x` + two hex digits, slot << 3 | function) for
    /// a device placed at a guest slot. `devices` pairs each address (already in
    /// `DDDD:BB:SS.F` form) with that slot or nil.
    public static func pci(domid: UInt32, devices: [(address: String, guestSlot: Int?)],
                           backendDomid: UInt32 = 0) -> XenStoreDevice {
        var be = ["num_devs": String(devices.count)]
        for (i, d) in devices.enumerated() {
            be["dev-\(i)"] = d.address
            if let s = d.guestSlot, let fn = d.address.split(separator: ".").last, let f = Int(fn, radix: 16) {
                let v = s << 3 | f
                be["vdevfn-\(i)"] = "0x" + (v < 16 ? "0" : "") + String(v, radix: 16)
            }
        }
        return XenStoreDevice(type: "pci", domid: domid, devid: 0, backendDomid: backendDomid, backendEntries: be)
    }

    /// Frontend and backend entries, both `state` = Initialising. The frontend directory is
    /// owned by the guest with read for the backend domain; the backend directory is owned
    /// by the backend domain with read for the guest (as xend creates them).
    public func entries() -> [XenStoreEntry] {
        let fe = frontendPath, be = backendPath
        var e: [XenStoreEntry] = [
            XenStoreEntry(fe, "", permissions: [XenStorePermission(domid: domid, access: .none),
                                                 XenStorePermission(domid: backendDomid, access: .read)]),
            XenStoreEntry(fe + "/backend", be),
            XenStoreEntry(fe + "/backend-id", String(backendDomid)),
            XenStoreEntry(fe + "/state", XenbusState.initialising.value),
        ]
        for (k, v) in frontendEntries.sorted(by: { $0.key < $1.key }) { e.append(XenStoreEntry(fe + "/" + k, v)) }
        e += [
            XenStoreEntry(be, "", permissions: [XenStorePermission(domid: backendDomid, access: .none),
                                                 XenStorePermission(domid: domid, access: .read)]),
            XenStoreEntry(be + "/frontend", fe),
            XenStoreEntry(be + "/frontend-id", String(domid)),
            XenStoreEntry(be + "/online", "1"),
            XenStoreEntry(be + "/state", XenbusState.initialising.value),
        ]
        for (k, v) in backendEntries.sorted(by: { $0.key < $1.key }) { e.append(XenStoreEntry(be + "/" + k, v)) }
        return e
    }
}

extension XenStoreClient {
    /// Writes `entries` (and their permissions) in one transaction, retrying on EAGAIN.
    public func write(_ entries: [XenStoreEntry]) throws {
        try transaction { (tx: XenStoreTransactionContext) throws -> Void in
            for e in entries {
                try tx.write(e.path, e.value)
                if let p = e.permissions { try tx.setPermissions(e.path, p) }
            }
        }
    }

    /// Writes a domain's home and `/vm/<uuid>` entries (`XenStoreDomainInfo.entries`).
    public func writeDomain(_ info: XenStoreDomainInfo) throws { try write(info.entries()) }

    /// Writes a device's frontend and backend directories (`XenStoreDevice.entries`).
    public func writeDevice(_ device: XenStoreDevice) throws { try write(device.entries()) }

    /// Removes a device's frontend and backend directories.
    public func removeDevice(_ device: XenStoreDevice) throws {
        try transaction { (tx: XenStoreTransactionContext) throws -> Void in
            try tx.rm(device.frontendPath)
            try tx.rm(device.backendPath)
        }
    }

    /// Removes everything of a domain: its home, its `/vm/<uuid>` (from `~/vm`), and its
    /// backend directories under `/local/domain/<backend>/backend/*/<domid>`.
    public func removeDomain(_ domid: UInt32, backendDomids: [UInt32] = [0]) throws {
        try transaction { (tx: XenStoreTransactionContext) throws -> Void in
            let home = XenStoreLayout.home(domid)
            if let vm = try tx.readIfPresent(home + "/vm"), vm.hasPrefix("/vm/") { try tx.rm(vm) }
            for b in backendDomids {
                let base = XenStoreLayout.home(b) + "/backend"
                var types: [String] = []
                do throws(XenStoreError) { types = try tx.directory(base) } catch { if error != .reply(.ENOENT) { throw error } }
                for t in types { try tx.rm("\(base)/\(t)/\(domid)") }
            }
            try tx.rm(home)
        }
    }

    /// Writes `<dir>/state` (the xenbus handshake).
    public func setState(_ dir: String, _ state: XenbusState, transaction: UInt32 = 0) throws(XenStoreError) {
        try write(dir + "/state", state.value, transaction: transaction)
    }

    /// Reads `<dir>/state`; `.unknown` when absent or not a number.
    public func state(_ dir: String, transaction: UInt32 = 0) throws(XenStoreError) -> XenbusState {
        guard let v = try readIfPresent(dir + "/state", transaction: transaction) else { return .unknown }
        return XenbusState(value: v) ?? .unknown
    }
}

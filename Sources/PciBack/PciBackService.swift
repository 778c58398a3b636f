// The long-running pciback of one domain (issue 18, item 2): its command line, the rule
// that a restarted pciback never resets a device under the running guest, the requests xend
// sends it on its socket, and the check of each device's binding it repeats while it runs.
// Foundation-free, like the service.
import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// pciback's command line (without `--ready-fd`, which `ServiceReadiness` takes).
public struct PciBackOptions: Sendable, Equatable {
    /// The two modes: one short reset run (the fallback when no pciback serves the domain),
    /// or serving one domain's devices for the domain's life.
    public enum Mode: Sendable, Equatable {
        /// `--reset BDF ...`: fd 3 the VFIO container, fd 4 the group.
        case reset
        /// `--domain ID --device BDF ... [--adopt]`: fd 3 the listener, and per device i
        /// fd 6+2i its sysfs directory (O_PATH) and fd 7+2i its `config`.
        case serve(domid: Int, adopt: Bool)
    }
    public var mode: Mode
    /// `DDDD:BB:SS.F`, in argument order.
    public var devices: [String]
    public var manifest: String?
    public var noSandbox: Bool

    /// The most devices one pciback serves (two descriptors each, under its `nofile` limit).
    public static let maxDevices = 16
    /// The first device descriptor of the serve mode (fds 3-5 are listener, spare, readiness).
    public static let firstDeviceFD: Int32 = 6

    /// The sysfs directory and config descriptors of device `i` in the serve mode.
    public static func deviceFDs(_ i: Int) -> (directory: Int32, config: Int32) {
        (firstDeviceFD + Int32(2 * i), firstDeviceFD + Int32(2 * i) + 1)
    }

    /// Whether `s` is a PCI address as xend writes it: `DDDD:BB:SS.F`, lower-case hex.
    public static func isAddress(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard u.count == 12, u[4] == 0x3A, u[7] == 0x3A, u[10] == 0x2E else { return false }
        return u.enumerated().allSatisfy { i, c in [4, 7, 10].contains(i) || (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) }
    }

    /// Parses `args` (argv without argv[0] and `--ready-fd`).
    /// - Throws: `PciBackUsage` naming the argument: an unknown flag, a missing value, a
    ///   malformed BDF or domid, a device named twice, `--adopt` or `--device` without
    ///   `--domain`, `--reset` mixed with `--domain`, no device, more than `maxDevices`.
    /// - Returns: nil for `--help`.
    public static func parse(_ args: [String]) throws(PciBackUsage) -> PciBackOptions? {
        var resets: [String] = [], devices: [String] = []
        var domid: Int?, adopt = false, manifest: String?, noSandbox = false
        var i = args.startIndex
        func value(_ flag: String) throws(PciBackUsage) -> String {
            i += 1
            guard i < args.endIndex else { throw PciBackUsage("\(flag) needs a value") }
            return args[i]
        }
        while i < args.endIndex {
            let a = args[i]
            switch a {
            case "--reset": resets.append(try value(a))
            case "--device": devices.append(try value(a))
            case "--domain":
                let v = try value(a)
                guard let n = Int(v), n > 0 else { throw PciBackUsage("--domain \(v): expected a domain id above 0") }
                domid = n
            case "--adopt": adopt = true
            case "--manifest": manifest = try value(a)
            case "--no-sandbox": noSandbox = true
            case "--help", "-h": return nil
            default: throw PciBackUsage("unknown argument \(a) (see --help)")
            }
            i += 1
        }
        for (flag, list) in [("--reset", resets), ("--device", devices)] {
            for d in list where !isAddress(d) { throw PciBackUsage("\(flag) \(d): expected a PCI address DDDD:BB:SS.F") }
            var seen = Set<String>()
            for d in list where !seen.insert(d).inserted { throw PciBackUsage("\(flag) \(d): named twice") }
        }
        let mode: Mode
        if let domid {
            guard resets.isEmpty else { throw PciBackUsage("--reset and --domain exclude each other") }
            guard !devices.isEmpty else { throw PciBackUsage("--domain \(domid): give --device BDF") }
            guard devices.count <= maxDevices else { throw PciBackUsage("at most \(maxDevices) devices per pciback") }
            mode = .serve(domid: domid, adopt: adopt)
        } else {
            if adopt { throw PciBackUsage("--adopt needs --domain") }
            if !devices.isEmpty { throw PciBackUsage("--device needs --domain") }
            guard !resets.isEmpty else { throw PciBackUsage("give --reset BDF, or --domain ID --device BDF (see --help)") }
            mode = .reset
        }
        return PciBackOptions(mode: mode, devices: domid == nil ? resets : devices, manifest: manifest, noSandbox: noSandbox)
    }
}

/// A command-line error; `message` names the argument.
public struct PciBackUsage: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// When a serving pciback may reset its devices. A pciback xend restarted (`--adopt`) was
/// started while the guest may be using the devices: it never resets one for assignment
/// (that would pull the device from under the running guest); only the release, which xend
/// asks for once the engine has ended and closed the group, resets. A function added while
/// it runs (`xm pci-attach`, the `add` request) is not yet the guest's: it may be reset for
/// assignment once, even by an adopted pciback; `drop` forgets a function (`xm pci-detach`).
public struct PciBackLifecycle: Sendable, Equatable {
    public enum Phase: String, Sendable {
        /// Before the engine starts: a clean device for the guest.
        case assign
        /// After the engine ended: a clean device for the host.
        case release
    }
    public let adopted: Bool
    /// The functions served, in the order they came (command line, then `add`).
    public private(set) var devices: [String]
    /// Devices this process reset for assignment.
    public private(set) var assigned: Set<String> = []
    /// Devices released (reset after the engine ended).
    public private(set) var released: Set<String> = []
    /// Devices added while running (not yet the guest's when they came).
    public private(set) var added: Set<String> = []

    public init(devices: [String], adopted: Bool) { self.devices = devices; self.adopted = adopted }

    /// Takes function `d` on (the `add` request).
    /// - Returns: nil when taken, else the refusal naming it (already served, or the
    ///   `PciBackOptions.maxDevices` limit reached).
    public mutating func add(_ d: String) -> String? {
        guard !devices.contains(d) else { return "PCI device \(d) is already one of this pciback's devices" }
        guard devices.count < PciBackOptions.maxDevices else {
            return "PCI device \(d): this pciback serves \(PciBackOptions.maxDevices) devices already"
        }
        devices.append(d)
        added.insert(d)
        return nil
    }

    /// Forgets function `d` (the `drop` request, after its release).
    /// - Returns: its index among `devices` before, nil when it was not one of them.
    public mutating func drop(_ d: String) -> Int? {
        guard let i = devices.firstIndex(of: d) else { return nil }
        devices.remove(at: i)
        assigned.remove(d); released.remove(d); added.remove(d)
        return i
    }

    /// Decides a reset request and records it when permitted.
    /// - Returns: nil when `members` may be reset in `phase`, else the refusal naming the device.
    public mutating func permit(_ phase: Phase, _ members: [String]) -> String? {
        guard !members.isEmpty else { return "no device named" }
        for m in members where !devices.contains(m) { return "PCI device \(m) is not one of this pciback's devices" }
        switch phase {
        case .assign:
            for m in members where adopted && !added.contains(m) {
                return "PCI device \(m): this pciback was restarted while its domain runs (--adopt); it does not reset a device under a running guest"
            }
            for m in members where assigned.contains(m) || released.contains(m) {
                return "PCI device \(m) was already reset for assignment"
            }
            assigned.formUnion(members)
        case .release:
            released.formUnion(members)
        }
        return nil
    }
}

/// One request on pciback's socket: a single line in one message.
///   `watch`                           the connection then receives `broken BDF REASON` lines
///   `reset assign|release BDF ...`    with the VFIO container and group (SCM_RIGHTS, in that order)
///   `status`                          one line: `ok BDF=ok|broken ...`
///   `add BDF`                         with the function's sysfs directory (O_PATH) and `config` (SCM_RIGHTS)
///   `drop BDF`                        the function is no longer served (its descriptors closed)
/// Each is answered with one line: `ok ...` or `failed: REASON`.
public enum PciBackRequest: Sendable, Equatable {
    case watch
    case status
    case reset(PciBackLifecycle.Phase, [String])
    /// `xm pci-attach` of a function to a domain whose pciback runs.
    case add(String)
    /// `xm pci-detach`, after the function's release.
    case drop(String)

    /// - Throws: `PciBackUsage` naming what is wrong with the line.
    public init(parsing line: String) throws(PciBackUsage) {
        let w = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        switch w.first {
        case "watch" where w.count == 1: self = .watch
        case "status" where w.count == 1: self = .status
        case "reset":
            guard w.count >= 3, let p = PciBackLifecycle.Phase(rawValue: w[1]) else {
                throw PciBackUsage("reset: expected `reset assign|release BDF ...`")
            }
            for d in w[2...] where !PciBackOptions.isAddress(d) { throw PciBackUsage("reset: \(d) is not a PCI address") }
            self = .reset(p, Array(w[2...]))
        case "add", "drop":
            guard w.count == 2, PciBackOptions.isAddress(w[1]) else {
                throw PciBackUsage("\(w[0]): expected `\(w[0]) BDF` with one PCI address DDDD:BB:SS.F")
            }
            self = w[0] == "add" ? .add(w[1]) : .drop(w[1])
        default:
            throw PciBackUsage("unknown request `\(line.prefix(40))`")
        }
    }

    /// The line xend sends (without the newline).
    public var line: String {
        switch self {
        case .watch: "watch"
        case .status: "status"
        case .reset(let p, let m): "reset \(p.rawValue) " + m.joined(separator: " ")
        case .add(let d): "add \(d)"
        case .drop(let d): "drop \(d)"
        }
    }
}

/// What pciback checks about one device while its domain runs, on the two descriptors xend
/// handed it: the device's sysfs directory (O_PATH) and its `config` attribute.
public enum PciDeviceCheck {
    /// The driver the device is bound to (`readlinkat(dir, "driver")`), nil when unbound;
    /// `gone` when the directory itself no longer answers (device removed: not even its
    /// `subsystem` link reads).
    static func driver(_ dir: Int32) -> (driver: String?, gone: Bool) {
        var buf = [CChar](repeating: 0, count: 512)
        let n = readlinkat(dir, "driver", &buf, buf.count - 1)
        if n < 0 { return (nil, errno != ENOENT || readlinkat(dir, "subsystem", &buf, buf.count - 1) < 0) }
        let target = String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        return (target.split(separator: "/").last.map(String.init), false)
    }

    /// Why device `name` is no longer fit for its guest, nil while it is: removed from the
    /// bus, unbound from vfio-pci (or bound to another driver), or its config space no longer
    /// answers (vendor ID 0xffff: surprise removal or a dead function).
    public static func problem(_ name: String, directory: Int32, config: Int32) -> String? {
        let (drv, gone) = driver(directory)
        if gone { return "PCI device \(name) was removed from the host's PCI bus" }
        guard let drv else { return "PCI device \(name) was unbound from vfio-pci behind xend's back (now no driver)" }
        guard drv == PciSysfs.vfioDriver else {
            return "PCI device \(name) was unbound from vfio-pci behind xend's back (now bound to \(drv))"
        }
        var vendor: UInt16 = 0
        let n = withUnsafeMutableBytes(of: &vendor) { pread(config, $0.baseAddress, 2, 0) }
        if n != 2 { return "PCI device \(name): its config space cannot be read (\(n < 0 ? String(cString: strerror(errno)) : "short read"))" }
        if vendor == 0xFFFF { return "PCI device \(name) no longer answers (config space reads all ones)" }
        return nil
    }
}

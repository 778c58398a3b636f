// One entry of a domain configuration's `pci = [...]` list, and the PCI address it names.

/// A PCI function's address: domain (segment), bus, device (slot) and function.
///
/// Written `DDDD:BB:SS.F` (lower-case hex, as Linux names `/sys/bus/pci/devices/*` and as
/// Xen writes xenstore's `dev-N`). Ranges are PCI's: domain 0...0xffff, bus 0...0xff,
/// slot 0...0x1f, function 0...7.
public struct PciAddress: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var domain: Int
    public var bus: Int
    public var slot: Int
    public var function: Int

    /// - Precondition: each field within its PCI range (use `init(parsing:)` for text).
    public init(domain: Int = 0, bus: Int, slot: Int, function: Int) {
        precondition((0...0xffff).contains(domain) && (0...0xff).contains(bus)
                     && (0...0x1f).contains(slot) && (0...7).contains(function))
        self.domain = domain
        self.bus = bus
        self.slot = slot
        self.function = function
    }

    /// Parses Xen's forms `BB:SS.F` and `DDDD:BB:SS.F` (hex digits of either case; Xen
    /// 3.x also took `,` in place of `:` and `.`). The domain is 1–4 hex digits, bus and
    /// slot 1–2, function one digit.
    ///
    /// - Throws: `PciSpecError` naming the text: a wrong shape, a non-hex digit, or a
    ///   slot above 0x1f or function above 7 (PCI has 32 devices per bus, 8 functions).
    public init(parsing text: String) throws(PciSpecError) {
        let shape = "expected [DDDD:]BB:SS.F, e.g. 01:00.0 or 0000:02:01.7"
        let chars = Array(text)
        guard let dot = chars.lastIndex(where: { $0 == "." || $0 == "," }) else {
            throw PciSpecError("malformed PCI address '\(text)' (\(shape))")
        }
        let head = String(chars[..<dot])
        let fn = String(chars[(dot + 1)...])
        let parts = head.split(omittingEmptySubsequences: false, whereSeparator: { $0 == ":" || $0 == "," }).map(String.init)
        guard parts.count == 2 || parts.count == 3 else {
            throw PciSpecError("malformed PCI address '\(text)' (\(shape))")
        }
        func hex(_ s: String, _ maxDigits: Int, _ what: String) throws(PciSpecError) -> Int {
            guard !s.isEmpty, s.count <= maxDigits, s.allSatisfy(\.isHexDigit), s.allSatisfy(\.isASCII),
                  let v = Int(s, radix: 16) else {
                throw PciSpecError("malformed PCI address '\(text)': bad \(what) '\(s)' (\(shape))")
            }
            return v
        }
        let d = parts.count == 3 ? try hex(parts[0], 4, "domain") : 0
        let b = try hex(parts[parts.count - 2], 2, "bus")
        let s = try hex(parts[parts.count - 1], 2, "slot")
        let f = try hex(fn, 1, "function")
        guard s <= 0x1f else {
            throw PciSpecError("PCI address '\(text)': slot 0x\(String(s, radix: 16)) is above 0x1f (32 devices per bus)")
        }
        guard f <= 7 else {
            throw PciSpecError("PCI address '\(text)': function \(String(f, radix: 16)) is above 7 (8 functions per device)")
        }
        self.init(domain: d, bus: b, slot: s, function: f)
    }

    /// `DDDD:BB:SS.F`, lower-case: the name of the device under `/sys/bus/pci/devices`.
    public var description: String {
        func h(_ v: Int, _ w: Int) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: max(0, w - s.count)) + s
        }
        return "\(h(domain, 4)):\(h(bus, 2)):\(h(slot, 2)).\(function)"
    }

    public static func < (a: PciAddress, b: PciAddress) -> Bool {
        (a.domain, a.bus, a.slot, a.function) < (b.domain, b.bus, b.slot, b.function)
    }
}

/// A device to pass through: `pci = ['01:00.0', '0000:02:01.7@5']`.
///
/// The host function's address, and optionally `@SLOT` (hex, 1...0x1f): the device number
/// it gets in the guest (Xen 4's `vslot`; the qemu engine's `addr=`).
public struct PciSpec: Sendable, Hashable, CustomStringConvertible {
    /// The host function.
    public var address: PciAddress
    /// Guest device number asked for; nil: the engine picks.
    public var guestSlot: Int?
    /// The engine's hot-plug slot a function added with `xm pci-attach` went into (the
    /// qemu engine's root port `hpnetN`, as `VifSpec.hotplugPort`), so that a reboot,
    /// restore or migration puts it back there; nil for a device of the configuration as
    /// written. Kept as `(hotplug-port ...)` in the `(dev ...)` element.
    public var hotplugPort: String?

    public init(address: PciAddress, guestSlot: Int? = nil, hotplugPort: String? = nil) {
        self.address = address
        self.guestSlot = guestSlot
        self.hotplugPort = hotplugPort
    }

    /// Parses `[DDDD:]BB:SS.F[@SLOT]` (surrounding spaces ignored).
    ///
    /// - Throws: `PciSpecError` naming the text (see `PciAddress.init(parsing:)`); a slot
    ///   after `@` that is not hex 1...0x1f (slot 0 is the host bridge's).
    public init(parsing spec: String) throws(PciSpecError) {
        let t = spec.trimmingSpace()
        var addr = t
        var slot: Int?
        if let at = t.firstIndex(of: "@") {
            addr = String(t[..<at])
            let s = String(t[t.index(after: at)...])
            guard !s.isEmpty, s.count <= 2, s.allSatisfy({ $0.isASCII && $0.isHexDigit }),
                  let v = Int(s, radix: 16), (1...0x1f).contains(v) else {
                throw PciSpecError("bad guest slot '\(s)' in '\(spec)' (expected hex 1 to 1f after '@')")
            }
            slot = v
        }
        self.init(address: try PciAddress(parsing: addr), guestSlot: slot)
    }

    /// The spec as written in a config: `DDDD:BB:SS.F` or `DDDD:BB:SS.F@SS`.
    public var description: String {
        guard let s = guestSlot else { return address.description }
        return address.description + "@" + (s < 16 ? "0" : "") + String(s, radix: 16)
    }

    /// The `(dev (domain 0x0) (bus 0x3) (slot 0x1a) (func 0x1) [(vslot 0x5)]
    /// [(hotplug-port hpnet0)])` element of Xen's `(device (pci ...))`.
    public func toSXP() -> SXP {
        func h(_ k: String, _ v: Int) -> SXP { .pair(k, .atom("0x" + String(v, radix: 16))) }
        var dev: [SXP] = [.atom("dev"), h("domain", address.domain), h("bus", address.bus),
                          h("slot", address.slot), h("func", address.function)]
        if let s = guestSlot { dev.append(h("vslot", s)) }
        if let port = hotplugPort { dev.append(.pair("hotplug-port", .atom(port))) }
        return .list(dev)
    }

    /// Reads a `(dev (domain D) (bus B) (slot S) (func F) [(vslot V)] [(hotplug-port P)])`
    /// element; each number hex with `0x` or decimal, as Xen's xend accepted.
    ///
    /// - Throws: `PciSpecError` naming the field that is missing, not a number or out of
    ///   its PCI range.
    public init(sxp dev: SXP) throws(PciSpecError) {
        func num(_ k: String, _ range: ClosedRange<Int>, required: Bool = true) throws(PciSpecError) -> Int? {
            guard let t = dev.childText(k) else {
                if required { throw PciSpecError("pci dev: missing (\(k) ...) in \(dev)") }
                return nil
            }
            let lower = t.lowercased()
            let v = lower.hasPrefix("0x") ? Int(lower.dropFirst(2), radix: 16) : Int(lower)
            guard let v, range.contains(v) else {
                throw PciSpecError("pci dev: bad \(k) '\(t)' (expected 0x\(String(range.lowerBound, radix: 16))...0x\(String(range.upperBound, radix: 16)))")
            }
            return v
        }
        let d = try num("domain", 0...0xffff)!
        let b = try num("bus", 0...0xff)!
        let s = try num("slot", 0...0x1f)!
        let f = try num("func", 0...7)!
        let v = try num("vslot", 1...0x1f, required: false)
        self.init(address: PciAddress(domain: d, bus: b, slot: s, function: f), guestSlot: v,
                  hotplugPort: dev.childText("hotplug-port"))
    }

    /// Xen's `(device (pci (dev ...) (dev ...)))`: one element holding every device.
    public static func deviceSXP(_ specs: [PciSpec]) -> SXP {
        .element("device", [.list([.atom("pci")] + specs.map { $0.toSXP() })])
    }
}

/// Why a PCI address or `pci` entry was refused; `message` names the text.
public struct PciSpecError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

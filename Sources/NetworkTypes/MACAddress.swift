// An Ethernet MAC address, as vif configurations and the network back-end use it.

/// An Ethernet MAC address (6 octets).
public struct MACAddress: Sendable, Hashable, CustomStringConvertible {
    /// The six octets, most significant first.
    public let octets: [UInt8]

    /// Parses `xx:xx:xx:xx:xx:xx` (or `-` separated), two hex digits per octet, any case.
    /// Returns nil for anything else.
    public init?(_ text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        let fields = parts.count == 6 ? parts : text.split(separator: "-", omittingEmptySubsequences: false)
        guard fields.count == 6 else { return nil }
        var out: [UInt8] = []
        for f in fields {
            guard f.count == 2, f.allSatisfy(\.isHexDigit), let b = UInt8(f, radix: 16) else { return nil }
            out.append(b)
        }
        octets = out
    }

    /// An address from six octets.
    public init(octets: [UInt8]) {
        precondition(octets.count == 6, "a MAC address has 6 octets")
        self.octets = octets
    }

    /// A random address in Xen's range 00:16:3e:xx:xx:xx (OUI 00-16-3E, which XenSource
    /// allowed every Xen user to draw from), with the first random octet below 0x80 as
    /// xend's `randomMAC` did.
    public static func random<G: RandomNumberGenerator>(using g: inout G) -> MACAddress {
        MACAddress(octets: [0x00, 0x16, 0x3e, UInt8.random(in: 0...0x7f, using: &g),
                            UInt8.random(in: 0...0xff, using: &g), UInt8.random(in: 0...0xff, using: &g)])
    }

    /// `random(using:)` with the system generator.
    public static func random() -> MACAddress {
        var g = SystemRandomNumberGenerator()
        return random(using: &g)
    }

    /// Group bit clear: an address one interface may own.
    public var isUnicast: Bool { octets[0] & 1 == 0 }
    /// The locally-administered bit.
    public var isLocallyAdministered: Bool { octets[0] & 2 != 0 }

    /// Lower-case `xx:xx:xx:xx:xx:xx`, as xend writes it.
    public var description: String {
        let hex = Array("0123456789abcdef")
        return octets.map { String([hex[Int($0 >> 4)], hex[Int($0 & 15)]]) }.joined(separator: ":")
    }
}

/// Small builders and parsers of Ethernet/ARP/IPv4/ICMP/UDP frames for the synthetic
/// front-end and tests (RFC 826, 791, 792, 768). Addresses are octet arrays.
public enum Frames {
    public static let broadcast: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff]

    /// RFC 1071 Internet checksum of `b`.
    public static func checksum(_ b: ArraySlice<UInt8>) -> UInt16 {
        var s: UInt32 = 0
        var i = b.startIndex
        while i + 1 < b.endIndex { s += UInt32(b[i]) << 8 | UInt32(b[i + 1]); i += 2 }
        if i < b.endIndex { s += UInt32(b[i]) << 8 }
        while s > 0xffff { s = (s & 0xffff) + (s >> 16) }
        return ~UInt16(s)
    }

    static func be16(_ v: UInt16) -> [UInt8] { [UInt8(v >> 8), UInt8(v & 0xff)] }

    /// Ethernet II header + payload.
    public static func ethernet(dst: [UInt8], src: [UInt8], type: UInt16, _ payload: [UInt8]) -> [UInt8] {
        dst + src + be16(type) + payload
    }

    /// ARP request who-has `target` tell `senderIP` (`senderMAC`), broadcast.
    public static func arpRequest(senderMAC: [UInt8], senderIP: [UInt8], target: [UInt8]) -> [UInt8] {
        let arp: [UInt8] = [0, 1, 8, 0, 6, 4, 0, 1] + senderMAC + senderIP + [0, 0, 0, 0, 0, 0] + target
        return ethernet(dst: broadcast, src: senderMAC, type: 0x0806, arp)
    }

    /// IPv4 header (no options, DF clear, TTL 64) + payload.
    public static func ipv4(src: [UInt8], dst: [UInt8], proto: UInt8, id: UInt16 = 1, _ payload: [UInt8]) -> [UInt8] {
        var h: [UInt8] = [0x45, 0] + be16(UInt16(20 + payload.count)) + be16(id) + [0, 0, 64, proto, 0, 0] + src + dst
        let c = checksum(h[...])
        h[10] = UInt8(c >> 8); h[11] = UInt8(c & 0xff)
        return h + payload
    }

    /// ICMP echo request with `data`.
    public static func icmpEcho(id: UInt16, seq: UInt16, data: [UInt8]) -> [UInt8] {
        var m: [UInt8] = [8, 0, 0, 0] + be16(id) + be16(seq) + data
        let c = checksum(m[...])
        m[2] = UInt8(c >> 8); m[3] = UInt8(c & 0xff)
        return m
    }

    /// UDP datagram (checksum 0: none, allowed over IPv4).
    public static func udp(srcPort: UInt16, dstPort: UInt16, _ data: [UInt8]) -> [UInt8] {
        be16(srcPort) + be16(dstPort) + be16(UInt16(8 + data.count)) + [0, 0] + data
    }

    /// The ARP reply's sender MAC if `f` is an ARP reply from `ip`.
    public static func arpReplyMAC(_ f: [UInt8], from ip: [UInt8]) -> [UInt8]? {
        guard f.count >= 42, f[12] == 8, f[13] == 6, f[20] == 0, f[21] == 2, Array(f[28..<32]) == ip else { return nil }
        return Array(f[22..<28])
    }

    /// (id, seq) if `f` is an ICMP echo reply from `ip`.
    public static func echoReply(_ f: [UInt8], from ip: [UInt8]) -> (id: UInt16, seq: UInt16, data: [UInt8])? {
        guard f.count >= 42, f[12] == 8, f[13] == 0, f[23] == 1, Array(f[26..<30]) == ip else { return nil }
        let ihl = Int(f[14] & 15) * 4
        let o = 14 + ihl
        guard f.count >= o + 8, f[o] == 0 else { return nil }
        let total = Int(UInt16(f[16]) << 8 | UInt16(f[17]))
        let end = min(f.count, 14 + total)
        return (UInt16(f[o + 4]) << 8 | UInt16(f[o + 5]), UInt16(f[o + 6]) << 8 | UInt16(f[o + 7]), Array(f[(o + 8)..<end]))
    }
}

import Testing
@testable import NetBackend
import VhostUserTesting

@Suite struct RateLimiterTests {
    @Test func longRunRateMatchesCredit() {
        // 1Mb/s as xend writes it: 6250 bytes per 50 ms.
        var r = RateLimiter(bytesPerInterval: 6250, intervalMicroseconds: 50_000, now: 0)
        var t: UInt64 = 0
        var sent = 0
        while t < 10_000_000_000 {   // 10 s of 1500-byte frames as fast as allowed
            let w = r.take(1500, now: t)
            if w == 0 { sent += 1500 } else { t += w }
        }
        let rate = Double(sent) / 10.0
        #expect(abs(rate - 125_000) / 125_000 < 0.02, "rate \(rate) B/s")
    }

    @Test func burstIsOneInterval() {
        var r = RateLimiter(bytesPerInterval: 10_000, intervalMicroseconds: 1_000_000, now: 0)
        var n = 0
        while r.take(1000, now: 5) == 0 { n += 1 }
        #expect(n == 10)
        #expect(r.take(1000, now: 5) > 0)
    }

    @Test func frameLargerThanAnIntervalWaitsForItsCredit() {
        var r = RateLimiter(bytesPerInterval: 1000, intervalMicroseconds: 1000, now: 0)
        let w = r.take(65000, now: 0)
        #expect(w >= 64_000_000 && w <= 64_100_000, "wait \(w) ns")
        #expect(r.take(65000, now: w) == 0)
        #expect(r.take(100, now: w) > 0)
    }
}

@Suite struct VirtioNetTests {
    @Test func configSpaceLayout() {
        let c = VirtioNetConfig(mac: [0, 0x16, 0x3e, 1, 2, 3])
        #expect(c.bytes == [0, 0x16, 0x3e, 1, 2, 3, 1, 0, 1, 0, 0xdc, 0x05])
        #expect(VirtioNetConfig(bytes: c.bytes) == c)
    }

    @Test func transmitHeaderChecks() {
        let all = VirtioNetDevice.baseFeatures | VirtioNetDevice.offloadFeatures
        let none = VirtioNetDevice.baseFeatures
        #expect(VirtioNetHeader.checkTransmit(flags: 0, gsoType: 0, csumStart: 0, csumOffset: 0, frameLength: 60, features: none) == nil)
        #expect(VirtioNetHeader.checkTransmit(flags: 1, gsoType: 0, csumStart: 34, csumOffset: 6, frameLength: 60, features: none) != nil)
        #expect(VirtioNetHeader.checkTransmit(flags: 1, gsoType: 0, csumStart: 34, csumOffset: 6, frameLength: 60, features: all) == nil)
        #expect(VirtioNetHeader.checkTransmit(flags: 1, gsoType: 0, csumStart: 60, csumOffset: 6, frameLength: 60, features: all) != nil)
        #expect(VirtioNetHeader.checkTransmit(flags: 1, gsoType: 1, csumStart: 34, csumOffset: 16, frameLength: 9000, features: all) == nil)
        #expect(VirtioNetHeader.checkTransmit(flags: 0, gsoType: 1, csumStart: 34, csumOffset: 16, frameLength: 9000, features: all) != nil)
        #expect(VirtioNetHeader.checkTransmit(flags: 1, gsoType: 3, csumStart: 34, csumOffset: 6, frameLength: 9000, features: all) != nil)
        #expect(VirtioNetHeader.checkTransmit(flags: 1, gsoType: 0x81, csumStart: 34, csumOffset: 16, frameLength: 9000, features: all) == nil)
        #expect(VirtioNetHeader.checkTransmit(flags: 0, gsoType: 0x80, csumStart: 0, csumOffset: 0, frameLength: 60, features: all) != nil)
        #expect(VirtioNetHeader.checkTransmit(flags: 4, gsoType: 0, csumStart: 0, csumOffset: 0, frameLength: 60, features: all) != nil)
    }

    @Test func tapOffloadsFollowGuestFeatures() {
        #expect(TapDevice.offloads(forGuestFeatures: VirtioNetFeature.guestTSO4) == 0)
        #expect(TapDevice.offloads(forGuestFeatures: VirtioNetFeature.guestCsum) == TapDevice.offloadCsum)
        #expect(TapDevice.offloads(forGuestFeatures: VirtioNetFeature.guestCsum | VirtioNetFeature.guestTSO4 | VirtioNetFeature.guestTSO6 | VirtioNetFeature.guestECN)
                == TapDevice.offloadCsum | TapDevice.offloadTSO4 | TapDevice.offloadTSO6 | TapDevice.offloadTSOECN)
    }

    @Test func framesChecksum() {
        // RFC 1071 example bytes
        let b: [UInt8] = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]
        #expect(Frames.checksum(b[...]) == ~UInt16(0xddf2))
        let ip = Frames.ipv4(src: [10, 0, 0, 1], dst: [10, 0, 0, 2], proto: 1, [])
        #expect(Frames.checksum(ip[...]) == 0)
    }
}

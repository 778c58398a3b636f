import Foundation
import Testing
import XendAPI
@testable import Xend

/// Device records survive the registry's JSON coders (snake_case keys) whole: a field the
/// decoder cannot map back is dropped without an error, as `socketUID` was.
struct DeviceRecordCodingTests {
    func roundTrip<T: Codable & Equatable>(_ v: T) throws -> T {
        try XendClient.decoder.decode(T.self, from: XendClient.encoder.encode(v))
    }

    @Test func diskRecordKeepsItsSocketOwner() throws {
        let d = DiskRecord(vdev: "xvda", uname: "file:/i", mode: "w", socket: "/s", pid: 9, startTicks: 3, log: "/l",
                           broken: false, socketOwner: SocketOwner(uid: 2_147_418_113, gid: 2_147_418_113))
        #expect(try roundTrip(d) == d)
        #expect(try roundTrip(d).socketOwner?.uid == 2_147_418_113)
    }

    @Test func vifRecordKeepsItsSocketOwner() throws {
        let v = VifRecord(devid: 0, vifname: "vif1.0", mac: "00:16:3e:00:00:01", bridge: "xenbr0", ip: nil, script: "vif-bridge",
                          scriptPath: "/s/vif-bridge", rate: nil, socket: "/s", pid: 9, startTicks: 3, log: "/l", broken: false,
                          socketOwner: SocketOwner(uid: 1000, gid: 1001))
        #expect(try roundTrip(v) == v)
        #expect(try roundTrip(v).socketOwner == SocketOwner(uid: 1000, gid: 1001))
    }
}

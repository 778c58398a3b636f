import DomainConfig
import Testing
import XendAPI
@testable import Xend

/// `NetSupervisor.plan`: every check made before a vif is created.
struct VifPlanTests {
    func spec(_ s: String) throws -> VifSpec { try VifSpec(parsing: s) }

    func record(_ name: String, mac: String, bridge: String? = "xenbr0") -> VifRecord {
        VifRecord(devid: 0, vifname: name, mac: mac, bridge: bridge, ip: nil, script: "vif-bridge", scriptPath: "/s/vif-bridge",
                  rate: nil, socket: "/s", pid: 0, startTicks: 0, log: "/l", broken: false)
    }

    func plan(_ specs: [String], domid: Int = 7, inUse: [(domain: String, vif: VifRecord)] = [],
              interfaces: Set<String> = ["xenbr0", "xenbr1", "eth0"], bridges: Set<String> = ["xenbr0", "xenbr1"],
              scripts: Set<String> = ["vif-bridge", "vif-route", "/etc/site-vif"]) throws(XendError) -> [VifPlan] {
        let vifs = specs.enumerated().map { (devid: $0.offset, spec: try! VifSpec(parsing: $0.element)) }
        return try NetSupervisor.plan(domid: domid, vifs: vifs, defaultScript: "vif-bridge", inUse: inUse,
                                      interfaceExists: { interfaces.contains($0) }, isBridge: { bridges.contains($0) },
                                      resolve: { scripts.contains($0) ? "/scripts/" + $0 : nil })
    }

    func refusal(_ specs: [String], inUse: [(domain: String, vif: VifRecord)] = [],
                 interfaces: Set<String> = ["xenbr0", "xenbr1", "eth0"]) -> String {
        do { _ = try plan(specs, inUse: inUse, interfaces: interfaces); return "" } catch { return error.message }
    }

    @Test func defaultsAreXens() throws {
        let p = try plan(["mac=00:16:3e:00:00:01", "mac=00:16:3e:00:00:02,bridge=xenbr1,ip=10.0.0.2,rate=1Mb/s"])
        #expect(p.map(\.vifname) == ["vif7.0", "vif7.1"])
        #expect(p[0].bridge == "xenbr0" && p[0].script == "vif-bridge" && p[0].scriptPath == "/scripts/vif-bridge")
        #expect(p[1].bridge == "xenbr1" && p[1].ip == "10.0.0.2" && p[1].rate?.bytesPerInterval == 6250)
        // A routing script gets no default bridge, and none is checked.
        let r = try plan(["mac=00:16:3e:00:00:01,script=vif-route,ip=10.0.0.9"])
        #expect(r[0].bridge == nil && r[0].scriptPath == "/scripts/vif-route")
        #expect(try plan(["mac=00:16:3e:00:00:01,vifname=web0"])[0].vifname == "web0")
    }

    @Test func badInputIsNamed() {
        #expect(refusal(["mac=00:16:3e:00:00:01,bridge=nosuchbr"]).contains("Bridge nosuchbr does not exist"))
        #expect(refusal(["mac=00:16:3e:00:00:01,bridge=eth0"]).contains("Bridge eth0 does not exist"))
        #expect(refusal(["mac=00:16:3e:00:00:01,script=nosuch"]).contains("Hotplug script nosuch not found"))
        #expect(refusal(["mac=00:16:3e:00:00:01", "mac=00:16:3e:00:00:01"]).contains("MAC address 00:16:3e:00:00:01 is given twice on bridge xenbr0"))
        #expect(refusal(["mac=00:16:3e:00:00:01", "mac=00:16:3e:00:00:02,vifname=vif7.0"]).contains("Interface name vif7.0 is given twice"))
        #expect(refusal(["mac=00:16:3e:00:00:01"], inUse: [("web", record("vif3.0", mac: "00:16:3e:00:00:01"))])
            == "Device 0 (vif) could not be connected. MAC address 00:16:3e:00:00:01 is already used by domain web on bridge xenbr0.")
        // The same MAC on another bridge is another segment: allowed.
        #expect(refusal(["mac=00:16:3e:00:00:01,bridge=xenbr1"], inUse: [("web", record("vif3.0", mac: "00:16:3e:00:00:01"))]) == "")
        #expect(refusal(["mac=00:16:3e:00:00:05,vifname=web0"], inUse: [("web", record("web0", mac: "00:16:3e:00:00:01"))])
            .contains("Interface name web0 is already in use by domain web"))
        #expect(refusal(["mac=00:16:3e:00:00:05,vifname=eth0"]).contains("Interface name eth0 is already in use on this host"))
        // vifDOMID.DEVID longer than 15 bytes.
        do { _ = try plan(["mac=00:16:3e:00:00:05"], domid: 12345678901); Issue.record("accepted a 16-byte name") }
        catch { #expect(error.message.contains("vif12345678901.0")) }
        var s = VifSpec(mac: MACAddress("01:16:3e:00:00:01")!)
        s.vifname = nil
        do {
            _ = try NetSupervisor.plan(domid: 1, vifs: [(0, s)], defaultScript: "vif-bridge", inUse: [], interfaceExists: { _ in false },
                                       isBridge: { _ in true }, resolve: { $0 })
            Issue.record("accepted a multicast MAC")
        } catch { #expect(error.message.contains("01:16:3e:00:00:01 is not a unicast")) }
    }
}

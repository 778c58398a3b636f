import Testing
@testable import DomainConfig

/// Vnet files (`xm vnet-create`) and xend-config's vnet-* keys.
@Suite struct VnetConfigTests {
    @Test func readsTheManualsForm() throws {
        let v = try VnetConfig(parsing: "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))")
        #expect(v == VnetConfig(id: 97, bridge: "vnet97", vnetif: "vnif97", security: "none"))
        #expect(v.toSXP().description == "(vnet (id 97) (bridge vnet97) (vnetif vnif97) (security none))")
        #expect(try VnetConfig(parsing: v.toSXP().description) == v)
    }

    @Test func namesDefaultFromTheId() throws {
        let v = try VnetConfig(parsing: "# a vnet\n(vnet (id 16777215))\n")
        #expect(v.bridge == "vnet16777215" && v.vnetif == "vnif16777215" && v.security == "none")
    }

    @Test func badFilesNameLineAndKey() {
        func refused(_ text: String, _ key: String?, _ words: String) {
            do {
                _ = try VnetConfig(parsing: text, file: "v.sxp")
                Issue.record("accepted: \(text)")
            } catch {
                #expect(error.key == key && error.file == "v.sxp" && error.description.contains(words), "\(error)")
            }
        }
        refused("\n(vnet (id 16777216))", "id", "out of range 1...16777215")
        refused("(vnet (id 0))", "id", "out of range")
        refused("(vnet (id 0x61))", "id", "decimal integer")
        refused("(vnet (bridge b))", "id", "missing")
        refused("(vnet (id 5) (colour red))", "colour", "unknown key")
        refused("(vnet (id 5) (id 6))", "id", "given twice")
        refused("(vnet (id 5) (security conf))", "security", "only none")
        refused("(vnet (id 5) (bridge 'a b'))", "bridge", "not an interface name")
        refused("(vnet (id 5) (vnetif abcdefghijklmnop))", "vnetif", "not an interface name")
        refused("(vnet (id 5) (bridge x) (vnetif x))", "vnetif", "also the bridge")
        refused("(vnet (id 5)) (vnet (id 6))", nil, "one (vnet ...) form")
        refused("(network (id 5))", nil, "expected a (vnet ...) form")
        refused("(vnet (id 5)", nil, "never closed")
    }

    @Test func xendConfigVnetKeys() throws {
        let d = XendConfig()
        #expect(d.vnetPort == 4789 && d.vnetGroup == "239.1.1.1" && d.vnetPeers.isEmpty && d.vnetDevice == "")
        let c = try XendConfig(parsing: "(vnet-port 8472) (vnet-group 239.9.9.9) (vnet-peers '10.0.0.2  10.0.0.3') (vnet-device eth1)")
        #expect(c.vnetPort == 8472 && c.vnetGroup == "239.9.9.9" && c.vnetPeers == ["10.0.0.2", "10.0.0.3"] && c.vnetDevice == "eth1")
        #expect(try XendConfig(forms: c.toSXP().map { SXPForm(value: $0, line: 1) }, file: "x") == c)
        for bad in ["(vnet-port 0)", "(vnet-group 10.0.0.1)", "(vnet-group 239.1.1)", "(vnet-peers '10.0.0.2 239.0.0.1')",
                    "(vnet-peers 10.0.0.256)", "(vnet-device 'a b')"] {
            #expect(throws: ConfigError.self, "\(bad)") { try XendConfig(parsing: bad) }
        }
    }
}

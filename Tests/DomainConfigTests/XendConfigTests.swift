import Testing
@testable import DomainConfig

@Suite struct XendConfigTests {
    @Test func defaultsMatchTheManual() {
        let c = XendConfig()
        #expect(c.unixServer && !c.httpServer && !c.relocationServer && !c.enableDump)
        #expect(c.port == 8000 && c.relocationPort == 8002)
        #expect(c.address == "" && c.relocationAddress == "" && c.relocationHostsAllow.isEmpty)
        #expect(c.unixPath == "/var/lib/xend/xend-socket")
        #expect(c.logfile == "/var/log/xen/xend.log" && c.loglevel == .debug)
        #expect(c.vifScript == "vif-bridge" && c.networkScript == nil)
        #expect(c.dom0MinMem == 0 && c.dom0CPUs == 0 && c.consoleLimit == 1024)
        #expect(c.domainEngine == .auto)
    }

    @Test func readsEveryKey() throws {
        let text = """
        (logfile /tmp/x.log) (loglevel info)
        (xend-unix-server no) (xend-unix-path /run/xend.sock)
        (xend-http-server yes) (xend-port 8001) (xend-address localhost)
        (xend-relocation-server on) (xend-relocation-port 9002) (xend-relocation-address '127.0.0.1')
        (xend-relocation-hosts-allow '^localhost$ ^127\\\\.0\\\\.0\\\\.1$')
        (network-script 'network-bridge netdev=eth1')
        (vif-script vif-route) (dom0-min-mem 196) (dom0-cpus 1) (enable-dump true)
        (console-limit 64) (domain-engine qemu)
        """
        let c = try XendConfig(parsing: text, file: "x.sxp")
        #expect(c.logfile == "/tmp/x.log" && c.loglevel == .info)
        #expect(!c.unixServer && c.unixPath == "/run/xend.sock")
        #expect(c.httpServer && c.port == 8001 && c.address == "localhost")
        #expect(c.relocationServer && c.relocationPort == 9002 && c.relocationAddress == "127.0.0.1")
        #expect(c.relocationHostsAllow == ["^localhost$", "^127\\.0\\.0\\.1$"])
        #expect(c.networkScript == "network-bridge netdev=eth1" && c.vifScript == "vif-route")
        #expect(c.dom0MinMem == 196 && c.dom0CPUs == 1 && c.enableDump)
        #expect(c.consoleLimit == 64 && c.domainEngine == .qemu)
        // Read, kept, and each one not acted on is named in a warning.
        #expect(c.warnings.map(\.key) == ["enable-dump", "console-limit"])
        #expect(c.warnings.allSatisfy { $0.message.hasPrefix("read but not acted on: ") })
        // toSXP reads back equal.
        let again = try XendConfig(forms: c.toSXP().map { SXPForm(value: $0, line: 1) }, file: "y")
        #expect(again == c)
    }

    @Test func unknownKeysWarnAndAreKept() throws {
        let c = try XendConfig(parsing: "(xend-port 8000)\n(external-migration-tool /bin/true)\n(xend-port 9)", file: "x.sxp")
        #expect(c.unknown["external-migration-tool"] == ["external-migration-tool", "/bin/true"])
        #expect(c.warnings.map(\.description) == [
            "x.sxp:2: warning: key 'external-migration-tool': unknown key, kept",
            "x.sxp:3: warning: key 'xend-port': given again; the first value (line 1) is used",
        ])
        #expect(c.port == 8000)
    }

    @Test func relocationSSLNeedsItsThreeFiles() throws {
        #expect(!XendConfig().relocationSSL && XendConfig().relocationSSLKeyFile.isEmpty)
        let c = try XendConfig(parsing: """
            (xend-relocation-ssl yes) (xend-relocation-ssl-key-file /etc/xen/h.key)
            (xend-relocation-ssl-cert-file /etc/xen/h.pem) (xend-relocation-ssl-ca-file '/etc/xen/ca.pem')
            """, file: "t.sxp")
        #expect(c.relocationSSL && c.relocationSSLKeyFile == "/etc/xen/h.key" && c.relocationSSLCertFile == "/etc/xen/h.pem")
        #expect(c.relocationSSLCAFile == "/etc/xen/ca.pem")
        #expect(try XendConfig(forms: c.toSXP().map { SXPForm(value: $0, line: 1) }, file: "y") == c)
        func err(_ s: String) -> String {
            do { _ = try XendConfig(parsing: s, file: "t.sxp"); return "no error" } catch { return error.description }
        }
        #expect(err("(logfile /x)\n(xend-relocation-ssl yes)\n(xend-relocation-ssl-cert-file /h.pem)")
                == "t.sxp:2: key 'xend-relocation-ssl': yes needs xend-relocation-ssl-key-file, xend-relocation-ssl-ca-file (TLS needs this host's key and certificate and the CA that signs its peers')")
        #expect(err("(xend-relocation-ssl maybe)") == "t.sxp:1: key 'xend-relocation-ssl': expected yes or no, found 'maybe'")
        // Off, the file keys may be set or not.
        #expect(err("(xend-relocation-ssl no) (xend-relocation-ssl-key-file /h.key)") == "no error")
    }

    @Test func relocationPathsAllowTakesAbsoluteDirectories() throws {
        #expect(XendConfig().relocationPathsAllow.isEmpty)
        let c = try XendConfig(parsing: "(xend-relocation-paths-allow '/var/lib/xen/images/  //srv//xen /')", file: "t.sxp")
        #expect(c.relocationPathsAllow == ["/var/lib/xen/images", "/srv/xen", "/"])
        #expect(try XendConfig(forms: c.toSXP().map { SXPForm(value: $0, line: 1) }, file: "y") == c)
        #expect(try XendConfig(parsing: "(xend-relocation-paths-allow '')", file: "t.sxp").relocationPathsAllow.isEmpty)
        func err(_ s: String) -> String {
            do { _ = try XendConfig(parsing: s, file: "t.sxp"); return "no error" } catch { return error.description }
        }
        #expect(err("(logfile /x)\n(xend-relocation-paths-allow '/srv/xen images')")
                == "t.sxp:2: key 'xend-relocation-paths-allow': 'images' is not an absolute directory (each entry must start with / and have no . or .. component)")
        #expect(err("(xend-relocation-paths-allow /srv/xen/../etc)")
                == "t.sxp:1: key 'xend-relocation-paths-allow': '/srv/xen/../etc' is not an absolute directory (each entry must start with / and have no . or .. component)")
    }

    @Test func badValuesNameFileLineAndKey() {
        func err(_ s: String) -> String {
            do { _ = try XendConfig(parsing: s, file: "xc.sxp"); return "no error" } catch { return error.description }
        }
        #expect(err("(logfile /x)\n(xend-port eighty)") == "xc.sxp:2: key 'xend-port': expected an integer (TCP port), found 'eighty'")
        #expect(err("\n\n(xend-port 70000)") == "xc.sxp:3: key 'xend-port': 70000 out of range 1...65535 (TCP port)")
        #expect(err("(xend-http-server maybe)") == "xc.sxp:1: key 'xend-http-server': expected yes or no, found 'maybe'")
        #expect(err("(loglevel LOUD)") == "xc.sxp:1: key 'loglevel': expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL, found 'LOUD'")
        #expect(err("(qemu-user 'a b')") == "xc.sxp:1: key 'qemu-user': expected a user name (letters, digits, '_', '-'; at most 32) or none, found 'a b'")
        #expect((try? XendConfig(parsing: "(qemu-user none)"))?.qemuUser == "")
        #expect((try? XendConfig(parsing: "(qemu-user kvm-user)"))?.qemuUser == "kvm-user")
        #expect(XendConfig().qemuUser == "xenith-qemu")
        #expect(XendConfig().qemuUIDBase == 0x7FFF_0000)
        #expect((try? XendConfig(parsing: "(qemu-uid-base none)")).map { $0.qemuUIDBase == nil } == true)
        #expect((try? XendConfig(parsing: "(qemu-uid-base 70000)"))?.qemuUIDBase == 70000)
        #expect(err("(qemu-uid-base 0)") == "xc.sxp:1: key 'qemu-uid-base': 0 out of range 1000...4294934543 (first uid of the per-domain range, or none)")
        #expect(err("(qemu-uid-base 4294967000)") == "xc.sxp:1: key 'qemu-uid-base': 4294967000 out of range 1000...4294934543 (first uid of the per-domain range, or none)")
        #expect(XendConfig().qemuRAMDirectory == "/run/xenith/guest-ram")
        #expect((try? XendConfig(parsing: "(qemu-ram-directory none)")).map { $0.qemuRAMDirectory == nil } == true)
        #expect((try? XendConfig(parsing: "(qemu-ram-directory /srv//ram/)"))?.qemuRAMDirectory == "/srv/ram")
        #expect(err("(qemu-ram-directory ram)") == "xc.sxp:1: key 'qemu-ram-directory': expected an absolute directory other than / (no . or .. component) or none, found 'ram'")
        #expect(err("(qemu-ram-directory /run/../etc)") == "xc.sxp:1: key 'qemu-ram-directory': expected an absolute directory other than / (no . or .. component) or none, found '/run/../etc'")
        #expect(err("(qemu-ram-directory //)") == "xc.sxp:1: key 'qemu-ram-directory': expected an absolute directory other than / (no . or .. component) or none, found '//'")
        #expect(err("(domain-engine fast)") == "xc.sxp:1: key 'domain-engine': expected auto, core or qemu, found 'fast'")
        #expect(err("(network-script network-bridge netdev=eth1)") == "xc.sxp:1: key 'network-script': expected one value, found 2 (quote a value holding spaces)")
        #expect(err("(dom0-min-mem)") == "xc.sxp:1: key 'dom0-min-mem': missing value")
        #expect(err("(dom0-cpus (1))") == "xc.sxp:1: key 'dom0-cpus': expected a value, found a list (1)")
        #expect(err("stray") == "xc.sxp:1: expected a (key value) form, found stray")
    }

    @Test func shippedFileListsEveryKeyWithItsDefault() throws {
        let path = Corpus.services + "/xend-config.sxp"
        let text = try Corpus.read(path)
        // As shipped, everything but network-script is commented out: the defaults apply,
        // and the default network (network-nat-default) is switched on.
        let shipped = try XendConfig(parsing: text, file: path)
        var expected = XendConfig()
        expected.networkScript = "network-nat-default"
        #expect(shipped == expected && shipped.warnings.isEmpty)
        // Uncommenting every "#(" line (the one active setting left out) must give the
        // built-in defaults, for every key.
        let uncommented = text.split(separator: "\n", omittingEmptySubsequences: false)
            .filter { !$0.hasPrefix("(") }
            .map { $0.hasPrefix("#(") ? String($0.dropFirst()) : String($0) }.joined(separator: "\n")
        let c = try XendConfig(parsing: uncommented, file: path)
        #expect(c == XendConfig())
        #expect(c.warnings.isEmpty)
        let keys = try SXP.parseForms(uncommented).compactMap(\.value.name)
        #expect(Set(keys) == Set(XendConfig.knownKeys))
        #expect(keys.count == XendConfig.knownKeys.count)
    }
}

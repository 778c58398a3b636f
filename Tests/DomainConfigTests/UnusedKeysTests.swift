import Testing
@testable import DomainConfig

/// Every key read but not acted on is named in a warning (issue 14, item 6).
@Suite struct UnusedKeysTests {
    func parse(_ text: String) throws -> DomainConfiguration {
        try DomainConfiguration(parsing: text, file: "u.cfg", arguments: [])
    }

    @Test func domainKeysNotActedOnAreNamed() throws {
        let c = try parse("""
            name = "u"
            kernel = "/k"
            bootloader = "/usr/bin/pygrub"
            bootargs = "--entry=2"
            device_model = "/usr/lib/xen/bin/qemu-dm"
            soundhw = "sb16"
            vncviewer = 1
            ioports = ["2f8-2ff"]
            vtpm = ["instance=1,backend=0"]
            """)
        #expect(c.warnings.map(\.description) == [
            "u.cfg:8: warning: key 'ioports': accepted by xm, ignored by Xenith",
            "u.cfg:9: warning: key 'vtpm': accepted by xm, ignored by Xenith",
            "u.cfg:3: warning: key 'bootloader': read but not acted on: no bootloader is run: give kernel and ramdisk",
            "u.cfg:4: warning: key 'bootargs': read but not acted on: no bootloader is run",
            "u.cfg:5: warning: key 'device_model': read but not acted on: the qemu engine runs qemu-system-x86_64 from PATH",
            "u.cfg:6: warning: key 'soundhw': read but not acted on: no sound device is emulated",
            "u.cfg:7: warning: key 'vncviewer': read but not acted on: no VNC viewer is started; connect to the address xm create prints",
        ])
    }

    @Test func aKeyThatAsksForNothingIsQuiet() throws {
        let c = try parse("name = 'q'\nkernel = '/k'\nvncviewer = 0\nmemory = 64\n")
        #expect(c.warnings.isEmpty)
    }

    @Test func everyUnusedKeyIsAKnownKey() {
        // A key in the table that the parser did not read would never be warned about.
        #expect(Set(DomainConfiguration.unusedKeys.keys).isSubset(of: DomainConfiguration.knownKeys))
        #expect(Set(XendConfig.unusedKeys.keys).isSubset(of: Set(XendConfig.knownKeys)))
    }

    @Test func xendKeysAtTheirDefaultAreQuiet() throws {
        let c = try XendConfig(parsing: "(enable-dump no)\n(console-limit 1024)\n(xend-relocation-server no)", file: "x.sxp")
        #expect(c.warnings.isEmpty)
        let d = try XendConfig(parsing: "(enable-dump yes)\n(console-limit 64)", file: "x.sxp")
        #expect(d.warnings.map(\.description) == [
            "x.sxp:1: warning: key 'enable-dump': read but not acted on: crashed domains are not dumped automatically (use xm dump-core)",
            "x.sxp:2: warning: key 'console-limit': read but not acted on: xenconsoled does not limit a console's buffer",
        ])
    }
}

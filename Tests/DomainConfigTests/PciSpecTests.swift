import Testing
@testable import DomainConfig

/// `pci = [...]`, the `(device (pci (dev ...)))` SXP form and `pci-hide` (issue 18, item 4).
@Suite struct PciSpecTests {
    @Test func xenAddressFormsParse() throws {
        #expect(try PciAddress(parsing: "01:00.0") == PciAddress(domain: 0, bus: 1, slot: 0, function: 0))
        #expect(try PciAddress(parsing: "0000:02:01.7") == PciAddress(domain: 0, bus: 2, slot: 1, function: 7))
        #expect(try PciAddress(parsing: "1:2:1f.3") == PciAddress(domain: 1, bus: 2, slot: 0x1f, function: 3))
        #expect(try PciAddress(parsing: "ABCD:FF:1A.1").description == "abcd:ff:1a.1")
        // Xen 3.x's separators ',' for ':' and '.'.
        #expect(try PciAddress(parsing: "0000,03,1a,1") == PciAddress(domain: 0, bus: 3, slot: 0x1a, function: 1))
        #expect(try PciAddress(parsing: "3:4.2").description == "0000:03:04.2")
        #expect(try PciSpec(parsing: " 01:00.0@5 ") == PciSpec(address: PciAddress(bus: 1, slot: 0, function: 0), guestSlot: 5))
        #expect(try PciSpec(parsing: "01:00.0@1f").description == "0000:01:00.0@1f")
    }

    @Test func malformedAddressesAreNamed() {
        func err(_ s: String) -> String {
            do { _ = try PciSpec(parsing: s); return "parsed" } catch { return error.message }
        }
        #expect(err("01:00") == "malformed PCI address '01:00' (expected [DDDD:]BB:SS.F, e.g. 01:00.0 or 0000:02:01.7)")
        #expect(err("0000:02:01.f") == "PCI address '0000:02:01.f': function f is above 7 (8 functions per device)")
        #expect(err("00:20.0") == "PCI address '00:20.0': slot 0x20 is above 0x1f (32 devices per bus)")
        #expect(err("100:00.0").hasPrefix("malformed PCI address '100:00.0': bad bus '100'"))
        #expect(err("00000:00:00.0").hasPrefix("malformed PCI address '00000:00:00.0': bad domain '00000'"))
        #expect(err("0g:00.0").hasPrefix("malformed PCI address '0g:00.0': bad bus '0g'"))
        #expect(err("00:00.00").hasPrefix("malformed PCI address '00:00.00': bad function '00'"))
        #expect(err("0:0:0:0.0").hasPrefix("malformed PCI address '0:0:0:0.0'"))
        #expect(err("") .hasPrefix("malformed PCI address ''"))
        #expect(err("01:00.0@0") == "bad guest slot '0' in '01:00.0@0' (expected hex 1 to 1f after '@')")
        #expect(err("01:00.0@20") == "bad guest slot '20' in '01:00.0@20' (expected hex 1 to 1f after '@')")
        #expect(err("01:00.0@") == "bad guest slot '' in '01:00.0@' (expected hex 1 to 1f after '@')")
    }

    func parse(_ text: String) throws -> DomainConfiguration {
        try DomainConfiguration(parsing: text, file: "p.cfg", arguments: [])
    }

    @Test func domainConfigListAndErrorsNamingLine() throws {
        let c = try parse("name = 'p'\nkernel = '/k'\npci = ['01:00.0',\n       '0000:02:01.7@5']\n")
        #expect(c.pciDevices.map(\.description) == ["0000:01:00.0", "0000:02:01.7@05"])
        #expect(c.warnings.isEmpty)
        func err(_ text: String) -> String {
            do { _ = try parse(text); return "parsed" } catch { return "\(error)" }
        }
        #expect(err("name = 'p'\nkernel = '/k'\npci = ['01:00.0',\n  '02:1.9']\n")
                == "p.cfg:4: key 'pci': bad pci spec: PCI address '02:1.9': function 9 is above 7 (8 functions per device)")
        #expect(err("name = 'p'\nkernel = '/k'\npci = ['01:00.0', '0000:01:00.0']\n")
                == "p.cfg:3: key 'pci': PCI device 0000:01:00.0 given twice")
        #expect(err("name = 'p'\nkernel = '/k'\npci = ['01:00.0@3', '02:00.0@3']\n")
                == "p.cfg:3: key 'pci': guest slot 3 given twice")
        #expect(err("name = 'p'\nkernel = '/k'\npci = [1]\n")
                == "p.cfg:3: key 'pci': expected a string in the list, found int 1")
    }

    @Test func sxpFormPrintsAndReadsBack() throws {
        var c = DomainConfiguration(name: "p")
        c.kernel = "/k"
        c.pciDevices = [try PciSpec(parsing: "03:1a.1"), try PciSpec(parsing: "0001:00:02.0@4")]
        let text = c.toSXP().description
        #expect(text.contains("(device (pci (dev (domain 0x0) (bus 0x3) (slot 0x1a) (func 0x1)) (dev (domain 0x1) (bus 0x0) (slot 0x2) (func 0x0) (vslot 0x4))))"))
        let back = try DomainConfiguration(sxp: SXP.parse(text))
        #expect(back.pciDevices == c.pciDevices)
        // Xen's own form, as xm create -n printed it.
        let xen = try DomainConfiguration(sxp: SXP.parse(
            "(vm (name x) (image (linux (kernel /k))) (device (pci (dev (domain 0x0)(bus 0x3)(slot 0x1a)(func 0x1)))))"))
        #expect(xen.pciDevices == [PciSpec(address: PciAddress(bus: 3, slot: 0x1a, function: 1))])
        func err(_ s: String) -> String {
            do { _ = try DomainConfiguration(sxp: SXP.parse(s)); return "parsed" } catch { return error.description }
        }
        #expect(err("(vm (name x) (device (pci (dev (domain 0x0)(bus 0x3)(slot 0x20)(func 0x1)))))")
                == "<sxp>:0: key 'pci': pci dev: bad slot '0x20' (expected 0x0...0x1f)")
        #expect(err("(vm (name x) (device (pci (dev (domain 0x0)(bus 0x3)(func 0x1)))))").hasPrefix("<sxp>:0: key 'pci': pci dev: missing (slot ...)"))
    }

    @Test func xendConfigPciHide() throws {
        let c = try XendConfig(parsing: "(pci-hide (0000:00:04.0) (01:00.0))\n(pci-hide-on-create no)", file: "x.sxp")
        #expect(c.pciHide.map(\.description) == ["0000:00:04.0", "0000:01:00.0"])
        #expect(c.pciHideOnCreate == false)
        #expect(try XendConfig(forms: c.toSXP().map { SXPForm(value: $0, line: 1) }, file: "x") == c)
        #expect(try XendConfig(parsing: "(pci-hide)").pciHide.isEmpty)
        func err(_ s: String) -> String {
            do { _ = try XendConfig(parsing: s, file: "x.sxp"); return "parsed" } catch { return error.description }
        }
        #expect(err("(pci-hide (00:04))") == "x.sxp:1: key 'pci-hide': malformed PCI address '00:04' (expected [DDDD:]BB:SS.F, e.g. 01:00.0 or 0000:02:01.7)")
        #expect(err("\n(pci-hide (00:04.0) (0000:00:04.0))") == "x.sxp:2: key 'pci-hide': PCI device 0000:00:04.0 given twice")
        #expect(err("(pci-hide (00:04.0 00:05.0))") == "x.sxp:1: key 'pci-hide': expected PCI addresses like (0000:00:04.0), found (00:04.0 00:05.0)")
    }
}

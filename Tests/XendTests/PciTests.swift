import DomainConfig
import Foundation
import Logging
import Testing
import XendAPI
@testable import Xend

/// PCI passthrough refusals in xend (issue 18): before anything is made, naming the engine
/// or the device; nothing is left (no record, no pci.json entry).
@Suite struct PciRefusalTests {
    @Test func theCoreEngineRefusesPciNamingItself() throws {
        let root = tempRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let manager = DomainManager(paths: XenithPaths(root: root), xendConfig: XendConfig(), engines: ["core": SleepEngine()],
                                    xenstore: nil, logger: Logger(label: "test"))
        var cfg = DomainConfiguration(name: "p")
        cfg.kernel = root + "/kernel"
        cfg.pciDevices = [try PciSpec(parsing: "00:04.0")]
        do {
            _ = try manager.create(sxpText: cfg.toSXP().description, paused: false)
            Issue.record("created")
        } catch {
            #expect(error.kind == .badRequest)
            #expect(error.message == "pci: the core engine cannot pass PCI devices through (VFIO DMA mapping of guest RAM is not implemented in it): use engine = 'qemu'")
        }
        #expect(manager.list(long: false).count == 1)   // Domain-0 only
        #expect((try? FileManager.default.contentsOfDirectory(atPath: XenithPaths(root: root).registryDir))?.isEmpty ?? true)
    }

    @Test func supervisorRefusesAbsentAndSharedDevicesNamingThem() throws {
        let root = tempRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let (paths, pcis) = try sharedGroupHost(root)
        func refusal(_ bdf: String) -> XendError? {
            do { try pcis.assign(domid: 4, specs: [try! PciSpec(parsing: bdf)], owner: nil); return nil } catch { return error }
        }
        let absent = refusal("0000:07:00.0")
        #expect(absent?.kind == .badRequest)
        #expect(absent?.message == "pci: PCI device 0000:07:00.0 does not exist on this host (no /sys/bus/pci/devices/0000:07:00.0)")
        let shared = refusal("00:04.0")
        #expect(shared?.message == "pci: PCI device 0000:00:04.0 shares IOMMU group 3 with 0000:00:05.0, which is bound to host driver ahci")
        #expect(pcis.assigned(domid: 4).isEmpty)
        #expect(pcis.assignable().isEmpty)
        #expect(!FileManager.default.fileExists(atPath: paths.xendLib + "/pci.json"))
    }

    /// `xm pci-attach` / `pci-detach` on a core-engine domain: refused naming the engine;
    /// a malformed BDF or slot, or a function the domain does not have, named; the domain's
    /// configuration keeps no PCI device.
    @Test func hotPlugRefusalsNameTheEngineAndTheDevice() throws {
        let root = tempRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let manager = DomainManager(paths: XenithPaths(root: root), xendConfig: XendConfig(), engines: ["core": SleepEngine()],
                                    xenstore: nil, logger: Logger(label: "test"))
        var cfg = DomainConfiguration(name: "hp")
        cfg.kernel = root + "/kernel"
        let info = try manager.create(sxpText: cfg.toSXP().description, paused: false)
        defer { _ = try? manager.destroy("hp") }
        func refusal(_ f: () throws(XendError) -> PciList) -> XendError? {
            do { _ = try f(); return nil } catch { return error }
        }
        let core = refusal { () throws(XendError) in try manager.pciAttach("hp", bdf: "00:04.0", vslot: nil) }
        #expect(core?.kind == .badRequest)
        #expect(core?.message == "pci-attach: Domain hp runs on the core engine, which cannot hot-plug PCI devices: use engine = 'qemu'")
        let bad = refusal { () throws(XendError) in try manager.pciAttach("hp", bdf: "00:1f", vslot: nil) }
        #expect(bad?.kind == .badRequest)
        #expect(bad?.message.hasPrefix("pci-attach: malformed PCI address '00:1f'") == true)
        let slot = refusal { () throws(XendError) in try manager.pciAttach("hp", bdf: "00:04.0", vslot: 0x20) }
        #expect(slot?.message == "pci-attach: bad virtual slot 0x20 (expected hex 1 to 1f)")
        let twice = refusal { () throws(XendError) in try manager.pciAttach("hp", bdf: "00:04.0@3", vslot: 4) }
        #expect(twice?.message.hasPrefix("pci-attach: give the guest slot once") == true)
        let none = refusal { () throws(XendError) in try manager.pciDetach("hp", bdf: "0000:00:04.0") }
        #expect(none?.kind == .badRequest)
        #expect(none?.message == "pci-detach: PCI device 0000:00:04.0 is not assigned to domain hp")
        let gone = refusal { () throws(XendError) in try manager.pciAttach("nosuch", bdf: "00:04.0", vslot: nil) }
        #expect(gone?.kind == .noSuchDomain)
        #expect(try manager.pciList("hp").devices.isEmpty)
        #expect(info.domid > 0)
    }

    /// The host side of `pci-attach` refuses an absent function and one sharing its group
    /// with a host-bound device before the engine is asked (the plug closure never runs),
    /// and leaves nothing in pci.json.
    @Test func hotAttachRefusesBeforeTheEngineIsAsked() throws {
        let root = tempRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let (paths, pcis) = try sharedGroupHost(root)
        var plugged = 0
        func refusal(_ bdf: String, current: [PciSpec] = []) -> XendError? {
            do {
                _ = try pcis.hotAttach(domid: 4, spec: try! PciSpec(parsing: bdf), current: current, owner: nil) { () throws(XendError) -> String? in
                    plugged += 1; return "hpnet0"
                }
                return nil
            } catch { return error }
        }
        #expect(refusal("0a:00.0")?.message == "pci: PCI device 0000:0a:00.0 does not exist on this host (no /sys/bus/pci/devices/0000:0a:00.0)")
        #expect(refusal("00:04.0")?.message == "pci: PCI device 0000:00:04.0 shares IOMMU group 3 with 0000:00:05.0, which is bound to host driver ahci")
        #expect(refusal("00:04.0", current: [try PciSpec(parsing: "00:04.0")])?.message == "pci: PCI device 0000:00:04.0 is already assigned to this domain")
        #expect(plugged == 0)
        #expect(pcis.assigned(domid: 4).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: paths.xendLib + "/pci.json"))
        #expect(throws: XendError.self) { try pcis.hotDetach(domid: 4, address: PciAddress(bus: 0, slot: 4, function: 0), remaining: []) }
    }
}

/// A host under `root` whose sysfs tree has 0000:00:04.0 in IOMMU group 3 with 0000:00:05.0,
/// which ahci holds, and the PCI supervisor over it (its pciback never runs).
func sharedGroupHost(_ root: String) throws -> (XenithPaths, PciSupervisor) {
    let sys = root + "/sys"
    for (bdf, drv) in [("0000:00:04.0", nil), ("0000:00:05.0", "ahci")] as [(String, String?)] {
        let dir = sys + "/bus/pci/devices/" + bdf
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: sys + "/kernel/iommu_groups/3/devices", withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: sys + "/kernel/iommu_groups/3/devices/" + bdf, withDestinationPath: dir)
        try FileManager.default.createSymbolicLink(atPath: dir + "/iommu_group", withDestinationPath: sys + "/kernel/iommu_groups/3")
        if let drv {
            try FileManager.default.createDirectory(atPath: sys + "/bus/pci/drivers/" + drv, withIntermediateDirectories: true)
            try FileManager.default.createSymbolicLink(atPath: dir + "/driver", withDestinationPath: sys + "/bus/pci/drivers/" + drv)
        }
    }
    let paths = XenithPaths(root: root)
    let pcis = PciSupervisor(paths: paths, binary: "/nonexistent/pciback", manifest: nil, xenstore: nil, config: XendConfig(),
                             logger: Logger(label: "test"), sysfsRoot: sys, devRoot: root + "/dev")
    return (paths, pcis)
}

/// An xend that died while a domain held a PCI function — a create it did not finish, or a
/// destroy cut between marking the domain and releasing its devices (its record then has
/// no engine) — left the function "assigned" in pci.json: the next xend gives it back when
/// it adopts the records (from an adversarial review of issue 18).
@Suite struct PciAfterAnXendCrashTests {
    @Test(arguments: [true, false]) func adoptionGivesBackFunctionsOfDomainsWithoutAnEngine(creating: Bool) throws {
        let root = tempRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        _ = try sharedGroupHost(root)   // the host's sysfs tree
        let paths = XenithPaths(root: root)
        // What the dead xend left: 0000:00:04.0 assigned to domain 7, and domain 7's record.
        let entry = PciSupervisor.Entry(address: "0000:00:04.0", originalDriver: nil, iommuGroup: 3, domid: 7, configured: false)
        XenithPaths.makeDirectories(paths.xendLib)
        try JSONEncoder().encode(PciSupervisor.State(entries: [entry], backends: []))
            .write(to: URL(fileURLWithPath: paths.xendLib + "/pci.json"))
        var cfg = DomainConfiguration(name: "p")
        cfg.kernel = root + "/kernel"
        cfg.pciDevices = [try PciSpec(parsing: "00:04.0")]
        var r = DomainRecord(domid: 7, name: "p", uuid: "8e3d4a40-7b1c-4a55-9c0e-3f3f0c4c1d07", config: cfg, engine: "core",
                             process: nil, startTime: 0, restartCount: 0, consoleLog: root + "/p.log")
        r.creating = creating ? true : nil
        XenithPaths.makeDirectories(paths.registryDir)
        try XendClient.encoder.encode(r).write(to: URL(fileURLWithPath: paths.registryDir + "/7.json"))

        let pcis = PciSupervisor(paths: paths, binary: "/nonexistent/pciback", manifest: nil, xenstore: nil, config: XendConfig(),
                                 logger: Logger(label: "test"), sysfsRoot: root + "/sys", devRoot: root + "/dev")
        #expect(pcis.assigned(domid: 7) == ["0000:00:04.0"])
        let manager = DomainManager(paths: paths, xendConfig: XendConfig(), engines: ["core": SleepEngine()],
                                    xenstore: nil, logger: Logger(label: "test"), pcis: pcis)
        manager.adopt()
        #expect(pcis.assigned(domid: 7).isEmpty)
        let left = try JSONDecoder().decode(PciSupervisor.State.self,
                                            from: Data(contentsOf: URL(fileURLWithPath: paths.xendLib + "/pci.json")))
        #expect(left.entries.isEmpty)
        #expect(left.backends.isEmpty)
    }
}

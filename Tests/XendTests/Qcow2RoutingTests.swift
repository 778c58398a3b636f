// Which disks blkback serves: raw and qcow2 on both engines (the qemu engine hands them to
// QEMU as vhost-user-blk), other formats left to QEMU's own block layer on the qemu engine
// and refused by name by the core.
import DomainConfig
import Testing
@testable import Xend

@Suite struct Qcow2RoutingTests {
    let config: DomainConfiguration = {
        try! DomainConfiguration(parsing: """
            name = "q"
            kernel = "/boot/vmlinuz"
            memory = 128
            disk = ['tap:qcow2:/srv/a.qcow2,xvda,w', 'file:/srv/b.img,xvdb,w', 'tap:vhd:/srv/c.vhd,xvdc,w']
            """)
    }()

    @Test func qemuEngineServesQcow2OnBlkback() {
        #expect(config.disks.map(\.format) == ["qcow2", "raw", "vhd"])
        let plan = QemuEngineDriver(binary: "/bin/false", accelerator: .tcg).devicePlan(for: config, domid: 7)
        #expect(plan.servedDisks.map(\.vdev) == ["xvda", "xvdb"])
    }

    @Test func blkbackRefusesOtherFormatsByName() throws {
        for d in config.disks where d.format != "vhd" {
            #expect(throws: Never.self) { try BlockSupervisor.check(d, path: d.path!, inUse: []) }
        }
        let vhd = config.disks[2]
        do { try BlockSupervisor.check(vhd, path: vhd.path!, inUse: []); Issue.record("vhd accepted") }
        catch { #expect(error.message.contains("Image format vhd is not supported (raw and qcow2 images only)"), "\(error.message)") }
        // w! would let two blkbacks allocate clusters in one qcow2 image.
        var shared = config.disks[0]
        shared.access = .readWriteShared
        do { try BlockSupervisor.check(shared, path: shared.path!, inUse: []); Issue.record("qcow2 w! accepted") }
        catch { #expect(error.message.contains("Mode w! cannot share a qcow2 image"), "\(error.message)") }
        var raw = config.disks[1]
        raw.access = .readWriteShared
        #expect(throws: Never.self) { try BlockSupervisor.check(raw, path: raw.path!, inUse: []) }
    }
}

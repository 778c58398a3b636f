import Testing
import XendAPI
@testable import XM

/// `xm block-list`: Xen 3.0's header and `%-3d    %-3d  %-3d   %-3d    %-3d    %-5d %-30s  `
/// rows (handle 0: Xen's vbd front-ends have none); `-l` as SXP.
@Test func blockListTableIsXens() {
    let v = VbdInfo(vdev: 51728, dev: "xvdb", state: 4, bePath: "/local/domain/0/backend/vbd/3/51728",
                    uname: "file:/img/b.img", mode: "w", deviceType: "disk", socket: "/s", pid: 42, broken: false)
    var hda = v
    hda.vdev = 768; hda.dev = "hda"; hda.state = 6; hda.bePath = "/local/domain/0/backend/vbd/3/768"; hda.broken = true
    #expect(XM.blockListTable([v, hda]) == """
        Vdev  BE handle state evt-ch ring-ref BE-path
        51728    0    0     4      -1     -1    /local/domain/0/backend/vbd/3/51728  
        768    0    0     6      -1     -1    /local/domain/0/backend/vbd/3/768  
        """)
    let sxp = XM.vbdSXP(v)
    #expect(sxp.hasPrefix("(51728\n    (vbd\n") && sxp.contains("(virtual-device 51728)") && sxp.contains("(uname file:/img/b.img)")
            && sxp.contains("(blkback-pid 42)") && !sxp.contains("(broken"))
    #expect(XM.vbdSXP(hda).contains("(broken 1)"))
    #expect(XM.brokenNote("b1", 3, ["vbd 51712 (xvda)", "vif 0"])
            == "Warning: domain b1 (3) has broken devices: vbd 51712 (xvda), vif 0 (their back-ends kept dying and were given up; the guest's I/O to them fails)\n")
}

@Test func blockCommandsCheckTheirArgumentsFirst() {
    let xm = XM(paths: XenithPaths(root: "/nonexistent"), cwd: "/")
    #expect(xm.run(["block-attach", "d", "file:/x", "xvdb", "rw+"]) != 0)
    #expect(xm.stderr.contains("Invalid mode 'rw+'"), "\(xm.stderr)")
    let xm2 = XM(paths: XenithPaths(root: "/nonexistent"), cwd: "/")
    #expect(xm2.run(["block-attach", "d", "file:/x", "xvdb", "w", "3"]) != 0)
    #expect(xm2.stderr.contains("Backend domain 3 is not supported"), "\(xm2.stderr)")
    let xm3 = XM(paths: XenithPaths(root: "/nonexistent"), cwd: "/")
    #expect(xm3.run(["block-detach", "d"]) != 0)
    #expect(xm3.stderr.contains("'xm block-detach' requires 2 arguments."), "\(xm3.stderr)")
}

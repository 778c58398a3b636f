import XendAPI
import Foundation
import Testing
@testable import XM

@Test func commandsMatchUniquePrefixes() {
    #expect(XM.lookup("li") == "list")
    #expect(XM.lookup("list") == "list")
    #expect(XM.lookup("d") == nil)          // one letter never matches
    #expect(XM.lookup("do") == nil)         // domid, domname: ambiguous
    #expect(XM.lookup("domn") == "domname")
    #expect(XM.lookup("cr") == "create")
    #expect(XM.lookup("frobnicate") == nil)
}

@Test func getoptFollowsPythonGnuGetopt() throws {
    let (o, p) = try gnuGetopt(["dom", "-wa", "--halt"], short: "hawHR", long: ["help", "all", "wait", "halt", "reboot"])
    #expect(o.map(\.0) == ["-w", "-a", "--halt"])
    #expect(p == ["dom"])
    let (o2, p2) = try gnuGetopt(["-f", "x.cfg", "--conf=y", "vmid=1"], short: "f:F:", long: ["config=", "defconfig="])
    #expect(o2.map { $0.0 + "=" + $0.1 } == ["-f=x.cfg", "--config=y"])
    #expect(p2 == ["vmid=1"])
    #expect(throws: GetOptError.self) { try gnuGetopt(["-x"], short: "l", long: []) }
    do { _ = try gnuGetopt(["-x"], short: "l", long: []) } catch { #expect(error.description == "option -x not recognized") }
}

@Test func listUsesXen3Columns() {
    let d = DomainInfo(domid: 7, name: "fixture", uuid: "u", memory: 32, maxmem: 32, vcpus: 1, onlineVcpus: 1,
                       state: "--p---", cpuTime: 12.34, startTime: 0, restartCount: 0, engine: "core")
    let lines = XM.brief([d]).split(separator: "\n")
    #expect(lines[0] == "Name                                      ID   Mem VCPUs      State   Time(s)")
    #expect(lines[1] == "fixture                                    7    32     1     --p---     12.3")
}

@Test func errorsUseXensWordsAndNoXendMeansOneLine() {
    let root = NSTemporaryDirectory() + "xm-test-\(getpid())"
    let xm = XM(paths: XenithPaths(root: root), cwd: "/")
    #expect(xm.run(["list"]) == 1)
    #expect(xm.stderr == "Error: Unable to connect to xend: No such file or directory. Is xend running?\n")
    #expect(xm.stdout.isEmpty)
    let xm2 = XM(paths: XenithPaths(root: root), cwd: "/")
    #expect(xm2.run(["create", "/nonexistent.cfg"]) == 1)
    #expect(xm2.stderr == "Error: Unable to open config file: /nonexistent.cfg\n")
    let xm3 = XM(paths: XenithPaths(root: root), cwd: "/")
    #expect(xm3.run(["frob"]) == 1)
    #expect(xm3.stderr.hasPrefix("Error: Subcommand frob not found!"))
    let xm4 = XM(paths: XenithPaths(root: root), cwd: "/")
    #expect(xm4.run(["destroy"]) == 1)
    #expect(xm4.stderr == "Error: 'xm destroy' requires 1 argument.\n")
}

@Test func dryRunPrintsSXPWithAbsolutePathsAndNeedsNoXend() throws {
    let dir = NSTemporaryDirectory() + "xm-dry-\(getpid())"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try "kernel = 'k/vmlinuz'\nmemory = 64\nname = 'd1'\nextra = 'quiet'\nroot = '/dev/vda'\n"
        .write(toFile: dir + "/d1.cfg", atomically: true, encoding: .utf8)
    let xm = XM(paths: XenithPaths(root: dir + "/root"), cwd: dir)
    #expect(xm.run(["create", "-n", "d1.cfg", "memory=48"]) == 0)
    #expect(xm.stdout.hasPrefix("Using config file \"./d1.cfg\".\n(vm\n"))
    #expect(xm.stdout.contains("(kernel \(dir)/k/vmlinuz)"))
    #expect(xm.stdout.contains("(memory 48)"))
    let bad = XM(paths: XenithPaths(root: dir + "/root"), cwd: dir)
    try "kernel = 'k'\nname = 'x'\nmemory = 'lots'\n".write(toFile: dir + "/bad.cfg", atomically: true, encoding: .utf8)
    #expect(bad.run(["create", "-n", "bad.cfg"]) == 1)
    #expect(bad.stderr.hasPrefix("Error: ./bad.cfg:3: key 'memory':"))
}

/// `xm network-list`'s table and SXP, as Xen 3.x prints them.
@Test func networkListTableIsXens() {
    let v = VifInfo(idx: 0, backendId: 0, mac: "00:16:3e:b9:b0:53", handle: 0, state: 4,
                    bePath: "/local/domain/0/backend/vif/1/0", vifname: "vif1.0", bridge: "xenbr0", ip: nil,
                    script: "vif-bridge", rate: nil, socket: "/s", pid: 42, broken: false)
    #expect(XM.networkListTable([v]) == """
        Idx BE     MAC Addr.     handle state evt-ch tx-/rx-ring-ref BE-path
        0   0  00:16:3e:b9:b0:53    0     4      -1    -1   /-1      /local/domain/0/backend/vif/1/0  
        """)
    #expect(XM.vifSXP(v).contains("(netback-pid 42)"))
}

/// services/examples, from this file's place in the repository.
let examples: String = {
    var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3) // XMTests.swift, XMTests, Tests
    return parts.joined(separator: "/") + "/services/examples"
}()

@Test func commandHelpIsARequestNotAnError() {
    for argv in [["create", "--help"], ["list", "-h"], ["shutdown", "--help"], ["network-list", "--help"]] {
        let xm = XM(paths: XenithPaths(root: "/nonexistent"), cwd: "/")
        #expect(xm.run(argv) == 0, "\(argv)")
        #expect(xm.stdout.hasPrefix("Usage: xm \(argv[0]) "), "\(argv): \(xm.stdout)")
        #expect(xm.stderr.isEmpty)
    }
    let xm = XM(paths: XenithPaths(root: "/nonexistent"), cwd: "/")
    #expect(xm.run(["create", "--help"]) == 0)
    #expect(xm.stdout.contains("--help_config"))
}

@Test func xmVarsScriptRunsAndListsItsVariables() throws {
    let xm = XM(paths: XenithPaths(root: "/nonexistent"), cwd: examples)
    #expect(xm.run(["create", "-n", "guest-set.cfg", "vmid=3", "size=big"]) == 0, "\(xm.stderr)")
    #expect(xm.stdout.contains("(name guest03)") && xm.stdout.contains("(memory 512)") && xm.stdout.contains("(vcpus 2)"))
    #expect(xm.stdout.contains("VMID=3 SIZE=BIG"))
    #expect(xm.stderr.isEmpty)

    let help = XM(paths: XenithPaths(root: "/nonexistent"), cwd: examples)
    #expect(help.run(["create", "--help_config", "guest-set.cfg"]) == 0)
    #expect(help.stdout == """
        Using config file "./guest-set.cfg".

        Configuration variables for ./guest-set.cfg:

        vmid         Guest number, 1 to 99.
        size         small (256 MiB, 1 vCPU) or big (512 MiB, 2 vCPUs); default small.


        """)

    let bad = XM(paths: XenithPaths(root: "/nonexistent"), cwd: examples)
    #expect(bad.run(["create", "-n", "guest-set.cfg", "vmid=100"]) == 1)
    #expect(bad.stderr == "Error: ./guest-set.cfg:15: key 'vmid': ValueError: vmid must be a number from 1 to 99, not 100 "
            + "(checking vmid='100' for xm_vars.check() at line 29)\n")
}

@Test func ignoredKeysAreWarnedAboutByName() throws {
    let dir = NSTemporaryDirectory() + "xm-warn-\(getpid())"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    try "name = 'w'\nkernel = '/k'\nioports = ['2f8-2ff']\nvtpm = ['instance=1,backend=0']\n"
        .write(toFile: dir + "/w.cfg", atomically: true, encoding: .utf8)
    let xm = XM(paths: XenithPaths(root: dir + "/root"), cwd: dir)
    #expect(xm.run(["create", "-n", "w.cfg"]) == 0)
    #expect(xm.stderr == "Warning: ./w.cfg:3: key 'ioports': accepted by xm, ignored by Xenith\n"
            + "Warning: ./w.cfg:4: key 'vtpm': accepted by xm, ignored by Xenith\n")
}

/// `xm top`'s table (issue 14, item 4).
@Suite struct TopFrameTests {
    func list(_ cpu: Double) -> DomainStatsList {
        DomainStatsList(hostMemoryKib: 2_000_000, hostCpus: 2, domains: [
            DomainStats(domid: 0, name: "Domain-0", state: "r-----", cpuTime: 10, memoryKib: 2_000_000, maxmemKib: 2_000_000,
                        vcpus: 2, nets: 0, netTxBytes: 0, netRxBytes: 0, vbds: 0, vbdReadBytes: 0, vbdWriteBytes: 0),
            DomainStats(domid: 3, name: "guest", state: "r-----", cpuTime: cpu, memoryKib: 200_000, maxmemKib: 400_000,
                        vcpus: 1, nets: 1, netTxBytes: 10240, netRxBytes: 20480, vbds: 2, vbdReadBytes: 4096, vbdWriteBytes: 1024),
        ])
    }

    @Test func columnsAndCpuShare() {
        let f = TopFrame.render(list(5.5), prev: list(5.0), elapsed: 1.0, clock: "12:00:00")
        let lines = f.split(separator: "\n").map(String.init)
        #expect(lines[0] == "xm top - 12:00:00")
        #expect(lines[1] == "2 domains: 2 running, 0 blocked, 0 paused, 0 crashed, 0 dying, 0 shutdown")
        #expect(lines.contains(TopFrame.header))
        let row = lines.last!.split(separator: " ").map(String.init)
        #expect(row == ["guest", "r-----", "5", "50.0", "200000", "10.0", "400000", "1", "1", "10", "20", "2", "4", "1"])
        // The header's columns line up with the row's right edges.
        #expect(lines.last!.count == TopFrame.header.count)
    }

    @Test func firstFrameHasNoShare() {
        let f = TopFrame.render(list(5.5), prev: nil, elapsed: 0, clock: "x")
        #expect(f.split(separator: "\n").last!.split(separator: " ")[3] == "0.0")
    }
}

/// `xm pci-attach DOM BDF [VSLOT]` and `pci-detach DOM BDF`: the argument count, the BDF
/// (Xen's forms, with or without the PCI domain) and the hex slot are checked before xend is
/// asked, each refusal naming the argument.
@Test func pciAttachAndDetachArguments() throws {
    #expect(try XM.pciAttachArguments(["01:00.0"]) == ("0000:01:00.0", nil))
    #expect(try XM.pciAttachArguments(["0000:02:1A.7", "0x1a"]) == ("0000:02:1a.7", 0x1a))
    #expect(try XM.pciAttachArguments(["0000:02:01.7", "5"]) == ("0000:02:01.7", 5))
    for (args, text) in [(["00:1f"], "malformed PCI address '00:1f'"), (["00:20.0"], "slot 0x20 is above 0x1f"),
                         (["00:04.0", "0"], "bad virtual slot '0'"), (["00:04.0", "20"], "bad virtual slot '20'"),
                         (["00:04.0", "zz"], "bad virtual slot 'zz'")] {
        do { _ = try XM.pciAttachArguments(args); Issue.record("accepted \(args)") } catch { #expect(error.message.contains(text), "\(error)") }
    }
    let root = NSTemporaryDirectory() + "xm-test-\(getpid())"
    for (args, message) in [(["pci-attach", "d"], "Error: 'xm pci-attach' requires between 2 and 3 arguments.\n"),
                            (["pci-attach", "d", "00:04.0", "5", "6"], "Error: 'xm pci-attach' requires between 2 and 3 arguments.\n"),
                            (["pci-detach", "d"], "Error: 'xm pci-detach' requires 2 arguments.\n"),
                            (["pci-attach", "d", "00:04.0", "0x20"], "Error: bad virtual slot '0x20' (expected hex 1 to 1f)\n"),
                            (["pci-detach", "d", "4.0"], "Error: malformed PCI address '4.0' (expected [DDDD:]BB:SS.F, e.g. 01:00.0 or 0000:02:01.7)\n")] {
        let xm = XM(paths: XenithPaths(root: root), cwd: "/")
        #expect(xm.run(args) == 1)
        #expect(xm.stderr == message)
    }
}

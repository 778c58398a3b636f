import XendAPI
import Foundation
import Testing
@testable import XM

/// CPU lists as Xen writes them: `all`, numbers, ranges, exclusions; refusals name the list.
@Test func cpuListsParseAsXenWritesThem() throws {
    #expect(try CPUList.parse("all", hostCPUs: 4) == [0, 1, 2, 3])
    #expect(try CPUList.parse("1", hostCPUs: 2) == [1])
    #expect(try CPUList.parse("0-3,^1", hostCPUs: 8) == [0, 2, 3])
    #expect(try CPUList.parse("3,0-1,1", hostCPUs: 4) == [0, 1, 3])
    #expect(try CPUList.parse("^0", hostCPUs: 4) == [1, 2, 3])
    #expect(try CPUList.parse(" 0 , 2-3 ", hostCPUs: 4) == [0, 2, 3])
    #expect(try CPUList.parse("0-7,^2-5", hostCPUs: 8) == [0, 1, 6, 7])
    func refusal(_ s: String, _ n: Int) -> String {
        do { _ = try CPUList.parse(s, hostCPUs: n); return "accepted" } catch { return error.description }
    }
    #expect(refusal("2", 2) == "Invalid CPU list '2': CPU 2 does not exist (this host has CPUs 0-1)")
    #expect(refusal("0-9", 4) == "Invalid CPU list '0-9': CPU 9 does not exist (this host has CPUs 0-3)")
    #expect(refusal("x", 4) == "Invalid CPU list 'x': bad item 'x' (expected N, N-M, ^N or all)")
    #expect(refusal("3-1", 4) == "Invalid CPU list '3-1': bad item '3-1' (expected N, N-M, ^N or all)")
    #expect(refusal("-1", 4) == "Invalid CPU list '-1': bad item '-1' (expected N, N-M, ^N or all)")
    #expect(refusal("1,,2", 4) == "Invalid CPU list '1,,2': bad item '' (expected N, N-M, ^N or all)")
    #expect(refusal("", 4) == "Invalid CPU list '': it names no CPU")
    #expect(refusal("0,^0", 4) == "Invalid CPU list '0,^0': it leaves no CPU")
}

/// The "CPU Affinity" column: `any cpu` for every host CPU, otherwise ranges (main.py format_cpumap).
@Test func cpuListsFormatAsXenShowsThem() {
    #expect(CPUList.format([0, 1], hostCPUs: 2) == "any cpu")
    #expect(CPUList.format([1], hostCPUs: 2) == "1")
    #expect(CPUList.format([0, 1, 3], hostCPUs: 8) == "0-1,3")
    #expect(CPUList.format([0, 1, 4, 6, 7], hostCPUs: 8) == "0-1,4,6-7")
    #expect(CPUList.format([5, 1, 2], hostCPUs: 8) == "1-2,5")
    #expect(CPUList.format([], hostCPUs: 8) == "no cpus")
}

@Test func vcpuListUsesXen3Columns() {
    let d = DomainVcpus(domid: 3, name: "guest", hostCpus: 2, vcpus: [
        VcpuInfo(number: 0, online: true, running: true, blocked: false, cpuTime: 12.34, cpu: 1, affinity: [0, 1]),
        VcpuInfo(number: 1, online: true, running: false, blocked: true, cpuTime: 0.05, cpu: 0, affinity: [1]),
        VcpuInfo(number: 2, online: false, running: false, blocked: false, cpuTime: 0, cpu: -1, affinity: [0, 1]),
    ])
    #expect(XM.vcpuTable([d]).split(separator: "\n", omittingEmptySubsequences: false) == [
        "Name                              ID  VCPU  CPU  State  Time(s)  CPU Affinity",
        "guest                              3     0    1   r--      12.3  any cpu",
        "guest                              3     1    0   -b-       0.1  1",
        "guest                              3     2    -   --p       0.0  any cpu",
        "",
    ])
}

@Test func schedCreditUsesXen3Columns() {
    let t = XM.schedCreditTable([SchedCredit(domid: 0, name: "Domain-0", weight: 256, cap: 0),
                                 SchedCredit(domid: 12, name: "web", weight: 768, cap: 20)])
    #expect(t == """
        Name                                ID Weight  Cap
        Domain-0                             0    256    0
        web                                 12    768   20

        """)
}

/// `xm CMD --help` and `-h` print that command's usage and exit 0, for every subcommand.
@Test func everySubcommandHasHelp() {
    for c in XM.commandNames {
        for flag in ["--help", "-h"] {
            let xm = XM(paths: XenithPaths(root: "/nonexistent"), cwd: "/")
            #expect(xm.run([c, flag]) == 0, "\(c) \(flag)")
            #expect(xm.stdout.hasPrefix("Usage: xm \(c) "), "\(c) \(flag): \(xm.stdout)")
            #expect(xm.stderr.isEmpty, "\(c) \(flag): \(xm.stderr)")
        }
    }
    let xm = XM(paths: XenithPaths(root: "/nonexistent"), cwd: "/")
    #expect(xm.run(["sched-credit", "--help"]) == 0)
    #expect(xm.stdout.contains("--weight=WEIGHT") && xm.stdout.contains("--cap=CAP"))
}

/// Bad arguments are refused by xm itself, before xend is asked.
@Test func cpuCommandsCheckTheirArguments() {
    func run(_ a: [String]) -> (Int32, String) {
        let xm = XM(paths: XenithPaths(root: "/nonexistent"), cwd: "/")
        return (xm.run(a), xm.stderr)
    }
    #expect(run(["vcpu-pin", "d", "0"]) == (1, "Error: 'xm vcpu-pin' requires 3 arguments.\n"))
    #expect(run(["vcpu-set", "d", "two"]) == (1, "Error: Invalid VCPUs 'two': expected a number\n"))
    #expect(run(["sched-credit", "-d", "d", "-w", "heavy"]) == (1, "Error: Invalid weight 'heavy': expected an integer\n"))
    #expect(run(["sched-credit", "-w", "300"]).1.hasPrefix("Error: No domain given.\n"))
}

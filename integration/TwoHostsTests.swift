import Foundation
import Testing

/// Two Domain-0s on one machine: two xend instances, each with its own XENITH_ROOT and
/// network namespace (so both bind xend-port 8000), each running a domain of the same name.
/// Nothing is shared: each lists, serves over TCP and destroys only its own domain. This is
/// the set-up relocation (live migration) tests build on.
@Suite(.serialized) struct TwoHostsTests {
    struct Host {
        let ns: String
        let root: String
        func env(_ tool: String, _ args: [String]) throws -> RunResult {
            try run("/usr/bin/env", ["ip", "netns", "exec", ns, "env", "XENITH_ROOT=\(root)", Env.binary(tool)] + args, timeout: 60)
        }
        func xm(_ args: String...) throws -> RunResult { try env("xm", args) }
        func curl(_ path: String) throws -> RunResult {
            try run("/usr/bin/env", ["ip", "netns", "exec", ns, "curl", "-s", "--max-time", "5", "http://127.0.0.1:8000" + path])
        }
        func teardown() {
            _ = try? env("xend", ["stop"])
            for f in ["/run/xenstored/xenstored.pid", "/run/xenconsoled/xenconsoled.pid"] {
                if let p = try? String(contentsOfFile: root + f, encoding: .utf8),
                   let pid = Int32(p.trimmingCharacters(in: .whitespacesAndNewlines)) { kill(pid, SIGTERM) }
            }
            _ = try? run("/usr/bin/env", ["ip", "netns", "del", ns])
            _ = try? FileManager.default.removeItem(atPath: root)
        }
    }

    @Test func twoXendInstancesInTwoNamespaces() throws {
        if skip(Env.kvmUnavailable) { return }
        if getuid() != 0 { print("SKIP: twoXendInstancesInTwoNamespaces: needs root (network namespaces)"); return }
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/curl") else {
            print("SKIP: twoXendInstancesInTwoNamespaces: curl missing"); return
        }
        let kernel = Env.fixture("pvh.elf")
        var hosts: [Host] = []
        defer { for h in hosts { h.teardown() } }
        for tag in ["a", "b"] {
            var t = Array("/tmp/xenith-2h-XXXXXX".utf8CString)
            let root = t.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
            let h = Host(ns: "xenith2h\(tag)\(getpid())", root: root)
            hosts.append(h)
            guard (try run("/usr/bin/env", ["ip", "netns", "add", h.ns])).status == 0 else {
                print("SKIP: twoXendInstancesInTwoNamespaces: cannot create network namespaces"); return
            }
            #expect(try run("/usr/bin/env", ["ip", "netns", "exec", h.ns, "ip", "link", "set", "lo", "up"]).status == 0)
            try FileManager.default.createDirectory(atPath: root + "/etc/xen", withIntermediateDirectories: true)
            try "(xend-http-server yes)\n(xend-port 8000)\n(xend-address localhost)\n(xend-unix-server yes)\n"
                .write(toFile: root + "/etc/xen/xend-config.sxp", atomically: true, encoding: .utf8)
            let s = try h.env("xend", ["start"])
            #expect(s.status == 0, "xend start in \(h.ns): \(s.stderr)")
            try "kernel = '\(kernel)'\nmemory = 32\nname = 'same'\nextra = 't'\nengine = 'core'\n"
                .write(toFile: root + "/same.cfg", atomically: true, encoding: .utf8)
        }
        // The same name in both: no conflict, each xend numbers its own domains.
        for h in hosts {
            let c = try h.xm("create", h.root + "/same.cfg")
            #expect(c.status == 0 && c.stdout.contains("Started domain same"), "\(h.ns): \(c.stderr)")
        }
        // A second domain only in host a: domid 2 there, absent in b.
        #expect(try hosts[0].xm("create", hosts[0].root + "/same.cfg", "name=only-a").status == 0)
        #expect(try hosts[0].xm("list").stdout.contains("\nonly-a "))
        #expect(!(try hosts[1].xm("list").stdout.contains("only-a")))
        // Each namespace's TCP management interface (both on port 8000) answers for its own xend.
        let ja = try hosts[0].curl("/api/v1/domains")
        let jb = try hosts[1].curl("/api/v1/domains")
        #expect(ja.status == 0 && ja.stdout.contains("only-a") && ja.stdout.contains("\"same\""), "a: \(ja.stdout) \(ja.stderr)")
        #expect(jb.status == 0 && !jb.stdout.contains("only-a") && jb.stdout.contains("\"same\""), "b: \(jb.stdout) \(jb.stderr)")
        // Destroying `same` in a leaves b's running.
        #expect(try hosts[0].xm("destroy", "same").status == 0)
        #expect(!(try hosts[0].xm("list").stdout.contains("\nsame ")))
        #expect(try hosts[1].xm("list", "same").stdout.contains("r-----"))
        for h in hosts {
            _ = try? h.xm("destroy", "same")
            _ = try? h.xm("destroy", "only-a")
        }
    }
}

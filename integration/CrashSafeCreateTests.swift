// Crash-safe creation: xend is SIGKILLed at each point of an `xm create` (the intent record
// written, xenstore, each vif — one with its own `vifname=` —, each vbd, the console, the
// engine's process spawned, the engine started) through its
// fault-injection hook (Sources/Xend/FaultInjection.swift). After xend starts again, the
// half-made domain is undone: no engine, blkback or netback process, tap, socket, xenstore
// node or registry file is left, the image's write lock is free, and the same config
// creates again.
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite(.serialized) struct CrashSafeCreateTests {
    /// Processes of this root other than its daemons (xenstored, xenconsoled, xend).
    static func domainProcesses(root: String) -> [String] {
        let all = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return all.compactMap { Int32($0) }.compactMap { pid -> String? in
            guard let c = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8),
                  ["blkback", "netback", "xenith-core"].contains(where: { c.contains($0) }),
                  let st = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), !st.contains(") Z "),
                  (try? String(contentsOfFile: "/proc/\(pid)/environ", encoding: .utf8))?.contains("XENITH_ROOT=\(root)") == true
            else { return nil }
            return "\(pid) " + c.replacingOccurrences(of: "\0", with: " ")
        }
    }

    @Test func xendKilledDuringCreateLeavesNothingOrARunningDomain() throws {
        if skip(NetbackNamespace.unavailable ?? Env.kvmUnavailable) { return }
        let ns = try NetbackNamespace("crash")
        let x = try NamespacedXend(ns, tag: "crash")
        defer { x.shutdown() }
        let image = x.root + "/disk.img"
        #expect(FileManager.default.createFile(atPath: image, contents: Data(count: 1 << 20)))
        let cfg = try x.write("k.cfg", """
            kernel = "\(Env.fixture("pvh.elf"))"
            memory = 32
            name = "k"
            extra = "t"
            engine = "core"
            disk = ['file:\(image),xvda,w']
            vif = ['mac=00:16:3e:0c:00:01, bridge=xenbr0', 'mac=00:16:3e:0c:00:02, bridge=xenbr0, vifname=crashtap1']
            """)
        let pidFile = x.root + "/run/xend.pid"
        func xendAlive() -> Bool {
            guard let t = try? String(contentsOfFile: pidFile, encoding: .utf8),
                  let pid = Int32(t.trimmingCharacters(in: .whitespacesAndNewlines)) else { return false }
            let st = readText("/proc/\(pid)/stat")
            return !st.isEmpty && !st.contains(") Z ")
        }
        func startXend(crashAt point: String?) throws {
            let env = point.map { "XENITH_TEST_CRASH_AT=\($0) " } ?? ""
            let r = try ns.exec("env XENITH_ROOT=\(x.root) \(env)\(Env.binary("xend")) start", timeout: 60)
            #expect(r.status == 0, "xend start: \(r.stderr)")
        }
        _ = try run("/usr/bin/env", ["XENITH_ROOT=\(x.root)", Env.binary("xend"), "stop"])

        for point in ["intent", "xenstore", "vif-0", "vif-1", "vbd-xvda", "console", "engine-spawned", "engine"] {
            try startXend(crashAt: point)
            let c = try x.xm(["create", cfg])
            #expect(c.status != 0, "\(point): xend should have died: \(c.stdout)")
            #expect(NamespacedXend.waitUntil(10) { !xendAlive() }, "\(point): xend still runs")
            try startXend(crashAt: nil)

            // Either running and listed, or nothing of it left. A creation interrupted before
            // its record was final is undone.
            let l = try x.xm(["list"])
            #expect(!l.stdout.contains("\nk "), "\(point): \(l.stdout)")
            #expect(Self.domainProcesses(root: x.root).isEmpty, "\(point): \(Self.domainProcesses(root: x.root))")
            let links = (try? ns.exec("ip -o link").stdout) ?? ""
            #expect(!links.contains(": vif") && !links.contains("crashtap1"), "\(point): taps left: \(links)")
            let sockets = (try? FileManager.default.contentsOfDirectory(atPath: x.root + "/run/xenith")) ?? []
            #expect(sockets.isEmpty, "\(point): sockets left: \(sockets)")
            let runFiles = (try? FileManager.default.contentsOfDirectory(atPath: x.root + "/run/xend/domains")) ?? []
            #expect(runFiles.isEmpty, "\(point): run files left: \(runFiles)")
            let records = (try? FileManager.default.contentsOfDirectory(atPath: x.root + "/var/lib/xend/domains")) ?? []
            #expect(records.isEmpty, "\(point): registry files left: \(records)")
            #expect(x.xsList("/local/domain") == ["0"], "\(point): \(x.xsList("/local/domain"))")
            #expect(x.xsList("/vm").isEmpty, "\(point): \(x.xsList("/vm"))")
            #expect(x.xsList("/local/domain/0/backend").isEmpty, "\(point): \(x.xsList("/local/domain/0/backend"))")
            if point != "intent" {
                #expect(try x.xm(["dmesg"]).stdout.contains("creation was interrupted"), "\(point): no dmesg line")
            }

            // The image's lock is free and the same config creates again.
            let again = try x.xm(["create", cfg])
            #expect(again.status == 0, "\(point): create again: \(again.stderr)")
            #expect(try x.xm(["list", "k"]).stdout.contains("r-----"), "\(point)")
            #expect(try x.xm(["destroy", "k"]).status == 0)
            #expect(NamespacedXend.waitUntil(5) { Self.domainProcesses(root: x.root).isEmpty })
            _ = try run("/usr/bin/env", ["XENITH_ROOT=\(x.root)", Env.binary("xend"), "stop"])
        }
        try startXend(crashAt: nil)
    }
}

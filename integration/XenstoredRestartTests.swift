import Foundation
import Testing

/// xenstored under xend's supervision (Sources/Xend/XenstoredSupervisor.swift), with its
/// store on disk (Sources/XenStore/StoreFiles.swift): two core domains with a blkback disk
/// each in a temporary XENITH_ROOT; SIGKILL xenstored: it is back within a second with every
/// domain's entries, and xm, xend's own writes, a blkback restart and Debian's xenstore-utils
/// work on; then xend is restarted while xenstored is down.
@Suite(.serialized) struct XenstoredRestartTests {
    let root = Scratch.make("xenith-xsd")

    func env() { setenv("XENITH_ROOT", root, 1); setenv("XENSTORED_PATH", root + "/run/xenstored/socket", 1) }
    func xm(_ args: String...) throws -> RunResult { env(); return try run(Env.binary("xm"), args, timeout: 60) }
    func xend(_ arg: String) throws -> RunResult { env(); return try run(Env.binary("xend"), [arg], timeout: 60) }
    func tool(_ name: String, _ args: String...) throws -> RunResult { env(); return try run("/usr/bin/" + name, args, timeout: 10) }
    func read(_ rel: String) -> String { readText(root + rel) }
    func pidFile(_ rel: String) -> Int32? { Int32(read(rel).trimmingCharacters(in: .whitespacesAndNewlines)) }
    var xenstoredPid: Int32? { pidFile("/run/xenstored/xenstored.pid") }
    func pgrep(_ pattern: String) -> [Int32] { processes(matching: pattern, root: root) }
    func waitUntil(_ seconds: Double, _ cond: () -> Bool) -> Bool {
        let end = Date().addingTimeInterval(seconds)
        while Date() < end { if cond() { return true }; usleep(20_000) }
        return cond()
    }
    /// Every domain's entries, one `path = "value"` line each (xenstore-ls -f), sorted.
    func entries() -> [String] {
        guard let r = try? tool("xenstore-ls", "-f", "/local/domain"), r.status == 0 else { return [] }
        return r.stdout.split(separator: "\n").map(String.init).sorted()
    }
    func teardown() {
        _ = try? xm("destroy", "xs1")
        _ = try? xm("destroy", "xs2")
        _ = try? xend("stop")
        for f in ["/run/xenconsoled/xenconsoled.pid", "/run/xenstored/xenstored.pid"] { if let p = pidFile(f) { kill(p, SIGTERM) } }
        unsetenv("XENSTORED_PATH")
        try? FileManager.default.removeItem(atPath: root)
    }

    /// SIGKILLs xenstored and waits until another one answers with the same entries.
    /// - Returns: seconds until it answered again.
    func killXenstored(_ what: String) throws -> Double {
        let old = try #require(xenstoredPid, "\(what): no xenstored pid file")
        #expect(kill(old, SIGKILL) == 0)
        let t0 = Date()
        let back = waitUntil(5) {
            guard let p = xenstoredPid, p != old, kill(p, 0) == 0 else { return false }
            return (try? tool("xenstore-read", "/local/domain/0/name"))?.stdout == "Domain-0\n"
        }
        #expect(back, "\(what): xenstored not back; \(read("/var/log/xen/xend.log").suffix(800)) \(read("/var/log/xen/xenstored.log").suffix(400))")
        return Date().timeIntervalSince(t0)
    }

    @Test func xenstoredRestartsWithEveryDomainsEntries() throws {
        if skip(Env.kvmUnavailable) { return }
        if getuid() != 0 { print("SKIP: xenstoredRestartsWithEveryDomainsEntries: needs root (sandboxed blkback)"); return }
        if access("/usr/bin/xenstore-ls", X_OK) != 0 { print("SKIP: xenstoredRestartsWithEveryDomainsEntries: xenstore-utils not installed"); return }
        let kernel = Env.fixture("pvh.elf")
        defer { teardown() }
        var ids: [String: String] = [:]
        #expect(try xend("start").status == 0)
        for name in ["xs1", "xs2"] {
            let img = root + "/\(name).img"
            #expect(FileManager.default.createFile(atPath: img, contents: Data(count: 1 << 20)))
            let cfg = root + "/\(name).cfg"
            try "kernel = '\(kernel)'\nmemory = 32\nname = '\(name)'\nextra = 'B'\nengine = 'core'\ndisk = ['file:\(img),xvda,w']\n"
                .write(toFile: cfg, atomically: true, encoding: .utf8)
            let c = try xm("create", cfg)
            #expect(c.status == 0, "\(c.stderr) \(read("/var/log/xen/xend.log").suffix(800))")
            ids[name] = try xm("domid", name).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let before = entries()
        for (name, id) in ids {
            #expect(before.contains("/local/domain/\(id)/name = \"\(name)\""), "\(before)")
            #expect(before.contains("/local/domain/0/backend/vbd/\(id)/51712/state = \"4\""), "\(before)")
        }
        #expect(FileManager.default.fileExists(atPath: root + "/var/lib/xenstored/journal"))

        // 1. SIGKILL: back within a second, with every domain's entries.
        let took = try killXenstored("first kill")
        print("xenstored answered again \(String(format: "%.3f", took)) s after SIGKILL")
        #expect(took < 1.0)
        #expect(entries() == before)

        // 2. xm list, and a write through xend's reconnected client (xm mem-max).
        let list = try xm("list")
        #expect(list.status == 0 && list.stdout.contains("xs1") && list.stdout.contains("xs2"), "\(list.stdout)\(list.stderr)")
        let mm = try xm("mem-max", "xs1", "48")
        #expect(mm.status == 0, "\(mm.stderr)")
        #expect(try tool("xenstore-read", "/local/domain/\(ids["xs1"]!)/memory/static-max").stdout == "49152\n")

        // 3. A back-end restart after xenstored's: blkback of xs2 SIGKILLed, restarted, its
        //    vbd still connected in xenstore.
        func restarts() -> Int { read("/var/log/xen/xend.log").components(separatedBy: "blkback restarted").count - 1 }
        let n = restarts()
        let xs2img = root + "/xs2.img"
        for p in pgrep("blkback --listen-fd 3 --image-fd 4")
        where (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(p)/fd/4")) == xs2img { kill(p, SIGKILL) }
        #expect(waitUntil(10) { restarts() > n }, "blkback not restarted: \(read("/var/log/xen/xend.log").suffix(800))")
        #expect(waitUntil(5) { (try? tool("xenstore-read", "/local/domain/0/backend/vbd/\(ids["xs2"]!)/51712/state"))?.stdout == "4\n" })

        // 4. Debian's xenstore-utils on the restarted daemon: write, read, list, rm.
        #expect(try tool("xenstore-write", "/tool/xsd-test", "written").status == 0)
        #expect(try tool("xenstore-read", "/tool/xsd-test").stdout == "written\n")
        #expect(try tool("xenstore-ls", "/local/domain/\(ids["xs2"]!)").status == 0)
        #expect(try tool("xenstore-rm", "/tool/xsd-test").status == 0)

        // 5. xend restarted while xenstored is down: xend starts it, it loads the store.
        let expected = entries()
        #expect(try xend("stop").status == 0)
        let old = try #require(xenstoredPid)
        kill(old, SIGKILL)
        #expect(waitUntil(2) { kill(old, 0) != 0 })
        #expect(try xend("start").status == 0)
        #expect(waitUntil(5) { xenstoredPid.map { $0 != old && kill($0, 0) == 0 } ?? false })
        #expect(entries() == expected)
        let list2 = try xm("list")
        #expect(list2.status == 0 && list2.stdout.contains("xs1") && list2.stdout.contains("xs2"), "\(list2.stdout)\(list2.stderr)")

        // 6. A second SIGKILL under the new xend: supervised as well.
        #expect(try killXenstored("kill after xend restart") < 1.0)
        #expect(entries() == expected)
        #expect(try xm("mem-max", "xs2", "40").status == 0)
        #expect(try tool("xenstore-read", "/local/domain/\(ids["xs2"]!)/memory/static-max").stdout == "40960\n")

        // Nothing lost: no xenstore write failed in xend, no journal repaired by xenstored.
        let xlog = read("/var/log/xen/xend.log")
        #expect(!xlog.contains("xenstore: "), "\(xlog.suffix(1500))")
        #expect(xlog.components(separatedBy: "xenstored killed by SIGKILL").count - 1 >= 2, "\(xlog.suffix(1500))")
        #expect(!xlog.contains("had lost them"), "\(xlog.suffix(1500))")
        let slog = read("/var/log/xen/xenstored.log")
        #expect(!slog.contains("truncated") && !slog.contains("refusing"), "\(slog)")

        // Domains end cleanly and take their entries with them.
        #expect(try xm("destroy", "xs1").status == 0)
        #expect(try xm("destroy", "xs2").status == 0)
        #expect(waitUntil(5) { !entries().contains { $0.hasPrefix("/local/domain/\(ids["xs1"]!)/") } })
    }

    @Test func aDamagedStoreIsRefusedByNameAndXendCarriesOnOnceItIsMovedAside() throws {
        if getuid() != 0 { print("SKIP: aDamagedStoreIsRefusedByNameAndXendCarriesOnOnceItIsMovedAside: needs root"); return }
        defer { teardown() }
        let dir = root + "/var/lib/xenstored"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        // This boot's id: the store is not discarded as one of an earlier boot.
        let boot = try String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8)
        try boot.write(toFile: dir + "/boot-id", atomically: true, encoding: .utf8)
        try "XSSNAPS1 not a record".write(toFile: dir + "/snapshot", atomically: true, encoding: .utf8)
        #expect(try xend("start").status == 0)
        let expected = "xenstored did not start: \(dir)/snapshot: damaged snapshot"
        #expect(waitUntil(5) { read("/var/log/xen/xend.log").contains(expected) }, "\(read("/var/log/xen/xend.log").suffix(800))")
        #expect(read("/var/log/xen/xend.log").contains("refusing to start: move it aside"))
        // Nothing serves on the socket while the store is refused.
        #expect((try? tool("xenstore-read", "/local/domain/0/name"))?.status != 0)
        // Moved aside: the supervisor's next attempt (at most 5 s later) starts a fresh store.
        try FileManager.default.moveItem(atPath: dir + "/snapshot", toPath: dir + "/snapshot.damaged")
        #expect(waitUntil(8) { (try? tool("xenstore-read", "/local/domain/0/name"))?.stdout == "Domain-0\n" })
        #expect(try xm("list").status == 0)
    }

    /// The qemu engine, whose vifs can be hot-plugged: after a SIGKILL of xenstored,
    /// `xm network-attach` makes a NIC with its xenstore entries, and a netback SIGKILL is
    /// restarted with the vif's entries in place (xend runs in a network namespace).
    @Test func networkAttachAndNetbackRestartAfterXenstoredRestart() throws {
        if skip(NetbackNamespace.unavailable ?? QemuEnv.unavailable) { return }
        if access("/usr/bin/xenstore-read", X_OK) != 0 { print("SKIP: networkAttachAndNetbackRestartAfterXenstoredRestart: xenstore-utils not installed"); return }
        let ns = try NetbackNamespace("xsd")
        let x = try NamespacedXend(ns, tag: "xsd")
        defer { x.shutdown(); try? FileManager.default.removeItem(atPath: x.root) }
        let g = QemuEnv.guestDir
        let cfg = try x.write("xq.cfg", """
            kernel = "\(g)/vmlinuz"
            ramdisk = "\(g)/initrd.img"
            memory = 256
            name = "xq"
            engine = "qemu"
            vif = ['mac=00:16:3e:0d:00:01, bridge=xenbr0']
            extra = "quiet panic=-1 \(QemuEnv.tscFlag)"
            """)
        let c = try x.xm(["create", cfg])
        #expect(c.status == 0, "\(c.stderr)")
        guard c.status == 0 else { return }
        let id = try x.xm(["domid", "xq"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let be = "/local/domain/0/backend/vif/\(id)"
        #expect(x.xsRead(be + "/0/state") == "4")
        let pidFile = x.root + "/run/xenstored/xenstored.pid"
        let old = try #require(Int32((try String(contentsOfFile: pidFile, encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines)))
        kill(old, SIGKILL)
        let t0 = Date()
        #expect(NamespacedXend.waitUntil(5) { x.xsRead("/local/domain/\(id)/name") == "xq" })
        print("qemu: xenstored answered again \(String(format: "%.3f", Date().timeIntervalSince(t0))) s after SIGKILL")
        #expect(x.xsRead(be + "/0/mac") == "00:16:3e:0d:00:01")

        let att = try x.xm(["network-attach", "xq", "mac=00:16:3e:0d:00:02", "bridge=xenbr0"])
        #expect(att.status == 0, "\(att.stderr)")
        #expect(NamespacedXend.waitUntil(10) { x.xsRead(be + "/1/state") == "4" }, "\(x.xsList(be))")
        #expect(x.xsRead("/local/domain/\(id)/device/vif/1/mac") == "00:16:3e:0d:00:02")
        #expect(try x.xm(["network-list", "xq"]).stdout.split(separator: "\n").count == 3)

        // netback of vif 0 SIGKILLed: restarted, its entries still there.
        let before = x.netbackPids()
        #expect(before.count == 2)
        let list = try x.xm(["network-list", "-l", "xq"]).stdout
        let pid = list.split(whereSeparator: \.isNewline).first { $0.contains("(netback-pid") }
            .flatMap { Int32($0.split(separator: " ").last?.dropLast() ?? "") }
        #expect(pid != nil, "netback pid in network-list -l: \(list)")
        if let pid { kill(pid, SIGKILL) }
        #expect(NamespacedXend.waitUntil(10) {
            let l = (try? x.xm(["network-list", "-l", "xq"]).stdout) ?? ""
            return !l.contains("(netback-pid \(pid ?? 0))") && l.components(separatedBy: "(netback-pid").count == 3
        })
        #expect(x.xsRead(be + "/0/state") == "4" && x.xsRead(be + "/1/state") == "4")
        let xlog = readText(x.root + "/var/log/xen/xend.log")
        #expect(!xlog.contains("xenstore: ") && !xlog.contains("had lost them"), "\(xlog.suffix(1500))")
        #expect(xlog.contains("xenstored killed by SIGKILL"))
    }
}

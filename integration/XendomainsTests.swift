// services/init.d/xendomains against a real xend in a scratch XENITH_ROOT, with the test
// guest on the qemu engine: auto configurations started (a broken one named in one line and
// skipped, the others still started), nothing started twice, domains shut down at stop
// without a save directory, saved and restored with the guest carrying on where it was with
// one; a save
// file that does not restore named in one line and the rest of the host unaffected.
import Foundation
import Testing

/// One xend (BadInputHost: scratch root, qemu engine) plus xendomains' directories and settings.
final class XendomainsHost: @unchecked Sendable {
    let h: BadInputHost
    static let script = Env.root.appendingPathComponent("services/init.d/xendomains").path

    init(_ tag: String, settings: String) throws {
        h = BadInputHost("xd-\(tag)")
        for d in ["/etc/xen/auto", "/etc/default", "/var/lib/xen/save"] {
            try FileManager.default.createDirectory(atPath: h.root + d, withIntermediateDirectories: true)
        }
        try settings.write(toFile: h.root + "/etc/default/xendomains", atomically: true, encoding: .utf8)
    }

    func xendomains(_ command: String, timeout: Double = 300) throws -> RunResult {
        let r = try h.tool(Self.script, [command], env: ["XENITH_BINDIR": Env.binDir.path], timeout: timeout)
        print("xendomains \(command) → \(r.status)\n\(r.stdout)\(r.stderr)", terminator: "")
        return r
    }

    /// Writes `/etc/xen/auto/FILE`.
    func auto(_ file: String, _ text: String) throws {
        try text.write(toFile: h.root + "/etc/xen/auto/" + file, atomically: true, encoding: .utf8)
    }

    /// The test guest named `name`, printing `NAME-tick-N` on its console every second.
    static func ticker(_ name: String) -> String {
        // In the background (busybox init acts on poweroff only once the run script ends),
        // deaf to the SIGHUP of that script's shell exiting, and writing to /dev/console
        // afresh each time (the script's own tty descriptor is hung up when it exits).
        let loop = "trap '' HUP; i=0; while true; do echo \(name)-tick-$i >/dev/console; i=$((i+1)); sleep 1; done &"
        return "name = '\(name)'\n" + BadInputHost.testGuest(run: loop) + "on_poweroff = 'destroy'\non_crash = 'destroy'\n"
    }

    func console(_ name: String) -> String { h.read("/var/log/xen/console/guest-\(name).log") }

    /// Names of the running domains but Domain-0.
    func domains() throws -> [String] {
        try h.xm("list").stdout.split(separator: "\n").dropFirst().compactMap {
            let f = $0.split(separator: " ")
            return f.count >= 6 && f[f.count - 5] != "0" ? f.dropLast(5).joined(separator: " ") : nil
        }
    }

    func waitReady(_ name: String) -> Bool {
        let ok = h.waitUntil(180) { console(name).contains("xenith-guest: ready") }
        if !ok { Issue.record("\(name) never became ready; console: \(console(name).suffix(600))") }
        return ok
    }

    /// The highest `NAME-tick-N` in `text`, or -1.
    static func lastTick(_ name: String, in text: some StringProtocol) -> Int {
        text.split(whereSeparator: \.isNewline).compactMap { l -> Int? in
            guard let r = l.range(of: "\(name)-tick-") else { return nil }
            return Int(l[r.upperBound...].prefix { $0.isNumber })
        }.max() ?? -1
    }

    /// Lines of `stderr` that mention `needle`.
    static func lines(_ stderr: String, _ needle: String) -> [Substring] {
        stderr.split(separator: "\n").filter { $0.contains(needle) }
    }

    func tearDown() {
        for d in (try? domains()) ?? [] { _ = try? h.xm("destroy", d) }
        h.stop()
    }
}

@Suite(.serialized) struct XendomainsTests {
    /// Start creates the auto domain, reports the broken config in one line and skips it;
    /// a second start creates nothing twice; status says what runs; stop (no save directory)
    /// shuts the domain down and waits until it is gone, leaving nothing behind.
    @Test func startsAutoDomainsAndShutsThemDown() throws {
        if skip(QemuEnv.unavailable) { return }
        let x = try XendomainsHost("shut", settings: """
            XENDOMAINS_SAVE=""
            XENDOMAINS_CREATE_USLEEP=0
            XENDOMAINS_STOP_MAXWAIT=120
            """)
        defer { x.tearDown() }
        let h = x.h

        // Without xend: one line saying so, nothing else.
        let noXend = try x.xendomains("start")
        #expect(noXend.status == 1 && noXend.stderr.split(separator: "\n").count == 1 && noXend.stderr.contains("xend"),
                "\(noXend.stderr)")
        #expect(try x.xendomains("status").status == 3)

        // xend through its init script.
        let xend = Env.root.appendingPathComponent("services/init.d/xend").path
        let started = try h.tool(xend, ["start"], env: ["XENITH_BINDIR": Env.binDir.path])
        #expect(started.status == 0, "init.d/xend start: \(started.stderr)")
        let running = try h.tool(xend, ["status"], env: ["XENITH_BINDIR": Env.binDir.path])
        #expect(running.status == 0 && running.stdout.contains("xend is running"), "\(running.stdout)\(running.stderr)")
        guard started.status == 0 else { return }
        try x.auto("xd1.cfg", XendomainsHost.ticker("xd1"))
        try x.auto("broken.cfg", "name = 'xdbad'\nmemory = 'lots'\n")
        try x.auto("xd1.cfg~", "an editor's backup: never read\n")

        let start = try x.xendomains("start")
        #expect(start.status == 1, "a broken config makes start fail")
        #expect(start.stdout.contains("started xd1 (\(h.root)/etc/xen/auto/xd1.cfg)"), "\(start.stdout)")
        let broken = XendomainsHost.lines(start.stderr, "broken.cfg")
        #expect(broken.count == 1 && broken[0].contains("skipped \(h.root)/etc/xen/auto/broken.cfg")
                && broken[0].contains("memory"), "\(start.stderr)")
        #expect(start.stderr.split(separator: "\n").count == 1, "only the broken config is reported: \(start.stderr)")
        #expect(try x.domains() == ["xd1"])
        guard x.waitReady("xd1") else { return }

        let again = try x.xendomains("start")
        #expect(again.stdout.contains("xd1 is already running"), "\(again.stdout)")
        #expect(try x.domains() == ["xd1"], "started twice")

        let status = try x.xendomains("status")
        #expect(status.stdout.contains("xd1: running"), "\(status.stdout)")
        #expect(status.status == 1, "the broken config is not running, so status is 1")

        let t0 = Date()
        let stop = try x.xendomains("stop")
        #expect(stop.status == 0, "\(stop.stderr)")
        #expect(stop.stdout.contains("shutting down xd1") && stop.stdout.contains("all domains shut down"), "\(stop.stdout)")
        #expect(try x.domains().isEmpty, "still running after stop")
        print("xendomains stop took \(Int(Date().timeIntervalSince(t0))) s")
        #expect(x.console("xd1").contains("xd1-tick-"), "the guest ran")
        #expect(try x.xendomains("status").status == 3, "stop ends xendomains' started state")
        _ = h.waitUntil(20) { (try? h.leftovers())?.isEmpty ?? false }
        try h.expectNothingLeft()
    }

    /// A save file that does not restore is named in one line and kept, and the auto domain
    /// still starts. With `xm save`: stop saves the domain (it is gone, its file is there),
    /// start restores it (file removed, not created afresh from auto) and its console counter
    /// goes on from where it was.
    @Test func savesAndRestoresAroundABadSaveFile() throws {
        if skip(QemuEnv.unavailable) { return }
        let x = try XendomainsHost("save", settings: """
            XENDOMAINS_SAVE=/var/lib/xen/save
            XENDOMAINS_RESTORE=true
            XENDOMAINS_CREATE_USLEEP=0
            XENDOMAINS_STOP_MAXWAIT=120
            """)
        defer { x.tearDown() }
        let h = x.h
        guard try h.start() else { return }
        let saveDir = h.root + "/var/lib/xen/save"
        let junk = saveDir + "/junk"
        try Data("not a save file\n".utf8).write(to: URL(fileURLWithPath: junk))
        try x.auto("xd2.cfg", XendomainsHost.ticker("xd2"))

        let start = try x.xendomains("start")
        let bad = XendomainsHost.lines(start.stderr, junk)
        #expect(bad.count == 1 && bad[0].hasPrefix("xendomains: cannot restore \(junk): "), "\(start.stderr)")
        #expect(start.stderr.split(separator: "\n").count == 1, "\(start.stderr)")
        #expect(start.stdout.contains("started xd2"), "\(start.stdout)")
        #expect(FileManager.default.fileExists(atPath: junk), "a file that did not restore is kept")
        #expect(try x.domains() == ["xd2"])
        guard x.waitReady("xd2") else { return }
        try FileManager.default.removeItem(atPath: junk)

        // xm has save: a help list without it is a regression, not a reason to test less.
        let hasSave = try h.xm("help", "--long").stdout.split(separator: "\n").contains { $0.hasPrefix(" save ") }
        #expect(hasSave, "xm help --long does not list save")

        _ = h.waitUntil(30) { XendomainsHost.lastTick("xd2", in: x.console("xd2")) >= 3 }
        let stop = try x.xendomains("stop")
        #expect(stop.status == 0, "\(stop.stderr)")
        #expect(stop.stdout.contains("saved xd2 to \(saveDir)/xd2"), "\(stop.stdout)")
        #expect(try x.domains().isEmpty, "xd2 still runs after it was saved")
        #expect(FileManager.default.fileExists(atPath: saveDir + "/xd2"))
        let before = x.console("xd2")
        let tick = XendomainsHost.lastTick("xd2", in: before)
        #expect(tick >= 3, "console before save: \(before.suffix(300))")

        let restore = try x.xendomains("start")
        #expect(restore.status == 0, "\(restore.stderr)")
        #expect(restore.stdout.contains("restored xd2"), "\(restore.stdout)")
        #expect(restore.stdout.contains("xd2 is already running"), "the auto config must not create it afresh: \(restore.stdout)")
        #expect(!FileManager.default.fileExists(atPath: saveDir + "/xd2"), "the save file is removed once restored")
        #expect(try x.domains() == ["xd2"])
        #expect(h.waitUntil(60) { XendomainsHost.lastTick("xd2", in: x.console("xd2")) > tick + 1 },
                "the counter did not go on past \(tick): \(x.console("xd2").suffix(400))")
        let log = x.console("xd2")
        let after = log.count >= before.count ? String(log.dropFirst(before.count)) : log
        #expect(!after.contains("xd2-tick-0\n") && !after.contains("xd2-tick-0\r") && !after.contains("xenith-guest: ready"),
                "the guest booted again instead of going on: \(after.prefix(400))")
    }
}

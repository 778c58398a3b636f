import Foundation
import Testing

/// `xm mem-set` / `xm mem-max` through xend: on the qemu engine the guest's virtio_balloon
/// driver gives memory back (MemTotal inside the test guest falls) and takes it up again;
/// out-of-range targets and the core engine (no balloon device) are refused in one line.
@Suite(.serialized) struct BalloonTests {
    let root = QemuEnv.scratch("balloon")

    func tool(_ name: String, _ args: [String], timeout: Double = 60) throws -> RunResult {
        try runInRoot(root, name, args, timeout: timeout)
    }
    func xm(_ args: String...) throws -> RunResult { try tool("xm", args) }

    func consoleLog(_ name: String) -> String {
        readText(root + "/var/log/xen/console/guest-\(name).log")
    }
    /// The MemTotal readings (KiB) the guest script printed, oldest first.
    func memTotals(_ name: String) -> [Int] {
        consoleLog(name).components(separatedBy: "memtotal=").dropFirst().compactMap { Int($0.prefix(while: { $0.isNumber })) }
    }
    func waitUntil(_ timeout: Double, _ cond: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline { if try cond() { return true }; usleep(250_000) }
        return try cond()
    }

    @Test func memSetBalloonsAQemuGuest() throws {
        if skip(QemuEnv.unavailable) { return }
        defer {
            _ = try? xm("destroy", "bal")
            _ = try? xm("destroy", "bal-core")
            _ = try? tool("xend", ["stop"])
            for f in ["/run/xenstored/xenstored.pid", "/run/xenconsoled/xenconsoled.pid"] {
                if let p = try? String(contentsOfFile: root + f, encoding: .utf8),
                   let pid = Int32(p.trimmingCharacters(in: .whitespacesAndNewlines)) { kill(pid, SIGTERM) }
            }
        }
        #expect(try tool("xend", ["start"]).status == 0)
        // 384 MiB of RAM, ballooned to 256 at start; the guest prints MemTotal every 0.5 s.
        let script = "while%20true;%20do%20echo%20memtotal=$(grep%20MemTotal%20/proc/meminfo%20|%20tr%20-dc%200-9);%20sleep%200.5;%20done"
        let c = try xm("create", "services/examples/test-guest.cfg", "name=bal", "engine=qemu", "memory=256", "maxmem=384",
                       "extra=quiet cryptomgr.notests xenith.run=\(script)")
        #expect(c.status == 0, "\(c.stderr)")
        #expect(waitUntil(60) { memTotals("bal").count >= 2 }, "\(consoleLog("bal").suffix(500))")
        // The start-up target: MemTotal settles below 300 MiB (RAM is 384).
        #expect(waitUntil(30) { (memTotals("bal").last ?? .max) < 300 * 1024 }, "\(memTotals("bal").suffix(5))")
        let before = memTotals("bal").last ?? 0
        #expect(try xm("list", "bal").stdout.contains("  256 "))

        // Down to 160 MiB: the guest gives back about 96 MiB.
        let s = try xm("mem-set", "bal", "160")
        #expect(s.status == 0, "\(s.stderr)")
        #expect(waitUntil(30) { (memTotals("bal").last ?? .max) < before - 80 * 1024 }, "\(before) → \(memTotals("bal").suffix(5))")
        #expect(try xm("list", "bal").stdout.contains("  160 "))
        // Back up to the whole 384 MiB.
        #expect(try xm("mem-set", "bal", "384m").status == 0)
        #expect(waitUntil(30) { (memTotals("bal").last ?? 0) > before + 80 * 1024 }, "\(memTotals("bal").suffix(5))")

        // Refusals, one line each, the domain untouched.
        #expect(try xm("mem-set", "bal", "385").stderr
                == "Error: Invalid memory target 385 MiB for domain bal: its maximum is 384 MiB (the RAM it was started with; raise maxmem and restart it for more)\n")
        #expect(try xm("mem-set", "bal", "8").stderr == "Error: Invalid memory target 8 MiB for domain bal: at least 16 MiB\n")
        #expect(try xm("mem-set", "bal", "lots").stderr
                == "Error: Invalid memory size 'lots': expected MiB, or a number followed by m or g\n")
        #expect(try xm("mem-set", "nosuch", "100").stderr == "Error: Domain 'nosuch' does not exist.\n")
        // mem-max lowers the ceiling of mem-set; below the current target it is refused.
        #expect(try xm("mem-max", "bal", "300").stderr
                == "Error: Invalid maximum memory 300 MiB for domain bal: below its current target of 384 MiB\n")
        #expect(try xm("mem-set", "bal", "256").status == 0)
        #expect(try xm("mem-max", "bal", "300").status == 0)
        #expect(try xm("list", "-l", "bal").stdout.contains("(maxmem 300)"))
        #expect(try xm("mem-set", "bal", "320").stderr
                == "Error: Invalid memory target 320 MiB for domain bal: its maximum is 300 MiB (maxmem; see xm mem-max)\n")
        #expect(try xm("list", "bal").stdout.contains("r-----"))

        // The core engine has a balloon device too (DomainCommandsTests checks what its
        // driver in the PVH fixture reports); a guest without a driver just keeps its RAM.
        if Env.kvmUnavailable == nil {
            try "kernel = '\(Env.fixture("pvh.elf"))'\nmemory = 32\nname = 'bal-core'\nextra = 't'\nengine = 'core'\n"
                .write(toFile: root + "/core.cfg", atomically: true, encoding: .utf8)
            #expect(try xm("create", root + "/core.cfg").status == 0)
            let m = try xm("mem-set", "bal-core", "16")
            #expect(m.status == 0 && m.stderr.isEmpty, "\(m.stderr)")
            #expect(try xm("mem-set", "bal-core", "33").stderr
                    == "Error: Invalid memory target 33 MiB for domain bal-core: its maximum is 32 MiB (the RAM it was started with; raise maxmem and restart it for more)\n")
        }
    }
}

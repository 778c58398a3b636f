import Foundation
import Testing

/// The core on /dev/kvm with the test guests of fixtures/: boot paths, console, PCI,
/// virtio-pci with ioeventfd and irqfd, and each way a guest can stop.
@Suite(.serialized) struct CoreBootTests {
    let core = Env.binary("xenith-core")

    func boot(_ fixture: String, _ cmdline: String, extra: [String] = [], timeout: Double = 30) throws -> RunResult {
        try run(core, ["--kernel", Env.fixture(fixture), "--extra", cmdline, "--memory", "32", "--no-input"] + extra,
                timeout: timeout)
    }

    @Test func pvhPoweroff() throws {
        if skip(Env.kvmUnavailable) { return }
        let r = try boot("pvh.elf", "o console=ttyS0")
        #expect(r.stdout.contains("xenith-fixture: pvh entry"))
        #expect(r.stdout.contains("xenith-fixture: start_info ok"))
        #expect(r.stdout.contains("xenith-fixture: cmdline o console=ttyS0"))
        // The host bridge answers configuration mechanism #1: 1b36:0008.
        #expect(r.stdout.contains("xenith-fixture: pci 00:00.0 id 00081B36"))
        #expect(r.stdout.contains("xenith-fixture: poweroff"))
        #expect(r.stderr.contains("stopped: poweroff"))
        #expect(r.status == 0)
    }

    @Test func pvhStartInfoDescribesMemoryAndInitrd() throws {
        if skip(Env.kvmUnavailable) { return }
        let initrd = FileManager.default.temporaryDirectory.appendingPathComponent("xenith-initrd-\(getpid())")
        try Data(repeating: 0x5A, count: 8192).write(to: initrd)
        defer { try? FileManager.default.removeItem(at: initrd) }
        let r = try boot("pvh.elf", "o", extra: ["--ramdisk", initrd.path])
        #expect(r.stdout.contains("modules 00000001"), "one module for the initrd")
        #expect(!r.stdout.contains("memmap 00000000"), "a non-empty memory map")
        #expect(r.status == 0)
    }

    @Test(arguments: [("r", Int32(2), "reboot"), ("k", Int32(2), "reboot"), ("p", Int32(3), "crash")])
    func pvhStops(_ action: String, _ status: Int32, _ word: String) throws {
        if skip(Env.kvmUnavailable) { return }
        let r = try boot("pvh.elf", action)
        #expect(r.status == status, "\(action): \(r.stderr)")
        #expect(r.stderr.contains("stopped: \(word)"))
        if action == "p" { #expect(r.stdout.contains("pvpanic caps 03")) }
    }

    /// A triple fault resets a PC (reboot); on kvm_pvm the emulator gives up on the faulting
    /// `int3` first and the core reports a crash. Either way the core stops and says why.
    @Test func tripleFault() throws {
        if skip(Env.kvmUnavailable) { return }
        let r = try boot("pvh.elf", "x", timeout: 20)
        #expect(r.status == 2 || r.status == 3, "\(r.stderr)")
        #expect(r.stderr.contains("stopped: reboot (triple fault") || r.stderr.contains("stopped: crash (KVM internal error"))
    }

    @Test func virtioQueueNotifyAndInterrupt() throws {
        if skip(Env.kvmUnavailable) { return }
        let r = try boot("pvh.elf", "v")
        // virtio-rng (modern ID 0x1044) in slot 1; the guest rings queue 0 through the notify
        // capability (an ioeventfd), the device fills 16 bytes and interrupts through irqfd.
        #expect(r.stdout.contains("xenith-fixture: virtio id 10441AF4"), "\(r.stdout)")
        #expect(r.stdout.contains("xenith-fixture: virtio notify"))
        #expect(r.stdout.contains("xenith-fixture: virtio irq isr 00000001 used 00000001 len 00000010"), "\(r.stdout)")
        #expect(r.status == 0)
    }

    @Test func garbageNeverCrashesTheCore() throws {
        if skip(Env.kvmUnavailable) { return }
        let r = try boot("pvh.elf", "g", timeout: 60)
        #expect(r.stdout.contains("xenith-fixture: garbage done"), "\(r.stdout)\n\(r.stderr)")
        #expect(r.status == 0)
    }

    @Test func realModeFirmware() throws {
        if skip(Env.kvmUnavailable) { return }
        let r = try run(core, ["--firmware", Env.fixture("realmode.bin"), "--memory", "16", "--no-input"])
        #expect(r.stdout.contains("xenith-fixture: real mode"))
        #expect(r.stdout.contains("xenith-fixture: pci 00:00.0 id 00081B36"))
        #expect(r.status == 0, "\(r.stderr)")
    }

    @Test func bzImage64BitEntry() throws {
        if skip(Env.kvmUnavailable) { return }
        let r = try boot("bzImage", "o root=/dev/vda")
        #expect(r.stdout.contains("xenith-fixture: 64-bit boot protocol entry"), "\(r.stdout)\n\(r.stderr)")
        #expect(r.stdout.contains("xenith-fixture: cmdline o root=/dev/vda"))
        #expect(!r.stdout.contains("e820 entries 00000000"))
        #expect(r.status == 0)
        let p = try boot("bzImage", "p")
        #expect(p.status == 3)
    }

    @Test func twoVCPUs() throws {
        if skip(Env.kvmUnavailable) { return }
        let r = try boot("pvh.elf", "o", extra: ["--vcpus", "2"])
        #expect(r.status == 0, "\(r.stderr)")
    }

    @Test func controlSocketPauseQueryShutdownDestroy() throws {
        if skip(Env.kvmUnavailable) { return }
        let sock = "/tmp/xenith-core-test-\(getpid()).sock"
        // Power button: the guest polls PM1_STS and powers off.
        let w = try Running(core, ["--kernel", Env.fixture("pvh.elf"), "--extra", "w", "--memory", "32", "--no-input", "--control", sock])
        #expect(w.waitFor("waiting for power button"))
        #expect(try control(sock, "shutdown") == "ok")
        #expect(w.wait() == 0)
        #expect(w.output.get().contains("power button pressed"))
        #expect(access(sock, F_OK) != 0, "control socket removed on exit")

        // Pause stops the guest's clock of ticks; unpause resumes it; destroy ends it.
        let t = try Running(core, ["--kernel", Env.fixture("pvh.elf"), "--extra", "t", "--memory", "32", "--no-input", "--control", sock])
        #expect(t.waitFor("tick 00000002"))
        #expect(try control(sock, "pause") == "ok")
        usleep(200_000)
        let q = try control(sock, "query")
        #expect(q.hasPrefix("ok state=paused vcpus=1 vcpu_time_ns="), "\(q)")
        let before = t.output.get().count
        usleep(500_000)
        #expect(t.output.get().count == before, "no output while paused")
        #expect(try control(sock, "unpause") == "ok")
        usleep(500_000)
        #expect(t.output.get().count > before, "output resumes")
        #expect(try control(sock, "query").hasPrefix("ok state=running"))
        #expect(try control(sock, "bogus").hasPrefix("error unknown command"))
        #expect(try control(sock, "destroy") == "ok")
        #expect(t.wait() == 4)
        #expect(access(sock, F_OK) != 0)
    }

    @Test func sigtermDestroysCleanly() throws {
        if skip(Env.kvmUnavailable) { return }
        let t = try Running(core, ["--kernel", Env.fixture("pvh.elf"), "--extra", "t", "--memory", "32", "--no-input"])
        #expect(t.waitFor("tick 00000001"))
        kill(t.process.processIdentifier, SIGTERM)
        #expect(t.wait() == 4)
    }

    /// Bad input: one line naming the problem, non-zero status.
    @Test func badInput() throws {
        if skip(Env.kvmUnavailable) { return }
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("xenith-bad-\(getpid())")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: tmp) }
        let bz = try Data(contentsOf: URL(fileURLWithPath: Env.fixture("bzImage")))
        // Truncated kernel.
        try bz.prefix(0x100).write(to: tmp.appendingPathComponent("truncated"))
        // Protocol 2.05.
        var old = bz
        old[0x206] = 0x05
        try old.write(to: tmp.appendingPathComponent("old"))
        // A huge initrd for a small guest.
        FileManager.default.createFile(atPath: tmp.appendingPathComponent("big").path, contents: nil)
        let h = try FileHandle(forWritingTo: tmp.appendingPathComponent("big"))
        try h.truncate(atOffset: 64 << 20); try h.close()

        let cases: [([String], String)] = [
            (["--kernel", "/nonexistent/vmlinuz"], "/nonexistent/vmlinuz"),
            (["--kernel", tmp.appendingPathComponent("truncated").path], "truncated"),
            (["--kernel", "/bin/true"], "PVH"),
            (["--kernel", tmp.appendingPathComponent("old").path], "2.06"),
            (["--kernel", Env.fixture("bzImage"), "--ramdisk", tmp.appendingPathComponent("big").path, "--memory", "16"], "initrd"),
            (["--kernel", Env.fixture("pvh.elf"), "--memory", "100000000"], "memory"),
            (["--kernel", Env.fixture("pvh.elf"), "--vcpus", "100000"], "vcpus"),
            (["--kernel", tmp.path], "not a regular file"),
        ]
        for (args, word) in cases {
            let r = try run(core, args + ["--no-input"], timeout: 20)
            #expect(r.status != 0, "\(args)")
            let lines = r.stderr.split(separator: "\n")
            #expect(lines.count == 1, "one line for \(args): \(r.stderr)")
            #expect(r.stderr.contains(word), "\(args): \(r.stderr)")
        }
        // A control socket path that is taken by a live listener.
        let sock = "/tmp/xenith-core-taken-\(getpid()).sock"
        let t = try Running(core, ["--kernel", Env.fixture("pvh.elf"), "--extra", "t", "--memory", "32", "--no-input", "--control", sock])
        #expect(t.waitFor("tick"))
        let r = try run(core, ["--kernel", Env.fixture("pvh.elf"), "--no-input", "--control", sock])
        #expect(r.status == 1)
        #expect(r.stderr.contains("in use"))
        _ = try control(sock, "destroy")
        _ = t.wait()
    }

    /// A hostile guest (fixtures/pvh.S modes A D U L Q P M I X) abuses every emulated device;
    /// the core survives each and stops normally.
    @Test(arguments: ["A", "D", "U", "L", "Q", "P", "M", "I", "X"])
    func hostileGuest(_ mode: String) throws {
        if skip(Env.kvmUnavailable) { return }
        let r = try boot("pvh.elf", mode, timeout: 90)
        #expect(r.status == 0, "mode \(mode): \(r.stderr)")
        #expect(r.stdout.contains("hostile:"), "mode \(mode) ran")
        #expect(r.stderr.contains("stopped: poweroff"))
    }

    /// A guest flooding the UART in loopback mode cannot grow the core's memory.
    @Test func uartFloodIsBounded() throws {
        if skip(Env.kvmUnavailable) { return }
        let sock = "/tmp/xenith-core-flood-\(getpid()).sock"
        let t = try Running(core, ["--kernel", Env.fixture("pvh.elf"), "--extra", "S", "--memory", "32", "--no-input", "--control", sock])
        #expect(t.waitFor("xenith-fixture: pci 00:00.0"))  // the flood itself prints nothing: loopback
        func rssKiB() -> Int {
            let s = readText("/proc/\(t.process.processIdentifier)/status")
            let line = s.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
            return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
        }
        usleep(1_000_000)
        let before = rssKiB()
        usleep(3_000_000)
        let after = rssKiB()
        #expect(after - before < 1024, "RSS grew from \(before) to \(after) KiB")
        #expect(try control(sock, "query").hasPrefix("ok state=running"))
        _ = try control(sock, "destroy")
        #expect(t.wait() == 4)
    }

    /// Control-socket abuse: NUL bytes, empty lines, more clients than it serves.
    @Test func controlSocketAbuse() throws {
        if skip(Env.kvmUnavailable) { return }
        let sock = "/tmp/xenith-core-abuse-\(getpid()).sock"
        let t = try Running(core, ["--kernel", Env.fixture("pvh.elf"), "--extra", "t", "--memory", "32", "--no-input", "--control", sock])
        #expect(t.waitFor("tick"))
        #expect(try control(sock, "ab\u{0}cd").hasPrefix("error unknown command: ab?cd"))
        #expect(try control(sock, "\nquery").hasPrefix("ok state=running"), "empty lines are skipped")
        var held: [Int32] = []
        for _ in 0..<40 {
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in sock.utf8.enumerated() { p[i] = b } }
            _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
            held.append(fd)
        }
        usleep(200_000)
        for fd in held { close(fd) }
        usleep(200_000)
        #expect(try control(sock, "query").hasPrefix("ok state=running"), "still serving after a connection storm")
        _ = try control(sock, "destroy")
        #expect(t.wait() == 4)
    }

    @Test func fifoAndHugeMemoryAreRefused() throws {
        if skip(Env.kvmUnavailable) { return }
        let fifo = "/tmp/xenith-fifo-\(getpid())"
        mkfifo(fifo, 0o600)
        defer { unlink(fifo) }
        let r = try run(core, ["--kernel", fifo, "--no-input"], timeout: 10)
        #expect(r.status == 1)
        #expect(r.stderr.contains("not a regular file"))
        let m = try run(core, ["--kernel", Env.fixture("pvh.elf"), "--memory", "17592186044448", "--no-input"], timeout: 10)
        #expect(m.status == 1)
        #expect(m.stderr.contains("more than the host has"))
    }

    /// Real Linux in the core: only where KVM is hardware-backed.
    @Test func debianKernelReachesReady() throws {
        if skip(Env.hardwareVirtUnavailable) { return }
        let guest = Env.root.appendingPathComponent("build/guest")
        let r = try run(core, ["--kernel", guest.appendingPathComponent("vmlinuz").path,
                               "--ramdisk", guest.appendingPathComponent("initrd.img").path,
                               "--extra", "console=ttyS0 quiet xenith.run=poweroff%20-f", "--memory", "256", "--no-input"],
                        timeout: 120)
        #expect(r.stdout.contains("xenith-guest: ready"))
        #expect(r.status == 0)
    }

}

import Foundation
import Testing

/// blkback serving QEMU's vhost-user-blk-pci (a real frontend) with a real Linux guest
/// (Debian's kernel and virtio_blk driver, the test initramfs of `make guest`), under TCG.
@Suite(.serialized) struct BlkbackQemuTests {
    let blkback = Env.binary("blkback")
    let guest = Env.root.appendingPathComponent("build/guest")

    var unavailable: String? {
        if access("/usr/bin/qemu-system-x86_64", X_OK) != 0 { return "qemu-system-x86_64 is not installed" }
        if access(guest.appendingPathComponent("vmlinuz").path, R_OK) != 0 { return "build/guest/vmlinuz missing (run make guest)" }
        return nil
    }

    /// Escapes a shell script for `xenith.run=` (URL-style, guest/README.md).
    func escape(_ script: String) -> String {
        var out = ""
        for b in script.utf8 {
            if (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x2F || b == 0x2D || b == 0x2E || b == 0x5F {
                out.append(Character(UnicodeScalar(b)))
            } else {
                out += String(format: "%%%02X", b)
            }
        }
        return out
    }

    func qemu(_ sock: String, _ script: String) throws -> Running {
        try Running("/usr/bin/qemu-system-x86_64", [
            "-accel", "tcg,thread=multi", "-M", "q35", "-smp", "2", "-m", "256M", "-nodefaults", "-no-user-config",
            "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
            "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem",
            "-chardev", "socket,id=blk0,path=\(sock),reconnect=1",
            "-device", "vhost-user-blk-pci,chardev=blk0,num-queues=2",
            "-kernel", guest.appendingPathComponent("vmlinuz").path,
            "-initrd", guest.appendingPathComponent("initrd.img").path,
            "-append", "console=ttyS0 quiet cryptomgr.notests panic=-1 xenith.run=\(escape(script))",
        ])
    }

    /// `--no-sandbox`: Foundation's Process cannot wait for a sandboxed service (the sandbox
    /// forks a PID-namespace child and closes the descriptor Process watches). The sandboxed
    /// path is covered by BackendSupervisionTests, where xend spawns blkback itself.
    func startBlkback(_ sock: String, _ image: String) throws -> Running {
        let b = try Running(blkback, ["--socket", sock, "--image", image, "--num-queues", "2", "--no-sandbox"])
        let deadline = Date().addingTimeInterval(10)
        while access(sock, F_OK) != 0 && Date() < deadline { usleep(10_000) }
        return b
    }

    @Test func linuxMakesExt4AndSurvivesBlkbackKills() throws {
        if skip(unavailable) { return }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("xenith-qblk-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let image = dir.appendingPathComponent("disk.img").path
        FileManager.default.createFile(atPath: image, contents: nil)
        let h = try FileHandle(forWritingTo: URL(fileURLWithPath: image))
        try h.truncate(atOffset: 128 << 20); try h.close()
        let sock = dir.appendingPathComponent("blk.sock").path
        var b = try startBlkback(sock, image)
        let script = """
        mkfs.ext4 -q /dev/vda && mount /dev/vda /mnt && \
        dd if=/dev/urandom of=/mnt/f bs=1M count=8 2>/dev/null && sha256sum /mnt/f > /mnt/f.sum && sync && \
        echo 3 > /proc/sys/vm/drop_caches && sha256sum -c /mnt/f.sum && echo XENITH-PHASE1-OK; \
        i=0; while [ $i -lt 40 ]; do dd if=/dev/urandom of=/mnt/g bs=64k count=16 2>/dev/null; \
        a=$(sha256sum < /mnt/g); sync; echo 3 > /proc/sys/vm/drop_caches; c=$(sha256sum < /mnt/g); \
        [ "$a" = "$c" ] || echo XENITH-MISMATCH; i=$((i+1)); echo XENITH-ITER-$i; done; \
        dmesg | grep -vi 'command line' > /tmp/k; \
        grep -iE 'I/O error|blk_update_request|EXT4-fs error|Buffer I/O' /tmp/k | sed 's/^/XENITH-DMESG: /'; \
        echo XENITH-ERRORS-$(grep -ciE 'I/O error|blk_update_request|EXT4-fs error|Buffer I/O' /tmp/k); \
        umount /mnt; echo XENITH-DONE; poweroff -f
        """
        let q = try qemu(sock, script)
        defer { if q.process.isRunning { kill(q.process.processIdentifier, SIGKILL) }; _ = q.wait(timeout: 5) }
        #expect(q.waitFor("xenith-guest: ready", timeout: 120), "guest booted: \(q.output.get().suffix(2000))")
        #expect(q.waitFor("XENITH-PHASE1-OK", timeout: 240), "ext4 on blkback, checksums match: \(q.output.get().suffix(2000))")
        // Kill blkback three times while the write/verify loop runs; the test restarts it.
        for iter in [5, 15, 25] {
            #expect(q.waitFor("XENITH-ITER-\(iter)\r", timeout: 240) || q.waitFor("XENITH-ITER-\(iter)\n", timeout: 1))
            kill(b.process.processIdentifier, SIGKILL)
            _ = b.wait(timeout: 5)
            usleep(200_000)
            b = try startBlkback(sock, image)
        }
        #expect(q.waitFor("XENITH-DONE", timeout: 600), "\(q.output.get().suffix(3000))")
        let out = q.output.get()
        #expect(!out.contains("XENITH-MISMATCH"), "every block verified")
        #expect(out.contains("XENITH-ERRORS-0"), "no I/O error in the guest's kernel log: \(out.suffix(3000))")
        #expect(q.wait(timeout: 60) == 0)
        kill(b.process.processIdentifier, SIGTERM)
        _ = b.wait(timeout: 5)
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// What the control socket's commands with an argument do to a running machine
/// (CoreControlRequest): the balloon target, a SysRq key on COM1, a core dump.
extension Machine {
    /// Asks the guest's balloon driver to leave it `mib` MiB of RAM: `num_pages` becomes
    /// the difference in 4 KiB pages, with a configuration-change interrupt.
    /// - Throws: ``CoreError/badArgument(_:)`` without a balloon device, or for `mib`
    ///   outside 1...the RAM the machine has.
    public func setBalloonTarget(mib: Int) throws(CoreError) {
        guard let b = balloon, let t = balloonTransport else { throw .badArgument("no balloon device (start the core with --balloon)") }
        guard mib >= 1, mib <= config.memoryMiB else {
            throw .badArgument("balloon target \(mib) MiB is outside 1...\(config.memoryMiB) MiB")
        }
        b.setTargetPages(UInt32((config.memoryMiB - mib) * 256))
        t.configChanged()
    }

    /// The balloon's target and what the driver reports, KiB of RAM the guest keeps; nil
    /// without a balloon device.
    public var balloonKiB: (target: UInt64, actual: UInt64)? {
        guard let b = balloon else { return nil }
        let ram = UInt64(config.memoryMiB) * 1024
        let target = UInt64(b.targetPages) * 4, actual = UInt64(b.actualPages) * 4
        return (ram - min(ram, target), ram - min(ram, actual))
    }

    /// A break on COM1, then `key`: Linux's serial console runs SysRq `key`.
    public func sendSysrq(_ key: UInt8) throws(CoreError) {
        guard serial.receiveBreak(then: key) else { throw .badArgument("the console's receive buffer is full") }
    }

    /// Writes the guest's RAM and each vCPU's registers as an ELF core into `fd` (ElfCore)
    /// with the vCPUs stopped;
    /// they run again afterwards unless the domain was paused.
    /// - Returns: the size of the file, bytes.
    public func dumpCore(into fd: Int32) throws(CoreError) -> UInt64 {
        let wasRunning = state == .running
        if wasRunning { pause() }
        defer { if wasRunning { unpause() } }
        let note = "name=\(config.name) vcpus=\(config.vcpus) memory_mib=\(config.memoryMiB)"
        // Each vCPU's registers (stopped: read from this thread), as gdb and crash read them.
        var cpus: [[UInt64]] = []
        for v in vcpus {
            do {
                let r = try v.regs(), s = try v.sregs()
                cpus.append([r.r15, r.r14, r.r13, r.r12, r.rbp, r.rbx, r.r11, r.r10, r.r9, r.r8, r.rax, r.rcx, r.rdx,
                             r.rsi, r.rdi, r.rax, r.rip, UInt64(s.cs.selector), r.rflags, r.rsp, UInt64(s.ss.selector),
                             s.fs.base, s.gs.base, UInt64(s.ds.selector), UInt64(s.es.selector), UInt64(s.fs.selector),
                             UInt64(s.gs.selector)])
            } catch { throw .kvm("dump-core: vCPU \(v.id): \(error)") }
        }
        return try ElfCore.write(memory, cpus: cpus, note: note, to: fd)
    }
}

import Boot
import CLinux
import GuestMemory
import KVM
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What to boot and how big: the core's part of a domain configuration.
public struct MachineConfiguration: Sendable {
    /// Guest RAM, MiB.
    public var memoryMiB: Int
    public var vcpus: Int
    /// A bzImage (Linux 64-bit boot protocol) or an ELF with a PVH note.
    public var kernelPath: String?
    /// A flat real-mode image ending at 1 MiB, entered at the reset vector.
    public var firmwarePath: String?
    public var ramdiskPath: String?
    public var cmdline: String
    /// Domain name, used for thread and memfd names.
    public var name: String
    /// Add an in-core virtio-rng device (virtio 1.2 §5.4) in PCI slot 1.
    public var virtioRNG: Bool
    /// Add an in-core virtio-balloon device (virtio 1.2 §5.5; `xm mem-set`), after the rng.
    public var virtioBalloon: Bool = false
    /// Incoming mode: the vCPUs start paused and wait for a saved state (``Machine/restore(from:onProgress:)``)
    /// before ``Machine/unpause()``.
    public var incoming = false

    public init(memoryMiB: Int, vcpus: Int, kernelPath: String? = nil, firmwarePath: String? = nil,
                ramdiskPath: String? = nil, cmdline: String = "", name: String = "domain", virtioRNG: Bool = true) {
        self.memoryMiB = memoryMiB; self.vcpus = vcpus; self.kernelPath = kernelPath
        self.firmwarePath = firmwarePath; self.ramdiskPath = ramdiskPath; self.cmdline = cmdline
        self.name = name; self.virtioRNG = virtioRNG
    }
}

/// Run state as `query` reports it.
public enum MachineState: String, Sendable {
    case running, paused, stopped
}

/// One domain on KVM: guest memory, vCPU threads, the in-kernel irqchip and PIT, and the
/// emulated platform (COM1, ACPI power, reset lines, pvpanic, PCI bus with virtio-pci).
/// Everything a guest controls is checked by the device models; a misbehaving guest can
/// only stop itself.
public final class Machine: @unchecked Sendable {
    public let config: MachineConfiguration
    public let memory: GuestMemory
    public let vm: VirtualMachine
    public let bus = IOBus()
    public let pci = PCIBus()
    public let loop: EventLoop
    public private(set) var serial: Serial8250!
    public private(set) var power: PowerDevices!
    var vcpus: [VCPU] = []
    var threads: [DedicatedThread] = []
    /// Linux thread id of each vCPU thread by vCPU index (0 until the thread has started).
    private let tids = Mutex<[Int32]>([])
    var virtioDevices: [VirtioPCIDevice] = []
    /// The virtio-balloon device and its transport (MachineControl.swift), nil without one.
    public private(set) var balloon: VirtioBalloon?
    private(set) var balloonTransport: VirtioPCIDevice?
    private let stopResult = Mutex<GuestStop?>(nil)
    private let stopFD: Int32
    let pauseGate = PauseGate()
    private let startTime = clock_ns()
    /// Receives every byte the guest writes to COM1.
    private let consoleOutput: @Sendable (UInt8) -> Void
    let log: @Sendable (String) -> Void
    static let kickSignal = SIGUSR1

    /// Builds the domain: checks the request against KVM's limits, creates memory, loads
    /// the kernel, initrd and tables, creates vCPUs and devices. Nothing runs yet.
    /// - Throws: ``CoreError`` with a one-line description (missing or truncated kernel, no
    ///   PVH note, old bzImage, initrd that does not fit, memory or vCPUs beyond what the
    ///   host gives). All resources made so far are released.
    public init(config: MachineConfiguration, consoleOutput: @escaping @Sendable (UInt8) -> Void,
                log: @escaping @Sendable (String) -> Void) throws {
        self.config = config
        self.consoleOutput = consoleOutput
        self.log = log
        if config.incoming { pauseGate.close() }
        guard config.memoryMiB >= 2 else { throw CoreError.badArgument("memory \(config.memoryMiB) MiB is too small (at least 2 MiB)") }
        guard config.vcpus >= 1 else { throw CoreError.badArgument("vcpus must be at least 1") }
        let system: KVMSystem
        do { system = try KVMSystem() } catch { throw CoreError.kvm("cannot use /dev/kvm: \(error)") }
        let maxV = system.maxVCPUs
        guard config.vcpus <= min(maxV, 254) else {
            throw CoreError.badArgument("vcpus \(config.vcpus) exceeds KVM's limit of \(min(maxV, 254))")
        }
        let hostBytes = UInt64(sysconf(Int32(_SC_PHYS_PAGES))) * UInt64(sysconf(Int32(_SC_PAGESIZE)))
        guard UInt64(config.memoryMiB) <= hostBytes >> 20 else {
            throw CoreError.badArgument("memory \(config.memoryMiB) MiB is more than the host has (\(hostBytes >> 20) MiB)")
        }
        let ramBytes = UInt64(config.memoryMiB) << 20
        // Read the boot files before allocating anything large.
        let kernel: BootTarget
        if let f = config.firmwarePath {
            let bytes = try readFile(f, what: "firmware")
            // A kernel given as firmware would run as garbage real-mode code and hang.
            if bytes.starts(with: [0x7F, 0x45, 0x4C, 0x46]) || (bytes.count > 0x206 && Array(bytes[0x202..<0x206]) == Array("HdrS".utf8)) {
                throw CoreError.badArgument("firmware \(f) is a kernel image (ELF or bzImage); use --kernel")
            }
            kernel = .firmware(bytes)
        } else if let k = config.kernelPath {
            let bytes = try readFile(k, what: "kernel")
            do { kernel = .kernel(try Kernel.load(bytes: bytes)) }
            catch { throw CoreError.kernel("\(k): \(error)") }
        } else {
            throw CoreError.badArgument("no kernel or firmware given")
        }
        // An incoming machine's RAM comes from the saved state: the ramdisk is not read. A
        // hostile stream that leaves pages out would otherwise leave the file's bytes (the
        // configuration's path, which the peer chose) in RAM for the guest to read.
        let initrd = config.incoming ? nil : try config.ramdiskPath.map { try readFile($0, what: "ramdisk") }

        let map: MemoryMap
        do { map = try MemoryMap.forRAM(bytes: ramBytes) } catch { throw CoreError.badArgument("\(error)") }
        do { memory = try GuestMemory.memfd(name: "xenith-\(config.name)", layout: map.layout) }
        catch { throw CoreError.badArgument("cannot allocate \(config.memoryMiB) MiB of guest memory: \(error)") }

        let bsp: InitialVCPUState
        do {
            bsp = try BootLoader.prepare(memory: memory, ramBytes: ramBytes, vcpus: config.vcpus, target: kernel,
                                         initrd: initrd, cmdline: config.cmdline).vcpu
        } catch {
            throw CoreError.kernel("\(config.kernelPath ?? config.firmwarePath ?? ""): \(error)")
        }

        do {
            vm = try VirtualMachine(system: system)
            vm.setRealModeSupportPages()
            // Creating the PIT and registering memory each wait for a KVM SRCU grace period
            // (milliseconds of wall time, little CPU): do them concurrently.
            let chip = Mutex<(any Error)?>(nil)
            let vmRef = vm
            let chipThread = DedicatedThread(name: "irqchip") {
                do { try vmRef.createIRQChip(); try vmRef.createPIT2() } catch { chip.withLock { $0 = error } }
            }
            let memRef = memory
            let mapped = Result { try vmRef.map(memRef) }
            chipThread.join()
            if let e = chip.withLock({ $0 }) { throw e }
            try mapped.get()
        } catch { throw CoreError.kvm("\(error)") }
        loop = try EventLoop()
        stopFD = try makeEventFD()

        let vmRef = vm
        serial = Serial8250(base: PlatformLayout.com1Port, output: consoleOutput) { level in
            try? vmRef.setIRQLine(gsi: PlatformLayout.com1IRQ, level: level)
        }
        serial.attach(to: bus)
        power = PowerDevices(onStop: { [weak self] why in self?.stop(why) }) { level in
            try? vmRef.setIRQLine(gsi: PlatformLayout.sciIRQ, level: level)
        }
        power.attach(to: bus)
        bus.register(ports: 0x80...0x80, IgnoredPorts())
        pci.attach(to: bus)

        if config.virtioRNG {
            try addVirtio(VirtioRNG(memory: memory, log: log))
        }
        if config.virtioBalloon {
            let b = try VirtioBalloon(memory: memory, log: log)
            try addVirtio(b)
            balloon = b
            balloonTransport = virtioDevices.last
        }

        let cpuid: [kvm_cpuid_entry2]
        do { cpuid = try system.supportedCPUID() } catch { throw CoreError.kvm("\(error)") }
        for i in 0..<config.vcpus {
            do {
                let v = try vm.createVCPU(id: i)
                try v.setCPUID(Self.cpuid(cpuid, apicID: i, vcpus: config.vcpus))
                try v.setupLocalInterrupts()
                // IA32_MISC_ENABLE: fast strings, as firmware leaves it.
                _ = try? v.setMSRs([(0x1A0, 1)])
                if i == 0 { try Self.apply(bsp, to: v) }
                vcpus.append(v)
            } catch { throw CoreError.kvm("vCPU \(i): \(error)") }
        }
    }

    deinit { close(stopFD) }

    /// Plugs a virtio device into the next free PCI slot, with its BAR in the PCI window.
    public func addVirtio(_ device: any VirtioDevice) throws {
        guard let slot = pci.freeSlot else { throw CoreError.badArgument("no free PCI slot") }
        let bar = UInt32(PlatformLayout.pciMMIOBase) + UInt32(slot) * UInt32(VirtioPCIDevice.barSize)
        let dev = try VirtioPCIDevice(device: device, vm: vm, loop: loop, slot: slot, barAddress: bar, log: log)
        pci.plug(dev, slot: slot)
        virtioDevices.append(dev)
    }

    /// CPUID for one vCPU: KVM's supported set with this vCPU's APIC ID and count filled in
    /// and the hypervisor bit set.
    static func cpuid(_ base: [kvm_cpuid_entry2], apicID: Int, vcpus: Int) -> [kvm_cpuid_entry2] {
        base.map { e in
            var e = e
            switch e.function {
            case 1:
                e.ebx = (e.ebx & 0x0000_FFFF) | (UInt32(apicID) << 24) | (UInt32(min(vcpus, 255)) << 16)
                e.ecx |= 1 << 31
                e.edx |= 1 << 28 // HTT: the logical-processor count in EBX is valid
            case 0xB, 0x1F:
                e.edx = UInt32(apicID)
            default: break
            }
            return e
        }
    }

    /// Loads Boot's register state into a vCPU.
    static func apply(_ s: InitialVCPUState, to v: VCPU) throws {
        var regs = kvm_regs()
        regs.rip = s.rip; regs.rsp = s.rsp; regs.rflags = s.rflags
        regs.rax = s.rax; regs.rbx = s.rbx; regs.rcx = s.rcx; regs.rdx = s.rdx
        regs.rsi = s.rsi; regs.rdi = s.rdi; regs.rbp = s.rbp
        var sregs = try v.sregs()
        func seg(_ r: SegmentRegister) -> kvm_segment {
            var k = kvm_segment()
            k.base = r.base; k.limit = r.limit; k.selector = r.selector; k.type = r.type
            k.present = r.present ? 1 : 0; k.dpl = r.dpl; k.db = r.db ? 1 : 0; k.s = r.s ? 1 : 0
            k.l = r.l ? 1 : 0; k.g = r.g ? 1 : 0; k.unusable = r.unusable ? 1 : 0
            return k
        }
        sregs.cs = seg(s.cs); sregs.ds = seg(s.ds); sregs.es = seg(s.es)
        sregs.fs = seg(s.fs); sregs.gs = seg(s.gs); sregs.ss = seg(s.ss)
        sregs.tr = seg(s.tr); sregs.ldt = seg(s.ldt)
        sregs.gdt.base = s.gdt.base; sregs.gdt.limit = s.gdt.limit
        sregs.idt.base = s.idt.base; sregs.idt.limit = s.idt.limit
        sregs.cr0 = s.cr0; sregs.cr3 = s.cr3; sregs.cr4 = s.cr4; sregs.efer = s.efer
        try v.setSregs(sregs)
        try v.setRegs(regs)
    }

    // MARK: Running

    /// Starts the vCPU threads and the event loop, then blocks until the guest stops.
    /// - Returns: why it stopped.
    public func run() -> GuestStop {
        _ = clinux_install_kick_handler(Self.kickSignal)
        loop.start(name: "\(config.name)-io")
        tids.withLock { $0 = Array(repeating: 0, count: vcpus.count) }
        for v in vcpus {
            let t = DedicatedThread(name: "vcpu\(v.id)") { [self] in vcpuLoop(v) }
            threads.append(t)
        }
        // Wait for the first stop request.
        var pfd = pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)
        while stopResult.withLock({ $0 }) == nil { _ = poll(&pfd, 1, 1000) }
        kickAll()
        pauseGate.open()
        for t in threads { t.join() }
        loop.stop()
        return stopResult.withLock { $0! }
    }

    /// Requests a stop with `reason`; the first request wins.
    public func stop(_ reason: GuestStop) {
        let first = stopResult.withLock { s -> Bool in
            if s != nil { return false }
            s = reason
            return true
        }
        if first { signalEventFD(stopFD) }
    }

    private var stopped: Bool { stopResult.withLock { $0 != nil } }

    private func kickAll() {
        for (i, t) in threads.enumerated() {
            vcpus[i].setImmediateExit(true)
            _ = clinux_pthread_kill(t.handle, Self.kickSignal)
        }
    }

    /// Stops every vCPU at its next exit and keeps them stopped until ``unpause()``.
    public func pause() {
        pauseGate.close()
        kickAll()
    }

    /// Lets paused vCPUs run again.
    public func unpause() { pauseGate.open() }

    /// Presses the ACPI power button (a clean shutdown request to the guest OS).
    public func requestShutdown() { power.pressPowerButton() }

    public var state: MachineState {
        if stopped { return .stopped }
        return pauseGate.isClosed ? .paused : .running
    }

    /// CPU time each vCPU thread has used, nanoseconds.
    public var vcpuTimes: [UInt64] { threads.map { clinux_thread_cpu_ns_of($0.handle) } }

    /// Nanoseconds since the machine was built.
    public var uptimeNanoseconds: UInt64 { clock_ns() - startTime }

    /// Linux thread ids of the vCPU threads by vCPU index (0 for one not started yet), so
    /// that xend can pin them (`xm vcpu-pin`).
    public var vcpuThreadIDs: [Int32] { tids.withLock { $0 } }

    private func vcpuLoop(_ v: VCPU) {
        _ = clinux_unblock_signal(Self.kickSignal)
        let tid = Int32(clinux_gettid())
        tids.withLock { if v.id < $0.count { $0[v.id] = tid } }
        while !stopped {
            if pauseGate.isClosed {
                // Finish the instruction of the last exit first (an `in` puts its value in
                // the register only on the next KVM_RUN): with immediate_exit set, KVM_RUN
                // completes it and returns at once, so the registers a save reads are whole.
                v.setImmediateExit(true)
                let pending: VCPUExit
                do { pending = try v.runOnce() } catch {
                    stop(.crash("vCPU \(v.id): \(error)"))
                    return
                }
                if case .interrupted = pending { pauseGate.park() } else { handle(pending, v) }
                continue
            }
            v.setImmediateExit(false)
            if stopped || pauseGate.isClosed { continue }
            let exit: VCPUExit
            do { exit = try v.runOnce() } catch {
                stop(.crash("vCPU \(v.id): \(error)"))
                return
            }
            handle(exit, v)
        }
    }

    /// Acts on one exit of KVM_RUN (device access, stop request).
    private func handle(_ exit: VCPUExit, _ v: VCPU) {
        switch exit {
        case let .io(port, size, count, isWrite, data):
            bus.handlePortIO(port: port, size: size, count: count, isWrite: isWrite, data: data)
        case let .mmio(address, length, isWrite, data):
            bus.handleMMIO(address: address, length: length, isWrite: isWrite, data: data)
        case .interrupted, .hlt:
            return
        case .shutdown:
            stop(.reboot("triple fault on vCPU \(v.id)"))
        case let .systemEvent(type):
            switch type {
            case UInt32(KVM_SYSTEM_EVENT_SHUTDOWN): stop(.poweroff)
            case UInt32(KVM_SYSTEM_EVENT_RESET): stop(.reboot("system reset event"))
            default: stop(.crash("system event \(type) on vCPU \(v.id)"))
            }
        case let .internalError(sub):
            let rip = (try? v.regs().rip).map { "0x" + String($0, radix: 16) } ?? "?"
            stop(.crash("KVM internal error (suberror \(sub)) on vCPU \(v.id) at rip \(rip)"))
        case let .failEntry(reason):
            stop(.crash("KVM entry failure 0x\(String(reason, radix: 16)) on vCPU \(v.id)"))
        case let .exception(n):
            stop(.crash("unhandled exception \(n) on vCPU \(v.id)"))
        case let .unknown(reason):
            stop(.crash("unknown KVM exit \(reason) on vCPU \(v.id)"))
        }
    }
}

/// Monotonic clock, nanoseconds.
func clock_ns() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Reads a whole file for booting.
/// - Throws: ``CoreError/badArgument(_:)`` naming the file ("kernel F: No such file").
func readFile(_ path: String, what: String) throws(CoreError) -> [UInt8] {
    // O_NONBLOCK: a FIFO or device must not hang us before the type check below.
    let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
    if fd < 0 { throw .badArgument("\(what) \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw .badArgument("\(what) \(path): \(String(cString: strerror(errno)))") }
    guard st.st_mode & S_IFMT == S_IFREG else { throw .badArgument("\(what) \(path): not a regular file") }
    guard st.st_size > 0 else { throw .badArgument("\(what) \(path): file is empty") }
    guard st.st_size <= 1 << 31 else { throw .badArgument("\(what) \(path): larger than 2 GiB") }
    var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
    var done = 0
    while done < bytes.count {
        let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
        if n < 0 { if errno == EINTR { continue }; throw .badArgument("\(what) \(path): \(String(cString: strerror(errno)))") }
        if n == 0 { throw .badArgument("\(what) \(path): file shrank while reading") }
        done += n
    }
    return bytes
}

/// A gate vCPU threads wait at while the domain is paused.
final class PauseGate: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var closed = false
    private var parked = 0

    init() {
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
    }

    var isClosed: Bool {
        pthread_mutex_lock(&mutex); defer { pthread_mutex_unlock(&mutex) }
        return closed
    }

    func close() {
        pthread_mutex_lock(&mutex); closed = true; pthread_mutex_unlock(&mutex)
    }

    func open() {
        pthread_mutex_lock(&mutex); closed = false; pthread_cond_broadcast(&cond); pthread_mutex_unlock(&mutex)
    }

    /// Blocks while closed, counted as parked (``waitParked(_:timeoutMs:)``).
    func park() {
        pthread_mutex_lock(&mutex)
        parked += 1
        pthread_cond_broadcast(&cond)
        while closed { pthread_cond_wait(&cond, &mutex) }
        parked -= 1
        pthread_mutex_unlock(&mutex)
    }

    /// Waits until `count` threads are parked behind the closed gate, at most `timeoutMs`.
    /// - Returns: false on timeout or when the gate opened meanwhile.
    func waitParked(_ count: Int, timeoutMs: Int) -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var until = now
        let ns = Int(now.tv_nsec) + (timeoutMs % 1000) * 1_000_000
        until.tv_sec += timeoutMs / 1000 + ns / 1_000_000_000
        until.tv_nsec = ns % 1_000_000_000
        pthread_mutex_lock(&mutex); defer { pthread_mutex_unlock(&mutex) }
        while closed && parked < count {
            if pthread_cond_timedwait(&cond, &mutex, &until) == ETIMEDOUT { break }
        }
        return closed && parked >= count
    }

    /// Blocks while closed (returns at once when open).
    func wait() {
        pthread_mutex_lock(&mutex)
        while closed { pthread_cond_wait(&cond, &mutex) }
        pthread_mutex_unlock(&mutex)
    }
}

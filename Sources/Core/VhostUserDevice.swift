import GuestMemory
import Synchronization
import VhostUser
#if canImport(Glibc)
import Glibc
#endif

/// A virtio device whose queues are served by a vhost-user back-end in another process
/// (blkback, netback): the core keeps the PCI transport, the back-end gets guest memory,
/// kick and call eventfds and the in-flight region (vhost-user.rst). When the back-end's
/// socket hangs up (it crashed or was restarted) the device reconnects and restarts its
/// rings from the used index; the back-end replays what was in flight, so the guest sees
/// only a delay.
public final class VhostUserDevice: VirtioDevice, @unchecked Sendable {
    public let deviceType: UInt16
    public let offeredFeatures: UInt64
    public let queueMaxSizes: [UInt16]
    public let socketPath: String
    private let memory: GuestMemory
    private let configSpace: [UInt8]
    private let log: @Sendable (String) -> Void
    private struct Running {
        var frontend: VhostUserFrontend
        var kicks: [Int32]
    }
    private let running = Mutex<Running?>(nil)
    private var monitor: DedicatedThread?
    private let stopFD: Int32
    /// How often the back-end came back after hanging up.
    public let reconnects = Atomic<Int>(0)
    /// Time the last reconnect took, from hang-up seen to rings restarted, nanoseconds.
    public let lastReconnectNanoseconds = Atomic<UInt64>(0)

    /// Transport-level feature bits the core's split-ring transport supports: indirect
    /// descriptors (28), event index (29), VERSION_1 (32), ACCESS_PLATFORM excluded.
    static let transportFeatures: UInt64 = (1 << 28) | (1 << 29) | (1 << 32)

    /// Connects to the back-end once to learn its features, queue count and
    /// configuration space, then hangs up until the driver starts the device.
    /// - Parameters:
    ///   - deviceType: virtio device ID (2 block, 1 net).
    ///   - deviceFeatureMask: device-specific feature bits (0...23) the core lets through.
    ///   - configSize: bytes of configuration space to read (virtio 1.2 §5.2.4: 60 for blk).
    ///   - numQueues: queues to expose (at most what the back-end supports).
    /// - Throws: ``CoreError/badArgument(_:)`` naming the socket when no back-end answers.
    public init(socketPath: String, memory: GuestMemory, deviceType: UInt16, deviceFeatureMask: UInt64,
                configSize: Int, numQueues: Int, queueSize: UInt16 = 256, log: @escaping @Sendable (String) -> Void) throws {
        self.socketPath = socketPath
        self.memory = memory
        self.deviceType = deviceType
        self.log = log
        let probe = VhostUserFrontend(socketPath: socketPath, memory: memory, wantedFeatures: ~0)
        do {
            try probe.connect()
            configSpace = (try? probe.getConfig(offset: 0, count: UInt32(configSize))) ?? [UInt8](repeating: 0, count: configSize)
        } catch {
            throw CoreError.badArgument("vhost-user back-end \(socketPath): \(error)")
        }
        offeredFeatures = probe.deviceFeatures & (deviceFeatureMask & 0xFF_FFFF | Self.transportFeatures) & ~(1 << 32)
        queueMaxSizes = [UInt16](repeating: queueSize, count: max(1, min(numQueues, probe.maxQueues)))
        probe.disconnect()
        stopFD = try makeEventFD()
    }

    deinit {
        reset()
        close(stopFD)
    }

    public func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) {
        for i in 0..<data.count {
            let o = offset + i
            data[i] = o >= 0 && o < configSpace.count ? configSpace[o] : 0
        }
    }

    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {
        // Writable blk config (writeback, §5.2.4) is not offered; ignore.
    }

    public func activate(features: UInt64, queues: [VirtqueueConfig], kicks: [Int32], calls: [Int32]) throws {
        let fe = VhostUserFrontend(socketPath: socketPath, memory: memory, wantedFeatures: features | (1 << 32))
        do {
            try fe.connect()
            let maxSize = queues.map(\.size).max() ?? 256
            try fe.setupInflight(numQueues: UInt16(queues.count), queueSize: maxSize)
            for (i, q) in queues.enumerated() where q.enabled {
                try fe.startQueue(.init(index: i, size: q.size, descTable: q.descTable, availRing: q.availRing,
                                        usedRing: q.usedRing, kickFd: kicks[i], callFd: calls[i]))
            }
        } catch {
            fe.disconnect()
            throw CoreError.badArgument("vhost-user back-end \(socketPath): \(error)")
        }
        running.withLock { $0 = Running(frontend: fe, kicks: kicks) }
        _ = drainEventFD(stopFD)
        monitor = DedicatedThread(name: "vhost-monitor") { [weak self] in self?.watch() }
    }

    /// Waits for the back-end to hang up, then reconnects (retrying until told to stop).
    private func watch() {
        while true {
            guard let sock = running.withLock({ $0?.frontend.socketFd }), sock >= 0 else { return }
            var fds = [pollfd(fd: sock, events: Int16(POLLIN) | 0x2000, revents: 0),
                       pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)]
            _ = poll(&fds, 2, -1)
            if fds[1].revents != 0 { return }
            // Anything readable on an idle vhost-user socket is a hang-up (or junk): reconnect.
            let t0 = clock_ns()
            log("vhost-user back-end \(socketPath) hung up; reconnecting")
            while true {
                let done: Bool = running.withLock { r in
                    guard let fe = r?.frontend else { return true }
                    fe.disconnect()
                    do { try fe.reconnect(timeoutMs: 0, retryMs: 1); return true } catch { return false }
                }
                if done { break }
                var p = pollfd(fd: stopFD, events: Int16(POLLIN), revents: 0)
                if poll(&p, 1, 5) > 0 { return }
            }
            lastReconnectNanoseconds.store(clock_ns() - t0, ordering: .relaxed)
            reconnects.add(1, ordering: .relaxed)
            // The back-end resumes from used->idx and replays the in-flight region; a kick
            // makes it look at requests the guest queued while it was gone.
            for k in running.withLock({ $0?.kicks ?? [] }) { signalEventFD(k) }
            log("vhost-user back-end \(socketPath) reconnected in \((clock_ns() - t0) / 1_000_000) ms")
        }
    }

    public func reset() {
        signalEventFD(stopFD)
        monitor?.join()
        monitor = nil
        running.withLock { r in
            r?.frontend.disconnect()
            r = nil
        }
    }
}

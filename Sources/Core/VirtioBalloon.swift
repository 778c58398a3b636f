import CLinux
import GuestMemory
import Virtio
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// virtio-balloon (virtio 1.2 §5.5), served in the core: `xm mem-set` sets how many 4 KiB
/// pages the guest should hand back (`num_pages`, with a configuration-change interrupt);
/// the guest's driver puts their page frame numbers on the inflate queue, and the core
/// gives the backing memory back to the host (MADV_REMOVE on the guest's memfd); pages
/// taken back arrive on the deflate queue. The driver reports how many pages the balloon
/// holds in `actual`, which `query` shows. No optional features are offered (no
/// MUST_TELL_HOST: a deflated page is the guest's again at once; no statistics queue).
public final class VirtioBalloon: VirtioDevice, @unchecked Sendable {
    public let deviceType: UInt16 = 5
    public let offeredFeatures: UInt64 = 0
    /// inflateq, deflateq.
    public let queueMaxSizes: [UInt16] = [128, 128]
    /// Page size of the balloon protocol (virtio 1.2 §5.5.6: PFNs of 4096-byte pages).
    public static let pageSize: UInt64 = 4096
    private let memory: GuestMemory
    private let log: @Sendable (String) -> Void
    private struct Config { var numPages: UInt32 = 0; var actual: UInt32 = 0 }
    private let config = Mutex(Config())
    private struct Active { var queues: [Virtqueue?]; var calls: [Int32] }
    private let active = Mutex<Active?>(nil)
    private var thread: DedicatedThread?
    private let stopFD: Int32
    /// Pages given back to the host through the inflate queue, and taken back through the
    /// deflate queue, since the device was made.
    public let pagesReleased = Atomic<UInt64>(0)
    public let pagesReclaimed = Atomic<UInt64>(0)

    public init(memory: GuestMemory, log: @escaping @Sendable (String) -> Void) throws {
        self.memory = memory
        self.log = log
        stopFD = try makeEventFD()
    }

    deinit { close(stopFD) }

    /// The pages the host asks the balloon to hold (`num_pages`).
    public var targetPages: UInt32 { config.withLock { $0.numPages } }
    /// The pages the driver says the balloon holds (`actual`).
    public var actualPages: UInt32 { config.withLock { $0.actual } }

    /// Sets `num_pages`; the caller then raises the configuration-change interrupt.
    public func setTargetPages(_ n: UInt32) { config.withLock { $0.numPages = n } }

    /// Config space: le32 num_pages at 0, le32 actual at 4 (virtio 1.2 §5.5.4).
    public func readConfig(offset: Int, data: UnsafeMutableRawBufferPointer) {
        let c = config.withLock { $0 }
        var bytes = [UInt8](repeating: 0, count: 8)
        withUnsafeBytes(of: c.numPages.littleEndian) { for i in 0..<4 { bytes[i] = $0[i] } }
        withUnsafeBytes(of: c.actual.littleEndian) { for i in 0..<4 { bytes[4 + i] = $0[i] } }
        for i in 0..<data.count { data[i] = offset + i < bytes.count && offset + i >= 0 ? bytes[offset + i] : 0 }
    }

    /// Only `actual` is writable; a write elsewhere or across it is ignored.
    public func writeConfig(offset: Int, data: UnsafeRawBufferPointer) {
        guard offset == 4, data.count == 4 else { return }
        let v = UInt32(data[0]) | UInt32(data[1]) << 8 | UInt32(data[2]) << 16 | UInt32(data[3]) << 24
        config.withLock { $0.actual = v }
    }

    public func activate(features: UInt64, queues: [VirtqueueConfig], kicks: [Int32], calls: [Int32]) throws {
        var vqs: [Virtqueue?] = []
        for q in queues.prefix(2) {
            guard q.enabled else { vqs.append(nil); continue }
            do {
                vqs.append(try Virtqueue(memory: memory, size: q.size, descTable: q.descTable, availRing: q.availRing,
                                         usedRing: q.usedRing, features: features))
            } catch {
                log("virtio-balloon: \(error); queue broken")
                vqs.append(nil)
            }
        }
        while vqs.count < 2 { vqs.append(nil) }
        active.withLock { $0 = Active(queues: vqs, calls: Array(calls.prefix(2))) }
        let k = Array(kicks.prefix(2)), stop = stopFD
        thread = DedicatedThread(name: "virtio-balloon") { [self] in
            var fds = k.map { pollfd(fd: $0, events: Int16(POLLIN), revents: 0) } + [pollfd(fd: stop, events: Int16(POLLIN), revents: 0)]
            while true {
                _ = poll(&fds, nfds_t(fds.count), -1)
                if fds.last!.revents != 0 { _ = drainEventFD(stop); return }
                for i in 0..<k.count where fds[i].revents != 0 {
                    _ = drainEventFD(k[i])
                    process(queue: i)
                }
            }
        }
    }

    public func reset() {
        signalEventFD(stopFD)
        thread?.join()
        thread = nil
        active.withLock { $0 = nil }
        config.withLock { $0.actual = 0 }
    }

    /// Serves every available chain of queue 0 (inflate) or 1 (deflate). Each readable
    /// buffer holds le32 page frame numbers; a PFN outside guest RAM is skipped, a malformed
    /// chain marks the queue broken until the driver resets the device.
    private func process(queue i: Int) {
        var notify = false
        var call: Int32 = -1
        active.withLock { a in
            guard var s = a, i < s.queues.count, let q = s.queues[i] else { return }
            call = i < s.calls.count ? s.calls[i] : -1
            do {
                while let chain = try q.pop() {
                    var pages: UInt64 = 0
                    for b in chain.buffers where !b.writable {
                        let buf = try memory.slice(ChainBuffer(address: b.address, length: min(b.length, 1 << 16), writable: false))
                        for n in 0..<(buf.count / 4) {
                            let pfn = UInt64(buf.loadUnaligned(fromByteOffset: n * 4, as: UInt32.self).littleEndian)
                            if i == 0 { if release(pfn) { pages += 1 } } else { pages += 1 }
                        }
                    }
                    if i == 0 { pagesReleased.add(pages, ordering: .relaxed) } else { pagesReclaimed.add(pages, ordering: .relaxed) }
                    q.addUsed(head: chain.head, length: 0)
                }
                q.publishUsed()
                notify = q.needsNotification()
            } catch {
                log("virtio-balloon: \(error); queue broken")
                s.queues[i] = nil
                a = s
            }
        }
        if notify && call >= 0 { signalEventFD(call) }
    }

    /// Gives the page `pfn` back to the host; false when it is not guest RAM.
    private func release(_ pfn: UInt64) -> Bool {
        guard pfn < (1 << 40) else { return false }
        let address = pfn * Self.pageSize
        guard let page = try? memory.slice(at: address, count: Int(Self.pageSize)), let base = page.baseAddress else { return false }
        return madvise(base, Int(Self.pageSize), MADV_REMOVE) == 0
    }
}

// Serving the requests of a ring: popping chains, handing them to the device (or the I/O
// threads), and completing them in the used ring with in-flight tracking.
import CLinux
import GuestMemory
import Virtio
#if canImport(Glibc)
import Glibc
#endif

extension VhostUserBackend {
    /// Serves every available request of ring `q`.
    func process(_ q: Int) {
        if let d = driven {
            guard drivenRings[q] != nil else { return }
            do { try d.kicked(q) } catch { markBroken(q, error.description) }
            return
        }
        guard vrings[q].started, vrings[q].enabled, !vrings[q].broken, let queue = vrings[q].queue, let mem else { return }
        let iq = inflight?.queue(q).flatMap { $0.size == queue.size ? $0 : nil }
        var batch: [(UInt16, UInt32)] = []
        batch.reserveCapacity(batchLimit)
        var replay = vrings[q].replay
        vrings[q].replay = []
        var batchBytes: UInt64 = 0
        defer {
            pool?.submitPending()
            if !batch.isEmpty { complete(q, queue, iq, &batch) }
        }
        while true {
            let chain: DescriptorChain
            var failedHead: UInt16?
            var served: DescriptorChain?
            do throws(VirtioError) {
                if !replay.isEmpty {
                    let h = replay.removeFirst()
                    failedHead = h
                    chain = try queue.chain(head: h)
                } else {
                    guard let c = try queue.pop() else { return }
                    chain = c
                    failedHead = c.head
                    iq?.begin(head: c.head, counter: vrings[q].counter)
                    vrings[q].counter &+= 1
                }
                if let pool, chain.readableLength &+ chain.writableLength >= offloadBytes {
                    outstanding[q] += 1
                    pool.submit(OffloadJob(queue: q, generation: generation[q], chain: chain, memory: mem.memory, mapping: mem))
                    continue
                }
                served = chain
                let len = try device.handle(chain, queue: q, memory: mem.memory)
                logServed(chain, memory: mem.memory)
                batch.append((chain.head, len))
                batchBytes &+= chain.readableLength &+ chain.writableLength
            } catch {
                // A device that threw may still have written into the request's buffers.
                if let c = served { logServed(c, memory: mem.memory) }
                if !batch.isEmpty { complete(q, queue, iq, &batch) }
                if let h = failedHead { iq?.drop(head: h) }
                markBroken(q, error.description)
                return
            }
            if batch.count >= batchLimit || batchBytes >= batchBytesLimit {
                complete(q, queue, iq, &batch)
                batchBytes = 0
            }
        }
    }

    /// Completes what the I/O threads finished.
    func reapPool() {
        guard let pool else { return }
        var v: UInt64 = 0
        _ = read(pool.doneFd, &v, 8)
        var batches: [Int: [(UInt16, UInt32)]] = [:]
        for d in pool.takeDone() {
            outstanding[d.queue] -= 1
            logServed(d.job.chain, memory: d.job.memory)   // written by now, whatever happens to the result
            guard d.generation == generation[d.queue], let queue = vrings[d.queue].queue, !vrings[d.queue].broken else { continue }
            switch d.result {
            case .success(let len): batches[d.queue, default: []].append((d.head, len))
            case .failure(let e):
                inflight?.queue(d.queue)?.drop(head: d.head)
                if var b = batches.removeValue(forKey: d.queue), !b.isEmpty {
                    complete(d.queue, queue, inflight?.queue(d.queue).flatMap { $0.size == queue.size ? $0 : nil }, &b)
                }
                markBroken(d.queue, e.description)
            }
        }
        for (q, var b) in batches {
            guard let queue = vrings[q].queue else { continue }
            complete(q, queue, inflight?.queue(q).flatMap { $0.size == queue.size ? $0 : nil }, &b)
        }
    }

    /// Waits until the I/O threads finished every request handed to them, completing them.
    func drain() {
        guard let pool else { return }
        while outstanding.contains(where: { $0 > 0 }) {
            pool.waitForDone(milliseconds: 100)
            reapPool()
        }
    }

    /// Puts a batch of served requests (head, used length) in ring `q`'s used ring, publishes
    /// used->idx once, logs those writes for migration, and notifies the driver if it asks.
    func complete(_ q: Int, _ queue: Virtqueue, _ iq: InflightQueue?, _ batch: inout [(UInt16, UInt32)]) {
        if completionOrder == .reversedBatches { batch.reverse() }
        let firstUsed = queue.nextUsedIdx
        for (h, l) in batch {
            iq?.linkUsed(head: h)
            queue.addUsed(head: h, length: l)
        }
        if loggingAll {
            for i in 0..<batch.count { logUsedElement(q, queue, usedIdx: firstUsed &+ UInt16(truncatingIfNeeded: i)) }
        }
        queue.publishUsed()
        logPublished(q, queue)
        iq?.endBatch(heads: batch.lazy.map { $0.0 }, usedIdx: queue.nextUsedIdx)
        batch.removeAll(keepingCapacity: true)
        if queue.needsNotification(), vrings[q].call >= 0 {
            var one: UInt64 = 1
            _ = write(vrings[q].call, &one, 8)
        }
        if !completedSinceConnect {
            completedSinceConnect = true
            onFirstCompletion?()
        }
    }
}

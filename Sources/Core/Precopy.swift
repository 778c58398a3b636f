// Live save: pre-copy of guest RAM over KVM's dirty-page log (api.rst §4.8
// KVM_GET_DIRTY_LOG), as Xen's and QEMU's live migration. The first pass sends all of RAM
// while the guest runs; each further pass sends the pages written meanwhile; when what is
// left fits the downtime limit at the measured rate (or the round or byte bound is hit),
// the vCPUs stop and the last dirty pages go with the register and device state. The
// stream is the same as a stop-and-copy save's (StateStream.swift): a restore reads both.

/// Bounds of one live save.
public struct PrecopyLimits: Sendable, Equatable {
    /// RAM passes at most, the last (stopped) one included (Xen: 29 + 1).
    public var maxRounds: Int
    /// Stream bytes at most before the guest is stopped; 0 means 3 × RAM (Xen's bound).
    public var maxBytes: UInt64
    /// Milliseconds the stopped part may take at the rate measured so far.
    public var downtimeLimitMs: Int

    public init(maxRounds: Int, maxBytes: UInt64, downtimeLimitMs: Int) {
        self.maxRounds = maxRounds; self.maxBytes = maxBytes; self.downtimeLimitMs = downtimeLimitMs
    }
}

extension Machine {
    /// Reads and clears the dirty log of every slot.
    func dirtyBitmaps() throws(CoreError) -> [[UInt64]] {
        var out: [[UInt64]] = []
        for (slot, r) in slots {
            do { out.append(try vm.dirtyLog(slot: slot, pages: Int(r.size) / CoreStateFormat.pageSize)) }
            catch { throw .kvm("dirty log of slot \(slot): \(error)") }
        }
        return out
    }

    /// Live save into `fd`: pre-copy rounds while the guest runs, then the stopped round.
    /// Falls back to a stop-and-copy save when the guest is not running or an in-core
    /// device is in use (``precopyRefusal``). The guest is left paused.
    /// - Throws: ``CoreError``; dirty logging is off again and the guest running again if it was.
    public func saveLive(to fd: Int32, limits: PrecopyLimits, onProgress: ((UInt64) -> Void)? = nil) throws(CoreError) -> SaveResult {
        guard state == .running, precopyRefusal == nil else {
            if let why = precopyRefusal { log("save: stop-and-copy: \(why)") }
            return try save(to: fd, onProgress: onProgress)
        }
        let w = StateWriter(fd: fd)
        w.onProgress = onProgress
        do { try vm.setDirtyLogging(memory, on: true) } catch { throw .kvm("cannot log dirty pages: \(error)") }
        defer { try? vm.setDirtyLogging(memory, on: false) }
        var paused = false
        do {
            _ = try dirtyBitmaps()
            let start = clock_ns()
            try w.header(ramBytes: memory.totalSize, vcpus: vcpus.count)
            try writeAllRAM(w)
            var rounds = 1
            var pending = try dirtyBitmaps()
            let maxBytes = limits.maxBytes == 0 ? 3 * memory.totalSize : limits.maxBytes
            while rounds < max(1, limits.maxRounds - 1) && w.bytesWritten < maxBytes {
                let dirty = pending.reduce(0) { $0 + $1.reduce(0) { $0 + $1.nonzeroBitCount } }
                let elapsedNs = max(clock_ns() - start, 1)
                let bytesPerMs = Double(w.bytesWritten) / (Double(elapsedNs) / 1e6)
                let estimateMs = Double(dirty * CoreStateFormat.pageSize) / max(bytesPerMs, 1)
                if estimateMs <= Double(limits.downtimeLimitMs) { break }
                try writeDirtyRAM(w, pending)
                rounds += 1
                pending = try dirtyBitmaps()
            }
            let t0 = clock_ns()
            paused = true
            try quiesce()
            let last = try dirtyBitmaps()
            let merged = zip(pending, last).map { zip($0, $1).map { $0 | $1 } }
            try writeDirtyRAM(w, merged)
            try writeMachineState(w)
            return SaveResult(bytes: w.bytesWritten, rounds: rounds + 1, downtimeMs: Int((clock_ns() - t0) / 1_000_000),
                              wasRunning: true)
        } catch {
            if paused { unpause() }
            throw error
        }
    }
}

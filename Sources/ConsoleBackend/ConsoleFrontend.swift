import Synchronization

/// The core's end of a console ring: guest output (from the UART, on vCPU threads) goes
/// into the out ring, or into a bounded backlog while the ring is full (xenconsoled slow,
/// dead or restarting); guest input is taken from the in ring only as fast as the UART can
/// hold it. Never blocks and never fails: past the backlog's capacity the oldest output
/// is dropped and counted.
public final class ConsoleFrontend: @unchecked Sendable {
    public let channel: ConsoleRingChannel
    private let backlog: Mutex<ByteQueue>

    /// - Parameters:
    ///   - channel: the ring, mapped in the core.
    ///   - backlogCapacity: output bytes kept while the ring is full (default 64 KiB).
    public init(channel: ConsoleRingChannel, backlogCapacity: Int = 64 * 1024) {
        self.channel = channel
        backlog = Mutex(ByteQueue(capacity: backlogCapacity))
    }

    /// Guest output: one byte the guest transmitted. Safe on any thread.
    public func guestOutput(_ byte: UInt8) {
        withUnsafeBytes(of: byte) { guestOutput($0) }
    }

    /// Guest output: bytes in the order the guest transmitted them. Safe on any thread.
    public func guestOutput(_ bytes: UnsafeRawBufferPointer) {
        backlog.withLock { q in
            if !q.isEmpty { Self.flush(&q, channel) }
            if q.isEmpty {
                let n = channel.writeOutput(bytes)
                if n < bytes.count { q.append(UnsafeRawBufferPointer(rebasing: bytes[n...])) }
            } else {
                q.append(bytes)
            }
        }
    }

    private static func flush(_ q: inout ByteQueue, _ channel: ConsoleRingChannel) {
        while !q.isEmpty {
            let n = q.withFirstChunk { channel.writeOutput($0) }
            if n == 0 { return }
            q.removeFirst(n)
        }
    }

    /// Moves backlogged output into the ring as far as it has room. Call when `inEvent`
    /// fires (xenconsoled consumed output).
    public func flushBacklog() { backlog.withLock { Self.flush(&$0, channel) } }

    /// Output bytes waiting in the backlog.
    public var backlogCount: Int { backlog.withLock { $0.count } }

    /// Output bytes dropped because the backlog was full.
    public var droppedBytes: UInt64 { backlog.withLock { $0.dropped } }

    /// Moves guest input from the in ring to `deliver`, at most `room` bytes (the UART's
    /// free receive space); the rest stays in the ring.
    /// - Parameter deliver: takes the bytes (all of them: `room` must be honest).
    /// - Returns: true when input is still waiting in the ring (try again once the guest
    ///   has read some).
    @discardableResult
    public func pumpInput(room: Int, deliver: (UnsafeRawBufferPointer) -> Void) -> Bool {
        var left = room
        var buf = [UInt8](repeating: 0, count: ConsoleRingLayout.inSize)
        while left > 0 {
            let n = buf.withUnsafeMutableBytes { channel.readInput(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<min(left, $0.count)])) }
            if n == 0 { break }
            buf.withUnsafeBytes { deliver(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            left -= n
        }
        return channel.inputAvailable > 0
    }
}

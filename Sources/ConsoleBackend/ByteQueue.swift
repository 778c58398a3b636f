/// A bounded FIFO of bytes that drops its oldest bytes when full: the backlog of console
/// output that could not be delivered yet (a full ring, a slow client). Not thread-safe.
public struct ByteQueue: Sendable {
    private var storage: [UInt8]
    private var head = 0
    /// Bytes held.
    public private(set) var count = 0
    /// Most bytes held; older bytes are dropped beyond it.
    public let capacity: Int
    /// Bytes dropped so far because the queue was full.
    public private(set) var dropped: UInt64 = 0

    /// - Parameter capacity: bytes kept at most (> 0).
    public init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
        storage = []
    }

    public var isEmpty: Bool { count == 0 }

    /// Appends `bytes`, dropping the oldest bytes held (and then the oldest of `bytes`)
    /// beyond `capacity`.
    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        if storage.isEmpty { storage = [UInt8](repeating: 0, count: capacity) }
        var src = bytes
        if src.count > capacity {
            dropped += UInt64(src.count - capacity)
            src = UnsafeRawBufferPointer(rebasing: src[(src.count - capacity)...])
        }
        let over = count + src.count - capacity
        if over > 0 {
            head = (head + over) % capacity
            count -= over
            dropped += UInt64(over)
        }
        var tail = (head + count) % capacity
        for b in src { storage[tail] = b; tail += 1; if tail == capacity { tail = 0 } }
        count += src.count
    }

    /// The oldest bytes held, as one contiguous piece (may be shorter than `count` when
    /// the data wraps); pass its length to ``removeFirst(_:)`` once consumed.
    public func withFirstChunk<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        let n = min(count, capacity - head)
        return try storage.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[head..<(head + n)])) }
    }

    /// Forgets the `n` oldest bytes.
    public mutating func removeFirst(_ n: Int) {
        let k = min(n, count)
        head = (head + k) % capacity
        count -= k
        if count == 0 { head = 0 }
    }

    /// Forgets everything held.
    public mutating func removeAll() { head = 0; count = 0 }
}

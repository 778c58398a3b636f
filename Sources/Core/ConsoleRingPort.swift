import CLinux
import ConsoleBackend
#if canImport(Glibc)
import Glibc
#endif

/// Connects COM1 to a console ring (the manual's console ring → xenconsoled) instead of
/// stdio. Guest output goes into the out ring without ever blocking a vCPU: while the
/// ring is full (xenconsoled slow, killed, restarting) up to 64 KiB wait in the core and
/// are pushed when xenconsoled signals `inEvent`; beyond that the oldest bytes are dropped
/// and counted. Guest input is moved from the in ring into the UART only as far as its
/// receive FIFO (``Serial8250/rxCapacity``) has room; the rest stays in the ring, retried
/// every 10 ms until the guest has read enough, so typed bytes are never lost.
///
/// Use: pass ``output`` as the machine's console output, then ``connect(to:)``.
public final class ConsoleRingPort: @unchecked Sendable {
    public let frontend: ConsoleFrontend
    private let timerFD: Int32
    private weak var machine: Machine?
    /// How long guest input waits in the ring before the next try when the UART is full, ns.
    static let retryNanoseconds = 10_000_000

    /// - Throws: ``CoreError/system(_:_:)`` when the retry timer cannot be created.
    public init(channel: ConsoleRingChannel) throws(CoreError) {
        frontend = ConsoleFrontend(channel: channel)
        timerFD = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK | TFD_CLOEXEC))
        if timerFD < 0 { throw .system("timerfd_create", errno) }
    }

    /// Maps a ring handed down by the launcher (inherited descriptors, owned from here on).
    /// - Throws: ``ConsoleError`` for a bad ring or eventfd, ``CoreError`` for the timer.
    public convenience init(ringFD: Int32, outEventFD: Int32, inEventFD: Int32,
                            log: @escaping @Sendable (String) -> Void) throws {
        try self.init(channel: ConsoleRingChannel(ringFD: ringFD, outEventFD: outEventFD, inEventFD: inEventFD, log: log))
    }

    deinit { close(timerFD) }

    /// The UART's output sink: every byte the guest transmits (on vCPU threads).
    public var output: @Sendable (UInt8) -> Void {
        { [frontend] b in frontend.guestOutput(b) }
    }

    /// Serves `inEvent` (and the input retry timer) on the machine's event loop and moves
    /// input that is already waiting.
    /// - Throws: ``CoreError/system(_:_:)`` from epoll.
    public func connect(to machine: Machine) throws(CoreError) {
        self.machine = machine
        try machine.loop.add(frontend.channel.inEventFD) { [weak self] _ in self?.service() }
        try machine.loop.add(timerFD) { [weak self] _ in
            guard let self else { return }
            var expirations: UInt64 = 0
            _ = read(self.timerFD, &expirations, 8)
            self.service()
        }
        service()
    }

    /// Output bytes dropped because the backlog was full.
    public var droppedBytes: UInt64 { frontend.droppedBytes }

    private func service() {
        frontend.channel.drainInEvent()
        frontend.flushBacklog()
        guard let serial = machine?.serial else { return }
        let room = Serial8250.rxCapacity - serial.pendingInput
        let more = frontend.pumpInput(room: room) { serial.receive($0) }
        if more {
            var spec = itimerspec()
            spec.it_value.tv_nsec = Self.retryNanoseconds
            _ = timerfd_settime(timerFD, 0, &spec, nil)
        }
    }
}

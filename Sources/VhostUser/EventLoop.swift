// The back-end's epoll loop: listening socket, connection, kick eventfds, a device's own
// descriptors, I/O-pool completions.
import CLinux
import GuestMemory
import Virtio
#if canImport(Glibc)
import Glibc
#endif

extension VhostUserBackend {
    /// Asks ``run()`` to return (thread-safe).
    public func stop() {
        var one: UInt64 = 1
        _ = write(stopFd, &one, 8)
    }

    func add(_ fd: Int32, _ tag: UInt64) throws(VhostUserError) {
        var ev = epoll_event()
        ev.events = EPOLLIN.rawValue
        ev.data.u64 = tag
        if epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0 { throw .errno("epoll_ctl(ADD)") }
    }
    func remove(_ fd: Int32) { _ = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nil) }

    /// Watches `fd` for readability in the event loop and calls `handler` on the loop's
    /// thread while it is readable and the watch is not paused (level-triggered). For a
    /// device's own descriptors (a tap, a timerfd, a signalfd). Call before or during ``run()``.
    /// - Throws: ``VhostUserError/system(_:_:)`` when epoll refuses the descriptor.
    public func watch(fd: Int32, _ handler: @escaping () -> Void) throws(VhostUserError) {
        try add(fd, Self.tagWatched + UInt64(watched.count))
        watched.append((fd, handler))
    }

    /// Pauses (`false`) or resumes (`true`) a watch set up with ``watch(fd:_:)``: a paused
    /// descriptor stays registered but reports nothing, so a device can leave data queued
    /// (a tap while no receive buffer is posted) without the loop spinning.
    public func setWatch(fd: Int32, enabled: Bool) {
        guard let i = watched.firstIndex(where: { $0.fd == fd }) else { return }
        var ev = epoll_event()
        ev.events = enabled ? EPOLLIN.rawValue : 0
        ev.data.u64 = Self.tagWatched + UInt64(i)
        _ = epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev)
    }

    /// Runs the event loop until ``stop()``. Connection-level errors drop the connection
    /// and go back to listening; only a failing epoll itself throws.
    public func run() throws(VhostUserError) {
        if ioThreads > 0 && pool == nil {
            let p = try IOPool(device: device, threads: ioThreads)
            try add(p.doneFd, Self.tagDone)
            pool = p
        }
        var events = [epoll_event](repeating: epoll_event(), count: 64)
        while true {
            let n = epoll_wait(epfd, &events, Int32(events.count), -1)
            if n < 0 { if errno == EINTR { continue }; throw .errno("epoll_wait") }
            for i in 0..<Int(n) {
                let tag = events[i].data.u64
                switch tag {
                case Self.tagStop: return
                case Self.tagListen: acceptConnection()
                case Self.tagDone: reapPool()
                case Self.tagWatched..<(Self.tagWatched + UInt64(watched.count)):
                    watched[Int(tag - Self.tagWatched)].handler()
                case Self.tagConn:
                    do throws(VhostUserError) {
                        let m = try readMessage(conn)
                        try dispatch(m)
                    } catch {
                        if error != .disconnected { log("vhost-user: \(error); dropping the connection") }
                        else { log("vhost-user: front-end disconnected") }
                        teardownConnection()
                    }
                default:
                    let q = Int(tag)
                    guard q < vrings.count, vrings[q].kick >= 0 else { continue }
                    var v: UInt64 = 0
                    _ = read(vrings[q].kick, &v, 8)
                    process(q)
                }
                if conn < 0 && tag == Self.tagConn { break }
            }
        }
    }

    func acceptConnection() {
        let c = accept(listenFd, nil, nil)
        if c < 0 { return }
        _ = fcntl(c, F_SETFD, FD_CLOEXEC)
        if conn >= 0 { close(c); return }
        conn = c
        do { try add(c, Self.tagConn) } catch { close(c); conn = -1; return }
        remove(listenFd)  // one front-end at a time; others wait in the backlog
        completedSinceConnect = false
        log("vhost-user: front-end connected")
    }

    func teardownConnection() {
        guard conn >= 0 else { return }
        remove(conn); close(conn); conn = -1
        for q in vrings.indices { resetVring(q) }
        mem = nil
        inflight = nil
        acked = 0; protocolAcked = 0; status = 0
        try? add(listenFd, Self.tagListen)
    }
}

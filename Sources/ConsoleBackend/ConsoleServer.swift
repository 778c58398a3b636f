import CLinux
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// xenconsoled's engine: one epoll loop on a dedicated thread serving the console socket
/// (protocol in ConsoleProtocol.swift), every registered domain's out ring and the attached
/// `xm console` clients.
///
/// - Guest output is appended to the domain's log (the fd handed in with `register`) and
///   sent to every attached client; a client that does not keep up keeps at most 64 KiB
///   (oldest bytes dropped), so no client can stall the guest or the others.
/// - Keystrokes from attached clients go into the in ring; while it is full, clients are
///   not read (their sockets hold the rest), so typing never loses bytes.
/// - Unregistering a domain closes its log and disconnects its clients (they see EOF).
/// It opens no files: everything arrives as descriptors, so it runs under the
/// xenconsoled manifest.
public final class ConsoleServer: @unchecked Sendable {
    /// Where registrants should open guest logs (answered to `logdir`).
    public let logDirectory: String
    private let listenFD: Int32
    private let log: @Sendable (String) -> Void
    private let epfd: Int32
    private let wakeFD: Int32
    private let stopping = Atomic<Bool>(false)
    private var stopFDs: Set<Int32> = []
    private var thread: pthread_t?
    private var listenerPaused = false

    /// One registered console: a console ring (the core) or a stream socket (QEMU's
    /// serial chardev on one end of a socketpair, `register-stream`).
    private final class Domain {
        let domid: Int
        let name: String
        let channel: ConsoleRingChannel?
        /// The stream socket (-1 for a ring); owned, closed on retire.
        var streamFD: Int32
        /// False once the stream's peer is gone (EOF or error): no more reads or writes.
        var streamOpen: Bool
        /// Keystrokes not yet taken by the stream socket (at most 4 KiB; clients are not
        /// read while it is full, as with a full in ring).
        var inQ = ByteQueue(capacity: 4096)
        var logFD: Int32
        var clients: [Int32] = []
        var inputBlocked = false
        var logFailed = false
        init(domid: Int, name: String, channel: ConsoleRingChannel?, streamFD: Int32 = -1, logFD: Int32) {
            self.domid = domid; self.name = name; self.channel = channel; self.logFD = logFD
            self.streamFD = streamFD; self.streamOpen = streamFD >= 0
        }
        /// The descriptor the loop polls for guest output (ring outEvent or the stream).
        var eventFD: Int32 { channel?.outEventFD ?? streamFD }
        /// Bytes of client input the console takes now (a closed stream takes and drops all).
        var inputSpace: Int { channel?.inputSpace ?? (streamOpen ? inQ.capacity - inQ.count : inQ.capacity) }
    }

    private final class Connection {
        let fd: Int32
        var attached: Int?
        var line: [UInt8] = []
        var fds: [Int32] = []
        var outQ = ByteQueue(capacity: 64 * 1024)
        var closeWhenFlushed = false
        var events: UInt32 = 0
        init(fd: Int32) { self.fd = fd }
    }

    private var domains: [Int: Domain] = [:]
    private var conns: [Int32: Connection] = [:]
    private var outEvents: [Int32: Int] = [:]

    /// - Parameters:
    ///   - listenFD: a listening Unix stream socket (``bindConsoleSocket(path:)``); not
    ///     closed by the server.
    ///   - logDirectory: the directory registrants should open `guest-NAME.log` in.
    ///   - log: receives one line per notable event (registrations, broken rings...).
    /// - Throws: ``ConsoleError/system(_:_:)`` when epoll or eventfd cannot be created.
    public init(listenFD: Int32, logDirectory: String, log: @escaping @Sendable (String) -> Void) throws(ConsoleError) {
        self.listenFD = listenFD
        self.logDirectory = logDirectory
        self.log = log
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        if epfd < 0 { throw .system("epoll_create1", errno) }
        wakeFD = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        if wakeFD < 0 { let e = errno; close(epfd); throw .system("eventfd", e) }
        _ = clinux_fcntl_int(listenFD, F_SETFL, fcntl(listenFD, F_GETFL) | O_NONBLOCK)
        epollAdd(wakeFD, EPOLLIN.rawValue)
        epollAdd(listenFD, EPOLLIN.rawValue)
    }

    deinit {
        close(epfd)
        close(wakeFD)
    }

    /// Stops the loop when `fd` becomes readable (a signalfd for SIGTERM). Call before
    /// ``start()``.
    public func stopWhenReadable(_ fd: Int32) {
        stopFDs.insert(fd)
        epollAdd(fd, EPOLLIN.rawValue)
    }

    /// Runs the loop on a new thread named "xenconsoled-io".
    public func start() {
        final class Box { let body: () -> Void; init(_ b: @escaping () -> Void) { body = b } }
        // Named from inside (prctl): naming another thread opens /proc, which the sandbox forbids.
        let box = Unmanaged.passRetained(Box { [self] in
            "xenconsoled-io".withCString { _ = clinux_prctl(PR_SET_NAME, UInt(bitPattern: $0), 0, 0, 0) }
            run()
        }).toOpaque()
        var t = pthread_t()
        let r = pthread_create(&t, nil, { arg in
            Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue().body()
            return nil
        }, box)
        precondition(r == 0, "pthread_create failed: \(r)")
        thread = t
    }

    /// Waits for the loop thread to end (after ``stop()`` or a stop fd).
    public func wait() {
        if let t = thread { pthread_join(t, nil); thread = nil }
    }

    /// Ends the loop (from any thread) and waits for it; every log is synced and closed,
    /// every client disconnected.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        ConsoleRingChannel.signal(wakeFD)
        wait()
    }

    // MARK: loop

    /// Serves until stopped; then closes connections and registrations.
    public func run() {
        var events = [epoll_event](repeating: epoll_event(), count: 32)
        while !stopping.load(ordering: .acquiring) {
            let n = events.withUnsafeMutableBufferPointer { epoll_wait(epfd, $0.baseAddress, 32, -1) }
            if n < 0 { if errno == EINTR { continue }; log("epoll_wait: \(String(cString: strerror(errno)))"); break }
            for i in 0..<Int(n) {
                let fd = events[i].data.fd
                let ev = events[i].events
                if fd == wakeFD { _ = ConsoleRingChannel.drain(wakeFD) }
                else if fd == listenFD { acceptAll() }
                else if stopFDs.contains(fd) {
                    log("terminating on signal")
                    stopping.store(true, ordering: .releasing)
                } else if let d = outEvents[fd] { serviceDomain(d) }
                else if let c = conns[fd] { handle(c, ev) }
            }
        }
        for c in Array(conns.values) { closeConnection(c) }
        for d in Array(domains.keys) { removeDomain(d) }
    }

    private func epollAdd(_ fd: Int32, _ events: UInt32) {
        var ev = epoll_event(events: events, data: epoll_data_t(fd: fd))
        _ = epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev)
    }

    private func epollMod(_ fd: Int32, _ events: UInt32) {
        var ev = epoll_event(events: events, data: epoll_data_t(fd: fd))
        _ = epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev)
    }

    private func epollDel(_ fd: Int32) { _ = epoll_ctl(epfd, EPOLL_CTL_DEL, fd, nil) }

    private func acceptAll() {
        while true {
            let fd = clinux_accept_nonblock(listenFD)
            if fd < 0 {
                if errno == EMFILE || errno == ENFILE {
                    // Out of descriptors: stop accepting until a connection closes
                    // (level-triggered epoll would otherwise spin).
                    log("accept: \(String(cString: strerror(errno))); pausing the listener")
                    epollDel(listenFD)
                    listenerPaused = true
                }
                return
            }
            let c = Connection(fd: fd)
            conns[fd] = c
            c.events = EPOLLIN.rawValue | EPOLLRDHUP.rawValue
            epollAdd(fd, c.events)
        }
    }

    private func updateEvents(_ c: Connection) {
        var ev = EPOLLRDHUP.rawValue
        var reading = !c.closeWhenFlushed
        if let d = c.attached, domains[d]?.inputBlocked == true { reading = false }
        if reading { ev |= EPOLLIN.rawValue }
        if !c.outQ.isEmpty { ev |= EPOLLOUT.rawValue }
        if ev != c.events { c.events = ev; epollMod(c.fd, ev) }
    }

    private func closeConnection(_ c: Connection) {
        guard conns.removeValue(forKey: c.fd) != nil else { return }
        epollDel(c.fd)
        close(c.fd)
        for f in c.fds { close(f) }
        c.fds = []
        if let d = c.attached { domains[d]?.clients.removeAll { $0 == c.fd } }
        if listenerPaused { listenerPaused = false; epollAdd(listenFD, EPOLLIN.rawValue) }
    }

    // MARK: connections

    private func handle(_ c: Connection, _ ev: UInt32) {
        if ev & EPOLLERR.rawValue != 0 { closeConnection(c); return }
        if ev & EPOLLOUT.rawValue != 0 {
            if !flush(c) { closeConnection(c); return }
            if c.closeWhenFlushed && c.outQ.isEmpty { closeConnection(c); return }
            updateEvents(c)
        }
        guard conns[c.fd] === c else { return }
        if ev & (EPOLLIN.rawValue | EPOLLHUP.rawValue | EPOLLRDHUP.rawValue) != 0 {
            if c.closeWhenFlushed { if ev & EPOLLHUP.rawValue != 0 { closeConnection(c) }; return }
            if c.attached != nil { readAttached(c, hup: ev & EPOLLHUP.rawValue != 0) } else { readCommands(c) }
        }
    }

    /// Sends queued bytes without blocking. False when the peer is gone.
    private func flush(_ c: Connection) -> Bool {
        while !c.outQ.isEmpty {
            let n = c.outQ.withFirstChunk { send(c.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if n < 0 {
                if errno == EINTR { continue }
                return errno == EAGAIN || errno == EWOULDBLOCK
            }
            c.outQ.removeFirst(n)
        }
        return true
    }

    /// Queues bytes for a connection and sends what the socket takes now.
    private func enqueue(_ c: Connection, _ bytes: UnsafeRawBufferPointer) {
        c.outQ.append(bytes)
        if !flush(c) { closeConnection(c); return }
        updateEvents(c)
    }

    private func reply(_ c: Connection, _ line: String) {
        var s = line + "\n"
        s.withUTF8 { enqueue(c, UnsafeRawBufferPointer($0)) }
    }

    private func readCommands(_ c: Connection) {
        var buf = [UInt8](repeating: 0, count: 1024)
        var fds = [Int32](repeating: -1, count: 8)
        while conns[c.fd] === c && c.attached == nil && !c.closeWhenFlushed {
            var nfds: Int32 = 0
            let n = buf.withUnsafeMutableBytes { b in
                fds.withUnsafeMutableBufferPointer { clinux_recv_with_fds(c.fd, b.baseAddress, b.count, $0.baseAddress, 8, &nfds) }
            }
            for i in 0..<Int(nfds) {
                if c.fds.count < 8 { c.fds.append(fds[i]) } else { close(fds[i]) }
            }
            if n < 0 {
                if errno != EAGAIN && errno != EWOULDBLOCK { closeConnection(c) }
                return
            }
            if n == 0 { closeConnection(c); return }
            c.line += buf[0..<n]
            while c.attached == nil && !c.closeWhenFlushed, let nl = c.line.firstIndex(of: 10) {
                let text = String(decoding: c.line[..<nl], as: UTF8.self)
                c.line.removeSubrange(...nl)
                let given = c.fds
                c.fds = []
                command(c, text, fds: given)
                guard conns[c.fd] === c else { return }
            }
            if let d = c.attached {
                // Keystrokes sent right behind the attach line.
                if !c.line.isEmpty, let dom = domains[d] {
                    c.line.withUnsafeBytes { _ = writeInput(dom, $0) }
                }
                c.line = []
                return
            }
            if c.line.count > 1024 {
                reply(c, "error command line too long")
                c.closeWhenFlushed = true
                updateEvents(c)
                return
            }
        }
    }

    private func readAttached(_ c: Connection, hup: Bool) {
        guard let d = c.attached, let dom = domains[d] else { closeConnection(c); return }
        let space = dom.inputSpace
        if space == 0 {
            if hup { closeConnection(c) } else { blockInput(dom) }
            return
        }
        var buf = [UInt8](repeating: 0, count: min(space, 1024))
        let n = buf.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
        if n < 0 {
            if errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR { closeConnection(c) }
            return
        }
        if n == 0 { closeConnection(c); return }
        buf.withUnsafeBytes { _ = writeInput(dom, UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
    }

    private func blockInput(_ d: Domain) {
        guard !d.inputBlocked else { return }
        d.inputBlocked = true
        for fd in d.clients { if let c = conns[fd] { updateEvents(c) } }
    }

    // MARK: commands

    private func command(_ c: Connection, _ text: String, fds: [Int32]) {
        var used = false
        defer { if !used { for f in fds { close(f) } } }
        let parts = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard let verb = parts.first else { reply(c, "error empty command"); return }
        func domid(_ i: Int) -> Int? {
            guard parts.count > i, let d = Int(parts[i]), d >= 0 else { return nil }
            return d
        }
        switch verb {
        case "logdir":
            reply(c, "ok \(logDirectory)")
        case "list":
            let items = domains.keys.sorted().map { "\($0):\(domains[$0]!.name)" }
            reply(c, (["ok"] + items).joined(separator: " "))
        case "register":
            guard parts.count == 3, let d = domid(1), isValidConsoleDomainName(parts[2]) else {
                reply(c, "error usage: register DOMID NAME"); return
            }
            guard fds.count == 3 || fds.count == 4 else {
                reply(c, "error register needs 3 or 4 descriptors (ring, outEvent, inEvent[, log]), got \(fds.count)"); return
            }
            let logFD: Int32 = fds.count == 4 ? fds[3] : -1
            guard prepareLog(c, logFD) else { return }
            let name = parts[2]
            let channel: ConsoleRingChannel
            do {
                channel = try ConsoleRingChannel(ringFD: fds[0], outEventFD: fds[1], inEventFD: fds[2]) { [log] msg in
                    log("domain \(d) (\(name)): \(msg)")
                }
            } catch {
                reply(c, "error \(error)"); return
            }
            used = true
            install(c, Domain(domid: d, name: name, channel: channel, logFD: logFD))
        case "register-stream":
            guard parts.count == 3, let d = domid(1), isValidConsoleDomainName(parts[2]) else {
                reply(c, "error usage: register-stream DOMID NAME"); return
            }
            guard fds.count == 1 || fds.count == 2 else {
                reply(c, "error register-stream needs 1 or 2 descriptors (stream[, log]), got \(fds.count)"); return
            }
            var st = stat()
            guard fstat(fds[0], &st) == 0, st.st_mode & S_IFMT == S_IFSOCK else {
                reply(c, "error the stream descriptor is not a socket"); return
            }
            let logFD: Int32 = fds.count == 2 ? fds[1] : -1
            guard prepareLog(c, logFD) else { return }
            _ = clinux_fcntl_int(fds[0], F_SETFD, FD_CLOEXEC)
            _ = clinux_fcntl_int(fds[0], F_SETFL, fcntl(fds[0], F_GETFL) | O_NONBLOCK)
            used = true
            install(c, Domain(domid: d, name: parts[2], channel: nil, streamFD: fds[0], logFD: logFD))
        case "stream-fd":
            // A copy of a stream console's socket end, for an xend that restarted and lost
            // its own (ConsoleSupervisor.adopt); sent with the reply line.
            guard let d = domid(1) else { reply(c, "error usage: stream-fd DOMID"); return }
            guard let dom = domains[d], dom.streamFD >= 0 else { reply(c, "error domain \(d) has no stream console"); return }
            guard flush(c), c.outQ.isEmpty else { reply(c, "error busy"); return }
            let msg = Array("ok\n".utf8)
            let n = msg.withUnsafeBytes { b in
                withUnsafePointer(to: dom.streamFD) { clinux_send_with_fds(c.fd, b.baseAddress, b.count, $0, 1) }
            }
            if n != msg.count { closeConnection(c) }
        case "unregister":
            guard let d = domid(1) else { reply(c, "error usage: unregister DOMID"); return }
            guard domains[d] != nil else { reply(c, "error no console for domain \(d)"); return }
            removeDomain(d)
            log("unregistered the console of domain \(d)")
            reply(c, "ok")
        case "attach":
            guard let d = domid(1) else { reply(c, "error usage: attach DOMID"); return }
            guard let dom = domains[d] else {
                reply(c, "error domain \(d) has no console")
                c.closeWhenFlushed = true
                if c.outQ.isEmpty { closeConnection(c) } else { updateEvents(c) }
                return
            }
            reply(c, "ok")
            guard conns[c.fd] === c else { return }
            c.attached = d
            dom.clients.append(c.fd)
            updateEvents(c)
        default:
            reply(c, "error unknown command '\(verb)'")
        }
    }

    /// Checks a handed log descriptor (-1: none) and puts it in append mode; replies with
    /// an error and returns false when it is not a file, pipe, character device or socket.
    private func prepareLog(_ c: Connection, _ logFD: Int32) -> Bool {
        guard logFD >= 0 else { return true }
        var st = stat()
        let kind = fstat(logFD, &st) == 0 ? st.st_mode & S_IFMT : 0
        guard kind == S_IFREG || kind == S_IFIFO || kind == S_IFCHR || kind == S_IFSOCK else {
            reply(c, "error the log descriptor is not a file, pipe or character device"); return false
        }
        _ = clinux_fcntl_int(logFD, F_SETFL, fcntl(logFD, F_GETFL) | O_APPEND)
        return true
    }

    /// Makes `dom` the console of its domid (replacing one registered before: attached
    /// clients move over), starts polling it and answers `ok`.
    private func install(_ c: Connection, _ dom: Domain) {
        let d = dom.domid
        var clients: [Int32] = []
        if let old = domains[d] {
            clients = old.clients
            old.clients = []
            retire(old)
        }
        dom.clients = clients
        domains[d] = dom
        outEvents[dom.eventFD] = d
        epollAdd(dom.eventFD, EPOLLIN.rawValue)
        log("registered the \(dom.channel == nil ? "stream " : "")console of domain \(d) (\(dom.name))\(dom.logFD < 0 ? ", without a log" : "")\(clients.isEmpty ? "" : ", \(clients.count) client(s) kept")")
        reply(c, "ok")
        for fd in clients { if let cc = conns[fd] { updateEvents(cc) } }
        serviceDomain(d)
    }

    /// Stops serving a registration (its descriptors are closed; clients untouched).
    private func retire(_ d: Domain) {
        epollDel(d.eventFD)
        outEvents.removeValue(forKey: d.eventFD)
        if d.streamFD >= 0 { close(d.streamFD); d.streamFD = -1; d.streamOpen = false }
        if d.logFD >= 0 { _ = fdatasync(d.logFD); close(d.logFD); d.logFD = -1 }
    }

    /// Client keystrokes into the console: the in ring, or the stream (what the socket does
    /// not take now waits in `inQ`, sent when it becomes writable).
    /// - Returns: bytes taken (at most `inputSpace`).
    private func writeInput(_ d: Domain, _ bytes: UnsafeRawBufferPointer) -> Int {
        if let ch = d.channel { return ch.writeInput(bytes) }
        guard d.streamOpen else { return bytes.count }
        let n = min(bytes.count, d.inputSpace)
        guard n > 0 else { return 0 }
        d.inQ.append(UnsafeRawBufferPointer(rebasing: bytes[0..<n]))
        flushStream(d)
        return n
    }

    /// Sends queued keystrokes to the stream without blocking; polls for writability while
    /// some remain. A gone peer closes the stream (input is dropped).
    private func flushStream(_ d: Domain) {
        guard d.streamOpen else { d.inQ.removeAll(); return }
        while !d.inQ.isEmpty {
            let n = d.inQ.withFirstChunk { send(d.streamFD, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { break }
                streamClosed(d, "writing")
                return
            }
            d.inQ.removeFirst(n)
        }
        epollMod(d.streamFD, EPOLLIN.rawValue | (d.inQ.isEmpty ? 0 : EPOLLOUT.rawValue))
    }

    /// The stream's peer went away (QEMU ended): stop polling it; the registration stays
    /// until xend unregisters it.
    private func streamClosed(_ d: Domain, _ what: String) {
        guard d.streamOpen else { return }
        d.streamOpen = false
        d.inQ.removeAll()
        epollDel(d.streamFD)
        log("domain \(d.domid) (\(d.name)): console stream closed (\(what)\(errno != 0 ? ": " + String(cString: strerror(errno)) : ""))")
    }

    /// Reads guest output from a ring or stream console into `buf`; 0 when none is ready.
    private func readOutput(_ d: Domain, _ buf: UnsafeMutableRawBufferPointer) -> Int {
        if let ch = d.channel { return ch.readOutput(into: buf) }
        guard d.streamOpen else { return 0 }
        while true {
            let n = recv(d.streamFD, buf.baseAddress, buf.count, Int32(MSG_DONTWAIT))
            if n > 0 { return n }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return 0 }
            if n == 0 { errno = 0 }
            streamClosed(d, "reading")
            return 0
        }
    }

    private func removeDomain(_ domid: Int) {
        guard let d = domains.removeValue(forKey: domid) else { return }
        // Drain what the guest wrote last, then say goodbye.
        serviceDomain(d)
        retire(d)
        for fd in d.clients {
            if let c = conns[fd] { c.attached = nil; _ = flush(c); closeConnection(c) }
        }
        d.clients = []
    }

    // MARK: guest output

    private func serviceDomain(_ domid: Int) {
        if let d = domains[domid] { serviceDomain(d) }
    }

    private func serviceDomain(_ d: Domain) {
        d.channel?.drainOutEvent()
        if d.channel == nil { flushStream(d) }
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { readOutput(d, $0) }
            if n == 0 { break }
            buf.withUnsafeBytes { all in
                let bytes = UnsafeRawBufferPointer(rebasing: all[0..<n])
                if d.logFD >= 0 && !writeAll(d.logFD, bytes) && !d.logFailed {
                    d.logFailed = true
                    log("domain \(d.domid) (\(d.name)): writing the console log failed: \(String(cString: strerror(errno)))")
                }
                for fd in d.clients { if let c = conns[fd] { enqueue(c, bytes) } }
            }
        }
        if d.inputBlocked && d.inputSpace > 0 {
            d.inputBlocked = false
            for fd in d.clients { if let c = conns[fd] { updateEvents(c) } }
        }
    }
}

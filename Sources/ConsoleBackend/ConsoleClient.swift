import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// Sends one command (with optional fds) and reads the reply line.
/// - Returns: the text after `ok` (may be empty).
/// - Throws: ``ConsoleError/refused(_:)`` on `error TEXT`; ``ConsoleError/badMessage(_:)``
///   when the connection closes or times out without a reply.
func consoleCommand(_ fd: Int32, _ reader: inout LineReader, _ line: String, fds: [Int32] = []) throws(ConsoleError) -> String {
    let msg = Array((line + "\n").utf8)
    let sent = msg.withUnsafeBytes { b in fds.withUnsafeBufferPointer { clinux_send_with_fds(fd, b.baseAddress, b.count, $0.baseAddress, Int32(fds.count)) } }
    if sent < 0 { throw .system("sendmsg", errno) }
    if sent < msg.count {
        guard msg.withUnsafeBytes({ sendAll(fd, UnsafeRawBufferPointer(rebasing: $0[sent...])) }) else { throw .system("write", errno) }
    }
    guard let reply = reader.readLine() else { throw .badMessage("xenconsoled closed the connection without answering '\(line)'") }
    if reply == "ok" { return "" }
    if reply.hasPrefix("ok ") { return String(reply.dropFirst(3)) }
    if reply.hasPrefix("error ") { throw .refused(String(reply.dropFirst(6))) }
    throw .badMessage("unexpected reply '\(reply)'")
}

/// Registers (or re-registers, replacing) the console of domain `domid` with xenconsoled:
/// sends the ring memfd and both eventfds, plus the log file, over SCM_RIGHTS. The caller
/// keeps its own descriptors. Call again after xenconsoled restarts: it starts with no
/// registrations, and the ring's indices carry over so no output is lost.
///
/// The log: when `logFD` is nil, this opens `DIR/guest-NAME.log` (O_APPEND|O_CREAT, 0640,
/// no symlinks) where DIR is what xenconsoled answers to `logdir` (its `--log-dir`), so the
/// sandboxed daemon never opens files itself.
/// - Parameters:
///   - socketPath: xenconsoled's socket (``ConsolePaths/defaultSocket``).
///   - domid: domain id (>= 0).
///   - name: domain name, ``isValidConsoleDomainName(_:)``.
///   - logFD: an already open log file to use instead (not closed here).
/// - Throws: ``ConsoleError``: cannot connect, bad name, log file not openable, refused.
public func registerConsole(socketPath: String, domid: Int, name: String, channel: ConsoleRingChannel,
                            logFD: Int32? = nil) throws(ConsoleError) {
    try register(socketPath, "register", domid, name, [channel.ringFD, channel.outEventFD, channel.inEventFD], logFD)
}

/// Sends `COMMAND DOMID NAME` with `fds` and the log descriptor (`logFD`, or the log file
/// opened here under xenconsoled's log directory and closed after).
private func register(_ socketPath: String, _ command: String, _ domid: Int, _ name: String, _ fds: [Int32],
                      _ logFD: Int32?) throws(ConsoleError) {
    guard domid >= 0 else { throw .badMessage("domid \(domid) is negative") }
    guard isValidConsoleDomainName(name) else { throw .badMessage("domain name '\(name)' cannot name a console log") }
    let fd = try connectConsoleSocket(socketPath)
    defer { close(fd) }
    var reader = LineReader(fd: fd)
    var log = logFD ?? -1
    var opened = false
    defer { if opened { close(log) } }
    if logFD == nil {
        log = try openConsoleLog(fd, &reader, name: name)
        opened = true
    }
    _ = try consoleCommand(fd, &reader, "\(command) \(domid) \(name)", fds: fds + [log])
}

/// Registers (or re-registers, replacing) a *stream* console for domain `domid`: `streamFD`
/// is one end of a connected stream socket (a `socketpair(AF_UNIX, SOCK_STREAM)`) whose other
/// end is the guest's serial line, e.g. QEMU's `-chardev socket,fd=N`. xenconsoled appends
/// what it reads from the stream to the log and to attached clients, and writes their
/// keystrokes to it. The caller keeps its own descriptor: after xenconsoled restarts, call
/// again with it; bytes the guest wrote meanwhile wait in the socket buffer.
/// The log is opened as for ``registerConsole(socketPath:domid:name:channel:logFD:)``.
/// - Throws: ``ConsoleError``: cannot connect, bad name, log file not openable, refused
///   (e.g. `streamFD` is not a socket).
public func registerStreamConsole(socketPath: String, domid: Int, name: String, streamFD: Int32,
                                  logFD: Int32? = nil) throws(ConsoleError) {
    try register(socketPath, "register-stream", domid, name, [streamFD], logFD)
}

/// A copy of the stream socket xenconsoled holds for domain `domid` (`stream-fd`): how an
/// xend that restarted gets back its end of a qemu domain's serial socketpair.
/// - Returns: the descriptor (close-on-exec), owned by the caller.
/// - Throws: ``ConsoleError/refused(_:)`` when the domain has no stream console;
///   ``ConsoleError/badMessage(_:)`` when no descriptor came with the reply.
public func fetchStreamConsole(socketPath: String, domid: Int) throws(ConsoleError) -> Int32 {
    let fd = try connectConsoleSocket(socketPath)
    defer { close(fd) }
    let line = Array("stream-fd \(domid)\n".utf8)
    guard line.withUnsafeBytes({ sendAll(fd, $0) }) else { throw .system("write", errno) }
    var buf = [UInt8](repeating: 0, count: 512)
    var fds: [Int32] = [-1, -1]
    var nfds: Int32 = 0
    let n = buf.withUnsafeMutableBytes { b in
        fds.withUnsafeMutableBufferPointer { clinux_recv_with_fds(fd, b.baseAddress, b.count, $0.baseAddress, 2, &nfds) }
    }
    let got = Array(fds.prefix(Int(max(0, nfds))))
    if n <= 0 { for f in got { close(f) }; throw .badMessage("xenconsoled closed the connection without answering 'stream-fd'") }
    var end = n
    while end > 0 && buf[end - 1] == 10 { end -= 1 }
    let reply = String(decoding: buf[..<end], as: UTF8.self)
    if reply.hasPrefix("error ") { for f in got { close(f) }; throw .refused(String(reply.dropFirst(6))) }
    guard reply == "ok", got.count == 1 else {
        for f in got { close(f) }
        throw .badMessage("unexpected reply '\(reply)' with \(got.count) descriptors")
    }
    _ = clinux_fcntl_int(got[0], F_SETFD, FD_CLOEXEC)
    return got[0]
}

/// Opens `DIR/guest-NAME.log` where DIR is xenconsoled's answer to `logdir`.
func openConsoleLog(_ fd: Int32, _ reader: inout LineReader, name: String) throws(ConsoleError) -> Int32 {
    let dir = try consoleCommand(fd, &reader, "logdir")
    guard dir.hasPrefix("/") else { throw .badMessage("xenconsoled gave log directory '\(dir)'") }
    makeDirectories(dir)
    let path = dir + "/" + ConsolePaths.logFileName(domainName: name)
    // 0640: a console carries what the guest prints, passwords typed at a prompt included.
    let log = clinux_open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o640)
    if log < 0 { throw .system("open \(path)", errno) }
    _ = fchmod(log, 0o640)   // a log made by an older version keeps its mode otherwise
    return log
}

/// Removes domain `domid`'s console: xenconsoled closes its log and disconnects attached
/// clients.
/// - Throws: ``ConsoleError/refused(_:)`` when it has no such console; connection errors.
public func unregisterConsole(socketPath: String, domid: Int) throws(ConsoleError) {
    let fd = try connectConsoleSocket(socketPath)
    defer { close(fd) }
    var reader = LineReader(fd: fd)
    _ = try consoleCommand(fd, &reader, "unregister \(domid)")
}

/// The consoles xenconsoled has registered, by domid.
/// - Throws: ``ConsoleError`` on connection or protocol errors.
public func listConsoles(socketPath: String) throws(ConsoleError) -> [(domid: Int, name: String)] {
    let fd = try connectConsoleSocket(socketPath)
    defer { close(fd) }
    var reader = LineReader(fd: fd)
    let text = try consoleCommand(fd, &reader, "list")
    return text.split(separator: " ").compactMap { item in
        guard let colon = item.firstIndex(of: ":"), let d = Int(item[..<colon]) else { return nil }
        return (d, String(item[item.index(after: colon)...]))
    }
}

/// The detach key: Ctrl-] (0x1d), as in Xen's xenconsole.
public let consoleEscapeByte: UInt8 = 0x1d

/// `xm console [-q] DOMAIN`: attaches the terminal to domain `domid`'s console. Guest
/// output is copied to `output`, keystrokes from `input` to the guest; Ctrl-] (0x1d)
/// detaches. When `input` is a terminal it is put in raw mode and restored on return.
/// Also works with pipes (end of input detaches).
/// - Parameters:
///   - quiet: print no error line when the domain has no console (xm console -q).
///   - input, output: default standard input and output.
/// - Returns: 0 when detached (Ctrl-] or end of input) or when the console went away
///   (domain destroyed, unregistered); 1 with one line on stderr
///   ("Error: Domain N has no console.") when it cannot attach.
public func attachConsole(socketPath: String, domid: Int, quiet: Bool, input: Int32 = 0, output: Int32 = 1) -> Int32 {
    func fail(_ msg: String) -> Int32 {
        if !quiet { writeAll(2, "Error: \(msg)\n") }
        return 1
    }
    let fd: Int32
    do { fd = try connectConsoleSocket(socketPath) }
    catch { return fail("cannot reach xenconsoled at \(socketPath): \(error)") }
    defer { close(fd) }
    var reader = LineReader(fd: fd)
    do { _ = try consoleCommand(fd, &reader, "attach \(domid)") }
    catch ConsoleError.refused(_) { return fail("Domain \(domid) has no console.") }
    catch { return fail("xenconsoled: \(error)") }
    setTimeouts(fd, seconds: 0)   // attached: no timeouts (a full ring may hold our writes)

    var saved = termios()
    let tty = isatty(input) != 0 && tcgetattr(input, &saved) == 0
    if tty {
        var raw = saved
        cfmakeraw(&raw)
        raw.c_oflag |= tcflag_t(OPOST | ONLCR)
        _ = tcsetattr(input, TCSANOW, &raw)
    }
    defer { if tty { _ = tcsetattr(input, TCSANOW, &saved) } }

    if !reader.pending.isEmpty {
        reader.pending.withUnsafeBytes { _ = writeAll(output, $0) }
        reader.pending = []
    }
    var buf = [UInt8](repeating: 0, count: 4096)
    var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: input, events: Int16(POLLIN), revents: 0)]
    while true {
        let r = poll(&fds, 2, -1)
        if r < 0 { if errno == EINTR { continue }; return 0 }
        if fds[0].revents != 0 {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            if n <= 0 { return 0 }   // the console went away
            _ = buf.withUnsafeBytes { writeAll(output, UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
        if fds[1].revents != 0 {
            let n = buf.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            if n <= 0 { return 0 }   // end of input: detach
            let esc = buf[0..<n].firstIndex(of: consoleEscapeByte)
            let upto = esc ?? n
            if upto > 0 {
                let ok = buf.withUnsafeBytes { sendAll(fd, UnsafeRawBufferPointer(rebasing: $0[0..<upto])) }
                if !ok { return 0 }
            }
            if esc != nil { return 0 }
        }
    }
}

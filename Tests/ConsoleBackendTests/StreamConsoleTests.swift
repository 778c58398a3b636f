import CLinux
import ConsoleBackend
import Glibc
import Testing

/// Stream consoles (`register-stream`, `stream-fd`): QEMU's serial line on one end of a
/// socketpair, xenconsoled on the other.
@Suite(.serialized) struct StreamConsoleTests {
    /// A connected stream socketpair: (xend's end, the guest's end).
    func pair() -> (Int32, Int32) {
        var sv: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sv) == 0)
        return (sv[0], sv[1])
    }

    /// What the guest's end received so far (non-blocking).
    func received(_ fd: Int32) -> String {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = recv(fd, &buf, buf.count, Int32(MSG_DONTWAIT))
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    func guestSays(_ fd: Int32, _ s: String) { _ = s.withCString { send(fd, $0, strlen($0), Int32(MSG_NOSIGNAL)) } }

    @Test func outputReachesLogAndClientsInputReachesTheStream() throws {
        let d = try TestDaemon()
        let (ours, guest) = pair()
        defer { close(ours); close(guest) }
        guestSays(guest, "early boot line\n")       // before registration: waits in the socket
        try registerStreamConsole(socketPath: d.socket, domid: 9, name: "qemu9", streamFD: ours)
        #expect(eventually { d.log("qemu9").contains("early boot line\n") })
        #expect(try listConsoles(socketPath: d.socket).map(\.domid) == [9])

        let input = TestPipe(), output = TestPipe()
        let client = Background { attachConsole(socketPath: d.socket, domid: 9, quiet: true, input: input.r, output: output.w) }
        var i = 0
        #expect(eventually { i += 1; guestSays(guest, "sync \(i)\n"); usleep(20_000); return output.text.contains("sync ") })
        guestSays(guest, "login: ")
        #expect(eventually { output.text.contains("login: ") })
        input.send("root\r")
        var typed = ""
        #expect(eventually { typed += received(guest); return typed == "root\r" })

        // A copy of xend's end comes back with `stream-fd` (an xend that restarted).
        let copy = try fetchStreamConsole(socketPath: d.socket, domid: 9)
        var a = stat(), b = stat()
        #expect(fstat(copy, &a) == 0 && fstat(ours, &b) == 0 && a.st_ino == b.st_ino)
        close(copy)
        #expect(throws: ConsoleError.self) { _ = try fetchStreamConsole(socketPath: d.socket, domid: 10) }

        input.send([0x1d])
        #expect(client.wait() == 0)
        try unregisterConsole(socketPath: d.socket, domid: 9)
        #expect(d.log("qemu9").contains("login: "))
    }

    @Test func reRegistrationAfterARestartLosesNothing() throws {
        let (ours, guest) = pair()
        defer { close(ours); close(guest) }
        do {
            let d1 = try TestDaemon()
            try registerStreamConsole(socketPath: d1.socket, domid: 4, name: "q4", streamFD: ours)
            guestSays(guest, "one\n")
            #expect(eventually { d1.log("q4").contains("one\n") })
        }   // the daemon goes away with its copy; ours keeps the socket open
        guestSays(guest, "written while down\n")
        let d2 = try TestDaemon()
        try registerStreamConsole(socketPath: d2.socket, domid: 4, name: "q4", streamFD: ours)
        #expect(eventually { d2.log("q4").contains("written while down\n") })
    }

    @Test func refusesANonSocketAndAGuestHangupIsNotFatal() throws {
        let d = try TestDaemon()
        var p: [Int32] = [0, 0]
        _ = pipe(&p)
        defer { close(p[0]); close(p[1]) }
        #expect(throws: ConsoleError.self) { try registerStreamConsole(socketPath: d.socket, domid: 5, name: "q5", streamFD: p[0]) }
        let (ours, guest) = pair()
        defer { close(ours) }
        try registerStreamConsole(socketPath: d.socket, domid: 6, name: "q6", streamFD: ours)
        guestSays(guest, "last words\n")
        close(guest)                                 // QEMU ended
        #expect(eventually { d.log("q6").contains("last words\n") })
        #expect(try listConsoles(socketPath: d.socket).map(\.domid) == [6])
        try unregisterConsole(socketPath: d.socket, domid: 6)
    }
}

// xenstored: the xenstore daemon (Xen docs/misc/xenstore.txt) on a Unix socket.
//
//   xenstored [--no-fork|-N] [--socket PATH] [--pid-file F] [--domain-socket DOMID:PATH]...
//             [--ready-fd N] [--store-dir DIR]
//
// With --store-dir the store's contents persist there (snapshot + write-ahead journal,
// XenStore/StoreFiles.swift): a restarted daemon serves what it had. Without it the store
// lives in memory only (tests, tools). A store written during an earlier boot of the host is
// discarded (logged), as Xen's init script removes the tdb at boot.
// Connections on the main socket are domain 0 (privileged). Each --domain-socket adds a
// socket whose connections act as DOMID (unprivileged, relative paths under
// /local/domain/DOMID): how backends and tests act as another domain with unmodified
// xenstore-utils (XENSTORED_PATH=PATH). A dom0 client can also send XS_RESTRICT.
import ArgumentParser
import Glibc
import Sandbox
import XenStore

@main
struct XenStored: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "xenstored",
        abstract: "Serve the xenstore database over the xenstore wire protocol.")

    @Flag(name: [.customShort("N"), .customLong("no-fork")], help: "Stay in the foreground.")
    var noFork = false

    @Option(name: .long, help: "Socket path (default $XENITH_ROOT/run/xenstored/socket).")
    var socket: String?

    @Option(name: .customLong("pid-file"), help: "Write the daemon's pid to this file.")
    var pidFile: String?

    @Option(name: .customLong("domain-socket"), help: "DOMID:PATH — extra socket whose clients act as DOMID.")
    var domainSockets: [String] = []

    @Option(name: .customLong("ready-fd"),
            help: "Say 'ready' (or 'failed: REASON') on this descriptor once serving (Spawn/ReadinessMessage.swift).")
    var readyFd: Int32?

    @Option(name: .customLong("store-dir"),
            help: "Keep the store's contents in DIR (snapshot + journal) across restarts; in memory only without it.")
    var storeDir: String?

    func validate() throws {
        for d in domainSockets {
            guard let (domid, path) = Self.parseDomainSocket(d), domid <= 65535, !path.isEmpty else {
                throw ValidationError("--domain-socket expects DOMID:PATH, got \(d)")
            }
        }
    }

    static func parseDomainSocket(_ s: String) -> (UInt32, String)? {
        guard let colon = s.firstIndex(of: ":"), let id = UInt32(s[..<colon]) else { return nil }
        return (id, String(s[s.index(after: colon)...]))
    }

    func run() throws {
        let path = socket ?? XenStoreDefaults.socketPath()
        if let readyFd, !ServiceReadiness.adopt(readyFd) {
            fail("--ready-fd \(readyFd): expected an open, writable descriptor above 2")
        }
        signal(SIGPIPE, SIG_IGN)
        if !noFork { daemonize(path) }

        // Signals are taken synchronously by this thread; the loop thread inherits the mask.
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)

        let core = XenStoreCore()
        var store: XenStorePersistentStore?
        if let storeDir {
            let s = XenStorePersistentStore(directory: storeDir, log: { line in
                var l = "xenstored: " + line + "\n"
                l.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
            })
            if let boot = XenStorePersistentStore.currentBootID() { s.discardIfFromAnotherBoot(boot) }
            do {
                if let state = try s.open() { core.restore(state) }
                try s.compact(core.stateAsChanges())
            } catch {
                fail("\(error)")
            }
            store = s
        }
        let server = XenStoreServer(core: core, store: store)
        do {
            try server.listen(path: path, domid: 0)
            for d in domainSockets {
                let (domid, p) = Self.parseDomainSocket(d)!
                try server.listen(path: p, domid: domid)
            }
        } catch {
            fail("\(error)")
        }
        server.start()
        if let pidFile { ServicePidFile.writeOrExit(pidFile, program: "xenstored") }
        // The signal for the launcher: the sockets accept and the pid file is written.
        ServiceReadiness.ready("listening on \(path)")

        while true {
            var sig: Int32 = 0
            if sigwait(&set, &sig) != 0 { continue }
            if sig == SIGHUP { continue }
            break
        }
        server.stop()
        if let pidFile { unlink(pidFile) }
    }

    /// `xenstored: MESSAGE` on stderr, `failed: MESSAGE` to the launcher, exit 1.
    private func fail(_ message: String) -> Never { ServiceArguments.fail(program: "xenstored", message) }

    /// Starts the daemon (this program with -N) and exits 0 once it says it is ready
    /// (ServiceDaemon, readiness at fd 3); refuses when another xenstored already listens
    /// on `path`.
    private func daemonize(_ path: String) -> Never {
        if XenStoreServer.isListening(path) {
            fail("\(path): another xenstored is already listening on this socket")
        }
        ServiceDaemon.detachAndExit(program: "xenstored", readyFd: 3)
    }
}

// What a back-end supervisor of any device kind (vbd, vif; pci and migration next) is given
// and shares: the host's paths, the service's executable and manifest, xenstore, the log,
// the socket directory, the restart budget, and the tidying of a kind's xenstore directories.
import Logging
import UnixSocket
import XenStore
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

struct BackendHost: @unchecked Sendable {
    /// Deaths within `burstWindow` seconds after which a device is given up (marked broken).
    static let burstDeaths = 5
    static let burstWindow = 30.0

    let paths: XenithPaths
    /// The service's executable (beside xend's).
    let binary: String
    /// Its security manifest; nil runs it with `--no-sandbox` (logged by the service).
    let manifest: String?
    let xenstore: XenStoreClient?
    let log: Logger

    /// `$ROOT/run/xenith`: the back-ends' vhost-user sockets.
    var runDir: String { paths.resolve("/run/xenith") }

    /// The socket of one device: `$ROOT/run/xenith/SERVICE-DOMID-DEVICE.sock`.
    func socketPath(_ service: String, domid: Int, device: String) -> String {
        runDir + "/\(service)-\(domid)-\(device).sock"
    }

    /// Binds and listens on a back-end's socket at `path` (mode 0600, a stale socket file
    /// replaced, close-on-exec), owned by `owner` when given (an unprivileged engine must
    /// reconnect to it after a back-end restart).
    /// - Throws: `EngineError` naming the path and the failing step; nothing is left behind.
    func listen(_ path: String, owner: (uid: uid_t, gid: gid_t)? = nil) throws -> Int32 {
        do { return try UnixSocket.listen(path: path, backlog: 8, permissions: 0o600, owner: owner, existing: .replace) }
        catch { throw EngineError("\(error)") }
    }

    /// A fresh restart budget for one back-end.
    func restartBudget() -> RestartBudget { RestartBudget(limit: Self.burstDeaths, window: Self.burstWindow) }

    /// The service's arguments for its sandbox: `--manifest FILE`, or `--no-sandbox`.
    var sandboxArguments: [String] { manifest.map { ["--manifest", $0] } ?? ["--no-sandbox"] }

    /// Removes `backend/TYPE/DOMID`, `backend/TYPE` and `backend` under Domain-0 when they
    /// are empty (a device kind leaves no empty directories behind).
    func pruneBackendDirectories(type: String, domid: Int) {
        guard let xs = xenstore else { return }
        let base = "/local/domain/0/backend/\(type)"
        for dir in [base + "/\(domid)", base, "/local/domain/0/backend"] where (try? xs.directory(dir))?.isEmpty == true {
            try? xs.rm(dir)
        }
    }
}

/// The owner of a back-end's socket file as a device record stores it (`DiskRecord`,
/// `VifRecord`). A struct of its own rather than `socketUID`/`socketGID` fields: the
/// registry's JSON coders convert keys to and from snake_case, and `socket_uid` decodes as
/// `socketUid`, so those fields were silently dropped at every xend restart — and the next
/// back-end restart then made the socket root's, which the domain's unprivileged QEMU
/// cannot reconnect to (found by bench/chaos_soak.py).
public struct SocketOwner: Codable, Sendable, Equatable {
    public var uid: UInt32
    public var gid: UInt32

    public init(uid: UInt32, gid: UInt32) { self.uid = uid; self.gid = gid }
    init(_ ids: (uid: uid_t, gid: gid_t)) { uid = UInt32(ids.uid); gid = UInt32(ids.gid) }

    /// As `BackendHost.listen(_:owner:)` takes it.
    var ids: (uid: uid_t, gid: gid_t) { (uid_t(uid), gid_t(gid)) }
}

// What a back-end supervisor of any device kind (vbd, vif; pci and migration next) is given
// and shares: the host's paths, the service's executable and manifest, xenstore, the log,
// the socket directory, the restart budget, and the tidying of a kind's xenstore directories.
import Logging
import XenStore
import XendAPI

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

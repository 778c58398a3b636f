// Where everything lives, under $XENITH_ROOT (DESIGN.md: "All paths resolve under $XENITH_ROOT").
import DomainConfig
#if canImport(Glibc)
import Glibc
#endif

/// The file-system layout of one Xenith host. Every path is `root` + a Xen path, so two
/// hosts with different roots never share a file or socket.
public struct XenithPaths: Sendable, Equatable {
    /// The root directory without a trailing slash; "" means `/`.
    public let root: String

    /// - Parameter root: the root; nil reads `$XENITH_ROOT` (default `/`).
    public init(root: String? = nil) {
        var r = root ?? (getenv("XENITH_ROOT").map { String(cString: $0) } ?? "/")
        while r.hasSuffix("/") { r.removeLast() }
        self.root = r
    }

    /// `absolute` (a path as Xen would spell it, e.g. `/var/lib/xend/xend-socket`) under the root.
    public func resolve(_ absolute: String) -> String {
        absolute.hasPrefix("/") ? root + absolute : root + "/" + absolute
    }

    /// `$ROOT/etc/xen`: domain configs and xend-config.sxp.
    public var etcXen: String { resolve("/etc/xen") }
    /// `$ROOT/etc/xen/xend-config.sxp`.
    public var xendConfigFile: String { resolve(XendConfig.defaultPath) }
    /// `$ROOT/run/xend.pid`: the running xend's pid (Xen: /var/run/xend.pid).
    public var xendPidFile: String { resolve("/run/xend.pid") }
    /// `$ROOT/run/xenstored/socket`.
    public var xenstoredSocket: String { resolve("/run/xenstored/socket") }
    /// `$ROOT/run/xenstored/xenstored.pid`.
    public var xenstoredPidFile: String { resolve("/run/xenstored/xenstored.pid") }
    /// `$ROOT/run/xenconsoled/socket`.
    public var xenconsoledSocket: String { resolve("/run/xenconsoled/socket") }
    /// `$ROOT/run/xend/domains`: per-domain control sockets and status files.
    public var domainRunDir: String { resolve("/run/xend/domains") }
    /// `$ROOT/var/lib/xend`: xend's state.
    public var xendLib: String { resolve("/var/lib/xend") }
    /// `$ROOT/var/lib/xend/domains`: the domain registry (one JSON file per domain).
    public var registryDir: String { resolve("/var/lib/xend/domains") }
    /// `$ROOT/var/log/xen`.
    public var logDir: String { resolve("/var/log/xen") }
    /// `$ROOT/var/log/xen/console`: console logs (`guest-NAME.log`).
    public var consoleLogDir: String { resolve("/var/log/xen/console") }

    /// Reads `xendConfigFile`; built-in defaults when it does not exist.
    /// - Throws: `ConfigError` when the file exists but does not parse.
    public func xendConfig() throws(ConfigError) -> XendConfig {
        if access(xendConfigFile, F_OK) != 0 { return XendConfig() }
        return try XendConfig(contentsOfFile: xendConfigFile)
    }

    /// Creates `path` and its parents (mode 0755); ignores existing directories.
    public static func makeDirectories(_ path: String) {
        var cur = ""
        for part in path.split(separator: "/") {
            cur += "/" + part
            _ = mkdir(cur, 0o755)
        }
    }
}

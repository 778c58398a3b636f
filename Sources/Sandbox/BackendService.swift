// The start-up blkback and netback share (they were near-copies): the flags every
// vhost-user back-end takes, the listening socket (bound here from a path or handed over
// as a descriptor), the descriptors placed at the numbers their manifest names, and the
// sandbox with its test hook. Foundation-free, like the services.
import UnixSocket
#if canImport(Glibc)
import Glibc
#endif

/// The command line and start-up steps of a back-end service that serves one front-end on
/// a listening Unix socket (manifest `fd 3 listener`) and one device descriptor (`fd 4`).
/// Every failure is `ServiceArguments.fail` (stderr line, `failed:` on the readiness
/// descriptor, exit 1).
public struct BackendService {
    /// The service's name (`blkback`), the prefix of its lines.
    public let program: String
    /// `--socket PATH`: bind the listener here.
    public var socketPath: String?
    /// `--listen-fd N`: the listener handed over by a supervisor.
    public var listenFd: Int32?
    /// `--manifest FILE`.
    public var manifestArgument: String?
    /// `--no-sandbox` (debugging only).
    public var noSandbox = false
    /// `--quiet`: no log lines on stderr.
    public var quiet = false
    /// The manifest's file name when `--manifest` is not given (default `PROGRAM.manifest`).
    public var defaultManifestName: String?

    /// - Parameter program: the service's name (`blkback`, `netback`): the prefix of its
    ///   lines and the stem of its manifest's file name.
    public init(program: String) { self.program = program }

    /// The help lines of the shared flags (`--ready-fd` included), two-blank indented.
    public static let usageLines = """
      --socket PATH       listen on a Unix socket at PATH (a stale socket file is replaced;
                          one with a live listener is refused)
      --listen-fd N       serve on an already listening socket fd (from a supervisor)
      --ready-fd N        say `ready` (or `failed: REASON`) on descriptor N once serving
                          (Spawn/ReadinessMessage.swift; from a supervisor)
    """

    /// Takes `flag` (and its value from `args`) when it is one of the shared flags:
    /// `--socket PATH`, `--listen-fd N`, `--manifest FILE`, `--no-sandbox`, `--quiet`.
    /// (`--ready-fd N` is taken by `ServiceArguments` itself.)
    /// - Returns: false when `flag` is not one of them.
    public mutating func take(_ flag: String, from args: inout ServiceArguments) -> Bool {
        switch flag {
        case "--socket": socketPath = args.value(flag)
        case "--listen-fd": listenFd = Int32(args.int(flag, in: 0...65535))
        case "--manifest": manifestArgument = args.value(flag)
        case "--no-sandbox": noSandbox = true
        case "--quiet": quiet = true
        default: return false
        }
        return true
    }

    /// Checks the flags once all are read, in this order: exactly one of `--socket` and
    /// `--listen-fd`; the service's own device flags (`checkDevice`, which exits on an
    /// error); not both `--manifest` and `--no-sandbox`. Then finds the manifest.
    /// - Returns: the manifest's path: `--manifest`, else `ServiceManifest.locateOrExit`
    ///   of ``defaultManifestName`` (`PROGRAM.manifest`); nil with `--no-sandbox`.
    public func manifestPath(checkingDevice checkDevice: () -> Void = {}) -> String? {
        guard (socketPath == nil) != (listenFd == nil) else { fail("give exactly one of --socket PATH or --listen-fd N") }
        checkDevice()
        if manifestArgument != nil && noSandbox { fail("--manifest and --no-sandbox exclude each other") }
        if noSandbox { return nil }
        return manifestArgument ?? ServiceManifest.locateOrExit(defaultManifestName ?? "\(program).manifest", program: program)
    }

    /// Writes `PROGRAM: MESSAGE` and exits 1 (`ServiceArguments.fail`).
    public func fail(_ message: String) -> Never { ServiceArguments.fail(program: program, message) }

    /// Writes `PROGRAM: MESSAGE` to stderr unless `--quiet`.
    public func log(_ message: String) {
        guard !quiet else { return }
        var line = "\(program): \(message)\n"
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }

    /// Starts from a clean signal mask (a launcher running on a Dispatch or
    /// concurrency-pool thread hands most signals blocked) and ignores SIGPIPE.
    public static func resetSignals() {
        var none = sigset_t()
        sigemptyset(&none)
        sigprocmask(SIG_SETMASK, &none, nil)
        signal(SIGPIPE, SIG_IGN)
    }

    /// Clears descriptors 3...`highest` for the manifest's fixed numbers, before anything
    /// is opened: each handed descriptor is moved above 63 (close-on-exec) and every free
    /// number up to `highest` is held by /dev/null until `place` takes it. So nothing the
    /// service opens lands on a fixed number, and placing one never clobbers another.
    /// - Parameter handed: descriptors from the command line (nil entries stay nil).
    /// - Returns: `handed`, renumbered.
    public func reserveFixedDescriptors(upTo highest: Int32, moving handed: [(fd: Int32?, flag: String)]) -> [Int32?] {
        let moved = handed.map { h -> Int32? in
            guard let f = h.fd else { return nil }
            let hi = fcntl(f, F_DUPFD_CLOEXEC, 64)
            guard hi >= 0 else { fail("\(h.flag) \(f): \(String(cString: strerror(errno)))") }
            close(f)
            return hi
        }
        while true {
            let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
            if fd < 0 { fail("/dev/null: \(String(cString: strerror(errno)))") }
            if fd > highest { close(fd); break }
        }
        return moved
    }

    /// Moves `fd` to `target` (replacing its placeholder), close-on-exec. Closes `fd`
    /// unless `closingSource` is false (its owner closes it).
    /// - Returns: `target`.
    @discardableResult
    public func place(_ fd: Int32, at target: Int32, closingSource: Bool = true) -> Int32 {
        if fd == target { _ = fcntl(fd, F_SETFD, FD_CLOEXEC); return fd }
        guard dup2(fd, target) == target else { fail("dup2 to fd \(target): \(String(cString: strerror(errno)))") }
        _ = fcntl(target, F_SETFD, FD_CLOEXEC)
        if closingSource { close(fd) }
        return target
    }

    /// The listener: `--socket PATH` bound now (backlog 4; a stale socket file replaced, a
    /// live one refused: `socket PATH: …`), else the `--listen-fd` descriptor.
    public func openListener() -> Int32 {
        guard let p = socketPath else { return listenFd! }
        do { return try UnixSocket.listen(path: p, backlog: 4) } catch { fail("socket \(p): \(error)") }
    }

    /// Applies the manifest at `manifestPath` (`Sandbox.applyOrExit`), then trips the
    /// forbidden-syscall probe when `probe` is set (`ServiceSyscallProbe`); without a
    /// manifest, logs `running without a sandbox (--no-sandbox)`. `keepFds` are descriptors
    /// the service made itself before the filter and keeps (blkback's io_uring and eventfd).
    public func applySandbox(manifestPath: String?, probe: Bool, keepFds: [Int32] = []) {
        if let m = manifestPath {
            _ = Sandbox.applyOrExit(manifestPath: m, keepFds: keepFds)
            if probe { ServiceSyscallProbe.trip() }
        } else {
            log("running without a sandbox (--no-sandbox)")
        }
    }
}

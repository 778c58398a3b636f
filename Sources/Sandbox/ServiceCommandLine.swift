// The command-line plumbing every sandboxed service (blkback, netback, xenconsoled) shares:
// an argument cursor whose errors name the service and the flag, and the lookup of the
// service's security manifest. Foundation-free, like the services.
import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// Reads a service's arguments flag by flag. Every error is one stderr line
/// `PROGRAM: MESSAGE` and exit status 1 (the services' usage-error convention).
public struct ServiceArguments {
    /// The service's name, the prefix of its error lines (`blkback`).
    public let program: String
    private var rest: ArraySlice<String>

    /// - Parameters:
    ///   - program: the prefix of error lines.
    ///   - arguments: argv without argv[0].
    public init(program: String, arguments: some Collection<String>) {
        self.program = program
        rest = ArraySlice(arguments)
    }

    /// The next flag, nil when all are read.
    public mutating func next() -> String? { rest.popFirst() }

    /// The value following `flag`; exits with `FLAG needs a value` when there is none.
    public mutating func value(_ flag: String) -> String {
        guard let v = rest.popFirst() else { fail("\(flag) needs a value") }
        return v
    }

    /// The integer value following `flag`; exits naming the flag, the value and the
    /// accepted range when it is not an integer within `range`.
    public mutating func int(_ flag: String, in range: ClosedRange<Int>) -> Int {
        let v = value(flag)
        guard let n = Int(v), range.contains(n) else {
            fail("\(flag) \(v): expected an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return n
    }

    /// Writes `PROGRAM: MESSAGE` to stderr and exits with status 1.
    public func fail(_ message: String) -> Never { ServiceArguments.fail(program: program, message) }

    /// Writes `PROGRAM: MESSAGE` to stderr and exits with status 1.
    public static func fail(program: String, _ message: String) -> Never {
        var line = "\(program): \(message)\n"
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
        exit(1)
    }
}

/// Where a service finds its security manifest (manifests/README.md).
public enum ServiceManifest {
    /// The path of manifest `file` (e.g. `blkback.manifest`), first that is readable of:
    /// `$XENITH_MANIFESTS/FILE`; `BINDIR/../share/xenith/manifests/FILE` (an installed
    /// tree; BINDIR is the directory of /proc/self/exe); `manifests/FILE` in BINDIR or
    /// one of its parents (a build tree inside the sources). `$XENITH_MANIFESTS` is taken
    /// as given, readable or not, so a wrong setting fails loudly when it is loaded.
    /// - Returns: nil when none is found.
    public static func locate(_ file: String) -> String? {
        if let env = getenv("XENITH_MANIFESTS") { return String(cString: env) + "/" + file }
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        var dir = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        dir = String(dir[..<(dir.lastIndex(of: "/") ?? dir.endIndex)])
        let installed = dir + "/../share/xenith/manifests/" + file
        if access(installed, R_OK) == 0 { return installed }
        while !dir.isEmpty {
            let candidate = dir + "/manifests/" + file
            if access(candidate, R_OK) == 0 { return candidate }
            guard let slash = dir.lastIndex(of: "/") else { break }
            dir = String(dir[..<slash])
        }
        return nil
    }

    /// `locate(file)`, or exit with `PROGRAM: no manifest found: …` (status 1).
    public static func locateOrExit(_ file: String, program: String) -> String {
        guard let p = locate(file) else {
            ServiceArguments.fail(program: program, "no manifest found: give --manifest FILE (or --no-sandbox for debugging)")
        }
        return p
    }
}

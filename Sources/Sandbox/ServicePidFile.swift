// The pid file of a daemon (xenstored, xenconsoled: `--pid-file FILE`).
#if canImport(Glibc)
import Glibc
#endif

/// A daemon's pid file: its pid in decimal and a newline.
public enum ServicePidFile {
    /// Writes this process's pid to `path` (created with mode 0644, or truncated).
    /// Exits with `PROGRAM: PATH: cannot write pid file: <strerror>` (status 1,
    /// `ServiceArguments.fail`) when it cannot be opened.
    public static func writeOrExit(_ path: String, program: String) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            ServiceArguments.fail(program: program, "\(path): cannot write pid file: \(String(cString: strerror(errno)))")
        }
        var text = "\(getpid())\n"
        text.withUTF8 { _ = write(fd, $0.baseAddress, $0.count) }
        close(fd)
    }
}

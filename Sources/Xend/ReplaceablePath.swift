// Where a command that writes a new file beside its target and renames it into place (xm
// save, xm dump-core) may rename it: only over a regular file or onto a new path.
import Foundation
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

enum ReplaceablePath {
    /// The path to rename a finished file onto for `file`: `file` itself when nothing is
    /// there or a regular file is; the file a symbolic link at `file` points to (the link
    /// stays). Anything else is refused before any work starts: a rename over `/dev/null`,
    /// a FIFO or a directory entry would replace that node with a regular file (Xen's
    /// `xm save DOM /dev/null` wrote into the device; here it is refused).
    /// - Parameters:
    ///   - command: prefixes the message, e.g. "xm save".
    ///   - kind: what the file is, e.g. "a save file".
    /// - Throws: `XendError` 400 naming the path and what it is.
    static func resolve(_ file: String, command: String, kind: String) throws(XendError) -> String {
        var st = stat()
        guard lstat(file, &st) == 0 else { return file }   // nothing there: created
        var target = file
        if st.st_mode & S_IFMT == S_IFLNK {
            guard let real = realpath(file, nil) else {
                throw XendError(.badRequest, "\(command): \(file) is a symbolic link to nothing (\(String(cString: strerror(errno)))): \(kind) must be a regular file or a new path")
            }
            target = String(cString: real)
            free(real)
            guard stat(target, &st) == 0 else { return target }
        }
        let what: String
        switch st.st_mode & S_IFMT {
        case S_IFREG: return target
        case S_IFDIR: what = "a directory"
        case S_IFCHR: what = "a character device"
        case S_IFBLK: what = "a block device"
        case S_IFIFO: what = "a FIFO"
        case S_IFSOCK: what = "a socket"
        default: what = "not a regular file"
        }
        throw XendError(.badRequest, "\(command): \(target == file ? file : "\(file) (\(target))") is \(what): \(kind) must be a regular file or a new path")
    }

    /// The name under which saves and restores of `path` are tracked (TransferTable): its
    /// directory with every link resolved, then its last component with a link there
    /// resolved too; `path` itself when its directory does not resolve. A save to a new
    /// file and a restore of it later, through any links, get the same name.
    static func transferKey(_ path: String) -> String {
        if let whole = realpath(path, nil) { defer { free(whole) }; return String(cString: whole) }
        let ns = path as NSString
        guard let dir = realpath(ns.deletingLastPathComponent, nil) else { return path }
        defer { free(dir) }
        return (String(cString: dir) as NSString).appendingPathComponent(ns.lastPathComponent)
    }
}

import Testing
import Glibc
@testable import UnixSocket

/// A fresh directory under /tmp, removed by the caller.
private func tempDirectory() -> String {
    var template = Array("/tmp/unixsocket-test-XXXXXX".utf8CString)
    guard let p = mkdtemp(&template) else { fatalError("mkdtemp: \(errno)") }
    return String(cString: p)
}

private func removeTree(_ dir: String) {
    if let d = opendir(dir) {
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            if name != "." && name != ".." { unlink(dir + "/" + name) }
        }
        closedir(d)
    }
    rmdir(dir)
}

@Suite struct UnixSocketAddressTests {
    @Test func pathOf107BytesFitsAnd108DoesNot() throws {
        let fits = "/" + String(repeating: "a", count: 106)
        #expect(fits.utf8.count == 107)
        let a = try UnixSocketAddress(path: fits)
        let (family, stored, length) = a.withSockaddr { p, n in
            p.withMemoryRebound(to: sockaddr_un.self, capacity: 1) { u in
                (Int32(u.pointee.sun_family),
                 withUnsafeBytes(of: u.pointee.sun_path) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) },
                 n)
            }
        }
        #expect(family == AF_UNIX)
        #expect(stored == fits)
        #expect(Int(length) == MemoryLayout<sockaddr_un>.size)

        let long = fits + "b"
        #expect(throws: UnixSocketError.pathTooLong(path: long, bytes: 108)) { try UnixSocketAddress(path: long) }
        let e = UnixSocketError.pathTooLong(path: long, bytes: 108)
        #expect(e.description.contains(long) && e.description.contains("at most 107"))
        #expect(e.errno == ENAMETOOLONG)
    }

    @Test func emptyOrNULPathIsRefused() {
        #expect(throws: UnixSocketError.invalidPath(path: "")) { try UnixSocketAddress(path: "") }
        #expect(throws: UnixSocketError.invalidPath(path: "/tmp/a\0b")) { try UnixSocketAddress(path: "/tmp/a\0b") }
    }
}

@Suite(.serialized) struct UnixSocketTests {
    @Test func listenThenConnectCarriesBytesAndDescriptorsAreCloseOnExec() throws {
        let dir = tempDirectory()
        defer { removeTree(dir) }
        let path = dir + "/s"
        let l = try UnixSocket.listen(path: path, permissions: 0o600)
        defer { close(l) }
        var st = stat()
        #expect(lstat(path, &st) == 0)
        #expect(st.st_mode & S_IFMT == S_IFSOCK)
        #expect(st.st_mode & 0o777 == 0o600)
        #expect(fcntl(l, F_GETFD) & FD_CLOEXEC != 0)

        let c = try UnixSocket.connect(path: path)
        defer { close(c) }
        #expect(fcntl(c, F_GETFD) & FD_CLOEXEC != 0)
        let a = accept(l, nil, nil)
        #expect(a >= 0)
        defer { close(a) }
        var out: [UInt8] = [1, 2, 3]
        #expect(write(c, &out, 3) == 3)
        var buf = [UInt8](repeating: 0, count: 3)
        #expect(read(a, &buf, 3) == 3)
        #expect(buf == out)
        #expect(UnixSocket.isLive(path: path))
    }

    @Test func staleSocketIsReplacedLiveOneRefusedOtherFilesNever() throws {
        let dir = tempDirectory()
        defer { removeTree(dir) }
        let path = dir + "/s"
        let first = try UnixSocket.listen(path: path)
        // Live: refused by default, replaced when asked.
        #expect(throws: UnixSocketError.inUse(path: path)) { try UnixSocket.listen(path: path) }
        let second = try UnixSocket.listen(path: path, existing: .replace)
        close(second)
        close(first)
        // Stale now (nobody listens): replaced.
        #expect(!UnixSocket.isLive(path: path))
        let third = try UnixSocket.listen(path: path)
        #expect(UnixSocket.isLive(path: path))
        close(third)

        let file = dir + "/file"
        let fd = open(file, O_CREAT | O_WRONLY, 0o644)
        close(fd)
        #expect(throws: UnixSocketError.notASocket(path: file)) { try UnixSocket.listen(path: file, existing: .replace) }
        #expect(access(file, F_OK) == 0)
    }

    @Test func connectFailureNamesPathAndErrno() {
        let path = "/tmp/unixsocket-test-no-such-dir/s"
        do {
            let fd = try UnixSocket.connect(path: path)
            close(fd)
            Issue.record("connected to a missing socket")
        } catch {
            #expect(error == .system(operation: "connect", path: path, errno: ENOENT))
            #expect(error.description.hasPrefix("connect \(path): "))
        }
        #expect(!UnixSocket.isLive(path: path))
    }

    @Test func bindIntoMissingDirectoryIsNamed() {
        let path = "/tmp/unixsocket-test-no-such-dir/s"
        #expect(throws: UnixSocketError.system(operation: "bind", path: path, errno: ENOENT)) {
            try UnixSocket.listen(path: path)
        }
    }

    @Test func failedChownRemovesTheSocketFile() throws {
        guard getuid() != 0 else { print("SKIP: failedChownRemovesTheSocketFile: root may chown to anyone"); return }
        let dir = tempDirectory()
        defer { removeTree(dir) }
        let path = dir + "/s"
        #expect(throws: UnixSocketError.system(operation: "chown", path: path, errno: EPERM)) {
            try UnixSocket.listen(path: path, owner: (uid: 0, gid: 0))
        }
        #expect(access(path, F_OK) != 0)
    }

    @Test func ownerIsApplied() throws {
        guard getuid() == 0 else { print("SKIP: ownerIsApplied: needs root to chown"); return }
        let dir = tempDirectory()
        defer { removeTree(dir) }
        let path = dir + "/s"
        let l = try UnixSocket.listen(path: path, owner: (uid: 65534, gid: 65534))
        defer { close(l) }
        var st = stat()
        #expect(lstat(path, &st) == 0)
        #expect(st.st_uid == 65534 && st.st_gid == 65534)
    }
}


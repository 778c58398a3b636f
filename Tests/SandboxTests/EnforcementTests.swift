import Testing
import Glibc
@testable import Sandbox

/// The sandbox-probe executable, built into the same directory as this test bundle.
func probePath() -> String? {
    var candidates: [String] = []
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &buf, buf.count - 1)
    if n > 0 { candidates.append(String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)) }
    candidates.append(CommandLine.arguments[0])
    for exe in candidates {
        guard let slash = exe.lastIndex(of: "/") else { continue }
        var dir = String(exe[..<slash])
        // A bundle layout (…/X.xctest/Contents/…) keeps the build's bin dir further up.
        for _ in 0..<4 {
            let path = dir + "/sandbox-probe"
            if access(path, X_OK) == 0 { return path }
            guard let up = dir.lastIndex(of: "/") else { break }
            dir = String(dir[..<up])
        }
    }
    return nil
}

struct ProbeResult {
    var status: Int32
    var stdout: String
    var stderr: String
    var exitCode: Int32? { status & 0x7f == 0 ? (status >> 8) & 0xff : nil }
    var signal: Int32? { status & 0x7f != 0 && status & 0x7f != 0x7f ? status & 0x7f : nil }
    func value(_ key: String) -> String? {
        for line in stdout.split(separator: "\n") where line.hasPrefix(key + "=") {
            return String(line.dropFirst(key.count + 1))
        }
        return nil
    }
}

/// Runs the probe with `fds` (target number → open descriptor of ours) and captures output.
func runProbe(_ probe: String, _ args: [String], fds: [Int32: Int32] = [:]) -> ProbeResult {
    var outPipe: [Int32] = [0, 0], errPipe: [Int32] = [0, 0]
    precondition(pipe(&outPipe) == 0 && pipe(&errPipe) == 0)
    for fd in outPipe + errPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
    posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
    // Copy the sources above every target first, so that one mapping's target can never be
    // another's source (dup2 order would matter then).
    var copies: [Int32] = []
    defer { copies.forEach { close($0) } }
    for (target, source) in fds {
        let copy = fcntl(source, F_DUPFD_CLOEXEC, 200)
        precondition(copy >= 200, "F_DUPFD_CLOEXEC")
        copies.append(copy)
        posix_spawn_file_actions_adddup2(&actions, copy, target)
    }
    let argv: [UnsafeMutablePointer<CChar>?] = ([probe] + args).map { strdup($0) } + [nil]
    let envp: [UnsafeMutablePointer<CChar>?] = [strdup("SWIFT_BACKTRACE=enable=no"), nil]
    defer { (argv + envp).forEach { free($0) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, probe, &actions, nil, argv, envp)
    close(outPipe[1]); close(errPipe[1])
    precondition(rc == 0, "posix_spawn: \(rc)")
    func drain(_ fd: Int32) -> String {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(fd, &chunk, chunk.count)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        close(fd)
        return String(decoding: bytes, as: UTF8.self)
    }
    let out = drain(outPipe[0]), err = drain(errPipe[0])
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return ProbeResult(status: status, stdout: out, stderr: err)
}

/// Root and the probe binary, or nil after printing SKIP.
func enforcementSetup(_ test: String) -> String? {
    guard getuid() == 0 else { print("SKIP: \(test): needs root (namespaces, pivot_root, capabilities)"); return nil }
    guard let probe = probePath() else {
        print("SKIP: \(test): sandbox-probe not built next to the tests (swift build --product sandbox-probe)")
        return nil
    }
    return probe
}

let commonInclude = "include \(manifestsDir)/common.manifest\n"

@Suite(.serialized) struct EnforcementTests {
    @Test func allowedWorkExitsZero() throws {
        guard let probe = enforcementSetup(#function) else { return }
        let dir = tempDirectory()
        defer { removeTree(dir) }
        writeFile("\(dir)/probe.manifest", "service probe\n\(commonInclude)namespaces mount pid ipc net uts\n")
        let r = runProbe(probe, ["work", "\(dir)/probe.manifest"])
        #expect(r.exitCode == 0, "\(r.stderr)")
        #expect(r.stdout.hasPrefix("work done"))
        let expected = "sandbox: probe applied manifest \(dir)/probe.manifest: "
        #expect(r.stderr.contains(expected + "28 syscalls allowed, namespaces [mount, pid, ipc, net, uts], caps none"), "\(r.stderr)")
    }

    @Test(arguments: [true, false])
    func blockedSyscallDiesBySIGSYSAndIsNamed(pidNamespace: Bool) throws {
        guard let probe = enforcementSetup(#function) else { return }
        let dir = tempDirectory()
        defer { removeTree(dir) }
        // Without a PID namespace the probe itself dies; with one, the reaper re-raises.
        let ns = pidNamespace ? "mount pid net" : "mount net"
        writeFile("\(dir)/probe.manifest", "service probe\n\(commonInclude)namespaces \(ns)\n")
        let r = runProbe(probe, ["blocked", "\(dir)/probe.manifest"])
        #expect(r.signal == SIGSYS, "status \(r.status) stderr \(r.stderr)")
        #expect(r.stdout.contains("calling socket"))
        #expect(!r.stdout.contains("still alive"))
        #expect(r.stderr.contains("sandbox: probe: blocked syscall socket (41)\n"), "\(r.stderr)")
        #expect(Sandbox.describeDeath(service: "probe", status: r.status, stderr: r.stderr)
                == "probe killed by SIGSYS: blocked syscall socket (41)")
    }

    @Test func blockedOnAThreadOrByFilterArgument() throws {
        guard let probe = enforcementSetup(#function) else { return }
        let dir = tempDirectory()
        defer { removeTree(dir) }
        writeFile("\(dir)/probe.manifest", "service probe\n\(commonInclude)namespaces mount pid net\n")
        let threaded = runProbe(probe, ["blocked-thread", "\(dir)/probe.manifest"])
        #expect(threaded.signal == SIGSYS, "status \(threaded.status) stderr \(threaded.stderr)")
        #expect(threaded.stderr.contains("blocked syscall socket (41)"))
        #expect(!threaded.stdout.contains("still alive"))
        // clone is allowed only with CLONE_THREAD: glibc's fork() is a clone without it.
        let forked = runProbe(probe, ["fork", "\(dir)/probe.manifest"])
        #expect(forked.signal == SIGSYS, "status \(forked.status) stderr \(forked.stderr)")
        #expect(forked.stderr.contains("sandbox: probe: blocked syscall clone (56)"), "\(forked.stderr)")
        #expect(!forked.stdout.contains("still alive"))
    }

    @Test func userNamespaceVariant() throws {
        guard let probe = enforcementSetup(#function) else { return }
        let dir = tempDirectory()
        defer { removeTree(dir) }
        writeFile("\(dir)/probe.manifest", """
            service probe
            \(commonInclude)
            allow openat -- probe: tries /proc and lists /
            allow getdents64 -- probe: lists /
            allow fcntl arg1 == F_GETFD -- probe: which fds are open
            allow prlimit64 -- probe: reads rlimits
            allow uname -- probe: hostname
            allow newfstatat arg3 == AT_EMPTY_PATH -- probe: opendir() fstat()s the directory
            allow prctl arg0 == PR_GET_NO_NEW_PRIVS -- probe: Sandbox.processStatus
            allow prctl arg0 == PR_GET_SECCOMP -- probe: Sandbox.processStatus
            allow prctl arg0 == PR_CAPBSET_READ -- probe: CapabilitySets.current
            allow prctl arg0 == PR_CAP_AMBIENT && arg1 == 1 -- probe: CapabilitySets.current (IS_SET)
            allow capget -- probe: CapabilitySets.current
            namespaces user mount pid ipc net uts cgroup
            """)
        let r = runProbe(probe, ["inspect", "\(dir)/probe.manifest"])
        #expect(r.exitCode == 0, "\(r.stderr)")
        #expect(r.value("root") == "[]")
        #expect(r.value("caps") == "0,0,0,0,0")
        #expect(r.stderr.contains("namespaces [user, mount, pid, ipc, net, uts, cgroup], caps none"), "\(r.stderr)")
    }

    @Test func confinementAfterApply() throws {
        guard let probe = enforcementSetup(#function) else { return }
        let dir = tempDirectory()
        defer { removeTree(dir) }
        writeFile("\(dir)/inspect.manifest", """
            service probe
            \(commonInclude)
            fd 3 socket
            allow openat -- probe: tries /proc and lists /
            allow getdents64 -- probe: lists /
            allow fcntl arg1 == F_GETFD -- probe: which fds are open
            allow prlimit64 -- probe: reads rlimits
            allow uname -- probe: hostname
            allow newfstatat arg3 == AT_EMPTY_PATH -- probe: opendir() fstat()s the directory
            allow prctl arg0 == PR_GET_NO_NEW_PRIVS -- probe: Sandbox.processStatus
            allow prctl arg0 == PR_GET_SECCOMP -- probe: Sandbox.processStatus
            allow prctl arg0 == PR_CAPBSET_READ -- probe: CapabilitySets.current
            allow prctl arg0 == PR_CAP_AMBIENT && arg1 == 1 -- probe: CapabilitySets.current (IS_SET)
            allow capget -- probe: CapabilitySets.current
            namespaces mount pid ipc net uts
            rlimit nofile 32
            """)
        var sv: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &sv) == 0)
        let stray = open("/dev/null", O_RDONLY)   // handed at 7 but not in the manifest
        defer { close(sv[0]); close(sv[1]); close(stray) }
        let r = runProbe(probe, ["inspect", "\(dir)/inspect.manifest"], fds: [3: sv[1], 7: stray])
        #expect(r.exitCode == 0, "\(r.stderr)")
        #expect(r.value("pid") == "1")                  // PID 1 of its own namespace
        #expect(r.value("proc") == "errno \(ENOENT)")   // no /proc
        #expect(r.value("root") == "[]")                // empty root
        #expect(r.value("caps") == "0,0,0,0,0")         // effective, permitted, inheritable, bounding, ambient
        #expect(r.value("fds") == "0,1,2,3")            // the stray fd 7 is closed
        #expect(r.value("nofile") == "32")
        #expect(r.value("core") == "0")                 // from common.manifest
        #expect(r.value("nnp") == "1")
        #expect(r.value("seccomp") == "2")
        #expect(r.value("setpriority") == "0 errno=0")  // answered with success, not run
    }

    @Test func shippedManifestsRunASwiftProcess() throws {
        guard let probe = enforcementSetup(#function) else { return }
        let dir = tempDirectory()
        defer { removeTree(dir) }
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let path = "\(dir)/sock"
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in
            for (i, b) in path.utf8.enumerated() { raw[i] = b }
        }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        precondition(bound == 0 && listen(listener, 4) == 0)
        writeFile("\(dir)/disk.img", String(repeating: "\0", count: 4096))
        let image = open("\(dir)/disk.img", O_RDWR | O_CLOEXEC)
        let tap = open("/dev/net/tun", O_RDWR | O_CLOEXEC)
        let vfioStandIn = open("/dev/null", O_RDWR | O_CLOEXEC)
        defer { close(listener); close(image); close(vfioStandIn); if tap >= 0 { close(tap) } }
        let cases: [(String, [Int32: Int32])] = [
            ("blkback", [3: listener, 4: image]),
            ("xenconsoled", [3: listener]),
            ("pciback", [3: vfioStandIn, 4: vfioStandIn]),   // character devices, as /dev/vfio/* are
            ("migration", [4: image, 5: listener]),   // fd 3 (engine) is optional: verify has none
        ] + (tap >= 0 ? [("netback", [3: listener, 4: tap])] : [])
        if tap < 0 { print("SKIP: netback: no /dev/net/tun") }
        for (service, fds) in cases {
            let r = runProbe(probe, ["work", "\(manifestsDir)/\(service).manifest"], fds: fds)
            #expect(r.exitCode == 0, "\(service): \(r.stderr)")
            #expect(r.stderr.contains("sandbox: \(service) applied manifest \(manifestsDir)/\(service).manifest: "), "\(r.stderr)")
        }
        // A missing handed fd, or one of the wrong kind, is fatal before anything else.
        let missing = runProbe(probe, ["work", "\(manifestsDir)/blkback.manifest"], fds: [3: listener])
        #expect(missing.exitCode == 70)
        #expect(missing.stderr.contains("handed fd 4 (image, \(manifestsDir)/blkback.manifest:8) is not open"), "\(missing.stderr)")
        let wrongKind = runProbe(probe, ["work", "\(manifestsDir)/blkback.manifest"], fds: [3: image, 4: image])
        #expect(wrongKind.exitCode == 70)
        #expect(wrongKind.stderr.contains("handed fd 3 is not a listener"), "\(wrongKind.stderr)")
    }

    @Test func badManifestIsFatalWithItsLocation() throws {
        guard let probe = enforcementSetup(#function) else { return }
        let dir = tempDirectory()
        defer { removeTree(dir) }
        writeFile("\(dir)/bad.manifest", "service probe\n\(commonInclude)allow frobnicate -- no such call\n")
        let r = runProbe(probe, ["work", "\(dir)/bad.manifest"])
        #expect(r.exitCode == 70)
        #expect(r.stderr.contains("\(dir)/bad.manifest:3: unknown syscall 'frobnicate'"), "\(r.stderr)")
        #expect(!r.stdout.contains("work done"))
    }
}

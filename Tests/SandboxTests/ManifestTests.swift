import Testing
import Glibc
@testable import Sandbox

/// Repository root, from this file's path (Tests/SandboxTests/ManifestTests.swift).
let repoRoot: String = {
    var parts = #filePath.split(separator: "/", omittingEmptySubsequences: false)
    parts.removeLast(3)
    return parts.joined(separator: "/")
}()
let manifestsDir = repoRoot + "/manifests"

/// Parses `text` as "<name>" with in-memory include files.
func parse(_ text: String, file: String = "t.manifest", files: [String: String] = [:]) throws(ManifestError) -> Manifest {
    try Manifest.parse(text: text, file: file) { name, location throws(ManifestError) in
        guard let body = files[name] else {
            throw ManifestError(location: location, token: name, problem: "no such test file")
        }
        return (name, body)
    }
}

func parseError(_ text: String, files: [String: String] = [:]) -> ManifestError? {
    do { _ = try parse(text, files: files); return nil } catch { return error }
}

let minimal = "allow write -- log\nallow exit_group -- exit\n"

@Suite struct ManifestTests {
    @Test func shippedManifestsParse() throws {
        for service in ["blkback", "netback", "xenconsoled", "pciback", "migration"] {
            let m = try Manifest.load(path: "\(manifestsDir)/\(service).manifest")
            #expect(m.service == service)
            #expect(m.namespaces == [.mount, .pid, .ipc, .net, .uts])
            #expect(m.capabilities.isEmpty)
            #expect(m.rules.allSatisfy { !$0.reason.isEmpty })
            #expect(m.rlimits.contains { $0.name == "core" && $0.value == 0 })
            #expect(m.allowedSyscalls.contains("futex"))
            #expect(m.rules.contains { $0.name == "clone3" && $0.action == .errno(ENOSYS) })
            #expect(m.rules.contains { $0.name == "setpriority" && $0.action == .errno(0) })
        }
        let blk = try Manifest.load(path: "\(manifestsDir)/blkback.manifest")
        // Listener, image, readiness, then a qcow2 image's backing files (at most 16).
        #expect(blk.fds.map(\.number) == [3, 4, 5] + Array(6...21))
        #expect(blk.fds.map(\.name) == ["listener", "image", "readiness"] + (1...16).map { "backing\($0)" })
        #expect(blk.fds.map(\.optional) == [false, false] + [Bool](repeating: true, count: 17))
        // Every service that reports readiness keeps its pipe at a number of its own.
        let net = try Manifest.load(path: "\(manifestsDir)/netback.manifest")
        #expect(net.fds.filter { $0.name == "readiness" }.map(\.number) == [5])
        let cons = try Manifest.load(path: "\(manifestsDir)/xenconsoled.manifest")
        #expect(cons.fds.filter { $0.name == "readiness" }.map(\.number) == [4])
        #expect(blk.rlimits.first { $0.name == "data" }?.value == 256 << 20)
        let ioctls = blk.rules.filter { $0.name == "ioctl" }
        #expect(ioctls.count == 4)
        #expect(ioctls.contains { $0.filters[1].value == 0x127f })       // BLKZEROOUT (write zeroes on phy:)
        #expect(ioctls.allSatisfy { $0.filters.count == 2 && $0.filters[0] == ArgumentFilter(index: 0, comparison: .equal, value: 4) })
        #expect(ioctls.contains { $0.filters[1].value == 0x80081272 })   // BLKGETSIZE64
        // Rules from the include carry the include's location.
        let read = try #require(blk.rules.first { $0.name == "read" })
        #expect(read.location.file == "\(manifestsDir)/common.manifest")
    }

    /// The syscall surface (manifests/README.md "Syscall surface"): every shipped service
    /// allows at most 40 distinct syscalls, and none of the dangerous ones, so a later
    /// change cannot silently grow it. Raising a figure means measuring again and updating
    /// the table there.
    @Test func shippedManifestsStayWithinTheSyscallBudget() throws {
        // io_uring_setup/io_uring_register too: a ring made after the filter could carry
        // any operation past it (blkback's ring is made and restricted before its filter).
        let dangerous = ["open", "openat", "openat2", "execve", "execveat", "socket", "connect", "ptrace",
                         "mount", "bpf", "memfd_secret", "userfaultfd", "fork", "vfork", "unshare", "setns",
                         "io_uring_setup", "io_uring_register"]
        let measured = ["blkback": 39, "blkback-io_uring": 40, "netback": 39, "xenconsoled": 37, "migration": 32, "pciback": 35]
        for (service, count) in measured {
            let m = try Manifest.load(path: "\(manifestsDir)/\(service).manifest")
            #expect(m.allowedSyscalls.count <= 40, "\(service) allows \(m.allowedSyscalls.count) syscalls: \(m.allowedSyscalls)")
            #expect(m.allowedSyscalls.count == count, "\(service): update manifests/README.md's table with the new figure")
            for name in dangerous {
                #expect(!m.rules.contains { $0.name == name }, "\(service) must not mention \(name)")
            }
        }
    }

    @Test func ruleSyntax() throws {
        let m = try parse("""
            service demo   # a comment
            allow write -- log lines
            allow exit_group -- reason with # and -- inside
            allow clone arg0 & CLONE_THREAD == CLONE_THREAD -- threads only
            allow ioctl arg0 == 4 && arg1 == 0x1272 -- BLKGETSIZE on the image
            allow mmap arg2 <= 3 -- no PROT_EXEC
            errno setpriority 0 -- pretend success
            errno clone3 ENOSYS -- fall back to clone
            cap cap_net_admin -- tap offloads
            namespaces mount net
            namespaces net uts
            rlimit nofile 64
            rlimit as 1G
            rlimit nproc unlimited
            fd 3 socket
            fd 5 log optional
            """)
        #expect(m.service == "demo")
        let clone = try #require(m.rules.first { $0.name == "clone" })
        #expect(clone.filters == [ArgumentFilter(index: 0, comparison: .maskedEqual(mask: 0x10000), value: 0x10000)])
        let exitRule = try #require(m.rules.first { $0.name == "exit_group" })
        #expect(exitRule.reason == "reason with # and -- inside")
        #expect(m.rules.first { $0.name == "ioctl" }?.filters.count == 2)
        #expect(m.rules.first { $0.name == "mmap" }?.filters == [ArgumentFilter(index: 2, comparison: .lessOrEqual, value: 3)])
        #expect(m.rules.first { $0.name == "setpriority" }?.action == .errno(0))
        #expect(m.rules.first { $0.name == "clone3" }?.action == .errno(ENOSYS))
        #expect(m.capabilities.map(\.name) == ["cap_net_admin"])
        #expect(m.capabilities.first?.value == 12)
        #expect(m.namespaces == [.mount, .net, .uts])
        #expect(m.rlimits.map(\.value) == [64, 1 << 30, nil])
        #expect(m.fds == [HandedFd(number: 3, name: "socket", optional: false, location: SourceLocation(file: "t.manifest", line: 15)),
                          HandedFd(number: 5, name: "log", optional: true, location: SourceLocation(file: "t.manifest", line: 16))])
        #expect(m.allowedSyscalls == ["clone", "exit_group", "ioctl", "mmap", "write"])
    }

    @Test func unknownSyscallNamesFileLineAndToken() {
        let e = parseError("service x\n\(minimal)allow opne -- a typo\n")
        #expect(e == ManifestError(location: SourceLocation(file: "t.manifest", line: 4), token: "opne", problem: "unknown syscall"))
        #expect(e?.description == "t.manifest:4: unknown syscall 'opne'")
        // In an included fragment the fragment's name and line are reported.
        let inc = parseError("service x\ninclude frag.manifest\n", files: ["frag.manifest": "\(minimal)\n# c\nallow bogus_call -- no\n"])
        #expect(inc?.location == SourceLocation(file: "frag.manifest", line: 5))
        #expect(inc?.token == "bogus_call")
        // Syscalls of other architectures only are unknown here too.
        #expect(parseError("service x\n\(minimal)allow socketcall -- i386 only\n")?.token == "socketcall")
    }

    @Test func missingReasonIsAnError() {
        let e = parseError("service x\n\(minimal)allow read\n")
        #expect(e?.location.line == 4)
        #expect(e?.token == "read")
        #expect(e?.problem.contains("missing reason") == true)
        #expect(parseError("service x\n\(minimal)errno setpriority 0 --\n")?.token == "setpriority")
        #expect(parseError("service x\n\(minimal)cap cap_sys_admin\n")?.token == "cap_sys_admin")
    }

    @Test func otherErrors() {
        func err(_ body: String, files: [String: String] = [:]) -> (Int, String, String)? {
            parseError("service x\n\(minimal)" + body, files: files).map { ($0.location.line, $0.token, $0.problem) }
        }
        #expect(err("frobnicate read\n")?.1 == "frobnicate")
        #expect(err("namespaces mount time\n")?.1 == "time")
        #expect(err("cap cap_bogus -- x\n")?.1 == "cap_bogus")
        #expect(err("rlimit files 3\n")?.1 == "files")
        #expect(err("rlimit nofile lots\n")?.1 == "lots")
        #expect(err("fd 2 stderr\n")?.1 == "2")
        #expect(err("fd 3 a\nfd 3 b\n")?.0 == 5)
        #expect(err("errno read EWHAT -- x\n")?.1 == "EWHAT")
        #expect(err("allow ioctl arg7 == 1 -- x\n")?.1 == "arg7")
        #expect(err("allow ioctl arg1 == NOT_A_CONSTANT -- x\n")?.1 == "NOT_A_CONSTANT")
        #expect(err("allow ioctl arg1 =~ 3 -- x\n")?.1 == "=~")
        #expect(err("allow ioctl arg1 == 3 arg2 == 4 -- x\n")?.1 == "arg2")
        // allow and errno for one syscall contradict each other.
        #expect(err("errno write 0 -- x\n")?.1 == "write")
        // Include cycles and a service line in a fragment.
        #expect(err("include a\n", files: ["a": "include b\n", "b": "include a\n"])?.1 == "a")
        #expect(err("include a\n", files: ["a": "service y\n"])?.1 == "service")
        // A variant includes its service's base manifest, which names the same service.
        #expect(err("include a\n", files: ["a": "service x\n"]) == nil)
        #expect(parseError(minimal)?.problem.contains("missing 'service") == true)
        #expect(parseError("service x\nallow read -- r\n")?.token == "write")
    }

    /// fuzz-manifest: a rule ending in `&&` (no filter after it) trapped in the parser
    /// (removeFirst on an empty token list) instead of being refused with its line.
    @Test func fuzzManifestTrailingAndIsAnErrorNotATrap() {
        let e = parseError("service x\n\(minimal)allow ioctl arg0 == 4 && -- x\n")
        #expect(e?.location.line == 4)
        #expect(e?.description == "t.manifest:4: expected an argument filter after '&&'")
    }

    @Test func loadReportsUnreadableInclude() {
        let dir = tempDirectory()
        defer { removeTree(dir) }
        writeFile("\(dir)/svc.manifest", "service svc\ninclude missing.manifest\n")
        do {
            _ = try Manifest.load(path: "\(dir)/svc.manifest")
            Issue.record("expected an error")
        } catch {
            #expect(error.location == SourceLocation(file: "\(dir)/svc.manifest", line: 2))
            #expect(error.token == "\(dir)/missing.manifest")
        }
    }

    @Test func describeDeath() {
        #expect(Sandbox.describeDeath(service: "blkback", status: 0) == "blkback exited with status 0")
        #expect(Sandbox.describeDeath(service: "blkback", status: 70 << 8) == "blkback exited with status 70")
        #expect(Sandbox.describeDeath(service: "blkback", status: SIGKILL) == "blkback killed by SIGKILL (9)")
        let err = "sandbox: blkback applied manifest m: 3 syscalls allowed\nsandbox: blkback: blocked syscall openat (257)\n"
        #expect(Sandbox.describeDeath(service: "blkback", status: SIGSYS, stderr: err)
                == "blkback killed by SIGSYS: blocked syscall openat (257)")
        #expect(Sandbox.describeDeath(service: "blkback", status: SIGSYS).hasPrefix("blkback killed by SIGSYS"))
        #expect(Sandbox.blockedSyscall(inStderr: err)! == ("openat", 257))
    }
}

// MARK: small file helpers (no Foundation needed)

func tempDirectory() -> String {
    var template = Array("/tmp/xenith-sandbox-test-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
}

func writeFile(_ path: String, _ text: String) {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    precondition(fd >= 0, "open \(path)")
    var text = text
    _ = text.withUTF8 { write(fd, $0.baseAddress, $0.count) }
    close(fd)
}

func removeTree(_ dir: String) {
    guard let d = opendir(dir) else { return }
    while let e = readdir(d) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        if name != "." && name != ".." { unlink("\(dir)/\(name)") }
    }
    closedir(d)
    rmdir(dir)
}

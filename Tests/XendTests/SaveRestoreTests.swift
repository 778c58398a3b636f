import CLinux
import DomainConfig
import Foundation
import Logging
import Migration
import Testing
import XendAPI
@testable import Xend
#if canImport(Glibc)
import Glibc
#endif

/// The `migration` binary beside the test bundle (swift test builds every product).
let migrationBinary: String = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    .deletingLastPathComponent().appendingPathComponent("migration").path

// In ServerTests (serialized): two servers at once, each test blocking a thread of the
// cooperative pool with synchronous requests, starve the handlers on a 2-core machine.
extension ServerTests {
    /// An engine without `.save` is refused in one line, before any file is made; an unknown
    /// domain is a 404; the transfer list has the documented shape.
    @Test func saveIsRefusedForAnEngineWithoutState() async throws {
        try await withServer { client, _, root in
            #expect(try client.send("POST", "/api/v1/domains", body: try createBody("t1", root: root)).status == 201)
            let body = Array(try XendClient.encoder.encode(SaveRequest(file: root + "/t1.chk")))
            let r = try client.send("POST", "/api/v1/domains/t1/save", body: body)
            #expect(r.status == 503)
            #expect(validate(json(r), schemaFor("POST", "/api/v1/domains/{domain}/save", 503)).isEmpty)
            #expect((json(r) as? [String: Any])?["error"] as? String
                    == "Cannot save domain t1: the core engine cannot save a domain's state")
            #expect(!FileManager.default.fileExists(atPath: root + "/t1.chk"))
            #expect(try client.send("POST", "/api/v1/domains/nosuch/save", body: body).status == 404)
            let t = try client.send("GET", "/api/v1/transfers")
            #expect(t.status == 200)
            #expect(validate(json(t), schemaFor("GET", "/api/v1/transfers", 200)).isEmpty)
            let rr = try client.send("POST", "/api/v1/restore", body: Array(try XendClient.encoder.encode(RestoreRequest(file: root + "/none"))))
            #expect(rr.status == 503)   // no migration service in this manager
            #expect(validate(json(rr), schemaFor("POST", "/api/v1/restore", 503)).isEmpty)
            #expect(try client.send("POST", "/api/v1/domains/t1/destroy").status == 200)
        }
    }
}

extension ServerTests {
    /// While a domain is being saved or migrated away, every other request on it but
    /// destroy is refused (409): an unpause in a migration's switch-over window would run the
    /// guest on both hosts.
    @Test func aDomainBeingMigratedRefusesOtherRequests() async throws {
        try await withServer { client, m, root in
            #expect(try client.send("POST", "/api/v1/domains", body: try createBody("t2", root: root)).status == 201)
            let domid = try #require(m.find("t2")?.domid)
            #expect(m.transfers.begin(kind: "migrate", file: "migrate:t2", domain: "t2", domid: domid))
            for op in ["pause", "unpause"] {
                let r = try client.send("POST", "/api/v1/domains/t2/\(op)")
                #expect(r.status == 409, "\(op): \(r.status)")
                #expect(((json(r) as? [String: Any])?["error"] as? String)?.contains("it is being migrated") == true, "\(op)")
            }
            m.transfers.end(file: "migrate:t2")
            #expect(try client.send("POST", "/api/v1/domains/t2/pause").status == 200)
            #expect(m.transfers.begin(kind: "save", file: "/x", domain: "t2", domid: domid))
            #expect(try client.send("POST", "/api/v1/domains/t2/destroy").status == 200)
            m.transfers.end(file: "/x")
        }
    }
}

extension ServerTests {
    /// An incoming domain's configuration comes from the peer: it gets xm create's checks,
    /// and a vif script with a path (the peer would choose what runs as root here) is refused.
    @Test func incomingConfigurationsAreCheckedLikeCreates() async throws {
        try await withServer { _, m, root in
            func refusal(_ vif: String?, disk: String? = nil, cpus: String? = nil) -> String? {
                var cfg = DomainConfiguration(name: "in1")
                cfg.kernel = root + "/kernel"
                if let vif { cfg.vifs = [try! VifSpec(parsing: vif)] }
                if let disk { cfg.disks = [try! DiskSpec(parsing: disk)] }
                cfg.cpus = cpus
                do { _ = try m.checkIncoming(cfg.toSXP().description); return nil } catch { return error.message }
            }
            #expect(refusal("mac=00:16:3e:00:00:01, script=/bin/sh")?.contains("may only name a script of the target's scripts directory") == true)
            #expect(refusal("mac=00:16:3e:00:00:01, script=../../bin/sh")?.contains("may only name a script") == true)
            // A script by name passes these checks (the test engine then cannot take state).
            #expect(refusal("mac=00:16:3e:00:00:01, script=vif-bridge") == "the target's core engine cannot take a domain's state")
            #expect(refusal(nil, cpus: "0-4095")?.hasPrefix("cpus:") == true)
            // A writable qcow2 disk: the target would read its metadata while the source writes.
            #expect(refusal(nil, disk: "tap:qcow2:\(root)/d.qcow2,xvda,w")?.contains("disk xvda: a writable qcow2 disk cannot be migrated") == true)
            // A peer naming one of this host's PCI devices is refused before anything is touched.
            var withPCI = DomainConfiguration(name: "in2")
            withPCI.kernel = root + "/kernel"
            withPCI.pciDevices = [try PciSpec(parsing: "0000:00:1f.2")]
            do throws(XendError) { _ = try m.checkIncoming(withPCI.toSXP().description); Issue.record("PCI device accepted") }
            catch { #expect(error.message.contains("PCI device 0000:00:1f.2: a domain with passed-through PCI devices cannot be migrated in"), "\(error.message)") }
        }
    }
}

@Suite(.serialized) struct SaveRestoreAPITests {

    /// While a save runs the domain is listed as `migrating-NAME` (Xen's rename), and
    /// only then; a second save of it is refused.
    @Test func aDomainBeingSavedIsListedAsMigrating() {
        let t = TransferTable()
        #expect(t.listedName(3, "web") == "web")
        #expect(t.begin(kind: "save", file: "/a", domain: "web", domid: 3))
        #expect(t.listedName(3, "web") == "migrating-web")
        #expect(t.listedName(4, "db") == "db")
        #expect(!t.begin(kind: "save", file: "/b", domain: "web", domid: 3))
        #expect(!t.begin(kind: "restore", file: "/a", domain: "", domid: nil))
        t.progress(file: "/a", bytes: 1 << 20, bytesPerSecond: 5 << 20)
        #expect(t.all.map(\.bytes) == [1 << 20])
        t.end(file: "/a")
        #expect(t.listedName(3, "web") == "web")
        #expect(t.all.isEmpty)
        // A restore is not a rename; its domain is marked until it is done.
        #expect(t.begin(kind: "restore", file: "/c", domain: "", domid: nil))
        t.attach(file: "/c", domid: 9, domain: "db")
        #expect(t.isRestoring(9) && t.listedName(9, "db") == "db")
        t.detach(domid: 9)
        #expect(!t.isRestoring(9))
    }

    /// A save's engine pipe holds one frame's payload (1 MiB, not the default 64 KiB); a
    /// migration's keeps the default; both ends close-on-exec.
    @Test func aSavesEnginePipeHoldsAFrame() {
        var save: [Int32] = [-1, -1], live: [Int32] = [-1, -1]
        #expect(streamPipe(&save, capacity: DomainManager.saveStreamPipeBytes))
        #expect(streamPipe(&live))
        defer { for fd in save + live { close(fd) } }
        #expect(clinux_pipe_size(save[1]) == 1 << 20)
        #expect(clinux_pipe_size(live[1]) == 1 << 16)
        #expect((save + live).allSatisfy { fcntl($0, F_GETFD) & FD_CLOEXEC != 0 })
    }

    /// A save and a restore of one file are tracked under one name through any links: a
    /// linked directory, a link to the file, the new file before it exists.
    @Test func savesAndRestoresOfOneFileShareATransferKey() throws {
        let root = tempRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let real = try #require(realpath(root, nil).map { p in defer { free(p) }; return String(cString: p) })
        try FileManager.default.createDirectory(atPath: root + "/dir", withIntermediateDirectories: true)
        symlink(root + "/dir", root + "/dirlink")
        // Not there yet (a save's target): the directory resolves.
        #expect(ReplaceablePath.transferKey(root + "/dirlink/a.chk") == real + "/dir/a.chk")
        #expect(ReplaceablePath.transferKey(root + "/dir/a.chk") == real + "/dir/a.chk")
        FileManager.default.createFile(atPath: root + "/dir/a.chk", contents: Data([1]))
        symlink(root + "/dirlink/a.chk", root + "/a-link")
        #expect(ReplaceablePath.transferKey(root + "/a-link") == real + "/dir/a.chk")
        #expect(ReplaceablePath.transferKey(root + "/dirlink/a.chk") == real + "/dir/a.chk")
        // A directory that does not resolve: the path as given.
        #expect(ReplaceablePath.transferKey(root + "/nosuch/a.chk") == root + "/nosuch/a.chk")
        let t = TransferTable()
        #expect(t.begin(kind: "save", file: ReplaceablePath.transferKey(root + "/a-link"), domain: "web", domid: 3))
        #expect(!t.begin(kind: "restore", file: ReplaceablePath.transferKey(root + "/dir/a.chk"), domain: "", domid: nil))
    }

    /// A save is renamed onto a regular file or a new path only: a device node, FIFO,
    /// socket or directory there is refused naming what it is (a rename would have
    /// replaced `/dev/null` with the save); a symbolic link's target is replaced, the link
    /// kept; a dangling link is refused.
    @Test func aSaveReplacesOnlyARegularFile() throws {
        let root = tempRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        #expect(try ReplaceablePath.resolve(root + "/new.chk", command: "xm save", kind: "a save file") == root + "/new.chk")
        FileManager.default.createFile(atPath: root + "/old.chk", contents: Data([1]))
        #expect(try ReplaceablePath.resolve(root + "/old.chk", command: "xm save", kind: "a save file") == root + "/old.chk")
        #expect(symlink(root + "/old.chk", root + "/link.chk") == 0)
        #expect(try ReplaceablePath.resolve(root + "/link.chk", command: "xm save", kind: "a save file") == root + "/old.chk")
        #expect(mkfifo(root + "/fifo", 0o600) == 0)
        #expect(symlink(root + "/gone", root + "/dangling") == 0)
        let refused: [(String, String)] = [
            ("/dev/null", "xm save: /dev/null is a character device: a save file must be a regular file or a new path"),
            (root + "/fifo", "xm save: \(root)/fifo is a FIFO: a save file must be a regular file or a new path"),
            (root, "xm save: \(root) is a directory: a save file must be a regular file or a new path"),
        ]
        for (path, message) in refused {
            #expect(throws: XendError.self) { try ReplaceablePath.resolve(path, command: "xm save", kind: "a save file") }
            do { _ = try ReplaceablePath.resolve(path, command: "xm save", kind: "a save file") } catch { #expect(error.message == message) }
        }
        do { _ = try ReplaceablePath.resolve(root + "/dangling", command: "xm save", kind: "a save file"); Issue.record("a dangling link was taken") }
        catch { #expect(error.message.hasPrefix("xm save: \(root)/dangling is a symbolic link to nothing")) }
        #expect(symlink("/dev/null", root + "/tonull") == 0)
        do { _ = try ReplaceablePath.resolve(root + "/tonull", command: "xm save", kind: "a save file"); Issue.record("a link to /dev/null was taken") }
        catch { #expect(error.message == "xm save: \(root)/tonull (/dev/null) is a character device: a save file must be a regular file or a new path") }
        // dump-core's message names it.
        do { _ = try ReplaceablePath.resolve("/dev/null", command: "xm dump-core", kind: "a core file"); Issue.record("taken") }
        catch { #expect(error.message == "xm dump-core: /dev/null is a character device: a core file must be a regular file or a new path") }
        // Nothing was made or replaced.
        var st = stat()
        #expect(stat("/dev/null", &st) == 0 && st.st_mode & S_IFMT == S_IFCHR)
        #expect(lstat(root + "/link.chk", &st) == 0 && st.st_mode & S_IFMT == S_IFLNK)
    }

    /// Bad save files are refused by the migration service before any domain exists, each
    /// with a message naming the problem; no process and no record is left.
    @Test func badSaveFilesAreRefusedBeforeAnythingStarts() throws {
        guard access(migrationBinary, X_OK) == 0 else { print("SKIP: \(#function): no \(migrationBinary)"); return }
        let root = tempRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let paths = XenithPaths(root: root)
        let service = MigrationService(binary: migrationBinary, manifest: nil, logPath: root + "/migration.log")
        let manager = DomainManager(paths: paths, xendConfig: XendConfig(), engines: ["core": SleepEngine()], xenstore: nil,
                                    logger: Logger(label: "test"), migration: service)
        func refusal(_ bytes: [UInt8]) -> XendError? {
            let f = root + "/file-\(bytes.count)"
            _ = FileManager.default.createFile(atPath: f, contents: Data(bytes))
            do { _ = try manager.restore(file: f, paused: false); return nil } catch { return error }
        }
        let junk = refusal(Array("hello, world, this is not a save file".utf8))
        #expect(junk?.kind == .badRequest && junk?.message.contains("not a valid guest state file") == true, "\(String(describing: junk))")
        // The envelope alone: the stream header is missing.
        var envelope = Array("LinuxGuestRecord".utf8)
        let sxp = Array("(vm (name x))".utf8)
        envelope += [0, 0, 0, UInt8(sxp.count)] + sxp
        let cut = refusal(envelope)
        #expect(cut?.kind == .badRequest && cut?.message.contains(root) == true, "\(String(describing: cut))")
        do { _ = try manager.restore(file: root + "/missing", paused: false); Issue.record("restored nothing") } catch {
            #expect(error.message.hasPrefix("xm restore: Unable to read file \(root)/missing"))
        }
        #expect(manager.list(long: false).count == 1)   // Domain-0 only
        #expect(manager.transferList().isEmpty)
    }

    /// A well-formed save file whose configuration `xm create` would refuse (a cap above
    /// 100 per vCPU, a CPU the host lacks, a block script, the name `..`) is refused the
    /// same way, before anything starts.
    @Test func restoreRefusesWhatCreateRefuses() throws {
        guard access(migrationBinary, X_OK) == 0 else { print("SKIP: \(#function): no \(migrationBinary)"); return }
        let root = tempRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let service = MigrationService(binary: migrationBinary, manifest: nil, logPath: root + "/migration.log")
        let manager = DomainManager(paths: XenithPaths(root: root), xendConfig: XendConfig(), engines: ["core": SleepEngine()],
                                    xenstore: nil, logger: Logger(label: "test"), migration: service)
        func refusal(_ change: (inout DomainConfiguration) throws -> Void) throws -> XendError? {
            var cfg = DomainConfiguration(name: "r")
            cfg.kernel = root + "/kernel"
            try change(&cfg)
            let f = root + "/r.chk"
            let fd = open(f, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
            var w = FrameWriter(output: Descriptor(fd, role: "file"))
            try w.writeStart(config: cfg.toSXP().description)
            let state = [UInt8](repeating: 7, count: 4096)
            try w.writeData(state, state.count)
            _ = try w.writeEnd()
            close(fd)
            do { _ = try manager.restore(file: f, paused: false); return nil } catch { return error }
        }
        let cap = try refusal { $0.vcpus = 2; $0.cpuCap = 1000 }
        #expect(cap?.kind == .badRequest && cap?.message.contains("cpu_cap: cap is out of range: 1000 (0-200)") == true, "\(String(describing: cap))")
        let cpus = try refusal { $0.cpus = "4000" }
        #expect(cpus?.kind == .badRequest && cpus?.message.contains("cpus: ") == true, "\(String(describing: cpus))")
        let script = try refusal {
            var d = try DiskSpec(parsing: "file:\(root)/d.img,xvda,w")
            d.script = "block-drbd"
            $0.disks = [d]
        }
        #expect(script?.kind == .badRequest && script?.message.contains("Block script block-drbd is not supported here") == true, "\(String(describing: script))")
        let dots = try refusal { $0.name = ".." }
        #expect(dots?.kind == .badRequest && dots?.message.contains("invalid VM name '..'") == true, "\(String(describing: dots))")
        #expect(manager.list(long: false).count == 1)   // Domain-0 only
        #expect(manager.transferList().isEmpty)
    }
}

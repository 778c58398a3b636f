import DomainConfig
import Foundation
import Logging
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
            var cfg = DomainConfiguration(name: "t1")
            cfg.kernel = root + "/kernel"
            let create = Array(try XendClient.encoder.encode(CreateRequest(config: cfg.toSXP().description)))
            #expect(try client.send("POST", "/api/v1/domains", body: create).status == 201)
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
}

import CLinux
import DomainConfig
import Foundation
import Hummingbird
import Logging
import Testing
import XendAPI
@testable import Xend
#if canImport(Glibc)
import Glibc
#endif

/// The OpenAPI document kept in the repository.
nonisolated(unsafe) let apiDoc: [String: Any] = {
    let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("services/xend-api.json")
    let data = try! Data(contentsOf: url)
    return try! JSONSerialization.jsonObject(with: data) as! [String: Any]
}()

/// Checks `value` against an OpenAPI schema (type, required, properties, items, enum, $ref).
func validate(_ value: Any, _ schema: [String: Any], _ at: String = "$") -> [String] {
    if let r = schema["$ref"] as? String {
        let name = String(r.split(separator: "/").last!)
        let schemas = (apiDoc["components"] as! [String: Any])["schemas"] as! [String: Any]
        return validate(value, schemas[name] as! [String: Any], at)
    }
    var errs: [String] = []
    switch schema["type"] as? String {
    case "object":
        guard let o = value as? [String: Any] else { return ["\(at): not an object"] }
        for k in schema["required"] as? [String] ?? [] where o[k] == nil { errs.append("\(at).\(k): missing") }
        let props = schema["properties"] as? [String: Any] ?? [:]
        for (k, v) in o {
            guard let ps = props[k] as? [String: Any] else { errs.append("\(at).\(k): not documented"); continue }
            errs += validate(v, ps, "\(at).\(k)")
        }
    case "array":
        guard let a = value as? [Any] else { return ["\(at): not an array"] }
        for (i, v) in a.enumerated() { errs += validate(v, schema["items"] as! [String: Any], "\(at)[\(i)]") }
    case "string":
        guard let s = value as? String else { return ["\(at): not a string"] }
        if let e = schema["enum"] as? [String], !e.contains(s) { errs.append("\(at): \(s) not in \(e)") }
        if let p = schema["pattern"] as? String, s.range(of: p, options: .regularExpression) == nil { errs.append("\(at): \(s) !~ \(p)") }
    case "integer":
        guard let n = value as? NSNumber, n.doubleValue == n.doubleValue.rounded() else { return ["\(at): not an integer"] }
    case "number":
        guard value is NSNumber else { return ["\(at): not a number"] }
    case "boolean":
        guard value is NSNumber || value is Bool else { return ["\(at): not a boolean"] }
    default: break
    }
    return errs
}

@Test func everyServedRouteIsDocumentedAndViceVersa() {
    let paths = apiDoc["paths"] as! [String: [String: Any]]
    var documented: Set<XendRoute> = []
    for (p, ops) in paths { for m in ops.keys { documented.insert(XendRoute(m.uppercased(), p)) } }
    #expect(Set(XendAPI.routes) == documented)
}

/// An engine that runs `sleep` in place of a guest: exercises supervision without KVM.
final class SleepEngine: DomainEngineDriver, @unchecked Sendable {
    let name = "core"
    let lock = NSLock()
    var paused: Set<Int32> = []
    var shutdownReason: [Int32: EngineStop] = [:]

    func start(_ l: EngineLaunch) throws -> EngineProcess {
        var pid: pid_t = 0
        let argv: [String] = ["/bin/sleep", "3600"]
        var args: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for a in args { free(a) } }
        // Close everything above stderr in the child: tests run in parallel, and an inherited
        // pipe end from another test would keep that test waiting for EOF for an hour.
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        clinux_spawn_closefrom(&fa, 3)
        guard posix_spawn(&pid, "/bin/sleep", &fa, nil, &args, environ) == 0 else { throw EngineError("spawn failed") }
        return EngineProcess(pid: pid, startTicks: ProcessInfo2.startTicks(pid) ?? 0, controlPath: l.controlPath, statusFile: l.statusFile)
    }
    func pause(_ p: EngineProcess) throws { lock.lock(); paused.insert(p.pid); lock.unlock() }
    func unpause(_ p: EngineProcess) throws { lock.lock(); paused.remove(p.pid); lock.unlock() }
    func requestShutdown(_ p: EngineProcess) throws { lock.lock(); shutdownReason[p.pid] = .poweroff; lock.unlock(); kill(p.pid, SIGKILL) }
    func reboot(_ p: EngineProcess) throws { lock.lock(); shutdownReason[p.pid] = .reboot("test"); lock.unlock(); kill(p.pid, SIGKILL) }
    func destroy(_ p: EngineProcess) throws { kill(p.pid, SIGKILL) }
    func query(_ p: EngineProcess) throws -> EngineStatus {
        lock.lock(); defer { lock.unlock() }
        return EngineStatus(paused: paused.contains(p.pid), cpuTimeNs: 1_500_000_000)
    }
    func adopt(_ p: EngineProcess) -> Bool { kill(p.pid, 0) == 0 }
    func stopReason(_ p: EngineProcess, waitStatus: Int32?) -> EngineStop {
        lock.lock(); defer { lock.unlock() }
        return shutdownReason[p.pid] ?? .crash("killed")
    }
}

func tempRoot() -> String {
    var t = Array("/tmp/xend-test-XXXXXX".utf8CString)
    return t.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
}

/// Starts the API on a Unix socket with a sleep engine; returns the client and a stop closure.
/// The body of `POST /api/v1/domains` for a minimal domain `name` whose kernel is
/// `root/kernel` (the test engine never reads it).
func createBody(_ name: String, root: String) throws -> [UInt8] {
    var cfg = DomainConfiguration(name: name)
    cfg.kernel = root + "/kernel"
    return Array(try XendClient.encoder.encode(CreateRequest(config: cfg.toSXP().description)))
}

func withServer(limits: HTTPLimits = HTTPLimits(), _ body: (XendClient, DomainManager, String) async throws -> Void) async throws {
    let root = tempRoot()
    let paths = XenithPaths(root: root)
    let manager = DomainManager(paths: paths, xendConfig: XendConfig(), engines: ["core": SleepEngine()], xenstore: nil,
                                logger: Logger(label: "test"))
    let sock = root + "/xend-socket"
    let app = Application(router: XendHTTP.router(manager, logPath: root + "/xend.log"), server: XendHTTP.server(limits: limits),
                          configuration: .init(address: .unixDomainSocket(path: sock)))
    let task = Task { try await app.run() }
    let client = XendClient(socketPath: sock)
    for _ in 0..<1000 { if (try? client.send("GET", "/api/v1/info")) != nil { break }; try await Task.sleep(nanoseconds: 10_000_000) }
    try await body(client, manager, root)
    task.cancel()
    _ = try? await task.value
    _ = try? FileManager.default.removeItem(atPath: root)
}

func json(_ r: HTTPReply) -> Any { try! JSONSerialization.jsonObject(with: Data(r.body)) }

func schemaFor(_ method: String, _ path: String, _ status: Int) -> [String: Any] {
    let op = (apiDoc["paths"] as! [String: [String: Any]])[path]![method.lowercased()] as! [String: Any]
    let resp = (op["responses"] as! [String: Any])[String(status)] as! [String: Any]
    return ((resp["content"] as! [String: Any])["application/json"] as! [String: Any])["schema"] as! [String: Any]
}

@Suite(.serialized) struct ServerTests {
@Test func responsesMatchTheDocumentedShapes() async throws {
    try await withServer { client, manager, root in
        func check(_ m: String, _ concrete: String, _ templ: String, body: [UInt8]? = nil, expect: Int) throws -> Any {
            let r = try client.send(m, concrete, body: body)
            #expect(r.status == expect, "\(m) \(concrete): \(r.status) \(String(decoding: r.body, as: UTF8.self))")
            let v = json(r)
            let errs = validate(v, schemaFor(m, templ, r.status))
            #expect(errs.isEmpty, "\(m) \(concrete): \(errs)")
            return v
        }
        _ = try check("GET", "/api/v1/info", "/api/v1/info", expect: 200)
        let create = try createBody("t1", root: root)
        _ = try check("POST", "/api/v1/domains", "/api/v1/domains", body: create, expect: 201)
        _ = try check("POST", "/api/v1/domains", "/api/v1/domains", body: create, expect: 409)
        _ = try check("POST", "/api/v1/domains", "/api/v1/domains", body: Array("{}".utf8), expect: 400)
        let l = try check("GET", "/api/v1/domains?long=1", "/api/v1/domains", expect: 200) as! [String: Any]
        let doms = l["domains"] as! [[String: Any]]
        #expect(doms.map { $0["name"] as! String } == ["Domain-0", "t1"])
        #expect(doms[1]["domid"] as? Int == 1)
        _ = try check("GET", "/api/v1/domains/t1", "/api/v1/domains/{domain}", expect: 200)
        let p = try check("POST", "/api/v1/domains/1/pause", "/api/v1/domains/{domain}/pause", expect: 200) as! [String: Any]
        #expect(p["state"] as? String == "--p---")
        let u = try check("POST", "/api/v1/domains/t1/unpause", "/api/v1/domains/{domain}/unpause", expect: 200) as! [String: Any]
        #expect(u["state"] as? String == "r-----")
        let nf = try check("GET", "/api/v1/domains/nosuch", "/api/v1/domains/{domain}", expect: 404) as! [String: Any]
        #expect(nf["error"] as? String == "Domain 'nosuch' does not exist.")
        let sd = Array(try XendClient.encoder.encode(ShutdownRequest(mode: "poweroff")))
        _ = try check("POST", "/api/v1/domains/t1/shutdown", "/api/v1/domains/{domain}/shutdown", body: sd, expect: 200)
        // on_poweroff = destroy: the supervisor forgets it.
        var gone = false
        for _ in 0..<200 where !gone { gone = (try client.send("GET", "/api/v1/domains/t1")).status == 404; try await Task.sleep(nanoseconds: 10_000_000) }
        #expect(gone, "\(manager.dmesgText())")
        _ = try check("POST", "/api/v1/domains", "/api/v1/domains", body: create, expect: 201)
        _ = try check("POST", "/api/v1/domains/t1/destroy", "/api/v1/domains/{domain}/destroy", expect: 200)
        _ = try check("POST", "/api/v1/domains/t1/destroy", "/api/v1/domains/{domain}/destroy", expect: 404)
        _ = try check("GET", "/api/v1/dmesg", "/api/v1/dmesg", expect: 200)
        _ = try check("POST", "/api/v1/dmesg/clear", "/api/v1/dmesg/clear", expect: 200)
        _ = try check("GET", "/api/v1/log", "/api/v1/log", expect: 200)
    }
}

@Test func domidsAreNotReusedAndCrashRestartsOnce() async throws {
    try await withServer { client, manager, root in
        var cfg = DomainConfiguration(name: "c1")
        cfg.kernel = root + "/kernel"
        cfg.onCrash = .restart
        let info = try manager.create(sxpText: cfg.toSXP().description, paused: false)
        #expect(info.domid == 1)
        kill(Int32(info.pid!), SIGKILL)       // a crash
        var restarted: DomainInfo? = nil
        for _ in 0..<300 where restarted == nil {
            if let d = try? manager.get("c1", long: false), d.domid != 1 { restarted = d }
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        #expect(restarted?.domid == 2)
        #expect(restarted?.restartCount == 1)
        kill(Int32(restarted!.pid!), SIGKILL)  // again within 20 s: not restarted
        var gone = false
        for _ in 0..<300 where !gone { gone = (try? manager.get("c1", long: false)) == nil; try await Task.sleep(nanoseconds: 10_000_000) }
        #expect(gone)
        _ = client
    }
}
}

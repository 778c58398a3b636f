// The management API over HTTP (Hummingbird 2): Unix socket always, TCP when
// xend-http-server is on. Routes are XendAPI.routes; services/xend-api.json documents them.
import Foundation
import Hummingbird
import Logging
import NIOCore
import XendAPI

/// Builds the Hummingbird router for `manager`.
public enum XendHTTP {
    static func json(_ v: some Encodable, status: HTTPResponse.Status = .ok) -> Response {
        let data = (try? XendClient.encoder.encode(v)) ?? Data("{}".utf8)
        return Response(status: status, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func error(_ e: XendError) -> Response {
        let status: HTTPResponse.Status
        switch e.kind {
        case .noSuchDomain: status = .notFound
        case .badRequest: status = .badRequest
        case .conflict: status = .conflict
        case .unavailable: status = .serviceUnavailable
        case .internalError: status = .internalServerError
        }
        return json(APIErrorReply(error: e.message, kind: e.kind.rawValue, domain: e.domain), status: status)
    }

    /// Runs blocking manager work off the server's threads.
    static func offload(_ f: @escaping @Sendable () throws -> Response) async -> Response {
        await withCheckedContinuation { (c: CheckedContinuation<Response, Never>) in
            DispatchQueue.global().async {
                do { c.resume(returning: try f()) } catch { c.resume(returning: XendHTTP.error(anyError(error))) }
            }
        }
    }

    static func anyError(_ e: any Error) -> XendError {
        (e as? XendError) ?? XendError(.internalError, "\(e)")
    }

    static func body<T: Decodable>(_ req: Request, _ t: T.Type) async throws -> T {
        let buf: ByteBuffer
        do { buf = try await req.body.collect(upTo: 1 << 20) } catch { throw XendError(.badRequest, "request body too large") }
        do { return try XendClient.decoder.decode(T.self, from: Data(buf.readableBytesView)) }
        catch { throw XendError(.badRequest, "malformed request body: \(error)") }
    }

    /// The router: exactly `XendAPI.routes`.
    /// `vnets` serves the /api/v1/vnets routes; nil answers them 503.
    public static func router(_ m: DomainManager, logPath: String, vnets: VnetManager? = nil) -> Router<BasicRequestContext> {
        let r = Router()
        let long: @Sendable (Request) -> Bool = { req in
            let v = req.uri.queryParameters.get("long") ?? "0"
            return v == "1" || v == "true"
        }
        r.get("/api/v1/info") { _, _ in json(m.hostInfo()) }
        r.get("/api/v1/domains") { req, _ in
            let l = long(req)
            return await offload { json(DomainList(domains: m.list(long: l))) }
        }
        r.post("/api/v1/domains") { req, _ in
            do {
                let c = try await body(req, CreateRequest.self)
                return await offload { json(try m.create(sxpText: c.config, paused: c.paused), status: .created) }
            } catch { return XendHTTP.error(anyError(error)) }
        }
        r.get("/api/v1/domains/:domain") { req, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            let l = long(req)
            return await offload { json(try m.get(d, long: l)) }
        }
        r.post("/api/v1/domains/:domain/pause") { _, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            return await offload { json(try m.pause(d)) }
        }
        r.post("/api/v1/domains/:domain/unpause") { _, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            return await offload { json(try m.unpause(d)) }
        }
        r.post("/api/v1/domains/:domain/shutdown") { req, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            do {
                let s = try await body(req, ShutdownRequest.self)
                return await offload { json(try m.shutdown(d, mode: s.mode)) }
            } catch { return XendHTTP.error(anyError(error)) }
        }
        r.post("/api/v1/domains/:domain/memory") { req, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            do {
                let m2 = try await body(req, MemoryRequest.self)
                return await offload {
                    switch (m2.target, m2.max) {
                    case (let t?, nil): return json(try m.memSet(d, mib: t))
                    case (nil, let x?): return json(try m.memMax(d, mib: x))
                    default: throw XendError(.badRequest, "give exactly one of target and max (MiB)")
                    }
                }
            } catch { return XendHTTP.error(anyError(error)) }
        }
        r.post("/api/v1/domains/:domain/destroy") { _, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            return await offload { json(try m.destroy(d)) }
        }
        r.post("/api/v1/domains/:domain/save") { req, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            do {
                let s = try await body(req, SaveRequest.self)
                return await offload {
                    try m.refuseSaveWithHotpluggedDevices(d)
                    return json(try m.save(d, file: s.file, checkpoint: s.checkpoint))
                }
            } catch { return XendHTTP.error(anyError(error)) }
        }
        r.post("/api/v1/restore") { req, _ in
            do {
                let s = try await body(req, RestoreRequest.self)
                return await offload { json(try m.restore(file: s.file, paused: s.paused), status: .created) }
            } catch { return XendHTTP.error(anyError(error)) }
        }
        r.post("/api/v1/domains/:domain/migrate") { req, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            do {
                let mr = try await body(req, MigrateRequest.self)
                return await offload { json(try m.migrate(d, host: mr.host, port: mr.port, live: mr.live, resource: mr.resource)) }
            } catch { return XendHTTP.error(anyError(error)) }
        }
        r.get("/api/v1/transfers") { _, _ in json(TransferList(transfers: m.transferList())) }
        r.get("/api/v1/domains/:domain/vifs") { _, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            return await offload { json(VifList(vifs: try m.networkList(d))) }
        }
        r.post("/api/v1/domains/:domain/vifs") { req, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            do {
                let a = try await body(req, NetworkAttachRequest.self)
                return await offload { json(try m.networkAttach(d, spec: a.spec), status: .created) }
            } catch { return XendHTTP.error(anyError(error)) }
        }
        r.delete("/api/v1/domains/:domain/vifs/:devid") { _, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            guard let devid = Int(ctx.parameters.get("devid") ?? "") else {
                return XendHTTP.error(XendError(.badRequest, "Device \(ctx.parameters.get("devid") ?? "") not connected"))
            }
            return await offload { json(VifList(vifs: try m.networkDetach(d, devid: devid))) }
        }
        addDomainCommandRoutes(r, m)
        r.get("/api/v1/domains/:domain/vcpus") { _, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            return await offload { json(try m.vcpuList(d)) }
        }
        r.post("/api/v1/domains/:domain/vcpus") { req, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            do {
                let s = try await body(req, VcpuSetRequest.self)
                return await offload { json(try m.vcpuSet(d, count: s.count)) }
            } catch { return XendHTTP.error(anyError(error)) }
        }
        r.post("/api/v1/domains/:domain/vcpus/pin") { req, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            do {
                let s = try await body(req, VcpuPinRequest.self)
                return await offload { json(try m.vcpuPin(d, vcpu: s.vcpu, cpus: s.cpus)) }
            } catch { return XendHTTP.error(anyError(error)) }
        }
        r.get("/api/v1/domains/:domain/sched-credit") { _, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            return await offload { json(try m.schedCredit(d)) }
        }
        r.post("/api/v1/domains/:domain/sched-credit") { req, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            do {
                let s = try await body(req, SchedCreditRequest.self)
                return await offload { json(try m.setSchedCredit(d, weight: s.weight, cap: s.cap)) }
            } catch { return XendHTTP.error(anyError(error)) }
        }
        r.get("/api/v1/domains/:domain/vbds") { _, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            return await offload { json(VbdList(vbds: try m.blockList(d))) }
        }
        r.post("/api/v1/domains/:domain/vbds") { req, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            do {
                let a = try await body(req, BlockAttachRequest.self)
                return await offload { json(try m.blockAttach(d, backdev: a.backdev, frontdev: a.frontdev, mode: a.mode), status: .created) }
            } catch { return XendHTTP.error(anyError(error)) }
        }
        r.delete("/api/v1/domains/:domain/vbds/:dev") { req, ctx in
            let d = ctx.parameters.get("domain") ?? "", dev = ctx.parameters.get("dev") ?? ""
            let force = ["1", "true"].contains(req.uri.queryParameters.get("force") ?? "0")
            return await offload { json(VbdList(vbds: try m.blockDetach(d, dev: dev, force: force))) }
        }
        r.get("/api/v1/domains/:domain/pci") { _, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            return await offload { json(try m.pciList(d)) }
        }
        r.post("/api/v1/domains/:domain/pci") { req, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            do {
                let a = try await body(req, PciAttachRequest.self)
                return await offload { json(try m.pciAttach(d, bdf: a.bdf, vslot: a.vslot), status: .created) }
            } catch { return XendHTTP.error(anyError(error)) }
        }
        r.delete("/api/v1/domains/:domain/pci/:bdf") { _, ctx in
            let d = ctx.parameters.get("domain") ?? "", bdf = ctx.parameters.get("bdf") ?? ""
            return await offload { json(try m.pciDetach(d, bdf: bdf)) }
        }
        r.get("/api/v1/pci/assignable") { _, _ in await offload { json(m.pciAssignable()) } }
        r.get("/api/v1/dmesg") { _, _ in json(TextReply(text: m.dmesgText())) }
        r.post("/api/v1/dmesg/clear") { _, _ in m.dmesgClear(); return json(TextReply(text: "")) }
        r.get("/api/v1/log") { _, _ in
            var text = ""
            if let h = FileHandle(forReadingAtPath: logPath) {
                let size = (try? h.seekToEnd()) ?? 0
                try? h.seek(toOffset: size > 1 << 20 ? size - (1 << 20) : 0)
                text = String(decoding: h.readDataToEndOfFile(), as: UTF8.self)
                try? h.close()
            }
            return json(TextReply(text: text))
        }
        addVnetRoutes(r, vnets)
        return r
    }

    /// `xm vnet-list`, `vnet-create`, `vnet-delete` (Vnets.swift).
    static func addVnetRoutes(_ r: Router<BasicRequestContext>, _ vnets: VnetManager?) {
        @Sendable func manager() throws(XendError) -> VnetManager {
            guard let v = vnets else { throw XendError(.unavailable, "vnets are not available (no xenstored)") }
            return v
        }
        r.get("/api/v1/vnets") { _, _ in await offload { json(VnetList(vnets: try manager().list())) } }
        r.post("/api/v1/vnets") { req, _ in
            do {
                let c = try await body(req, VnetCreateRequest.self)
                return await offload { json(try manager().create(text: c.config, file: c.file), status: .created) }
            } catch { return XendHTTP.error(anyError(error)) }
        }
        r.get("/api/v1/vnets/:id") { _, ctx in
            let id = ctx.parameters.get("id") ?? ""
            return await offload { json(try manager().get(id)) }
        }
        r.delete("/api/v1/vnets/:id") { _, ctx in
            let id = ctx.parameters.get("id") ?? ""
            return await offload { try manager().delete(id); return json(VnetList(vnets: try manager().list())) }
        }
    }
}

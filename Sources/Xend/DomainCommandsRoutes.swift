// The HTTP routes of DomainCommands.swift, DomainStatistics.swift and Metrics.swift
// (XendAPI.routes; services/xend-api.json documents them).
import Foundation
import Hummingbird
import NIOCore
import XendAPI

extension XendHTTP {
    /// Adds `rename`, `sysrq`, `dump-core`, `reset`, `GET /api/v1/stats` and `GET /metrics`.
    static func addDomainCommandRoutes(_ r: Router<BasicRequestContext>, _ m: DomainManager) {
        r.post("/api/v1/domains/:domain/rename") { req, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            do {
                let b = try await body(req, RenameRequest.self)
                return await offload { json(try m.renameDomain(d, to: b.name)) }
            } catch { return XendHTTP.error(anyError(error)) }
        }
        r.post("/api/v1/domains/:domain/sysrq") { req, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            do {
                let b = try await body(req, SysrqRequest.self)
                return await offload { json(try m.sysrq(d, key: b.key)) }
            } catch { return XendHTTP.error(anyError(error)) }
        }
        r.post("/api/v1/domains/:domain/dump-core") { req, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            do {
                let b = try await body(req, DumpCoreRequest.self)
                return await offload { json(TextReply(text: try m.dumpCore(d, file: b.file))) }
            } catch { return XendHTTP.error(anyError(error)) }
        }
        r.post("/api/v1/domains/:domain/reset") { _, ctx in
            let d = ctx.parameters.get("domain") ?? ""
            return await offload { json(try m.reset(d)) }
        }
        r.get("/api/v1/stats") { _, _ in await offload { json(m.statistics()) } }
        r.get("/metrics") { _, _ in
            await offload {
                Response(status: .ok, headers: [.contentType: Metrics.contentType],
                         body: .init(byteBuffer: ByteBuffer(string: Metrics.exposition(m.statistics()))))
            }
        }
    }
}

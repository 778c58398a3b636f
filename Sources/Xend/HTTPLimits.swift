// What one HTTP client may hold of xend's API server: how many connections at once, how
// long a request may take to arrive, how large its body may be. Enforced per connection by
// a channel handler between the HTTP codec and Hummingbird's request handling, so a client
// that announces a huge body, sends a request a byte at a time or opens connections and
// sends nothing is answered (413, 408, 503) or dropped without a route ever running.
import Foundation
import Hummingbird
import HummingbirdCore
import NIOCore
import NIOHTTPTypes
import Synchronization
import XendAPI

/// Bounds on the API server's clients (one set per listening socket).
public struct HTTPLimits: Sendable {
    /// Largest request body accepted, bytes. A `Content-Length` above it is answered 413 as
    /// soon as the header arrives (nothing of the body is read); a chunked body that grows
    /// past it is answered 413 when it does. Every route's JSON body fits in far less.
    public var maxBodyBytes: Int
    /// Seconds a request (header and body) may take to arrive, counted from the connection's
    /// start or the end of the previous response (from its own head for a request pipelined
    /// behind one still being answered); a request still incomplete then is answered
    /// 408 and the connection closed. A connection with no request in that time is closed
    /// (idle keep-alive). Time the server spends answering is not counted.
    public var requestSeconds: Int64
    /// Connections served at once. One more is answered 503 (`unavailable`) and closed.
    public var maxConnections: Int

    /// The defaults xend serves with: 1 MiB bodies, 30 s per request, 64 connections.
    public init(maxBodyBytes: Int = 1 << 20, requestSeconds: Int64 = 30, maxConnections: Int = 64) {
        self.maxBodyBytes = maxBodyBytes
        self.requestSeconds = requestSeconds
        self.maxConnections = maxConnections
    }
}

extension XendHTTP {
    /// The HTTP/1.1 server for `Application(router:server:)` with `limits` enforced on each
    /// connection; connections are counted per server built (per listening socket).
    public static func server(limits: HTTPLimits = HTTPLimits()) -> HTTPServerBuilder {
        let open = OpenConnections()
        return .http1(configuration: .init(additionalChannelHandlers: [HTTPConnectionGuard(limits: limits, open: open)]))
    }
}

/// Connections currently served by one server.
final class OpenConnections: Sendable {
    let count = Atomic<Int>(0)
}

/// One connection's guard (see the file comment). Runs on the channel's event loop.
final class HTTPConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    enum State {
        /// No request part yet since the connection started or the last response ended.
        case waiting
        /// A request's head arrived, its end not yet.
        case receiving
        /// The request is complete; the router is answering it.
        case serving
        /// Answered by the guard; the connection is closing. Nothing more is read.
        case rejected
    }

    let limits: HTTPLimits
    let open: OpenConnections
    var counted = false
    var state = State.waiting
    var bodyBytes = 0
    var deadline: Scheduled<Void>?

    init(limits: HTTPLimits, open: OpenConnections) {
        self.limits = limits
        self.open = open
    }

    func handlerAdded(context: ChannelHandlerContext) {
        counted = true
        let now = open.count.wrappingAdd(1, ordering: .relaxed).newValue
        if now > limits.maxConnections {
            reject(context, .serviceUnavailable, kind: "unavailable",
                   "xend is serving \(limits.maxConnections) connections already; try again")
            return
        }
        armDeadline(context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
        if counted { open.count.wrappingSubtract(1, ordering: .relaxed); counted = false }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard state != .rejected else { return }
        let part = unwrapInboundIn(data)
        switch part {
        case .head(let request):
            state = .receiving
            bodyBytes = 0
            // A pipelined request can arrive while the one before it is served, when no clock
            // runs (the end of that response would not start one: its state is `receiving`).
            if deadline == nil { armDeadline(context) }
            if let announced = request.headerFields[.contentLength], !announced.isEmpty {
                // All digits but beyond Int: larger than any bound.
                let n = Int(announced) ?? (announced.allSatisfy(\.isNumber) ? Int.max : -1)
                if n > limits.maxBodyBytes {
                    reject(context, .contentTooLarge, kind: "bad_request",
                           "request body of \(announced) bytes is larger than xend accepts (\(limits.maxBodyBytes) bytes)")
                    return
                }
            }
        case .body(let buffer):
            bodyBytes += buffer.readableBytes
            if bodyBytes > limits.maxBodyBytes {
                reject(context, .contentTooLarge, kind: "bad_request",
                       "request body larger than xend accepts (\(limits.maxBodyBytes) bytes)")
                return
            }
        case .end:
            state = .serving
            deadline?.cancel()
            deadline = nil
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data), state == .serving {
            state = .waiting
            armDeadline(context)
        }
        context.write(data, promise: promise)
    }

    /// (Re)starts the clock for the next request to arrive in full.
    func armDeadline(_ context: ChannelHandlerContext) {
        deadline?.cancel()
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: .seconds(limits.requestSeconds)) {
            let (guardian, context) = bound.value
            guardian.deadlinePassed(context)
        }
    }

    func deadlinePassed(_ context: ChannelHandlerContext) {
        deadline = nil
        switch state {
        case .waiting:
            context.close(promise: nil)   // idle: nothing to answer
        case .receiving:
            reject(context, .requestTimeout, kind: "bad_request",
                   "request not received in full within \(limits.requestSeconds) s")
        case .serving, .rejected:
            break
        }
    }

    /// Answers `status` with an `APIErrorReply` (Connection: close) and closes the connection.
    func reject(_ context: ChannelHandlerContext, _ status: HTTPResponse.Status, kind: String, _ message: String) {
        state = .rejected
        deadline?.cancel()
        deadline = nil
        let body = (try? XendClient.encoder.encode(APIErrorReply(error: message, kind: kind))) ?? Data("{}".utf8)
        var head = HTTPResponse(status: status)
        head.headerFields[.contentType] = "application/json"
        head.headerFields[.contentLength] = String(body.count)
        head.headerFields[.connection] = "close"
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(ByteBuffer(bytes: body))), promise: nil)
        let done = context.eventLoop.makePromise(of: Void.self)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: done)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        done.futureResult.whenComplete { _ in bound.value.close(promise: nil) }
    }
}

// TLS for the relocation connection (`xend-relocation-ssl yes`). xend terminates TLS on
// both hosts and relays plaintext over a Unix socketpair: the other end of that pair is
// what the relocation exchange (Relocation.swift, DomainMigration.swift,
// MigrationReceive.swift) and the sandboxed `migration` service see as the peer socket, so
// the service and its manifest are the same with TLS on or off.
//
// Both sides present a certificate and check the peer's against
// `xend-relocation-ssl-ca-file` (mutual TLS, TLS 1.2 or later); the source also checks
// that the target's certificate names the host it connected to (RFC 6125: the DNS name
// given to `xm migrate`, or the address when it was given one).
import CLinux
import DomainConfig
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
#if canImport(Glibc)
import Glibc
#endif

/// The TLS settings of the relocation server and of outgoing migrations, loaded once from
/// the files `xend-relocation-ssl-{cert,key,ca}-file` name.
struct RelocationTLS: Sendable {
    /// Seconds the TLS handshake may take (as each handshake line: `RelocationWire.handshakeTimeout`).
    static let handshakeTimeout = RelocationWire.handshakeTimeout
    /// Seconds the relay waits with neither side sending before it ends the connection:
    /// longer than every bound of the exchange (30 s), so an end point times out first.
    static let idleTimeout: Int64 = 90

    let server: NIOSSLContext
    let client: NIOSSLContext

    /// Reads the certificate chain, the private key and the CA certificates.
    /// - Returns: nil when `xend-relocation-ssl` is no.
    /// - Throws: `XendError` 400 naming the key and the file that is missing, unreadable,
    ///   not PEM of the right kind, or (this host's certificate) expired or not yet valid.
    static func load(_ config: XendConfig) throws(XendError) -> RelocationTLS? {
        guard config.relocationSSL else { return nil }
        func file(_ key: String, _ path: String?) throws(XendError) -> String {
            guard let path, !path.isEmpty else {
                throw XendError(.badRequest, "\(key) is not set (xend-relocation-ssl is yes)")
            }
            guard access(path, R_OK) == 0 else {
                throw XendError(.badRequest, "\(key) \(path): \(String(cString: strerror(errno)))")
            }
            return path
        }
        let certPath = try file("xend-relocation-ssl-cert-file", config.relocationSSLCertFile)
        let keyPath = try file("xend-relocation-ssl-key-file", config.relocationSSLKeyFile)
        let caPath = try file("xend-relocation-ssl-ca-file", config.relocationSSLCAFile)
        let chain: [NIOSSLCertificate], key: NIOSSLPrivateKey, roots: [NIOSSLCertificate]
        do { chain = try NIOSSLCertificate.fromPEMFile(certPath) } catch {
            throw XendError(.badRequest, "xend-relocation-ssl-cert-file \(certPath): not a PEM certificate (\(error))")
        }
        do { key = try NIOSSLPrivateKey(file: keyPath, format: .pem) } catch {
            throw XendError(.badRequest, "xend-relocation-ssl-key-file \(keyPath): not a PEM private key (\(error))")
        }
        do { roots = try NIOSSLCertificate.fromPEMFile(caPath) } catch {
            throw XendError(.badRequest, "xend-relocation-ssl-ca-file \(caPath): not a PEM certificate (\(error))")
        }
        guard !chain.isEmpty else { throw XendError(.badRequest, "xend-relocation-ssl-cert-file \(certPath): holds no certificate") }
        guard !roots.isEmpty else { throw XendError(.badRequest, "xend-relocation-ssl-ca-file \(caPath): holds no certificate") }
        // Our own certificate out of date would only show as the peers' refusals: say so here.
        let now = time(nil)
        func day(_ t: time_t) -> String { ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: TimeInterval(t))) }
        if chain[0].notValidAfter < now {
            throw XendError(.badRequest, "xend-relocation-ssl-cert-file \(certPath): the certificate expired at \(day(chain[0].notValidAfter))")
        }
        if chain[0].notValidBefore > now {
            throw XendError(.badRequest, "xend-relocation-ssl-cert-file \(certPath): the certificate is not valid before \(day(chain[0].notValidBefore))")
        }

        var s = TLSConfiguration.makeServerConfigurationWithMTLS(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key), trustRoots: .certificates(roots))
        s.minimumTLSVersion = .tlsv12
        var c = TLSConfiguration.makeClientConfiguration()
        c.certificateChain = chain.map { .certificate($0) }
        c.privateKey = .privateKey(key)
        c.trustRoots = .certificates(roots)
        c.certificateVerification = .fullVerification
        c.minimumTLSVersion = .tlsv12
        do {
            return RelocationTLS(server: try NIOSSLContext(configuration: s), client: try NIOSSLContext(configuration: c))
        } catch {
            throw XendError(.badRequest, "xend-relocation-ssl-key-file \(keyPath) does not go with xend-relocation-ssl-cert-file \(certPath) (\(error))")
        }
    }

    /// Which end of the TLS connection this host is.
    enum Role: Sendable {
        /// The relocation server's end: asks for and checks the source's certificate.
        case server
        /// `xm migrate`'s end: checks the target's certificate and that it names `host`.
        case client(host: String)
    }

    /// A relayed connection: the plaintext end and why the TLS side ended, if it failed.
    struct Connection: Sendable {
        /// The Unix socket carrying the plaintext (blocking, close-on-exec; the caller closes it).
        let fd: Int32
        let failureBox: FailureBox
        /// Why the TLS connection failed after the handshake, nil while it did not. Under
        /// TLS 1.3 a client learns that the server refused its certificate only here, once
        /// the connection ends (the handshake is over for it before the server checks).
        var failure: String? { failureBox.get() }
    }

    /// The first reason a relayed connection failed, set on the event loop, read anywhere.
    final class FailureBox: @unchecked Sendable {
        private let lock = NSLock()
        private var reason: String?
        /// Keeps `why` unless a reason is already there.
        func set(_ why: String) { lock.lock(); if reason == nil { reason = why }; lock.unlock() }
        func get() -> String? { lock.lock(); defer { lock.unlock() }; return reason }
    }

    /// Runs the TLS handshake on the connected TCP socket `tcp` and, once it succeeded,
    /// relays plaintext between it and a new Unix socket, whose other end is returned. `tcp` stays the caller's: the relay
    /// works on a duplicate and ends when either side closes, or after `idleTimeout` s
    /// without data.
    /// - Throws: `XendError` 500 naming `peer` and why the handshake failed (the peer's
    ///   certificate is from an unknown CA, expired, for another host; the peer refused
    ///   ours) or that it took over `handshakeTimeout` s. Nothing is left running then.
    func wrap(_ tcp: Int32, role: Role, peer: String) throws(XendError) -> Connection {
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw XendError(.internalError, "\(peer): socketpair: \(String(cString: strerror(errno)))")
        }
        let dup = fcntl(tcp, F_DUPFD_CLOEXEC, 0)
        guard dup >= 0 else {
            let e = String(cString: strerror(errno)); close(pair[0]); close(pair[1])
            throw XendError(.internalError, "\(peer): dup: \(e)")
        }
        let group = MultiThreadedEventLoopGroup.singleton
        let handshake = group.next().makePromise(of: Void.self)
        let failure = FailureBox()
        // nil: the server's end. An address is checked against the certificate's IP
        // entries (NIOSSL uses the connection's peer address when given no name; SNI
        // carries no address), a name against its DNS entries.
        let serverName: String??
        switch role {
        case .server: serverName = nil
        case .client(let host):
            let isAddress = host.contains(":") || host.split(separator: ".").count == 4 && host.allSatisfy({ $0.isNumber || $0 == "." })
            serverName = .some(isAddress ? nil : host)
        }
        let serverContext = server, clientContext = client
        // The plaintext side first, so the relay is whole before any TLS record is read
        // (bytes the peer sends right after its Finished must not find a bare pipeline).
        let loop = group.next()
        let (tlsSide, plainSide) = RelayHandler.pair()
        let plainChannel: any Channel
        do {
            plainChannel = try ClientBootstrap(group: loop)
                .channelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
                .channelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(plainSide) }
                }
                .withConnectedSocket(pair[1]).wait()
        } catch {
            close(dup); close(pair[0]); handshake.fail(error)
            throw XendError(.internalError, "\(peer): relay: \(error)")
        }
        do {
            _ = try ClientBootstrap(group: loop)
                .channelOption(ChannelOptions.allowRemoteHalfClosure, value: true)
                .channelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture {
                        let ops = ch.pipeline.syncOperations
                        if let name = serverName {
                            try ops.addHandler(try NIOSSLClientHandler(context: clientContext, serverHostname: name))
                        } else {
                            try ops.addHandler(NIOSSLServerHandler(context: serverContext))
                        }
                        try ops.addHandler(IdleStateHandler(allTimeout: .seconds(Self.idleTimeout)))
                        try ops.addHandler(HandshakeWatch(promise: handshake, failure: failure))
                        try ops.addHandler(tlsSide)
                    }
                }
                .withConnectedSocket(dup).wait()
        } catch {
            plainChannel.close(promise: nil); close(pair[0]); handshake.fail(error)
            throw XendError(.internalError, "\(peer): TLS: \(error)")
        }
        if let why = Self.await(handshake.futureResult, seconds: Self.handshakeTimeout) {
            // Closing one channel of the relay closes the other.
            plainChannel.close(promise: nil)
            close(pair[0])
            throw XendError(.internalError, "TLS handshake with \(peer) failed: \(why)")
        }
        return Connection(fd: pair[0], failureBox: failure)
    }

    /// Waits for `future` at most `seconds`: nil when it succeeded, else why not.
    private static func await(_ future: EventLoopFuture<Void>, seconds: Double) -> String? {
        let done = DispatchSemaphore(value: 0)
        let result = FailureBox()
        future.whenComplete { r in
            switch r {
            case .success: result.set("")
            case .failure(let e): result.set(RelocationTLS.explain(e))
            }
            done.signal()
        }
        _ = done.wait(timeout: .now() + seconds)
        result.set("it took over \(Int(seconds)) s")
        let why = result.get()
        return why == "" ? nil : why
    }

    /// A reader's words for a TLS failure: the certificate check that failed and on which
    /// side, with BoringSSL's own name for it.
    static func explain(_ error: any Error) -> String {
        if let e = error as? NIOSSLExtraError, e == .failedToValidateHostname {
            return "hostname mismatch: the peer's certificate is not for the host migrated to (\(e))"
        }
        // BoringSSL's error lines carry a code and a source path: keep only its reason name.
        var text = "\(error)"
        if let r = text.range(of: "OPENSSL_internal:") {
            let name = text[r.upperBound...].prefix(while: { $0.isUppercase || $0.isNumber || $0 == "_" })
            if !name.isEmpty { text = "BoringSSL: " + name }
        }
        let table: [(String, String)] = [
            ("CERTIFICATE_VERIFY_FAILED", "the peer's certificate did not verify against xend-relocation-ssl-ca-file (unknown CA, expired or not yet valid)"),
            ("TLSV1_ALERT_UNKNOWN_CA", "the peer refused our certificate: unknown CA (it does not trust our xend-relocation-ssl-ca-file's CA)"),
            ("SSLV3_ALERT_CERTIFICATE_EXPIRED", "the peer refused our certificate: expired"),
            ("SSLV3_ALERT_BAD_CERTIFICATE", "the peer refused our certificate"),
            ("SSLV3_ALERT_CERTIFICATE_UNKNOWN", "the peer refused our certificate"),
            ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "the peer sent no certificate"),
            ("CERTIFICATE_REQUIRED", "the peer wanted a certificate and refused ours"),
            ("WRONG_VERSION_NUMBER", "the peer does not speak TLS (is xend-relocation-ssl on there?)"),
            ("uncleanShutdown", "the peer closed the connection during the handshake"),
            ("eofDuring", "the peer closed the connection during the handshake"),
        ]
        for (mark, why) in table where text.contains(mark) { return "\(why) (\(text))" }
        return text
    }
}

/// Completes `promise` when the TLS handshake is over: success, or the first error; later
/// errors (and an idle timeout) go to `failure` and close the channel.
private final class HandshakeWatch: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    let promise: EventLoopPromise<Void>
    let failure: RelocationTLS.FailureBox
    private var done = false
    init(promise: EventLoopPromise<Void>, failure: RelocationTLS.FailureBox) { self.promise = promise; self.failure = failure }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? TLSUserEvent, case .handshakeCompleted = e, !done { done = true; promise.succeed(()) }
        if event is IdleStateHandler.IdleStateEvent {
            failure.set("no data either way for \(RelocationTLS.idleTimeout) s")
            context.close(promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !done { done = true; promise.fail(error) } else if !((error as? NIOSSLError).map { if case .uncleanShutdown = $0 { true } else { false } } ?? false) {
            failure.set(RelocationTLS.explain(error))
        }
        context.close(promise: nil)
    }
    func channelInactive(context: ChannelHandlerContext) {
        if !done { done = true; promise.fail(NIOSSLError.uncleanShutdown) }
        context.fireChannelInactive()
    }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) { context.fireChannelRead(data) }
}

/// One half of a two-way relay between two channels on one event loop: lets its channel
/// read only while the other can take writes (so at most one read's worth plus the
/// channel's write-buffer high-water mark is held), passes end-of-input on as a half-close
/// after the writes before it, and closes the other when its channel ends.
private final class RelayHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var partner: RelayHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    private var lastWrite: EventLoopFuture<Void>?
    private var inputDone = false, outputDone = false

    /// Two handlers, each the other's partner (both channels must share one event loop).
    static func pair() -> (RelayHandler, RelayHandler) {
        let a = RelayHandler(), b = RelayHandler()
        a.partner = b; b.partner = a
        return (a, b)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        partner?.resumeRead()
    }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil; partner = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        partner?.send(unwrapInboundIn(data))
    }
    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.context?.flush()
    }
    func read(context: ChannelHandlerContext) {
        if partner?.context?.channel.isWritable ?? false { context.read() } else { pendingRead = true }
    }
    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.resumeRead() }
        context.fireChannelWritabilityChanged()
    }
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, case .inputClosed = e {
            inputDone = true
            partner?.closeOutput()
            if outputDone { context.close(promise: nil) }
        } else if event is IdleStateHandler.IdleStateEvent {
            context.close(promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
    func channelInactive(context: ChannelHandlerContext) {
        if let p = partner, let pc = p.context {
            let channel = pc.channel
            (p.lastWrite ?? pc.eventLoop.makeSucceededVoidFuture()).whenComplete { _ in channel.close(promise: nil) }
        }
        context.fireChannelInactive()
    }

    private func send(_ buffer: ByteBuffer) {
        guard let context, !outputDone else { return }
        let p = context.eventLoop.makePromise(of: Void.self)
        context.write(wrapOutboundOut(buffer), promise: p)
        lastWrite = p.futureResult
    }
    private func resumeRead() {
        guard pendingRead, let context else { return }
        pendingRead = false
        context.read()
    }
    private func closeOutput() {
        guard let context, !outputDone else { return }
        outputDone = true
        context.flush()
        let channel = context.channel
        let both = inputDone
        (lastWrite ?? context.eventLoop.makeSucceededVoidFuture()).whenComplete { _ in
            if both { channel.close(promise: nil); return }
            channel.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
        }
    }
}

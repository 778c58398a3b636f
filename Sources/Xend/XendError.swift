// The one error type of xend's requests, mapped onto HTTP statuses by Server.swift.

/// A failed request, mapped onto an HTTP status by the server.
public struct XendError: Error, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable { case noSuchDomain = "no_such_domain", badRequest = "bad_request",
                                         conflict, unavailable, internalError = "internal" }
    public var kind: Kind
    public var message: String
    public var domain: String?
    public init(_ kind: Kind, _ message: String, domain: String? = nil) { self.kind = kind; self.message = message; self.domain = domain }
    public var description: String { message }
    static func noDomain(_ d: String) -> XendError { XendError(.noSuchDomain, "Domain '\(d)' does not exist.", domain: d) }
}

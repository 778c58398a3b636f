// Where engines are registered by name and chosen for a domain: the one place in xend that
// names them (xend-config's `domain-engine`, a config's `engine`, the HVM builder).
import DomainConfig

/// The engines xend runs domains on, by name.
struct EngineRegistry: Sendable {
    let engines: [String: any DomainEngineDriver]
    /// Whether `auto` means the qemu engine on this host (KVM is not hardware-backed).
    let autoPrefersQemu: Bool

    subscript(name: String) -> (any DomainEngineDriver)? { engines[name] }

    /// The engine for configuration `c` under xend-config's default `configured`.
    /// - Throws: `XendError` 503 when that engine is not available, 400 for an HVM domain
    ///   on the core.
    func choose(for c: DomainConfiguration, configured: DomainEngine) throws(XendError) -> any DomainEngineDriver {
        var e = c.engine == .auto ? configured : c.engine
        if c.builder == .hvm && e == .auto { e = .qemu }
        if e == .auto { e = autoPrefersQemu && engines[DomainEngine.qemu.rawValue] != nil ? .qemu : .core }
        guard let d = engines[e.rawValue] else {
            throw XendError(.unavailable, "engine \(e.rawValue) is not available yet")
        }
        if c.builder == .hvm && e == .core { throw XendError(.badRequest, "HVM domains need the qemu engine") }
        return d
    }
}

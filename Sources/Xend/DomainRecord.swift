// One domain as xend's registry holds it, in memory and in `var/lib/xend/domains/DOMID.json`.
import DomainConfig

/// One domain as the registry stores it (`$ROOT/var/lib/xend/domains/DOMID.json`).
public struct DomainRecord: Codable, Sendable {
    public var domid: Int
    public var name: String
    public var uuid: String
    /// The parsed configuration (stored as its `(vm ...)` SXP text; see
    /// DomainConfigurationCodable.swift).
    public var config: DomainConfiguration
    /// The engine's registered name.
    public var engine: String
    public var process: EngineProcess?
    public var startTime: Double
    public var restartCount: Int
    /// Last restart time (Xen's `xend/previous_restart_time`).
    public var previousRestartTime: Double?
    /// For a stopped, preserved domain: `s` (shut down) or `c` (crashed).
    public var stoppedState: String?
    public var consoleLog: String
    /// The domain's vbd back-ends (nil in records of older xends).
    public var disks: [DiskRecord]? = nil
    /// The domain's vifs (taps + netbacks; nil in records of older xends).
    public var vifs: [VifRecord]? = nil
    /// MiB of RAM the running engine was given (max of memory and maxmem at start): the
    /// ceiling of `xm mem-set` until the next start. nil in records of older xends.
    public var bootMemory: Int? = nil
    /// Set while xend makes the domain (written before the first device): a record still
    /// marked when xend starts belongs to a creation that xend did not finish, and is undone.
    public var creating: Bool? = nil
    /// Devices added while the engine runs (`vbd xvdb`, `vif 1`; block-attach,
    /// network-attach): the engine has them in hot-plug slots, where a configuration started
    /// afresh does not put them. Cleared at each start. nil: none.
    public var hotplugged: [String]? = nil
    /// While `creating`: the tap names that passed the vif checks and are about to be made.
    public var plannedTaps: [String]? = nil

    /// Whether the domain runs (has an engine process).
    var isLive: Bool { process != nil }
}

// The core engine's part of `xm mem-set`, `xm sysrq` and `xm dump-core`: control-socket
// commands with an argument (CoreControlRequest), the dump's file handed over as a descriptor.
import CoreControl
import Foundation

extension CoreEngine {
    func request(_ p: EngineProcess, _ r: CoreControlRequest, timeoutMs: Int32 = 2000, passing fd: Int32? = nil) throws -> String {
        let reply = try ProcessInfo2.control(p.controlPath, String(r.line.dropLast()), timeoutMs: timeoutMs, passing: fd)
        guard CoreControlReply.isOK(reply) else {
            throw EngineError("core: " + (reply.hasPrefix("error ") ? String(reply.dropFirst(6)) : reply))
        }
        return reply
    }

    /// `balloon MIB` on the control socket: the guest's balloon driver is asked to keep `mib` MiB.
    public func setMemoryTarget(_ p: EngineProcess, mib: Int) throws { _ = try request(p, .balloon(mib: mib)) }

    /// `sysrq KEY`: a break then `key` on COM1.
    public func sendSysrq(_ p: EngineProcess, key: Character) throws {
        guard let a = key.asciiValue, let r = CoreControlRequest(line: "sysrq \(Character(Unicode.Scalar(a)))") else {
            throw EngineError("SysRq key '\(key)' is not one of a-z, 0-9")
        }
        _ = try request(p, r)
    }

    /// `dump-core` with `fd`: the core writes the ELF core itself (xend never maps guest memory).
    public func dumpCore(_ p: EngineProcess, into fd: Int32) throws {
        _ = try request(p, .dumpCore, timeoutMs: 120_000, passing: fd)
    }

    /// The RAM the guest's balloon driver says it keeps, KiB (`balloon_actual_kib`).
    public func balloonActualKiB(_ p: EngineProcess) -> UInt64? {
        (try? ProcessInfo2.control(p.controlPath, CoreControlCommand.query.rawValue)).flatMap(CoreControlStatus.init(parsing:))?.balloonActualKiB
    }
}

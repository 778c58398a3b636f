// The qemu engine's part of `xm sysrq` and `xm dump-core` (QemuEngine's QMP commands).
import Foundation
import QemuEngine

extension QemuEngineDriver {
    /// QMP `send-key` Alt+SysRq+`key` on the guest's PS/2 keyboard.
    public func sendSysrq(_ p: EngineProcess, key: Character) throws {
        do { try session(p).sendSysrq(key) } catch let e as EngineError { throw e } catch { throw EngineError("qemu: \(error)") }
    }

    /// QMP `dump-guest-memory` (ELF, no paging) into `fd`, handed over with `getfd`.
    public func dumpCore(_ p: EngineProcess, into fd: Int32) throws {
        do { try session(p).dumpGuestMemory(into: fd) } catch let e as EngineError { throw e } catch { throw EngineError("qemu: \(error)") }
    }
}

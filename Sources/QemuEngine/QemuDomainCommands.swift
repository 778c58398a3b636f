// QMP commands behind `xm sysrq` and `xm dump-core` (QEMU's qapi schema: `send-key`,
// `dump-guest-memory`).
import Foundation
#if canImport(Glibc)
import Glibc
#endif

extension QemuDomain {
    /// The descriptor name a core dump's file is handed over under (QMP `getfd`).
    public static let dumpFDName = "xenith-dump"

    /// The QEMU `QKeyCode` of the SysRq key `key`: `a`–`z` and `0`–`9` are their own
    /// names; nil for any other character.
    public static func sysrqQcode(_ key: Character) -> String? {
        guard key.isASCII, let a = key.asciiValue else { return nil }
        if (0x61...0x7A).contains(a) || (0x30...0x39).contains(a) { return String(key) }
        return nil
    }

    /// Presses Alt+SysRq+`key` on the guest's keyboard (QMP `send-key`, held 100 ms):
    /// Linux's keyboard SysRq handler runs the command.
    /// - Throws: `QemuEngineError` for a key without a QEMU key code, or QEMU's refusal.
    public func sendSysrq(_ key: Character) throws {
        guard let code = QemuDomain.sysrqQcode(key) else {
            throw QemuEngineError("SysRq key '\(key)' is not one of a-z, 0-9")
        }
        let keys: [[String: Any]] = ["alt", "sysrq", code].map { ["type": "qcode", "data": $0] }
        do { try qmp.execute("send-key", ["keys": keys, "hold-time": 100]) } catch { throw QemuEngineError("\(error)") }
    }

    /// Writes the guest's RAM as an ELF core (QMP `dump-guest-memory`, `paging` off: one
    /// PT_LOAD per RAM block with its guest-physical address, plus QEMU's per-vCPU notes)
    /// into `fd`, which QEMU gets a copy of through `getfd`. QEMU stops the vCPUs while it
    /// writes and resumes them after.
    /// - Parameter timeout: seconds QEMU may take (the command returns when the file is done).
    /// - Throws: `QemuEngineError` with QEMU's reason.
    public func dumpGuestMemory(into fd: Int32, timeout: Double = 120) throws {
        do {
            try qmp.getfd(QemuDomain.dumpFDName, fd: fd)
        } catch { throw QemuEngineError("\(error)") }
        do {
            try qmp.execute("dump-guest-memory", ["paging": false, "protocol": "fd:" + QemuDomain.dumpFDName], timeout: timeout)
        } catch {
            // QEMU closes a descriptor it used; one it never took is closed here.
            try? qmp.closefd(QemuDomain.dumpFDName)
            throw QemuEngineError("\(error)")
        }
    }
}

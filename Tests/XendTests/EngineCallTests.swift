// Requests on a domain whose engine ends under them (DomainControl.engineCall).
import DomainConfig
import Foundation
import Logging
import Testing
import XendAPI
@testable import Xend
#if canImport(Glibc)
import Glibc
#endif

@Suite struct EngineCallTests {
    /// An engine error on a domain whose engine process has just ended (a shutdown or
    /// crash xend has not handled yet) is a 409 saying so, not the engine's internal
    /// error (QEMU's "…control.pid: no pid"); on a live engine it stays a 500 with the
    /// engine's words.
    @Test func aRequestOnAnEngineThatEndedSaysSo() throws {
        let root = tempRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let manager = DomainManager(paths: XenithPaths(root: root), xendConfig: XendConfig(), engines: ["core": SleepEngine()],
                                    xenstore: nil, logger: Logger(label: "test"))
        let r = DomainRecord(domid: 4, name: "gone", uuid: "5b0c1f8e-2a7d-4c1e-9f3a-6d2e8b7c4a10", config: DomainConfiguration(name: "gone"),
                             engine: "core", process: nil, startTime: 0, restartCount: 0, consoleLog: root + "/gone.log")
        // A process that ran and was reaped: its pid names nothing now.
        var pid: pid_t = 0
        var argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
        defer { free(argv[0]) }
        #expect(posix_spawn(&pid, "/bin/true", nil, nil, &argv, environ) == 0)
        let ticks = ProcessInfo2.startTicks(pid) ?? 1
        var st: Int32 = 0
        waitpid(pid, &st, 0)
        let ended = EngineProcess(pid: pid, startTicks: ticks, controlPath: root + "/4.control", statusFile: root + "/4.status")
        do throws(XendError) {
            try manager.engineCall(r, ended, "unpause") { throw EngineError("/run/xend/domains/4.control.pid: no pid") }
            Issue.record("no error")
        } catch {
            #expect(error.kind == .conflict)
            #expect(error.message == "Cannot unpause domain gone: it has just ended (its engine exited)")
        }
        let me = EngineProcess(pid: getpid(), startTicks: ProcessInfo2.startTicks(getpid()) ?? 0,
                               controlPath: root + "/4.control", statusFile: root + "/4.status")
        do throws(XendError) {
            try manager.engineCall(r, me, "pause") { throw EngineError("QMP stop: busy") }
            Issue.record("no error")
        } catch {
            #expect(error.kind == .internalError)
            #expect(error.message.contains("QMP stop: busy"))
        }
    }
}

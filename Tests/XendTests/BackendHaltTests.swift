// Stopping a back-end on purpose (BackendProcess.halt): SIGTERM, then SIGKILL after 2 s.
import Foundation
import Testing
@testable import Xend
#if canImport(Glibc)
import Glibc
#endif

@Suite struct BackendHaltTests {
    /// A back-end that ends at SIGTERM is seen as ended at once, also when the thread that
    /// supervises it reaps it first (its blocking waitpid wins): halt used to see only its
    /// own waitpid, which then failed with ECHILD, and waited out the 2 s before SIGKILL on
    /// every domain with a disk (`xm destroy` 2.05 s, and so the destroy phase of `xm save`).
    @Test(arguments: [false, true]) func haltReturnsOnceTheServiceEnded(supervised: Bool) throws {
        // Supervised, the case exists only when the supervising thread wins the reaping race
        // against halt's 10 ms WNOHANG poll, which a loaded host can make it lose: up to 5
        // tries, each one's halt timed.
        var supervisorReaped = false
        for _ in 0..<(supervised ? 5 : 1) where !supervisorReaped {
            supervisorReaped = try haltOnce(supervised: supervised)
        }
        if supervised { #expect(supervisorReaped, "the supervising thread never reaped first in 5 tries") }
    }

    /// One spawn and halt; whether the supervising thread (when `supervised`) reaped it.
    private func haltOnce(supervised: Bool) throws -> Bool {
        let log = NSTemporaryDirectory() + "halt-\(getpid())-\(supervised).log"
        defer { unlink(log) }
        let p = BackendProcess(service: "sh", device: "vbd", label: "test", logPath: log,
                               lock: NSRecursiveLock(), budget: RestartBudget(limit: 1, window: 1))
        // spawn appends `--ready-fd 5`: sh takes them as $0 and $1.
        try p.spawn(["/bin/sh", "-c", "exec sleep 100"], descriptors: [])
        let pid = p.pid
        #expect(pid > 0)
        let reaped = Flag(), finished = Flag()
        let supervisor = supervised ? Thread {
            var st: Int32 = 0
            if waitpid(pid, &st, 0) == pid { reaped.set() }
            finished.set()
        } : nil
        supervisor?.start()
        usleep(100_000)   // the supervisor is blocked in waitpid
        let t0 = Date()
        p.halt()
        let took = Date().timeIntervalSince(t0)
        #expect(took < 1.0, "halt took \(took) s: it waited for the SIGKILL fallback")
        #expect(kill(pid, 0) != 0 && errno == ESRCH, "the process is gone and reaped")
        if supervised {
            let deadline = Date().addingTimeInterval(2)
            while !finished.isSet && Date() < deadline { usleep(10_000) }
        }
        #expect(p.pid == 0)
        return reaped.isSet
    }
}

/// A flag one thread sets and another reads.
private final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}

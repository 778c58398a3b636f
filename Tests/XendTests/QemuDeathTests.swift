import Testing
@testable import Xend

/// How xend words QEMU's own death (issue 5, "QEMU crashing").
@Suite struct QemuDeathTests {
    @Test func signalAndExitStatus() {
        #expect(QemuEngineDriver.describeDeath("qemu-system-x86_64 died: a | b", waitStatus: 11)
                == "qemu-system-x86_64 killed by signal 11 (Segmentation fault): a | b")
        #expect(QemuEngineDriver.describeDeath("qemu-system-x86_64 died", waitStatus: 9)
                == "qemu-system-x86_64 killed by signal 9 (Killed)")
        #expect(QemuEngineDriver.describeDeath("qemu-system-x86_64 died", waitStatus: 1 << 8)
                == "qemu-system-x86_64 exited with status 1")
        // Not reaped by xend (adopted after a restart): as is. A guest panic: as is.
        #expect(QemuEngineDriver.describeDeath("qemu-system-x86_64 died", waitStatus: nil) == "qemu-system-x86_64 died")
        #expect(QemuEngineDriver.describeDeath("guest panicked", waitStatus: 0) == "guest panicked")
    }
}

import Foundation
import Testing
import VhostUser
import VhostUserTesting
import Synchronization
@testable import BlockBackend

/// The error server of a broken vbd: the disk's features and configuration space, every
/// request answered IOERR, the image never touched.
@Suite struct FailingBlockDeviceTests {
    @Test func everyRequestFailsAndTheImageStaysUntouched() throws {
        let s = try Scratch()
        let img = try BlockImage.open(s.image, readOnly: false, sharedWrite: true)
        let disk = VirtioBlockDevice(image: img, numQueues: 1, serial: "unit")
        let dev = FailingBlockDevice(standingInFor: disk)
        #expect(dev.deviceFeatures == disk.deviceFeatures)
        #expect(dev.readConfig(offset: 0, count: VirtioBlk.configSize) == disk.readConfig(offset: 0, count: VirtioBlk.configSize))
        let backend = try VhostUserBackend(device: dev, listenFd: try vhostUserListen(path: s.socket))
        let done = Mutex(false)
        spawnThread { try? backend.run(); done.withLock { $0 = true } }
        let c = try VirtioBlockClient(socketPath: s.socket, numQueues: 1, queueSize: 64, depth: 4, maxRequestBytes: 65536)
        try c.connect()
        #expect(c.capacitySectors == (64 << 20) / 512, "the capacity the guest knew")
        #expect(try c.write(sector: 8, [UInt8](repeating: 0xab, count: 4096)) == VirtioBlk.sIOErr)
        #expect(try c.read(sector: 8, count: 4096) == nil, "reads fail too")
        let onDisk = try Data(contentsOf: URL(fileURLWithPath: s.image)).prefix(8 * 512 + 4096)
        #expect(onDisk.allSatisfy { $0 == 0 }, "nothing written to the image")
        backend.stop()
        for _ in 0..<200 where !done.withLock({ $0 }) { usleep(5000) }
        #expect(done.withLock { $0 })
    }
}

// A `tap:qcow:` disk is read as qcow2; xend refuses it by name when the image's header says
// qcow version 1 (Xen 3's blktap format), and lets a qcow2 header or a missing file through
// to the checks that follow.
import DomainConfig
import Foundation
import Testing
@testable import Xend

@Suite struct DiskImageChecksTests {
    @Test func qcowVersionFromHeader() {
        #expect(DiskImageChecks.qcowVersion([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 1]) == 1)
        #expect(DiskImageChecks.qcowVersion([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]) == 3)
        #expect(DiskImageChecks.qcowVersion([0x51, 0x46, 0x49, 0xfb, 0, 0]) == nil)
        #expect(DiskImageChecks.qcowVersion([UInt8](repeating: 0, count: 8)) == nil)
    }

    @Test func oldQcowIsRefusedByName() throws {
        let dir = NSTemporaryDirectory() + "xend-qcow-" + UUID().uuidString.prefix(8)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func image(_ version: UInt8) -> String {
            let p = dir + "/v\(version).img"
            FileManager.default.createFile(atPath: p, contents: Data([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, version] + [UInt8](repeating: 0, count: 504)))
            return p
        }
        let old = try DiskSpec(parsing: "tap:qcow:\(image(1)),xvda,w")
        #expect(old.format == "qcow2")
        do {
            try DiskImageChecks.refuseOldQcow(old)
            Issue.record("a qcow version 1 image was let through")
        } catch {
            #expect(error.message.contains("xvda") && error.message.contains("qcow version 1") && error.message.contains(old.path!), "\(error.message)")
        }
        try DiskImageChecks.refuseOldQcow(try DiskSpec(parsing: "tap:qcow:\(image(2)),xvda,w"))
        try DiskImageChecks.refuseOldQcow(try DiskSpec(parsing: "tap:qcow2:\(dir)/missing.img,xvda,w"))
        try DiskImageChecks.refuseOldQcow(try DiskSpec(parsing: "file:\(image(1)),xvda,w"))   // raw: not read as qcow
    }
}

import Foundation
import Testing
@testable import PciBack

/// pciback's command line, the adopt/no-reset rule, its request lines, and the device check
/// on a directory that plays a device's sysfs directory.
@Suite struct PciBackServiceTests {
    func parse(_ s: String) throws(PciBackUsage) -> PciBackOptions? {
        try PciBackOptions.parse(s.split(separator: " ").map(String.init))
    }

    func refusal(_ s: String) -> String? {
        do { _ = try parse(s); return nil } catch { return error.message }
    }

    @Test func serveAndResetModes() throws {
        let o = try #require(try parse("--domain 4 --device 0000:00:04.0 --device 0000:01:00.1 --no-sandbox"))
        #expect(o.mode == .serve(domid: 4, adopt: false))
        #expect(o.devices == ["0000:00:04.0", "0000:01:00.1"])
        #expect(o.noSandbox)
        let a = try #require(try parse("--adopt --domain 4 --device 0000:00:04.0 --manifest /m"))
        #expect(a.mode == .serve(domid: 4, adopt: true))
        #expect(a.manifest == "/m")
        let r = try #require(try parse("--reset 0000:00:04.0"))
        #expect(r.mode == .reset)
        #expect(try parse("--help") == nil)
        #expect(PciBackOptions.deviceFDs(0) == (6, 7))
        #expect(PciBackOptions.deviceFDs(2) == (10, 11))
    }

    @Test func badArgumentsAreNamed() {
        #expect(refusal("--domain 4") == "--domain 4: give --device BDF")
        #expect(refusal("--domain x --device 0000:00:04.0") == "--domain x: expected a domain id above 0")
        #expect(refusal("--domain 0 --device 0000:00:04.0") == "--domain 0: expected a domain id above 0")
        #expect(refusal("--domain 4 --device 00:04.0") == "--device 00:04.0: expected a PCI address DDDD:BB:SS.F")
        #expect(refusal("--domain 4 --device 0000:00:04.0 --device 0000:00:04.0") == "--device 0000:00:04.0: named twice")
        #expect(refusal("--adopt --reset 0000:00:04.0") == "--adopt needs --domain")
        #expect(refusal("--device 0000:00:04.0") == "--device needs --domain")
        #expect(refusal("--domain 4 --device 0000:00:04.0 --reset 0000:00:04.0") == "--reset and --domain exclude each other")
        #expect(refusal("--domain") == "--domain needs a value")
        #expect(refusal("--bogus") == "unknown argument --bogus (see --help)")
        #expect(refusal("") == "give --reset BDF, or --domain ID --device BDF (see --help)")
        #expect(refusal("--reset 0000:00:04.G") == "--reset 0000:00:04.G: expected a PCI address DDDD:BB:SS.F")
        let many = (0...16).map { "--device 0000:00:\(String(format: "%02x", $0)).0" }.joined(separator: " ")
        #expect(refusal("--domain 4 " + many) == "at most 16 devices per pciback")
    }

    /// A pciback xend restarted under a running guest (`--adopt`) never resets for
    /// assignment; the release (after the engine ended) it does.
    @Test func adoptedPcibackDoesNotResetUnderTheGuest() {
        var adopted = PciBackLifecycle(devices: ["0000:00:04.0"], adopted: true)
        let why = adopted.permit(.assign, ["0000:00:04.0"])
        #expect(why?.contains("does not reset a device under a running guest") == true)
        #expect(adopted.assigned.isEmpty)
        #expect(adopted.permit(.release, ["0000:00:04.0"]) == nil)
        #expect(adopted.released == ["0000:00:04.0"])
    }

    @Test func freshPcibackResetsOnceForAssignment() {
        var l = PciBackLifecycle(devices: ["0000:00:04.0", "0000:00:04.1"], adopted: false)
        #expect(l.permit(.assign, ["0000:00:04.0", "0000:00:04.1"]) == nil)
        #expect(l.permit(.assign, ["0000:00:04.0"]) == "PCI device 0000:00:04.0 was already reset for assignment")
        #expect(l.permit(.release, ["0000:00:05.0"]) == "PCI device 0000:00:05.0 is not one of this pciback's devices")
        #expect(l.permit(.release, []) == "no device named")
        #expect(l.permit(.release, ["0000:00:04.0", "0000:00:04.1"]) == nil)
        #expect(l.permit(.assign, ["0000:00:04.1"]) == "PCI device 0000:00:04.1 was already reset for assignment")
    }

    /// A function added while pciback runs (`xm pci-attach`) may be reset for assignment
    /// once, even by an adopted pciback; the functions it was started with still may not;
    /// `drop` forgets one (a later `add` of it starts over).
    @Test func addedFunctionsResetOnceEvenWhenAdopted() {
        var l = PciBackLifecycle(devices: ["0000:00:04.0"], adopted: true)
        #expect(l.add("0000:00:04.0") == "PCI device 0000:00:04.0 is already one of this pciback's devices")
        #expect(l.add("0000:00:06.0") == nil)
        #expect(l.devices == ["0000:00:04.0", "0000:00:06.0"])
        #expect(l.permit(.assign, ["0000:00:06.0"]) == nil)
        #expect(l.permit(.assign, ["0000:00:06.0"]) == "PCI device 0000:00:06.0 was already reset for assignment")
        #expect(l.permit(.assign, ["0000:00:04.0"])?.contains("does not reset a device under a running guest") == true)
        #expect(l.permit(.release, ["0000:00:06.0"]) == nil)
        #expect(l.drop("0000:00:06.0") == 1)
        #expect(l.drop("0000:00:06.0") == nil)
        #expect(l.permit(.release, ["0000:00:06.0"]) == "PCI device 0000:00:06.0 is not one of this pciback's devices")
        #expect(l.add("0000:00:06.0") == nil)
        #expect(l.permit(.assign, ["0000:00:06.0"]) == nil)
        var full = PciBackLifecycle(devices: (0..<16).map { "0000:00:\($0 < 16 ? "0" : "")\(String($0, radix: 16)).0" }, adopted: false)
        #expect(full.add("0000:01:00.0") == "PCI device 0000:01:00.0: this pciback serves 16 devices already")
    }

    @Test func requestLines() throws {
        #expect(try PciBackRequest(parsing: "watch") == .watch)
        #expect(try PciBackRequest(parsing: "status") == .status)
        let r = try PciBackRequest(parsing: "reset release 0000:00:04.0 0000:00:04.1")
        #expect(r == .reset(.release, ["0000:00:04.0", "0000:00:04.1"]))
        #expect(r.line == "reset release 0000:00:04.0 0000:00:04.1")
        #expect(try PciBackRequest(parsing: "add 0000:00:04.0") == .add("0000:00:04.0"))
        #expect(PciBackRequest.drop("0000:00:04.0").line == "drop 0000:00:04.0")
        for bad in ["", "reset", "reset now 0000:00:04.0", "reset assign 4.0", "watch me", "add", "add 4.0",
                    "drop 0000:00:04.0 0000:00:04.1"] {
            #expect(throws: PciBackUsage.self) { try PciBackRequest(parsing: bad) }
        }
    }

    /// The check pciback repeats: a directory with a `driver` link and a `config` file
    /// stands for the device's sysfs directory.
    @Test func deviceCheckReportsUnbindingAndSilence() throws {
        let dir = NSTemporaryDirectory() + "pciback-check-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        symlink("../../../bus/pci", dir + "/subsystem")
        symlink("../../../bus/pci/drivers/vfio-pci", dir + "/driver")
        FileManager.default.createFile(atPath: dir + "/config", contents: Data([0x34, 0x12, 0xe8, 0x11]))
        let d = open(dir, 0o10000000 | O_DIRECTORY), c = open(dir + "/config", O_RDONLY)
        defer { close(d); close(c) }
        #expect(d >= 0 && c >= 0)
        let bdf = "0000:00:04.0"
        #expect(PciDeviceCheck.problem(bdf, directory: d, config: c) == nil)
        unlink(dir + "/driver"); symlink("../../../bus/pci/drivers/e1000", dir + "/driver")
        #expect(PciDeviceCheck.problem(bdf, directory: d, config: c)
                == "PCI device 0000:00:04.0 was unbound from vfio-pci behind xend's back (now bound to e1000)")
        unlink(dir + "/driver")
        #expect(PciDeviceCheck.problem(bdf, directory: d, config: c)
                == "PCI device 0000:00:04.0 was unbound from vfio-pci behind xend's back (now no driver)")
        symlink("../../../bus/pci/drivers/vfio-pci", dir + "/driver")
        let ones = open(dir + "/config", O_WRONLY | O_TRUNC); _ = write(ones, [UInt8](repeating: 0xff, count: 4), 4); close(ones)
        #expect(PciDeviceCheck.problem(bdf, directory: d, config: c) == "PCI device 0000:00:04.0 no longer answers (config space reads all ones)")
        unlink(dir + "/driver"); unlink(dir + "/subsystem")
        #expect(PciDeviceCheck.problem(bdf, directory: d, config: c) == "PCI device 0000:00:04.0 was removed from the host's PCI bus")
    }
}

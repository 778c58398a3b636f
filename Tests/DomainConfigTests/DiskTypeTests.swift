import Testing
@testable import DomainConfig

/// Every disk type Xen users write is mapped or refused by name (issue 17 item 4).
@Suite struct DiskTypeTests {
    func disk(_ s: String) throws -> DiskSpec { try DiskSpec(parsing: s) }

    func refusal(_ s: String) -> String? {
        do { _ = try DiskSpec(parsing: s); return nil } catch { return error.message }
    }

    @Test func mappedTypes() throws {
        let raw = DiskSpec(kind: .file, target: "/img/g.img", vdev: "xvda")
        for s in ["file:/img/g.img,xvda,w", "tap:aio:/img/g.img,xvda,w", "tap:sync:/img/g.img,xvda,w",
                  "tap2:aio:/img/g.img,xvda,w", "tap2:tapdisk:aio:/img/g.img,xvda,w", "tapdisk:aio:/img/g.img,xvda,w",
                  "aio:/img/g.img,xvda,w", "/img/g.img,raw,xvda,w"] {
            #expect(try disk(s) == raw, "\(s)")
        }
        let lv = try disk("phy:vg/lv,xvdb,r")
        #expect(lv.kind == .phy && lv.path == "/dev/vg/lv" && lv.access == .readOnly)
        #expect(try disk("phy:/dev/sdb1,xvdb,w").path == "/dev/sdb1")
        for s in ["tap:qcow:/img/q.img,xvda,w", "tap:qcow2:/img/q.img,xvda,w", "tap2:qcow2:/img/q.img,xvda,w",
                  "/img/q.img,qcow2,xvda,w"] {
            let d = try disk(s)
            #expect(d.format == "qcow2" && d.kind == .file && d.path == "/img/q.img", "\(s)")
            #expect(d.uname == "tap:qcow2:/img/q.img")
            #expect(try disk(d.uname + ",xvda,w") == d, "uname round trip")
        }
        #expect(try disk("tap:vhd:/img/v.vhd,xvda,w").format == "vhd")
        // A path with a colon: after file:, or when the text before the colon is not a type word.
        #expect(try disk("file:/img/a:b.img,xvda,w").path == "/img/a:b.img")
        #expect(try disk("/img/a:b.img,xvda,w").path == "/img/a:b.img")
        #expect(try disk("file:images:x.img,xvda,w").path == "images:x.img")
    }

    @Test func refusedByName() {
        let cases: [(String, [String])] = [
            ("tap:vmdk:/img/w.vmdk,xvda,w", ["tap:vmdk:", "VMware"]),
            ("tap2:vmdk:/img/w.vmdk,xvda,w", ["tap2:vmdk:"]),
            ("tap:ram:/img/r,xvda,w", ["tap:ram:"]),
            ("tap:bogus:/img/x,xvda,w", ["tap: subtype 'bogus'"]),
            ("nbd:192.0.2.1:5000,xvdb,w", ["'nbd:'", "block-nbd"]),
            ("enbd:192.0.2.1 5000,xvdb,w", ["'enbd:'"]),
            ("iscsi:iqn.2001-04.com.example:disk,xvdb,w", ["'iscsi:'", "block-iscsi"]),
            ("drbd:r0,xvdb,w", ["'drbd:'", "block-drbd"]),
            ("vhdx:/img/x,xvda,w", ["unknown disk type 'vhdx:'"]),
            ("foo:/img/x,xvda,w", ["unknown disk type 'foo:'"]),
            ("format=raw,vdev=xvda,access=w,nbd:host:1", ["'nbd:'"]),
        ]
        for (spec, words) in cases {
            let m = refusal(spec)
            #expect(m != nil, "\(spec) accepted")
            for w in words { #expect(m?.contains(w) == true, "\(spec): \(m ?? "accepted") lacks \(w)") }
        }
    }

    @Test func refusalNamesFileLineAndKey() {
        let text = "name = 'k'\nkernel = '/k'\ndisk = [ 'file:/img/a,xvda,w',\n  'tap:vmdk:/img/w.vmdk,xvdb,w' ]\n"
        do {
            _ = try DomainConfiguration(parsing: text, file: "k.cfg")
            Issue.record("tap:vmdk: accepted")
        } catch {
            #expect(error.file == "k.cfg" && error.line == 4 && error.key == "disk", "\(error)")
            #expect(error.description.contains("tap:vmdk:"))
        }
    }

    @Test func sxpVbdTypes() throws {
        func vm(_ uname: String) -> String { "(vm (name k) (memory 64) (image (linux (kernel /k))) (device (vbd (uname \(uname)) (dev xvda) (mode w))))" }
        let c = try DomainConfiguration(sxp: SXP.parse(vm("tap:qcow:/img/q.img"), file: "s"), file: "s")
        #expect(c.disks.first?.format == "qcow2")
        #expect(throws: ConfigError.self) { _ = try DomainConfiguration(sxp: SXP.parse(vm("nbd:host:1"), file: "s"), file: "s") }
    }

    @Test func cacheModes() throws {
        #expect(try disk("file:/img/g.img,xvda,w").cache == nil)
        #expect(try disk("file:/img/g.img,xvda,w,cache=direct").cache == .direct)
        #expect(try disk("file:/img/g.img,xvda,w,cache=direct").path == "/img/g.img")
        #expect(try disk("vdev=xvda, access=w, cache=none, target=/img/g.img").cache == .direct)
        #expect(try disk("/img/g.img,raw,xvda,w,direct-io-safe").cache == .direct)
        #expect(try disk("format=raw,vdev=xvda,cache=writeback,target=/img/g.img").cache == .writeback)
        for bad in ["file:/img/g.img,xvda,w,cache=unsafe", "direct-io-safe,cache=writeback,vdev=xvda,target=/x"] {
            #expect(throws: DiskSpecError.self, "\(bad)") { _ = try DiskSpec(parsing: bad) }
        }
        // Kept through the SXP xm hands xend.
        let c = try DomainConfiguration(parsing: "name = 'k'\nkernel = '/k'\ndisk = ['file:/img/g.img,xvda,w,cache=direct']\n", file: "k.cfg")
        let back = try DomainConfiguration(sxp: c.toSXP(), file: "s")
        #expect(back.disks == c.disks && back.disks[0].cache == .direct)
    }

    @Test func xendConfigBlkbackCache() throws {
        #expect(XendConfig().blkbackCache == .writeback)
        #expect(try XendConfig(parsing: "(blkback-cache direct)\n", file: "x.sxp").blkbackCache == .direct)
        #expect(throws: ConfigError.self) { _ = try XendConfig(parsing: "(blkback-cache none)\n", file: "x.sxp") }
    }
}

import XendAPI
import Foundation
import Testing
@testable import XM

/// `xm save` / `xm restore` check their arguments and files before asking xend (Xen 3.x
/// main.py's words), so these need no xend.
@Test func saveAndRestoreCheckArgumentsAndFilesFirst() {
    let root = NSTemporaryDirectory() + "xm-save-test-\(getpid())"
    func xm(_ args: String...) -> XM { let x = XM(paths: XenithPaths(root: root), cwd: "/"); _ = x.run(args); return x }
    #expect(xm("save", "dom").stderr == "Error: 'xm save' requires between 2 and 3 arguments.\n")
    #expect(xm("restore").stderr == "Error: 'xm restore' requires between 1 and 2 arguments.\n")
    #expect(xm("save", "dom", "/nonexistent-dir/f").stderr == "Error: xm save: Unable to create file /nonexistent-dir/f: /nonexistent-dir: No such file or directory\n")
    #expect(xm("restore", "/nonexistent.chk").stderr == "Error: xm restore: Unable to read file /nonexistent.chk: No such file or directory\n")
    #expect(xm("save", "-x", "dom", "/tmp/f").stderr == "Error: option -x not recognized\n")
    // Past the checks, the request goes to xend (absent here).
    #expect(xm("save", "-c", "dom", "/tmp/f").stderr == "Error: Unable to connect to xend: No such file or directory. Is xend running?\n")
    #expect(XM.lookup("sa") == "save" && XM.lookup("rest") == "restore")
    let help = xm("help", "save").stdout
    #expect(help.contains("Usage: xm save [-c] <Domain> <File>") && help.contains("--checkpoint"))
}

@Test func progressLineShowsBytesAndRate() {
    let t = TransferInfo(kind: "save", file: "/srv/web.chk", domain: "web", domid: 3, bytes: 3 << 20 | 1 << 19,
                         bytesPerSecond: 100 << 20, startTime: 0)
    #expect(XM.progressLine(verb: "Saving", t) == "Saving web to /srv/web.chk: 3.5 MiB, 100.0 MiB/s")
    var r = t; r.kind = "restore"; r.domain = ""
    #expect(XM.progressLine(verb: "Restoring", r) == "Restoring from /srv/web.chk: 3.5 MiB, 100.0 MiB/s")
}

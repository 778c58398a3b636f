// pciback: resets the PCI functions of one IOMMU group through VFIO, sandboxed, on the
// container and group descriptors xend opened (Sources/PciBack, DESIGN.md "Sandboxing").
// Glibc, PciBack and Sandbox only (no Foundation).
import PciBack
import Sandbox
#if canImport(Glibc)
import Glibc
#endif

func eprint(_ s: String) { var s = s + "\n"; s.withUTF8 { _ = write(2, $0.baseAddress, $0.count) } }

let usage = """
usage: pciback --reset BDF [--reset BDF ...] [--ready-fd 5] [--manifest FILE | --no-sandbox]

Resets PCI functions of one IOMMU group (VFIO_DEVICE_RESET) when they are given to a
domain and when they come back. It opens nothing: xend hands it
  fd 3  /dev/vfio/vfio (a new VFIO container)
  fd 4  /dev/vfio/N (the functions' IOMMU group)
and reads `ready` or `failed: REASON` on the readiness descriptor (--ready-fd).

Exit status: 0 when every function was reset; 3 when one was not (the reason on stderr and
the readiness channel); 1 for a usage error; 70 when the sandbox cannot be applied.
"""

var devices: [String] = []
var manifestArg: String?
var noSandbox = false
var argv = ServiceReadiness.adopt(fromArguments: Array(CommandLine.arguments.dropFirst()), program: "pciback")
var args = ServiceArguments(program: "pciback", arguments: argv[...])
while let a = args.next() {
    switch a {
    case "--reset": devices.append(args.value(a))
    case "--manifest": manifestArg = args.value(a)
    case "--no-sandbox": noSandbox = true
    case "--help", "-h": eprint(usage); exit(0)
    default: args.fail("unknown argument \(a) (see --help)")
    }
}
if devices.isEmpty { args.fail("give --reset BDF (see --help)") }
for d in devices where d.utf8.count != 12 || !d.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) || $0 == 0x3A || $0 == 0x2E }) {
    args.fail("--reset \(d): expected a PCI address DDDD:BB:SS.F")
}
let manifestPath: String? = noSandbox ? nil : (manifestArg ?? ServiceManifest.locateOrExit("pciback.manifest", program: "pciback"))
for (fd, role) in [(Int32(3), "VFIO container (fd 3)"), (4, "VFIO group (fd 4)")] where fcntl(fd, F_GETFD) < 0 {
    args.fail("the \(role) was not handed to this process")
}
if let manifestPath { _ = Sandbox.applyOrExit(manifestPath: manifestPath) }

let group = VfioGroup(container: 3, group: 4)
do throws(VfioError) {
    try group.attach()
    for d in devices {
        let fd = try group.device(d)
        defer { close(fd) }
        try VfioGroup.reset(fd, name: d)
    }
    ServiceReadiness.ready("reset \(devices.joined(separator: " "))")
    exit(0)
} catch {
    eprint("pciback: \(error.message)")
    ServiceReadiness.failed(error.message)
    exit(3)
}

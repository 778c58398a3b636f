// xm: manage Xenith domains (Xen 3.x's xm). All logic is in the XM module.
import XM
#if canImport(Glibc)
import Glibc
#endif

let xm = XM()
let status = xm.run(Array(CommandLine.arguments.dropFirst()))
xm.flush()
exit(status)

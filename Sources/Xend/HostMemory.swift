// Whether the host can give a new domain its memory (Xen's balloon.free at create), with
// xend-config's dom0-min-mem: the MiB Domain-0 (here: the host) keeps for itself.
import Foundation

enum HostMemory {
    /// Checks that `needMiB` fits in the host's available memory (`freeKiB`, MemAvailable)
    /// and leaves at least `dom0MinMemMiB` MiB to the host (0: no reserve).
    /// - Throws: `XendError` 503 in Xen 3.0's words (tools/python/xen/xend/balloon.py):
    ///   `Not enough free memory and dom0_min_mem is 0, ...` without a reserve,
    ///   `I need N MiB, but dom0_min_mem is M and shrinking to M MiB would leave only F MiB free.`
    ///   with one.
    static func check(needMiB: Int, freeKiB: Int, dom0MinMemMiB: Int) throws(XendError) {
        let needKiB = needMiB * 1024
        if dom0MinMemMiB == 0 {
            if needKiB > freeKiB {
                throw XendError(.unavailable, "Not enough free memory and dom0_min_mem is 0, so I cannot release any more.  I need \(needKiB) KiB but only have \(freeKiB) KiB (lower the domain's memory, or stop other domains).")
            }
            return
        }
        let freeMiB = freeKiB / 1024
        if freeMiB - needMiB < dom0MinMemMiB {
            throw XendError(.unavailable, "I need \(needMiB) MiB, but dom0_min_mem is \(dom0MinMemMiB) and shrinking to \(dom0MinMemMiB) MiB would leave only \(max(0, freeMiB - dom0MinMemMiB)) MiB free.")
        }
    }
}

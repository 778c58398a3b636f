// The exclusive lock on a disk image during a live migration (issue 13 item 4). The lock is
// the flock on the open file description xend opened and handed to blkback (BlockDevices.swift),
// so xend moves it without a word to blkback: the target's blkback starts on an image opened
// but not locked; at switch-over the source releases its lock, the target takes it, and if
// the target fails the source takes it back before the guest runs again. Two hosts that see
// the same image file (two xends on one machine, a shared file system with flock) thereby
// never both hold it and never both run the guest's writes.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

extension BlockSupervisor {
    /// The lock mode a vbd holds: exclusive for `w`, shared for `r`, none for `w!`.
    private static func lockMode(_ b: Backend) -> Int32? {
        b.spec.access == .readWriteShared ? nil : (b.spec.writable ? LOCK_EX : LOCK_SH)
    }

    /// Source side, at switch-over (the guest is stopped): releases every image lock of
    /// domain `domid`; blkback keeps its descriptors.
    func releaseLocks(_ domid: Int) {
        for b in backendList(domid) where Self.lockMode(b) != nil && !b.lockDeferred && b.imageFD >= 0 {
            flock(b.imageFD, LOCK_UN)
            b.lockDeferred = true
            log.info("\(b.label): image lock released for the migration's switch-over")
        }
    }

    /// Takes every image lock of domain `domid` that is not held: the target at switch-over,
    /// or the source taking its locks back after a failed migration. Non-blocking.
    /// - Throws: `XendError` 409 naming the image another host still holds; locks taken by
    ///   this call are released again then.
    func takeLocks(_ domid: Int) throws(XendError) {
        var taken: [Backend] = []
        for b in backendList(domid) where b.lockDeferred && b.imageFD >= 0 {
            guard let mode = Self.lockMode(b) else { continue }
            if flock(b.imageFD, mode | LOCK_NB) != 0 {
                let why = String(cString: strerror(errno))
                for t in taken { flock(t.imageFD, LOCK_UN); t.lockDeferred = true }
                throw XendError(.conflict, "Device \(b.spec.vdev) (vbd): cannot lock \(b.spec.path ?? b.spec.uname): \(why) (still in use by another back-end)")
            }
            b.lockDeferred = false
            taken.append(b)
        }
    }
}

// qcow2 discard and write-zeroes: whole clusters are unmapped (their L2 entry cleared, or
// set to the zero flag in version 3 where the cluster must read as zeros), a barrier, then
// their refcounts dropped and the host space punched out; partial clusters are left alone
// (discard) or written with zeros (write-zeroes).
#if canImport(Glibc)
import Glibc
#endif

extension Qcow2Image {
    public func discard(offset: UInt64, length: UInt64) -> Bool {
        guard !readOnly, offset <= size, length <= size - offset else { return false }
        return locked {
            do {
                // A discarded cluster may read as anything; with a backing image, version 3
                // marks it zero so the old backing data does not come back.
                try unmap(offset: offset, length: length, zero: header.version >= 3 && backing != nil, partial: false)
                return true
            } catch { return false }
        }
    }

    public func writeZeroes(offset: UInt64, length: UInt64, unmap _: Bool) -> Bool {
        guard !readOnly, offset <= size, length <= size - offset else { return false }
        return locked {
            do {
                // Without a zero flag (version 2) an unmapped cluster only reads as zeros
                // when there is no backing image; otherwise zeros are written.
                if header.version >= 3 || backing == nil {
                    try unmap(offset: offset, length: length, zero: header.version >= 3, partial: true)
                } else {
                    try writeZeroBytes(offset: offset, length: length)
                }
                return true
            } catch { return false }
        }
    }

    /// Unmaps the whole clusters of `[offset, offset+length)` (L2 entry 0, or the zero
    /// flag when `zero`); with `partial`, writes zeros into the partial ones at the ends.
    func unmap(offset: UInt64, length: UInt64, zero: Bool, partial: Bool) throws(RequestError) {
        let end = offset + length
        let first = (offset + cs - 1) / cs, last = end / cs      // whole clusters [first, last)
        if partial {
            if first >= last { try writeZeroBytes(offset: offset, length: length); return }
            if offset < first * cs { try writeZeroBytes(offset: offset, length: first * cs - offset) }
            if end > last * cs { try writeZeroBytes(offset: last * cs, length: end - last * cs) }
        }
        guard first < last else { return }
        var freed: [UInt64] = []
        var vc = first
        while vc < last {
            let l1i = Int(vc / header.l2Entries)
            guard l1i < l1.count else { throw RequestError(why: "cluster \(vc) is beyond the L1 table") }
            var l2o = l1[l1i] & Self.offsetMask
            if l2o == 0 {
                if !zero { vc = UInt64(l1i + 1) * header.l2Entries; continue }
                l2o = try ensureL2(vc)
            } else if l1[l1i] & Self.copied == 0 { throw RequestError(why: "L2 table \(l1i) is shared") }
            let e = try l2Table(l2o)[Int(vc % header.l2Entries)]
            if e & Self.compressed != 0 { throw RequestError(why: "cluster \(vc) is compressed") }
            let h = e & Self.offsetMask
            let want: UInt64 = zero ? Self.zeroFlag : 0
            if h != 0 {
                guard e & Self.copied != 0 else { throw RequestError(why: "cluster \(vc) is shared") }
                try checkData(h, vc)
                try setL2(l2o, vc, want)
                freed.append(h)
            } else if e != want {
                try setL2(l2o, vc, want)
            }
            vc += 1
        }
        guard !freed.isEmpty else { return }
        // The entries are gone before the refcounts drop: a crash in between leaks.
        try barrier()
        for h in freed {
            let c = h / cs
            let r = try refcount(c)
            guard r > 0 else { throw RequestError(why: "cluster at \(h) in use with refcount 0") }
            try setRefcount(c, r - 1)
            if r == 1, let fa = fallocateFn { _ = fa(fd, Falloc.punchHole | Falloc.keepSize, Int(h), Int(cs)) }
        }
    }

    /// Writes zeros over `[offset, offset+length)` through the write path.
    func writeZeroBytes(offset: UInt64, length: UInt64) throws(RequestError) {
        let chunk = Int(min(length, 1 << 20))
        let zeros = UnsafeMutableRawPointer.allocate(byteCount: max(chunk, 1), alignment: 4096)
        defer { zeros.deallocate() }
        memset(zeros, 0, max(chunk, 1))
        var off = offset
        while off < offset + length {
            let n = Int(min(UInt64(chunk), offset + length - off))
            var iov = iovec(iov_base: zeros, iov_len: n)
            try write(IOVList(&iov, count: 1), offset: off, total: n)
            off += UInt64(n)
        }
    }
}

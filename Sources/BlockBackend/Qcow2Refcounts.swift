// qcow2 cluster refcounts (qcow2.txt "Cluster refcounts"): a refcount table of pointers to
// refcount blocks of 16-bit big-endian counts, one per host cluster. New refcount blocks
// and a larger, moved refcount table are allocated at the end of the file; a block is
// written before the table entry pointing at it, a new table (and a barrier) before the
// header points at it, and the old table is freed last.
#if canImport(Glibc)
import Glibc
#endif

extension Qcow2Image {
    /// The refcount block at host offset `o`.
    func refBlock(_ o: UInt64) throws(RequestError) -> [UInt16] {
        if let b = refBlocks[o] { return b }
        var b = [UInt8](repeating: 0, count: Int(cs))
        guard Qcow2IO.read(fd, &b, at: o) == b.count else { throw RequestError(why: "cannot read refcount block at \(o)") }
        let t = (0..<Int(cs / 2)).map { UInt16(b[2 * $0]) << 8 | UInt16(b[2 * $0 + 1]) }
        account(Int(cs))
        refBlocks[o] = t
        return t
    }

    /// The refcount of host cluster `c` (0 when its block does not exist).
    func refcount(_ c: UInt64) throws(RequestError) -> UInt16 {
        let epb = header.refcountBlockEntries
        let ti = Int(c / epb)
        guard ti < refTable.count, refTable[ti] != 0 else { return 0 }
        return try refBlock(refTable[ti])[Int(c % epb)]
    }

    /// Sets the refcount of host cluster `c`, allocating its refcount block (and growing
    /// the refcount table) when needed.
    func setRefcount(_ c: UInt64, _ v: UInt16) throws(RequestError) {
        let epb = header.refcountBlockEntries
        let ti = Int(c / epb)
        if ti >= refTable.count {
            guard !growingTable else { throw RequestError(why: "refcount table growth did not cover cluster \(c)") }
            try growTable(covering: ti)
        }
        var b = refTable[ti]
        if b == 0 { b = try newBlock(ti) }
        _ = try refBlock(b)                                   // cached from here on
        let i = Int(c % epb)
        refBlocks[b]![i] = v                                  // in place: no copy of the block
        guard Qcow2IO.write(fd, Qcow2IO.be16(v), at: b + UInt64(i) * 2) else { throw RequestError(why: "cannot write a refcount") }
    }

    /// Allocates the refcount block for table entry `ti`: written (counting itself when it
    /// falls in its own range), refcounted, then linked from the table.
    func newBlock(_ ti: Int) throws(RequestError) -> UInt64 {
        let epb = header.refcountBlockEntries
        let o = try reserve()
        let own = o / cs
        var blk = [UInt16](repeating: 0, count: Int(epb))
        if Int(own / epb) == ti { blk[Int(own % epb)] = 1 }
        var bytes = [UInt8](repeating: 0, count: Int(cs))
        for (i, v) in blk.enumerated() where v != 0 { bytes[2 * i] = UInt8(v >> 8); bytes[2 * i + 1] = UInt8(v & 0xff) }
        guard Qcow2IO.write(fd, bytes, at: o) else { throw RequestError(why: "cannot write a refcount block") }
        refcountBlocks.insert(o)
        account(Int(cs))
        refBlocks[o] = blk
        if Int(own / epb) != ti { try setRefcount(own, 1) }
        refTable[ti] = o
        if !growingTable {
            guard Qcow2IO.write(fd, Qcow2IO.be64(o), at: refTableOffset + UInt64(ti) * 8) else { throw RequestError(why: "cannot write a refcount table entry") }
        }
        return o
    }

    /// Moves the refcount table to a larger one at the end of the file that covers entry
    /// `ti`, the new table itself and the blocks counting it.
    func growTable(covering ti: Int) throws(RequestError) {
        let epb = header.refcountBlockEntries
        var clusters = max(refTableClusters * 2, 1)
        while true {
            let entries = clusters * cs / 8
            let lastCluster = fileEnd / cs + clusters + 8
            if UInt64(ti) < entries && lastCluster / epb < entries { break }
            clusters *= 2
        }
        guard clusters * cs <= Qcow2Header.maxRefcountTableBytes else { throw RequestError(why: "refcount table would exceed \(Qcow2Header.maxRefcountTableBytes) bytes") }
        let newOffset = try reserve(clusters)
        let oldOffset = refTableOffset, oldClusters = refTableClusters
        growingTable = true
        defer { growingTable = false }
        refTable += [UInt64](repeating: 0, count: Int(clusters * cs / 8) - refTable.count)
        for k in 0..<clusters { try setRefcount(newOffset / cs + k, 1) }
        var bytes = [UInt8](repeating: 0, count: Int(clusters * cs))
        for (i, e) in refTable.enumerated() where e != 0 { bytes.replaceSubrange(i * 8..<i * 8 + 8, with: Qcow2IO.be64(e)) }
        guard Qcow2IO.write(fd, bytes, at: newOffset) else { throw RequestError(why: "cannot write the new refcount table") }
        try barrier()
        guard Qcow2IO.write(fd, Qcow2IO.be64(newOffset) + Qcow2IO.be32(UInt32(clusters)), at: 48) else {
            throw RequestError(why: "cannot write the header")
        }
        try barrier()
        refTableOffset = newOffset
        refTableClusters = clusters
        growingTable = false
        for k in 0..<oldClusters { try setRefcount(oldOffset / cs + k, 0) }
    }
}

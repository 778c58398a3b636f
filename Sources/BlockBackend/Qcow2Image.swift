// A qcow2 image (QEMU docs/interop/qcow2.txt) served as a BlockStorage: guest offsets are
// mapped through the L1 and L2 tables to host clusters; unallocated clusters read from the
// backing image (or as zeros); writes allocate clusters at the end of the file. Metadata is
// written through (no write-back cache), in an order that leaves at worst a leaked cluster
// after a crash: data, then refcounts, a barrier (fdatasync), then the L2 entry (and, for a
// new L2 table, the table, its refcount, a barrier, then the L1 entry). Refcounts are in
// Qcow2Refcounts.swift, discard and write-zeroes in Qcow2Discard.swift.
//
// Every value read from the file is untrusted: a table pointer that is misaligned, outside
// the file or on top of other metadata is refused when the image is opened (L1 and refcount
// table entries) or fails the request that meets it (L2 entries, with IOERR).
#if canImport(Glibc)
import Glibc
#endif

/// A qcow2 image (versions 2 and 3) open on a descriptor; reads, writes with cluster
/// allocation, discard and write-zeroes; a read-only backing image under it.
/// Compressed clusters and internal snapshots are not served (a request touching a
/// compressed cluster fails with IOERR; an image with snapshots opens read-only only).
public final class Qcow2Image: BlockStorage, @unchecked Sendable {
    /// The image file (owned: closed on deinit).
    public let fd: Int32
    public let header: Qcow2Header
    public let readOnly: Bool
    public var size: UInt64 { header.size }
    public let logicalBlockSize: UInt32 = 512
    /// The image under this one (read-only), nil when none.
    public let backing: (any BlockStorage)?

    // L1/L2 entry bits (qcow2.txt "Cluster mapping").
    static let offsetMask: UInt64 = 0x00ff_ffff_ffff_fe00
    static let copied: UInt64 = 1 << 63
    static let compressed: UInt64 = 1 << 62
    static let zeroFlag: UInt64 = 1

    let cs: UInt64
    let clusterBits: UInt64
    var l1: [UInt64]
    var l2Cache: [UInt64: [UInt64]] = [:]
    var refTable: [UInt64]
    var refTableOffset: UInt64
    var refTableClusters: UInt64
    var refBlocks: [UInt64: [UInt16]] = [:]
    /// Offsets of the L2 tables and refcount blocks in use (data must never land there).
    var l2Tables: Set<UInt64> = []
    var refcountBlocks: Set<UInt64> = []
    /// The next free host offset (cluster-aligned end of the file): where clusters are
    /// allocated.
    var fileEnd: UInt64
    /// While the refcount table is being moved: entries are written with the whole table.
    var growingTable = false
    /// Cached tables beyond this many bytes are dropped (blkback's data limit is 256 MiB).
    let cacheLimit = 32 << 20
    var cachedBytes = 0
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>

    /// An error inside one request (the request then fails with IOERR).
    struct RequestError: Error { let why: String }

    /// Opens the qcow2 image on `fd` (taking ownership of `fd` only on success).
    /// - Parameters:
    ///   - backing: the image named by the header's backing file, already opened
    ///     (read-only); required when the header names one unless `ignoringBacking`.
    ///   - ignoringBacking: serve without the backing image and change nothing in the file
    ///     (only for the error server, which never reads or writes).
    /// - Throws: ``BlockBackendError`` from ``Qcow2Header``, or naming an L1 or refcount
    ///   table entry that is misaligned, outside the file or overlapping other metadata,
    ///   or a missing backing image.
    public init(fd: Int32, readOnly: Bool, backing: (any BlockStorage)? = nil, ignoringBacking: Bool = false) throws(BlockBackendError) {
        // The error server (ignoringBacking) only reports the size: it writes nothing.
        let h = try Qcow2Header(fd: fd, writable: !readOnly && !ignoringBacking)
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .errno("qcow2 image") }
        let cs = h.clusterSize
        let end = (UInt64(max(0, st.st_size)) + cs - 1) / cs * cs
        if h.backingFile != nil && backing == nil && !ignoringBacking {
            throw BlockBackendError("qcow2: backing file \(h.backingFile!) was not handed over")
        }
        if h.backingFile == nil && backing != nil { throw BlockBackendError("qcow2: a backing image was handed over but the image names none") }
        func bad(_ s: String) -> BlockBackendError { BlockBackendError("qcow2: \(s)") }
        // Fixed metadata: header cluster, L1 table, refcount table.
        let l1Range = h.l1TableOffset..<(h.l1TableOffset + (UInt64(h.l1Size) * 8 + cs - 1) / cs * cs)
        let rtRange = h.refcountTableOffset..<(h.refcountTableOffset + UInt64(h.refcountTableClusters) * cs)
        func checkTable(_ o: UInt64, _ what: String) throws(BlockBackendError) {
            guard o % cs == 0 else { throw bad("\(what) at \(o) is not cluster-aligned") }
            guard o < end, cs <= end - o else { throw bad("\(what) at \(o) is outside the file (\(end) bytes)") }
            guard o >= cs, !l1Range.contains(o), !rtRange.contains(o) else { throw bad("\(what) at \(o) overlaps the header, the L1 table or the refcount table") }
        }
        var l1Bytes = [UInt8](repeating: 0, count: Int(h.l1Size) * 8)
        if !l1Bytes.isEmpty {
            guard Qcow2IO.read(fd, &l1Bytes, at: h.l1TableOffset) == l1Bytes.count else { throw bad("cannot read the L1 table") }
        }
        var l1: [UInt64] = []
        l1.reserveCapacity(Int(h.l1Size))
        var l2s: Set<UInt64> = []
        for i in 0..<Int(h.l1Size) {
            let e = Qcow2Header.be64(l1Bytes, i * 8)
            let o = e & Self.offsetMask
            if o != 0 {
                try checkTable(o, "L2 table \(i)")
                guard l2s.insert(o).inserted else { throw bad("L2 table at \(o) is used twice") }
            }
            l1.append(e)
        }
        var rtBytes = [UInt8](repeating: 0, count: Int(h.refcountTableClusters) * Int(cs))
        guard Qcow2IO.read(fd, &rtBytes, at: h.refcountTableOffset) == rtBytes.count else { throw bad("cannot read the refcount table") }
        var rt: [UInt64] = []
        var rbs: Set<UInt64> = []
        for i in 0..<(rtBytes.count / 8) {
            let o = Qcow2Header.be64(rtBytes, i * 8) & ~UInt64(0x1ff)
            if o != 0 {
                try checkTable(o, "refcount block \(i)")
                guard !l2s.contains(o), rbs.insert(o).inserted else { throw bad("refcount block at \(o) overlaps other metadata") }
            }
            rt.append(o)
        }
        if !readOnly && !ignoringBacking && h.version == 3 && h.autoclearFeatures != 0 {
            // qcow2.txt: a writer that does not know an autoclear feature must clear it.
            guard Qcow2IO.write(fd, Qcow2IO.be64(0), at: 88) else { throw .errno("qcow2 header") }
        }
        self.fd = fd; self.header = h; self.readOnly = readOnly; self.backing = backing
        self.cs = cs; self.clusterBits = UInt64(h.clusterBits)
        self.l1 = l1; self.l2Tables = l2s; self.refTable = rt; self.refcountBlocks = rbs
        self.refTableOffset = h.refcountTableOffset; self.refTableClusters = UInt64(h.refcountTableClusters)
        self.fileEnd = end
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        close(fd)
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    func locked<T>(_ body: () -> T) -> T {
        pthread_mutex_lock(mutex); defer { pthread_mutex_unlock(mutex) }
        return body()
    }

    // MARK: metadata

    /// Whether host cluster `o` is fixed metadata, an L2 table or a refcount block.
    func isMetadata(_ o: UInt64) -> Bool {
        if o < cs { return true }
        let l1Start = header.l1TableOffset, l1End = l1Start + (UInt64(header.l1Size) * 8 + cs - 1) / cs * cs
        if o >= l1Start && o < l1End { return true }
        if o >= refTableOffset && o < refTableOffset + refTableClusters * cs { return true }
        return l2Tables.contains(o) || refcountBlocks.contains(o)
    }

    /// Drops every cached table when the cache grew past its limit.
    func account(_ bytes: Int) {
        cachedBytes += bytes
        if cachedBytes > cacheLimit { l2Cache.removeAll(); refBlocks.removeAll(); cachedBytes = bytes }
    }

    /// The L2 table at host offset `o` (checked when the L1 entry was read or written).
    func l2Table(_ o: UInt64) throws(RequestError) -> [UInt64] {
        if let t = l2Cache[o] { return t }
        var b = [UInt8](repeating: 0, count: Int(cs))
        guard Qcow2IO.read(fd, &b, at: o) == b.count else { throw RequestError(why: "cannot read L2 table at \(o)") }
        let t = (0..<Int(cs / 8)).map { Qcow2Header.be64(b, $0 * 8) }
        account(Int(cs))
        l2Cache[o] = t
        return t
    }

    /// Where guest cluster `vc` lives.
    enum Mapping { case unallocated, zero, data(UInt64) }

    func lookup(_ vc: UInt64) throws(RequestError) -> Mapping {
        let l1i = Int(vc / header.l2Entries)
        guard l1i < l1.count else { throw RequestError(why: "cluster \(vc) is beyond the L1 table") }
        let l2o = l1[l1i] & Self.offsetMask
        if l2o == 0 { return .unallocated }
        let e = try l2Table(l2o)[Int(vc % header.l2Entries)]
        if e & Self.compressed != 0 { throw RequestError(why: "cluster \(vc) is compressed (not supported)") }
        if header.version >= 3 && e & Self.zeroFlag != 0 { return .zero }
        let h = e & Self.offsetMask
        if h == 0 { return .unallocated }
        try checkData(h, vc)
        return .data(h)
    }

    /// A data cluster's host offset must be aligned, inside the file, not on metadata.
    func checkData(_ h: UInt64, _ vc: UInt64) throws(RequestError) {
        guard h % cs == 0, h < fileEnd, !isMetadata(h) else {
            throw RequestError(why: "cluster \(vc): L2 entry points at \(h), misaligned, outside the file or on metadata")
        }
    }

    /// Reserves `n` clusters at the end of the file; their refcounts are set by the caller.
    func reserve(_ n: UInt64 = 1) throws(RequestError) -> UInt64 {
        let o = fileEnd
        guard o + n * cs <= Qcow2Header.maxVirtualSize else { throw RequestError(why: "image file too large") }
        fileEnd += n * cs
        return o
    }

    func barrier() throws(RequestError) {
        guard fdatasync(fd) == 0 else { throw RequestError(why: "fdatasync: \(String(cString: strerror(errno)))") }
    }

    /// The L2 table covering guest cluster `vc`, allocated (zeroed, refcounted, a barrier,
    /// then linked from the L1 table) when there is none.
    func ensureL2(_ vc: UInt64) throws(RequestError) -> UInt64 {
        let l1i = Int(vc / header.l2Entries)
        guard l1i < l1.count else { throw RequestError(why: "cluster \(vc) is beyond the L1 table") }
        let e = l1[l1i]
        let o = e & Self.offsetMask
        if o != 0 {
            guard e & Self.copied != 0 else { throw RequestError(why: "L2 table \(l1i) is shared with a snapshot") }
            return o
        }
        let n = try reserve()
        let zeros = [UInt8](repeating: 0, count: Int(cs))
        guard Qcow2IO.write(fd, zeros, at: n) else { throw RequestError(why: "cannot write a new L2 table") }
        try setRefcount(n / cs, 1)
        try barrier()
        let ne = n | Self.copied
        guard Qcow2IO.write(fd, Qcow2IO.be64(ne), at: header.l1TableOffset + UInt64(l1i) * 8) else { throw RequestError(why: "cannot write L1 entry \(l1i)") }
        l1[l1i] = ne
        l2Tables.insert(n)
        account(Int(cs))
        l2Cache[n] = [UInt64](repeating: 0, count: Int(header.l2Entries))
        return n
    }

    /// Writes L2 entry `vc` of the table at `l2o`.
    func setL2(_ l2o: UInt64, _ vc: UInt64, _ e: UInt64) throws(RequestError) {
        let i = vc % header.l2Entries
        guard Qcow2IO.write(fd, Qcow2IO.be64(e), at: l2o + i * 8) else { throw RequestError(why: "cannot write an L2 entry") }
        if l2Cache[l2o] != nil { l2Cache[l2o]![Int(i)] = e }
    }

    // MARK: reads

    /// Reads `n` bytes of the backing image at guest offset `off` into `dst` (zeros past
    /// its end or without one).
    func readBacking(_ dst: [iovec], at off: UInt64, count n: Int) -> Bool {
        let list = dst
        guard let b = backing, off < b.size else {
            for e in list { memset(e.iov_base, 0, e.iov_len) }
            return true
        }
        let inside = Int(min(UInt64(n), b.size - off))
        var v = list
        let l = IOVList(&v, count: v.count)
        if inside < n { l.zero(from: inside, length: n - inside) }
        var part = l.slice(from: 0, length: inside)
        if part.isEmpty { return true }
        return b.readv(&part, count: part.count, offset: off, total: inside)
    }

    /// Reads `n` bytes of host offset `h` into `dst`; past the end of the file reads zeros.
    func readHost(_ dst: [iovec], at h: UInt64, count n: Int) -> Bool {
        var v = dst
        var done = 0
        let l = IOVList(&v, count: v.count)
        while done < n {
            var part = l.slice(from: done, length: n - done)
            let r = preadv(fd, &part, Int32(min(part.count, 1024)), off_t(h + UInt64(done)))
            if r < 0 { if errno == EINTR { continue }; return false }
            if r == 0 { l.zero(from: done, length: n - done); return true }
            done += r
        }
        return true
    }

    public func readv(_ iov: UnsafeMutablePointer<iovec>, count: Int, offset: UInt64, total: Int) -> Bool {
        guard offset <= size, UInt64(total) <= size - offset else { return false }
        let list = IOVList(iov, count: count)
        return locked {
            var pos = 0
            while pos < total {
                let g = offset + UInt64(pos)
                let vc = g >> clusterBits, intra = g & (cs - 1)
                let n = Int(min(cs - intra, UInt64(total - pos)))
                let part = list.slice(from: pos, length: n)
                do {
                    switch try lookup(vc) {
                    case .zero: list.zero(from: pos, length: n)
                    case .unallocated: guard readBacking(part, at: g, count: n) else { return false }
                    case .data(let h): guard readHost(part, at: h + intra, count: n) else { return false }
                    }
                } catch { return false }
                pos += n
            }
            return true
        }
    }

    // MARK: writes

    public func writev(_ iov: UnsafeMutablePointer<iovec>, count: Int, offset: UInt64, total: Int) -> Bool {
        guard !readOnly, offset <= size, UInt64(total) <= size - offset else { return false }
        let list = IOVList(iov, count: count)
        return locked {
            do { try write(list, offset: offset, total: total); return true } catch { return false }
        }
    }

    /// Writes request bytes `[0, total)` of `list` at guest offset `offset`: in place where
    /// the cluster is allocated; into new clusters otherwise (whole clusters: the part not
    /// written comes from the backing image or zeros), whose refcounts are then set, a
    /// barrier, then their L2 entries.
    func write(_ list: IOVList, offset: UInt64, total: Int) throws(RequestError) {
        var pending: [(l2: UInt64, vc: UInt64, host: UInt64)] = []
        var pos = 0
        while pos < total {
            let g = offset + UInt64(pos)
            let vc = g >> clusterBits, intra = g & (cs - 1)
            let n = Int(min(cs - intra, UInt64(total - pos)))
            let l2o = try ensureL2(vc)
            let e = try l2Table(l2o)[Int(vc % header.l2Entries)]
            if e & Self.compressed != 0 { throw RequestError(why: "cluster \(vc) is compressed") }
            let h = e & Self.offsetMask
            let zero = header.version >= 3 && e & Self.zeroFlag != 0
            if h != 0 {
                guard e & Self.copied != 0 else { throw RequestError(why: "cluster \(vc) is shared") }
                try checkData(h, vc)
                if !zero {
                    var part = list.slice(from: pos, length: n)
                    guard BlockImage.transferAll(fd: fd, &part, count: part.count, offset: h + intra, total: n, write: true) else {
                        throw RequestError(why: "write failed")
                    }
                } else {
                    // A preallocated zero cluster: write it whole, then clear the flag.
                    try writeWhole(list, pos: pos, intra: intra, n: n, to: h, background: nil)
                    try setL2(l2o, vc, h | Self.copied)
                }
            } else {
                let nh = try reserve()
                try writeWhole(list, pos: pos, intra: intra, n: n, to: nh, background: zero ? nil : g - intra)
                pending.append((l2o, vc, nh))
            }
            pos += n
        }
        // A failure from here leaves clusters leaked (refcount 1, no reference) or
        // unreferenced with refcount 0: never a cluster in use with a refcount of 0.
        if pending.isEmpty { return }
        for p in pending { try setRefcount(p.host / cs, 1) }
        try barrier()
        for p in pending { try setL2(p.l2, p.vc, p.host | Self.copied) }
    }

    /// Writes a whole cluster at host `h`: request bytes `[pos, pos+n)` at `intra`, the
    /// rest from the backing image at guest offset `background` (zeros when nil).
    func writeWhole(_ list: IOVList, pos: Int, intra: UInt64, n: Int, to h: UInt64, background: UInt64?) throws(RequestError) {
        if UInt64(n) == cs {
            var part = list.slice(from: pos, length: n)
            guard BlockImage.transferAll(fd: fd, &part, count: part.count, offset: h, total: n, write: true) else { throw RequestError(why: "write failed") }
            return
        }
        let buf = UnsafeMutableRawPointer.allocate(byteCount: Int(cs), alignment: 4096)
        defer { buf.deallocate() }
        memset(buf, 0, Int(cs))
        if let bg = background, backing != nil {
            guard readBacking([iovec(iov_base: buf, iov_len: Int(cs))], at: bg, count: Int(cs)) else { throw RequestError(why: "backing read failed") }
        }
        list.copyOut(from: pos, length: n, to: buf + Int(intra))
        guard Qcow2IO.write(fd, buf, count: Int(cs), at: h) else { throw RequestError(why: "write failed") }
    }

    /// fdatasync: every write (data and metadata, written through) becomes durable.
    public func flush() -> Bool { readOnly || fdatasync(fd) == 0 }
}

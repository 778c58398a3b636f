// The qcow2 header (QEMU docs/interop/qcow2.txt, "Header" and "Header extensions"), read
// from an untrusted file and checked before anything else looks at the image: every size
// and offset is bounded, every table must lie inside the file, aligned, without overlapping
// another one. Versions 2 and 3; cluster sizes 512 B to 2 MiB; 16-bit refcounts.
#if canImport(Glibc)
import Glibc
#endif

/// A checked qcow2 header. Offsets are in bytes from the start of the file.
public struct Qcow2Header: Sendable, Equatable {
    /// "QFI\xfb".
    public static let magic: UInt32 = 0x5146_49fb
    /// Largest L1 table accepted (entries): 32 MiB of table, as QEMU's limit.
    public static let maxL1Entries: UInt64 = 4 << 20
    /// Largest refcount table accepted, in bytes (8 MiB, QEMU's limit).
    public static let maxRefcountTableBytes: UInt64 = 8 << 20
    /// Largest virtual size accepted (2^56 bytes: the offset field width of an L2 entry).
    public static let maxVirtualSize: UInt64 = 1 << 56
    /// Header extension types (qcow2.txt "Header extensions").
    static let extBackingFormat: UInt32 = 0xE279_2ACA
    static let extExternalData: UInt32 = 0x4441_5441
    static let extEncryption: UInt32 = 0x0537_BE77

    /// Incompatible feature bits (qcow2.txt, bytes 72-79).
    public enum Incompatible {
        public static let dirty: UInt64 = 1 << 0
        public static let corrupt: UInt64 = 1 << 1
        public static let externalData: UInt64 = 1 << 2
        public static let compressionType: UInt64 = 1 << 3
        public static let extendedL2: UInt64 = 1 << 4
    }

    public var version: UInt32
    public var backingFileOffset: UInt64
    public var backingFileSize: UInt32
    /// log2 of the cluster size, 9...21.
    public var clusterBits: UInt32
    /// Virtual disk size in bytes.
    public var size: UInt64
    public var cryptMethod: UInt32
    /// Entries in the active L1 table.
    public var l1Size: UInt32
    public var l1TableOffset: UInt64
    public var refcountTableOffset: UInt64
    public var refcountTableClusters: UInt32
    public var nbSnapshots: UInt32
    public var snapshotsOffset: UInt64
    public var incompatibleFeatures: UInt64 = 0
    public var compatibleFeatures: UInt64 = 0
    public var autoclearFeatures: UInt64 = 0
    /// log2 of the refcount width in bits (4: 16-bit, the only width supported).
    public var refcountOrder: UInt32 = 4
    /// Bytes of the fixed header (72 for version 2).
    public var headerLength: UInt32 = 72
    /// The backing file's name as stored (relative names are relative to this image's
    /// directory), nil when the image has none.
    public var backingFile: String?
    /// The backing file's format from the header extension (`raw`, `qcow2`), if recorded.
    public var backingFormat: String?

    public var clusterSize: UInt64 { 1 << UInt64(clusterBits) }
    /// Entries per L2 table (8-byte entries).
    public var l2Entries: UInt64 { clusterSize / 8 }
    /// Entries per refcount block (16-bit refcounts).
    public var refcountBlockEntries: UInt64 { clusterSize / 2 }

    static func be32(_ b: [UInt8], _ o: Int) -> UInt32 {
        UInt32(b[o]) << 24 | UInt32(b[o + 1]) << 16 | UInt32(b[o + 2]) << 8 | UInt32(b[o + 3])
    }
    static func be64(_ b: [UInt8], _ o: Int) -> UInt64 { UInt64(be32(b, o)) << 32 | UInt64(be32(b, o + 4)) }

    /// True when the first bytes of `fd` carry the qcow2 magic.
    public static func isQcow2(fd: Int32) -> Bool {
        var b = [UInt8](repeating: 0, count: 4)
        return Qcow2IO.read(fd, &b, at: 0) == 4 && be32(b, 0) == magic
    }

    /// Reads and checks the header of the image open at `fd`.
    /// - Parameter writable: the image will be written: a dirty or corrupt image, or one
    ///   with internal snapshots, is refused (for reading they are accepted where safe).
    /// - Throws: ``BlockBackendError`` naming the first problem: not qcow2, truncated,
    ///   unsupported version, cluster size or refcount width, encryption, external data
    ///   file, extended L2 entries, an unknown incompatible feature bit (by number), an L1 or
    ///   refcount table that is misaligned, too large, past the end of the file or
    ///   overlapping the header or the other table, a bad backing file name.
    public init(fd: Int32, writable: Bool) throws(BlockBackendError) {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .errno("qcow2 header") }
        let fileSize = UInt64(max(0, st.st_size))
        var b = [UInt8](repeating: 0, count: 4096)
        let got = Qcow2IO.read(fd, &b, at: 0)
        guard got >= 0 else { throw .errno("qcow2 header") }
        try self.init(bytes: Array(b.prefix(got)), fileSize: fileSize, writable: writable, fd: fd)
    }

    /// Parses a header from its first bytes (at least the first cluster, or the whole file
    /// if shorter) given the file's size; `fd` (optional) reads header extensions past
    /// the first 4 KiB of a larger cluster.
    public init(bytes b: [UInt8], fileSize: UInt64, writable: Bool, fd: Int32 = -1) throws(BlockBackendError) {
        func bad(_ s: String) -> BlockBackendError { BlockBackendError("qcow2: \(s)") }
        guard b.count >= 72 else { throw bad("truncated header (\(b.count) bytes, need 72)") }
        guard Self.be32(b, 0) == Self.magic else { throw bad("not a qcow2 image (bad magic)") }
        version = Self.be32(b, 4)
        guard version == 2 || version == 3 else { throw bad("version \(version) is not supported (2 or 3)") }
        backingFileOffset = Self.be64(b, 8)
        backingFileSize = Self.be32(b, 16)
        clusterBits = Self.be32(b, 20)
        guard (9...21).contains(clusterBits) else { throw bad("cluster_bits \(clusterBits) out of range (9...21)") }
        size = Self.be64(b, 24)
        cryptMethod = Self.be32(b, 32)
        l1Size = Self.be32(b, 36)
        l1TableOffset = Self.be64(b, 40)
        refcountTableOffset = Self.be64(b, 48)
        refcountTableClusters = Self.be32(b, 56)
        nbSnapshots = Self.be32(b, 60)
        snapshotsOffset = Self.be64(b, 64)
        if version == 3 {
            guard b.count >= 104 else { throw bad("truncated version 3 header (\(b.count) bytes, need 104)") }
            incompatibleFeatures = Self.be64(b, 72)
            compatibleFeatures = Self.be64(b, 80)
            autoclearFeatures = Self.be64(b, 88)
            refcountOrder = Self.be32(b, 96)
            headerLength = Self.be32(b, 100)
            guard headerLength >= 104, headerLength % 8 == 0, UInt64(headerLength) <= clusterSize else {
                throw bad("header_length \(headerLength) is invalid")
            }
        }
        let cs = clusterSize
        if cryptMethod != 0 {
            throw bad("the image is encrypted (\(cryptMethod == 1 ? "AES" : cryptMethod == 2 ? "LUKS" : "method \(cryptMethod)")); encrypted images are not supported")
        }
        let inc = incompatibleFeatures
        if inc & Incompatible.externalData != 0 { throw bad("the image uses an external data file (incompatible feature bit 2), which is not supported") }
        if inc & Incompatible.extendedL2 != 0 { throw bad("the image uses extended L2 entries (incompatible feature bit 4), which are not supported") }
        if inc & Incompatible.corrupt != 0 { throw bad("the image is marked corrupt (incompatible feature bit 1); repair it with qemu-img check -r all") }
        let known = Incompatible.dirty | Incompatible.corrupt | Incompatible.externalData | Incompatible.compressionType | Incompatible.extendedL2
        if inc & ~known != 0 {
            let bit = (inc & ~known).trailingZeroBitCount
            throw bad("unknown incompatible feature bit \(bit) is set")
        }
        if writable && inc & Incompatible.dirty != 0 {
            throw bad("the image is dirty (incompatible feature bit 0: lazy refcounts were in use and it was not closed cleanly); repair it with qemu-img check -r all")
        }
        guard refcountOrder == 4 else { throw bad("refcount_bits \(1 << min(refcountOrder, 31)) is not supported (16 only)") }
        if writable && nbSnapshots != 0 { throw bad("the image has \(nbSnapshots) internal snapshots; writing such an image is not supported") }
        guard size <= Self.maxVirtualSize else { throw bad("virtual size \(size) is too large") }

        // L1 table: large enough for the virtual size, bounded, aligned, inside the file.
        let perL1 = cs * l2Entries
        let needL1 = (size + perL1 - 1) / perL1
        guard UInt64(l1Size) >= needL1 else { throw bad("L1 table of \(l1Size) entries is too small for a \(size)-byte disk (needs \(needL1))") }
        guard UInt64(l1Size) <= Self.maxL1Entries else { throw bad("L1 table size \(l1Size) is too large") }
        let l1Bytes = UInt64(l1Size) * 8
        if l1Size > 0 {
            guard l1TableOffset % cs == 0, l1TableOffset != 0 else { throw bad("L1 table offset \(l1TableOffset) is not cluster-aligned") }
            guard l1TableOffset <= fileSize, l1Bytes <= fileSize - l1TableOffset else { throw bad("L1 table (offset \(l1TableOffset), \(l1Bytes) bytes) is past the end of the file (\(fileSize) bytes)") }
        }
        // Refcount table.
        let rtBytes = UInt64(refcountTableClusters) * cs
        guard refcountTableClusters > 0 else { throw bad("refcount table is empty") }
        guard rtBytes <= Self.maxRefcountTableBytes else { throw bad("refcount table of \(refcountTableClusters) clusters is too large") }
        guard refcountTableOffset % cs == 0, refcountTableOffset != 0 else { throw bad("refcount table offset \(refcountTableOffset) is not cluster-aligned") }
        guard refcountTableOffset <= fileSize, rtBytes <= fileSize - refcountTableOffset else {
            throw bad("refcount table (offset \(refcountTableOffset), \(rtBytes) bytes) is past the end of the file (\(fileSize) bytes)")
        }
        if l1Size > 0 {
            let l1End = l1TableOffset + (l1Bytes + cs - 1) / cs * cs
            if l1TableOffset < refcountTableOffset + rtBytes && refcountTableOffset < l1End {
                throw bad("L1 table and refcount table overlap")
            }
        }

        // Backing file name: inside the first cluster.
        if backingFileOffset != 0 {
            guard backingFileSize > 0, backingFileSize <= 1023, backingFileOffset < cs,
                  UInt64(backingFileSize) <= cs - backingFileOffset else {
                throw bad("backing file name (offset \(backingFileOffset), \(backingFileSize) bytes) is invalid")
            }
            let raw = try Self.bytes(b, fd: fd, at: backingFileOffset, count: Int(backingFileSize), bad)
            guard !raw.contains(0), let name = String(validating: raw, as: UTF8.self) else { throw bad("backing file name is not valid UTF-8") }
            backingFile = name
        }
        // Header extensions, up to the end of the first cluster.
        var off = UInt64(headerLength)
        while off + 8 <= cs {
            let h = try Self.bytes(b, fd: fd, at: off, count: 8, bad)
            let type = Self.be32(h, 0), len = UInt64(Self.be32(h, 4))
            if type == 0 { break }
            guard len <= cs - off - 8 else { throw bad("header extension 0x\(String(type, radix: 16)) runs past the first cluster") }
            switch type {
            case Self.extBackingFormat:
                guard len <= 64 else { throw bad("backing format extension is too long") }
                let f = try Self.bytes(b, fd: fd, at: off + 8, count: Int(len), bad)
                backingFormat = String(decoding: f, as: UTF8.self)
            case Self.extExternalData: throw bad("the image uses an external data file, which is not supported")
            case Self.extEncryption: throw bad("the image is encrypted; encrypted images are not supported")
            default: break
            }
            off += 8 + (len + 7) / 8 * 8
        }
    }

    /// `count` bytes at `at` from the header buffer, else from `fd`.
    static func bytes(_ b: [UInt8], fd: Int32, at: UInt64, count: Int, _ bad: (String) -> BlockBackendError) throws(BlockBackendError) -> [UInt8] {
        if at + UInt64(count) <= UInt64(b.count) { return Array(b[Int(at)..<Int(at) + count]) }
        guard fd >= 0 else { throw bad("header truncated at byte \(at)") }
        var out = [UInt8](repeating: 0, count: count)
        guard Qcow2IO.read(fd, &out, at: at) == count else { throw bad("header truncated at byte \(at)") }
        return out
    }
}

// A qcow2 image's chain of backing files. The supervisor (xend, or blkback itself before
// its sandbox when given a path) opens every file of the chain read-only with a shared lock
// (openBackingFiles); blkback, which opens nothing once sandboxed, stacks the handed
// descriptors into images (assemble).
#if canImport(Glibc)
import Glibc
#endif

/// Opening and stacking the backing chain of a qcow2 image.
public enum Qcow2Chain {
    /// Longest backing chain accepted (files under the top image).
    public static let maxDepth = 16

    /// One backing file, open read-only and share-locked.
    public struct BackingFile: Sendable {
        public let fd: Int32
        public let path: String
        /// `raw` or `qcow2`.
        public let format: String
    }

    /// The directory part of `path` (`.` when none).
    static func directory(_ path: String) -> String {
        guard let i = path.lastIndex(of: "/") else { return "." }
        return i == path.startIndex ? "/" : String(path[..<i])
    }

    /// The format of the file a qcow2 header names as backing: the header extension's.
    /// Without one, a file without the qcow2 magic is raw, and one with it is refused:
    /// bytes a guest may have written into a raw image must not make it read as a qcow2
    /// image that names further files for xend (root) to open.
    /// - Throws: ``BlockBackendError`` naming the file and the `qemu-img rebase -F` fix.
    static func format(_ h: Qcow2Header, _ fd: Int32, name: String, of namer: String) throws(BlockBackendError) -> String {
        if let f = h.backingFormat { return f }
        guard !Qcow2Header.isQcow2(fd: fd) else {
            throw BlockBackendError("backing file \(name) of \(namer) looks like qcow2 but \(namer) does not record its format; record it with: qemu-img rebase -u -b \(name) -F qcow2 \(namer)")
        }
        return "raw"
    }

    /// Opens the backing files of the qcow2 image at `imagePath` (open on `fd`), nearest
    /// first, each read-only with a shared lock; relative names are relative to the
    /// directory of the image naming them.
    /// - Returns: the open files (the caller owns the descriptors); empty when none.
    /// - Throws: ``BlockBackendError`` naming the file: missing or unreadable, a loop (a
    ///   file already in the chain), a chain deeper than ``maxDepth``, a format other than
    ///   raw or qcow2, a bad qcow2 header, a file locked read-write by another back-end.
    ///   Nothing stays open then.
    public static func openBackingFiles(imagePath: String, fd: Int32) throws(BlockBackendError) -> [BackingFile] {
        var files: [BackingFile] = []
        var ok = false
        defer { if !ok { for f in files { close(f.fd) } } }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .errno("image \(imagePath)") }
        var seen: Set<[UInt64]> = [[UInt64(st.st_dev), UInt64(st.st_ino)]]
        var header: Qcow2Header
        do { header = try Qcow2Header(fd: fd, writable: false) }
        catch { throw BlockBackendError("image \(imagePath): \(error.description)") }
        var namer = imagePath
        while let name = header.backingFile {
            let path = name.hasPrefix("/") ? name : directory(namer) + "/" + name
            guard files.count < maxDepth else { throw BlockBackendError("backing file \(path) of \(namer): the backing chain is deeper than \(maxDepth) files") }
            guard stat(path, &st) == 0 else { throw .errno("backing file \(path) of \(namer)") }
            let kind = st.st_mode & S_IFMT
            guard kind == S_IFREG || kind == S_IFBLK else { throw BlockBackendError("backing file \(path) of \(namer) is neither a regular file nor a block device") }
            guard seen.insert([UInt64(st.st_dev), UInt64(st.st_ino)]).inserted else {
                throw BlockBackendError("backing file \(path) of \(namer) makes a loop: it is already in the chain")
            }
            let bfd = open(path, O_RDONLY | O_CLOEXEC)
            guard bfd >= 0 else { throw .errno("backing file \(path) of \(namer)") }
            if flock(bfd, LOCK_SH | LOCK_NB) != 0 {
                close(bfd)
                throw BlockBackendError("backing file \(path) of \(namer) is in use read-write by another back-end")
            }
            let fmt: String
            do { fmt = try format(header, bfd, name: path, of: namer) } catch { close(bfd); throw error }
            files.append(BackingFile(fd: bfd, path: path, format: fmt))
            switch fmt {
            case "raw": ok = true; return files
            case "qcow2":
                do { header = try Qcow2Header(fd: bfd, writable: false) }
                catch { throw BlockBackendError("backing file \(path) of \(namer): \(error.description)") }
                namer = path
            default: throw BlockBackendError("backing file \(path) of \(namer): format \(fmt) is not supported (raw or qcow2)")
            }
        }
        ok = true
        return files
    }

    /// Stacks the qcow2 image on `top` over the backing descriptors `backing` (nearest
    /// first, as ``openBackingFiles(imagePath:fd:)`` returns them). Takes ownership of
    /// every descriptor on success.
    /// - Parameter ignoringBacking: open the top image alone (the error server).
    /// - Throws: ``BlockBackendError`` naming the layer (0 is the top image): a bad header,
    ///   a backing file named but not handed over, more descriptors than the chain names.
    public static func assemble(top: Int32, backing: [Int32], readOnly: Bool, ignoringBacking: Bool = false) throws(BlockBackendError) -> Qcow2Image {
        if ignoringBacking { return try Qcow2Image(fd: top, readOnly: readOnly, ignoringBacking: true) }
        // Formats, top down.
        var formats: [String] = []
        var h: Qcow2Header
        do { h = try Qcow2Header(fd: top, writable: !readOnly) } catch { throw BlockBackendError("image: \(error.description)") }
        for (i, fd) in backing.enumerated() {
            guard let name = h.backingFile else { throw BlockBackendError("backing fd \(fd): layer \(i) names no backing file") }
            let f = try format(h, fd, name: name, of: i == 0 ? "the image" : "layer \(i)")
            formats.append(f)
            if f == "qcow2" {
                do { h = try Qcow2Header(fd: fd, writable: false) } catch { throw BlockBackendError("backing file \(name): \(error.description)") }
            } else if f == "raw" {
                guard i == backing.count - 1 else { throw BlockBackendError("backing file \(name) is raw but more backing fds follow") }
                h.backingFile = nil
            } else { throw BlockBackendError("backing file \(name): format \(f) is not supported (raw or qcow2)") }
        }
        if let name = h.backingFile { throw BlockBackendError("backing file \(name) was not handed over (--backing-fd)") }
        // Images, bottom up.
        var below: (any BlockStorage)? = nil
        for (fd, f) in zip(backing, formats).reversed() {
            if f == "raw" { below = try BlockImage(fd: fd, readOnly: true) }
            else { below = try Qcow2Image(fd: fd, readOnly: true, backing: below) }
        }
        return try Qcow2Image(fd: top, readOnly: readOnly, backing: below)
    }
}

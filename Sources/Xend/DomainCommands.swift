// Requests on one domain beyond the lifecycle (Xen's XendDomain/XendDomainInfo
// domain_rename, send_sysrq, domain_dumpcore, domain_reset): `xm rename`, `xm sysrq`,
// `xm dump-core`, `xm reset`. Engines do the guest-facing part through
// DomainEngineDriver (sendSysrq, dumpCore, reboot); xend keeps names, files and intent.
import DomainConfig
import Foundation
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

extension DomainEngineDriver {
    public func sendSysrq(_ p: EngineProcess, key: Character) throws {
        throw EngineError("the \(name) engine cannot send a SysRq key")
    }
    public func dumpCore(_ p: EngineProcess, into fd: Int32) throws {
        throw EngineError("the \(name) engine cannot dump a domain's memory")
    }
}

extension DomainManager {
    /// Checks a domain name as create does (Xen's VM name rules without `/`, at most 64).
    /// - Throws: `XendError` 400 naming the name.
    static func checkName(_ name: String) throws(XendError) {
        if nameRegex.firstMatch(in: name, range: NSRange(name.startIndex..., in: name)) == nil || name.count > 64 {
            throw XendError(.badRequest, "Invalid VM Name '\(name)': use at most 64 of A-Z a-z 0-9 _ - . : + (no '/')")
        }
        if name == "." || name == ".." { throw XendError(.badRequest, "Invalid VM Name '\(name)': '.' and '..' name directories") }
        if name.allSatisfy(\.isNumber) {
            throw XendError(.badRequest, "Invalid VM Name '\(name)': a name of digits only would read as a domain id")
        }
    }

    /// `xm rename`: gives a live or preserved domain the name `newName` (registry, xenstore
    /// `name` entries). Files named after the domain (console log) keep their names.
    /// - Throws: `XendError` 400 for Domain-0 or a bad name, 404 no such domain, 409 the name
    ///   is taken ("VM name 'X' already exists as domain N").
    public func renameDomain(_ dom: String, to newName: String) throws(XendError) -> DomainInfo {
        if dom == "0" || dom == "Domain-0" { throw XendError(.badRequest, "Cannot rename privileged domain 0") }
        try Self.checkName(newName)
        lifecycle.lock(); defer { lifecycle.unlock() }
        guard let r = find(dom) else { throw .noDomain(dom) }
        if newName == r.name { return info(r, long: false) }
        if newName == "Domain-0" { throw XendError(.conflict, "VM name 'Domain-0' already exists as domain 0") }
        if let other = registry.named(newName) {
            throw XendError(.conflict, "VM name '\(newName)' already exists as domain \(other.domid)")
        }
        registry.update(r.domid) { $0.name = newName; $0.config.name = newName }
        try? xenstore?.write("/local/domain/\(r.domid)/name", newName)
        try? xenstore?.write("/vm/\(r.uuid)/name", newName)
        dmesg("Domain \(r.name) (\(r.domid)) renamed to \(newName)")
        return try get(String(r.domid), long: false)
    }

    /// `xm sysrq`: sends the magic SysRq `key` to the guest's kernel.
    /// - Throws: `XendError` 400 for Domain-0 or a key that is not one character of
    ///   a-z/0-9, 404, 409 not running, 503 when the engine cannot send one (its capabilities), 500 when sending failed.
    public func sysrq(_ dom: String, key: String) throws(XendError) -> DomainInfo {
        let (r, p, e) = try live(dom, for: "send a SysRq key to")
        guard key.count == 1, let k = key.first, k.isASCII, k.isLetter && k.isLowercase || k.isNumber else {
            throw XendError(.badRequest, "Invalid SysRq key '\(key)': one of a-z or 0-9")
        }
        guard e.capabilities.contains(.sysrq) else {
            throw XendError(.unavailable, "Cannot send SysRq key '\(key)' to domain \(r.name): the \(e.name) engine cannot send a SysRq key")
        }
        do { try e.sendSysrq(p, key: k) } catch {
            throw XendError(.internalError, "Cannot send SysRq key '\(key)' to domain \(r.name): \(error)")
        }
        dmesg("Domain \(r.name) (\(r.domid)): SysRq key '\(key)' sent")
        return info(r, long: false)
    }

    /// Xen's default dump file, under `$XENITH_ROOT`:
    /// `/var/xen/dump/YYYY-MMDD-HHMM.SS-NAME.DOMID.core` (local time).
    func defaultDumpPath(_ r: DomainRecord, now: Date = Date()) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.dateFormat = "yyyy-MMdd-HHmm.ss"
        return paths.resolve("/var/xen/dump") + "/\(f.string(from: now))-\(r.name).\(r.domid).core"
    }

    /// `xm dump-core`: writes the guest's RAM as an ELF core file at `file` (absolute; nil:
    /// ``defaultDumpPath(_:now:)``). The engine writes into a descriptor xend opened on
    /// `.NAME.partial-DOMID` beside it (mode 0600), renamed over `file` only when complete,
    /// so a failed dump leaves no file and an existing one intact.
    /// - Returns: the path written.
    /// - Throws: `XendError` 400 for Domain-0, a relative path, an unwritable directory or a
    ///   path that is not a regular file or new (``ReplaceablePath``), 404, 409 not running, 503 when the engine cannot dump, 500 when the dump failed.
    public func dumpCore(_ dom: String, file: String?) throws(XendError) -> String {
        let (r, p, e) = try live(dom, for: "dump the core of")
        guard e.capabilities.contains(.dumpCore) else {
            throw XendError(.unavailable, "Cannot dump core of domain \(r.name): the \(e.name) engine cannot dump a domain's memory")
        }
        let named = file ?? defaultDumpPath(r)
        guard named.hasPrefix("/") else { throw XendError(.badRequest, "Cannot dump core to \(named): not an absolute path") }
        let target = try ReplaceablePath.resolve(named, command: "xm dump-core", kind: "a core file")
        let dir = (target as NSString).deletingLastPathComponent
        if file == nil { XenithPaths.makeDirectories(dir) }
        // A partial file of this dump's own (O_EXCL): two dumps into one directory must not
        // write into the same inode and publish a mix.
        let partial = dir + "/.\(r.name).partial-\(r.domid)-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(partial, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else {
            throw XendError(.badRequest, "Cannot dump core of domain \(r.name) to \(target): \(String(cString: strerror(errno)))")
        }
        do {
            defer { close(fd) }
            try e.dumpCore(p, into: fd)
            guard fsync(fd) == 0 else { throw EngineError("fsync: \(String(cString: strerror(errno)))") }
        } catch {
            unlink(partial)
            throw XendError(.internalError, "Cannot dump core of domain \(r.name): \(error)")
        }
        guard Glibc.rename(partial, target) == 0 else {
            let why = String(cString: strerror(errno))
            unlink(partial)
            throw XendError(.internalError, "Cannot dump core of domain \(r.name) to \(target): \(why)")
        }
        dmesg("Domain \(r.name) (\(r.domid)): core dumped to \(target)")
        return target
    }

    /// `xm reset`: a hard reset. The engine resets the machine (its process ends with a
    /// reboot status) and xend starts the domain again with the same configuration,
    /// whatever its on_reboot says and without the restart-loop guard (DomainLifecycle).
    /// - Throws: `XendError` 400 for Domain-0, 404, 409 not running, 500 engine failure.
    public func reset(_ dom: String) throws(XendError) -> DomainInfo {
        let (r, p, e) = try live(dom, for: "reset")
        lifecycle.lock()
        resetRequested.insert(r.domid)
        lifecycle.unlock()
        do { try e.reboot(p) } catch {
            lifecycle.lock(); resetRequested.remove(r.domid); lifecycle.unlock()
            throw XendError(.internalError, "Cannot reset domain \(r.name): \(error)")
        }
        dmesg("Domain \(r.name) (\(r.domid)): reset")
        return info(r, long: false)
    }
}

// The host side of `xm pci-attach` and `xm pci-detach` (Xen 3.x's hot-plugged passthrough):
// one function taken onto vfio-pci and given to a running domain, or taken back from it.
// Attach runs the checks of a create, the move onto vfio-pci, the domain's pciback (started
// when the domain has none, else asked to `add` the function and `reset assign` it), the
// group node handed to the engine's uid, the engine's hot-plug (a closure: QMP device_add on
// the qemu engine) and the `backend/pci` entries, each step undone if a later one fails.
// Detach comes after the engine released the function: pciback's `reset release` and `drop`
// (or the pciback stopped when it was the domain's last function), the node back to root,
// the function back to its original driver, the entries rewritten.
import DomainConfig
import Foundation
import PciBack
import XenStore
import XendAPI
#if canImport(Glibc)
import Glibc
#endif

extension PciSupervisor {
    /// Gives running domain `domid` host function `spec.address` (`xm pci-attach`).
    /// - Parameters:
    ///   - current: the domain's PCI devices before this one (for `backend/pci`).
    ///   - owner: the engine's uid and gid, which gets the group node.
    ///   - plug: the engine's hot-plug of the function, once the host side is ready; returns
    ///     the hot-plug slot it went into.
    /// - Returns: what `plug` returned.
    /// - Throws: `XendError` bad request naming the device for a refusal (absent, assigned
    ///   elsewhere or already to this domain, shared group, no reset), the engine's error for
    ///   a failed hot-plug, 500 otherwise; every step done before is undone first (the
    ///   function back on its original driver, nothing left in xenstore or `pci.json`).
    func hotAttach(domid: Int, spec: PciSpec, current: [PciSpec], owner: (uid: uid_t, gid: gid_t)?,
                   plug: () throws(XendError) -> String?) throws(XendError) -> String? {
        lock.lock(); defer { lock.unlock() }
        let a = spec.address, key = a.description
        if entries[key]?.domid == domid || current.contains(where: { $0.address == a }) {
            throw XendError(.badRequest, "pci: PCI device \(a) is already assigned to this domain")
        }
        let devs: [PciHostDevice]
        do { devs = try PciHiding.check([a], domid: domid, sysfs: sysfs, policy: policy(for: domid)) }
        catch { throw XendError(.badRequest, "pci: \(error.message)") }
        let undo = Rollback()
        defer { undo.finish() }
        let taken: PciTaken
        do { taken = try PciHiding.take(devs, sysfs: sysfs)[0] } catch { throw XendError(.badRequest, "pci: \(error.message)") }
        undo.add { [self] in persist() }
        let before = entries[key]
        entries[key] = Entry(address: key, originalDriver: before?.originalDriver ?? taken.originalDriver,
                             iommuGroup: taken.iommuGroup, domid: domid, configured: before?.configured ?? false)
        undo.add { [self] in
            entries[key] = before
            if before == nil { giveBack(a, taken.originalDriver) }
        }
        persist()

        // pciback: the domain's running one takes the function on, else a new one starts.
        let g = taken.iommuGroup
        var fresh: PciBackend?
        let b: PciBackend
        if let running = backends[domid] {
            guard !running.gaveUp, running.proc.pid > 0 else {
                throw XendError(.internalError, "pci: PCI device \(a): the pciback of domain \(domid) is not running (xend gave up restarting it)")
            }
            b = running
            let fds: (directory: Int32, config: Int32)
            do { fds = try functionDescriptors(a) } catch { throw XendError(.internalError, "pci: \(error.message)") }
            do { _ = try ask(b, .add(key), fds: [fds.directory, fds.config]) } catch {
                close(fds.directory); close(fds.config)
                throw XendError(error is PciRefusal ? .badRequest : .internalError, "pci: pciback: \(error)")
            }
            b.devices.append(a)
            b.deviceFDs.append(fds)
            undo.add { [self] in
                _ = try? ask(b, .drop(key))
                forget(b, a)
            }
        } else {
            b = PciBackend(domid: domid, devices: [a], socket: backHost.socketPath("pciback", domid: domid, device: "pci"),
                           logPath: logPath, lock: lock, budget: backHost.restartBudget())
            fresh = b
            undo.add { [self] in stopBackend(b) }
            do { try spawnBackend(b, adopt: false) } catch { throw XendError(.internalError, "pci: cannot start pciback \(binary): \(error)") }
            do { try b.proc.waitReady(timeout: .seconds(20)) } catch {
                throw XendError(error.refused ? .badRequest : .internalError, "pci: pciback: \(error.message)")
            }
        }
        do { try backendReset(b, group: g, [a], .assign) }
        catch let e as PciRefusal { throw XendError(.badRequest, "pci: \(e.message)") }
        catch { throw XendError(.internalError, "pci: \(error)") }
        // Another function of the group already the domain's: the node is the engine's already.
        let groupShared = entries.values.contains { $0.address != key && $0.domid == domid && $0.iommuGroup == g }
        if let o = owner, !groupShared {
            let node = devRoot + "/vfio/\(g)"
            guard chown(node, o.uid, o.gid) == 0 else {
                throw XendError(.internalError, "pci: chown \(node) to \(o.uid):\(o.gid): \(String(cString: strerror(errno)))")
            }
            undo.add { chown(node, 0, 0) }
        }
        let port = try plug()
        var now = current
        now.append(PciSpec(address: a, guestSlot: spec.guestSlot, hotplugPort: port))
        try writeEntries(domid: domid, now)
        undo.add { [self] in try? writeEntries(domid: domid, current) }
        undo.commit()
        if let fresh {
            backends[domid] = fresh
            superviseBackend(fresh)
        }
        persist()
        log.info("domain \(domid): PCI \(a) attached, pciback pid \(b.proc.pid)")
        return port
    }

    /// Takes host function `a` back from running domain `domid` once the engine released it
    /// (`xm pci-detach`): pciback resets it for release and forgets it (or stops, when it was
    /// the domain's last function), the group node goes back to root, the function back to
    /// its original driver (a `pci-hide` one stays on vfio-pci), `backend/pci` holds
    /// `remaining`. A failed reset is logged, naming the device; the rest goes on.
    /// - Throws: `XendError` bad request when `a` is not assigned to `domid`.
    func hotDetach(domid: Int, address a: PciAddress, remaining: [PciSpec]) throws(XendError) {
        lock.lock(); defer { lock.unlock() }
        let key = a.description
        guard let e = entries[key], e.domid == domid else {
            throw XendError(.badRequest, "pci: PCI device \(a) is not assigned to domain \(domid)")
        }
        let g = e.iommuGroup
        let groupShared = entries.values.contains { $0.address != key && $0.domid == domid && $0.iommuGroup == g }
        if groupShared {
            // The engine still holds the group for the other function: no reset possible.
            log.error("domain \(domid): PCI \(a) not reset at release: IOMMU group \(g) is still open for another function of the domain")
        } else {
            releaseReset(domid: domid, group: g, a)
            chown(devRoot + "/vfio/\(g)", 0, 0)
        }
        if let b = backends[domid] {
            if b.devices == [a] {
                backends[domid] = nil
                stopBackend(b)
            } else {
                if b.proc.pid > 0 { _ = try? ask(b, .drop(key)) }
                forget(b, a)
            }
        }
        if e.configured {
            entries[key]?.domid = nil
            entries[key]?.broken = nil
        } else {
            giveBack(a, e.originalDriver)
            entries[key] = nil
        }
        persist()
        do { try writeEntries(domid: domid, remaining) } catch { log.error("domain \(domid): xenstore: \(error)") }
        log.info("domain \(domid): PCI \(a) detached")
    }

    /// The release reset of `a` (group `g`) by the domain's pciback, a one-shot pciback when
    /// it does not answer. QEMU closes the group just after the device is gone: the group is
    /// retried for up to 5 s while busy.
    private func releaseReset(domid: Int, group g: Int, _ a: PciAddress) {
        let deadline = Date().addingTimeInterval(5)
        while true {
            do {
                if let b = backends[domid], b.proc.pid > 0, !b.gaveUp {
                    do { try backendReset(b, group: g, [a], .release); return }
                    catch is PciBackUnreachable { log.error("domain \(domid): pciback did not answer; resetting \(a) with a one-shot pciback") }
                }
                try reset(group: g, [a])
                return
            } catch {
                let busy = "\(error)".contains(String(cString: strerror(EBUSY)))
                if busy && Date() < deadline { usleep(200_000); continue }
                log.error("domain \(domid): PCI \(a) not reset at release: \(error)")
                return
            }
        }
    }

    /// Drops `a` from what xend hands `b`'s pciback (its descriptors closed).
    func forget(_ b: PciBackend, _ a: PciAddress) {
        guard let i = b.devices.firstIndex(of: a) else { return }
        b.devices.remove(at: i)
        if i < b.deviceFDs.count {
            close(b.deviceFDs[i].directory); close(b.deviceFDs[i].config)
            b.deviceFDs.remove(at: i)
        }
    }

    /// Rewrites `backend/pci/DOMID/0` to hold `specs` (removed when empty).
    func writeEntries(domid: Int, _ specs: [PciSpec]) throws(XendError) {
        guard let xs = xenstore else { return }
        do {
            try? xs.rm(XenStoreLayout.backend(type: "pci", domid: UInt32(domid), devid: 0))
            guard !specs.isEmpty else { return }
            let dev = XenStoreDevice.pci(domid: UInt32(domid), devices: specs.map { ($0.address.description, $0.guestSlot) })
            try xs.writeDevice(dev)
            try xs.setState(dev.backendPath, .connected)
        } catch { throw XendError(.internalError, "pci: xenstore: \(error)") }
    }
}

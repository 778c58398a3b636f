// vCPU hot-plug on the qemu engine (`xm vcpu-set`): vCPU 0 comes from -smp, every other
// vCPU K is a CPU device `vcpuK` in socket K (QemuCommandLine), added with QMP device_add
// and removed with device_del, which the guest acknowledges through ACPI CPU hot-plug.
import Foundation

extension QemuCommandLine {
    /// The `-device`/`device_add` text of vCPU `k` (≥ 1): the CPU model of `-cpu` (`host`
    /// under KVM, `max` under TCG) as a device with id `vcpuK` in socket `k`.
    public static func cpuDevice(_ k: Int, _ accelerator: QemuAccelerator) -> String {
        "\(cpuDriver(accelerator)),id=vcpu\(k),socket-id=\(k),core-id=0,thread-id=0"
    }

    /// QEMU's CPU device type for the `-cpu` model this engine uses.
    public static func cpuDriver(_ accelerator: QemuAccelerator) -> String {
        accelerator == .kvm ? "host-x86_64-cpu" : "max-x86_64-cpu"
    }
}

extension QemuDomain {
    /// Plugs in vCPU `k` (≥ 1) as device `vcpuK`; returns once QEMU lists it.
    /// - Throws: `QMPError` when QEMU refuses (no free slot, a machine without hot-plug).
    public func plugVcpu(_ k: Int, accelerator: QemuAccelerator) throws {
        try qmp.execute("device_add", ["driver": QemuCommandLine.cpuDriver(accelerator), "id": "vcpu\(k)",
                                       "socket-id": k, "core-id": 0, "thread-id": 0])
    }

    /// Asks the guest to give up vCPU `k` (≥ 1) and waits up to `timeout` seconds until QEMU
    /// no longer lists it.
    /// - Throws: `QMPError` when QEMU refuses or the guest did not release it in time (the
    ///   vCPU stays then, and may still go later).
    public func unplugVcpu(_ k: Int, timeout: Double = 15) throws {
        try qmp.execute("device_del", ["id": "vcpu\(k)"])
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if try !qmp.queryCPUs().contains(where: { $0.index == k }) { return }
            usleep(100_000)
        }
        throw QMPError("the guest did not release vCPU \(k) within \(Int(timeout)) s (it needs ACPI CPU hot-plug)")
    }
}

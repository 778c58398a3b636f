// swift-tools-version: 6.1
// Xenith: the Xen 3.0 toolstack and driver-domain model on Linux KVM.
// Layout and dependency rules: DESIGN.md in ../shared and Sources/README.md.
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "Xenith",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "xenith-core", targets: ["xenith-core"]),
        .executable(name: "xenstored", targets: ["xenstored"]),
        .executable(name: "blkback", targets: ["blkback"]),
        .executable(name: "netback", targets: ["netback"]),
        .executable(name: "xenconsoled", targets: ["xenconsoled"]),
        .executable(name: "xend", targets: ["xend"]),
        .executable(name: "xm", targets: ["xm"]),
        .executable(name: "migration", targets: ["migration"]),
        .executable(name: "pciback", targets: ["pciback"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // TLS for the relocation server (xend only; the sandboxed services never link it).
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
    ],
    targets: [
        // C shims: <linux/kvm.h>, ioctl numbers, memfd/eventfd/epoll, SCM_RIGHTS helpers.
        .target(name: "CLinux", cSettings: [.define("_GNU_SOURCE")]),
        .systemLibrary(name: "CSeccomp", pkgConfig: "libseccomp",
                       providers: [.apt(["libseccomp-dev"])]),
        .systemLibrary(name: "CCap", pkgConfig: "libcap", providers: [.apt(["libcap-dev"])]),

        // Libraries, one concern each (see Sources/README.md for what may import what).
        .target(name: "GuestMemory", dependencies: ["CLinux", .product(name: "SystemPackage", package: "swift-system")], swiftSettings: swiftSettings),
        .target(name: "KVM", dependencies: ["CLinux", "GuestMemory", .product(name: "SystemPackage", package: "swift-system")], swiftSettings: swiftSettings),
        .target(name: "Boot", dependencies: ["GuestMemory"], swiftSettings: swiftSettings),
        .target(name: "Virtio", dependencies: ["GuestMemory"], swiftSettings: swiftSettings),
        .target(name: "VhostUser", dependencies: ["CLinux", "GuestMemory", "Virtio", "UnixSocket", .product(name: "SystemPackage", package: "swift-system")], swiftSettings: swiftSettings),
        .target(name: "Sandbox", dependencies: ["CLinux", "CSeccomp", "CCap", "Spawn", "UnixSocket"], swiftSettings: swiftSettings),
        .target(name: "XenStore", dependencies: ["CLinux", "UnixSocket"], swiftSettings: swiftSettings),
        // MACAddress and VifRate: what netback needs of a vif's configuration, without DomainConfig.
        .target(name: "NetworkTypes", dependencies: [], swiftSettings: swiftSettings),
        .target(name: "DomainConfig", dependencies: ["NetworkTypes"], swiftSettings: swiftSettings),
        // The core's control-socket commands and status line (core and xend share it).
        .target(name: "CoreControl", swiftSettings: swiftSettings),
        .target(name: "Core", dependencies: ["CLinux", "CoreControl", "KVM", "GuestMemory", "Boot", "Virtio", "VhostUser", "ConsoleBackend", "UnixSocket",
                                            .product(name: "SystemPackage", package: "swift-system")],
                swiftSettings: swiftSettings),
        .target(name: "BlockBackend", dependencies: ["CLinux", "GuestMemory", "Virtio", "VhostUser"], swiftSettings: swiftSettings),
        .target(name: "ConsoleBackend", dependencies: ["CLinux", "UnixSocket"], swiftSettings: swiftSettings),
        .target(name: "NetBackend", dependencies: ["CLinux", "GuestMemory", "Virtio", "VhostUser"], swiftSettings: swiftSettings),
        // Synthetic virtio-blk/-net drivers behind a vhost-user front-end: tests and the
        // vhost-user-frontend tool only, so the services never link them.
        .target(name: "VhostUserTesting", dependencies: ["CLinux", "GuestMemory", "Virtio", "VhostUser", "BlockBackend", "NetBackend"],
                swiftSettings: swiftSettings),
        // posix_spawn for every child the toolstack starts (engines, back-ends, scripts),
        // and the launcher's end of a readiness channel.
        .target(name: "Spawn", swiftSettings: swiftSettings),
        // Unix stream sockets by path: sockaddr_un, connect, bind+listen (Glibc only).
        .target(name: "UnixSocket", swiftSettings: swiftSettings),
        .target(name: "QemuEngine", dependencies: ["DomainConfig", "Spawn", "UnixSocket"], swiftSettings: swiftSettings),
        // Save files and the migration stream: envelope, frames, CRC-32C, pacing, status messages.
        // Foundation-free (the migration service runs under seccomp); xend may import it.
        .target(name: "Migration", dependencies: ["CLinux"], exclude: ["README.md"], swiftSettings: swiftSettings),
        // PCI passthrough: host PCI functions in sysfs (hiding on vfio-pci, giving back), the
        // checks that refuse a device, VFIO group/device ioctls. Foundation-free (pciback runs
        // under seccomp); xend imports it for the sysfs side.
        .target(name: "PciBack", dependencies: ["CLinux", "DomainConfig"], swiftSettings: swiftSettings),
        // The xm ↔ xend API: wire types, routes, the blocking client, the host's paths (no NIO).
        .target(name: "XendAPI", dependencies: ["DomainConfig", "UnixSocket"], swiftSettings: swiftSettings),
        // The xm command logic (no NIO: xm starts fast).
        .target(name: "XM", dependencies: ["DomainConfig", "ConsoleBackend", "XendAPI"], swiftSettings: swiftSettings),
        .target(name: "Xend", dependencies: ["CLinux", "BlockBackend", "DomainConfig", "XenStore", "XendAPI", "CoreControl", "QemuEngine", "ConsoleBackend", "Sandbox", "Spawn", "UnixSocket", "Migration", "PciBack",
                                            .product(name: "Hummingbird", package: "hummingbird"),
                                            .product(name: "Logging", package: "swift-log"),
                                            .product(name: "Prometheus", package: "swift-prometheus"),
                                            .product(name: "NIOSSL", package: "swift-nio-ssl")],
                swiftSettings: swiftSettings),

        // Thin executables.
        // No ArgumentParser or Logging here: they pull in FoundationEssentials (see main.swift).
        .executableTarget(name: "xenith-core", dependencies: ["Core"], swiftSettings: swiftSettings),
        .executableTarget(name: "xenstored", dependencies: ["XenStore", "Sandbox",
                          .product(name: "ArgumentParser", package: "swift-argument-parser")], swiftSettings: swiftSettings),
        // blkback stays free of Foundation (and ArgumentParser) so it can run under seccomp.
        .executableTarget(name: "blkback", dependencies: ["BlockBackend", "VhostUser", "Virtio", "GuestMemory", "Sandbox", "CLinux"],
                          swiftSettings: swiftSettings),
        // netback: same constraints as blkback.
        .executableTarget(name: "netback", dependencies: ["NetBackend", "VhostUser", "Virtio", "GuestMemory", "Sandbox", "CLinux", "NetworkTypes"],
                          swiftSettings: swiftSettings),
        // Synthetic vhost-user-blk/-net front-end: workloads, malformed chains, restart tests.
        .executableTarget(name: "vhost-user-frontend", dependencies: ["VhostUserTesting", "BlockBackend", "NetBackend", "VhostUser", "Virtio", "GuestMemory", "CLinux"],
                          swiftSettings: swiftSettings),
        .executableTarget(name: "xenconsoled", dependencies: ["ConsoleBackend", "Sandbox"], swiftSettings: swiftSettings),
        .executableTarget(name: "xend", dependencies: ["Xend"], swiftSettings: swiftSettings),
        .executableTarget(name: "xm", dependencies: ["XM"], swiftSettings: swiftSettings),
        // migration: same constraints as blkback (no Foundation, sandboxed, handed every fd).
        .executableTarget(name: "migration", dependencies: ["Migration", "Sandbox"], swiftSettings: swiftSettings),
        // pciback: same constraints (no Foundation, sandboxed, handed its VFIO descriptors).
        .executableTarget(name: "pciback", dependencies: ["PciBack", "Sandbox"], swiftSettings: swiftSettings),

        // Unit tests mirror the library targets; integration/ boots guests on /dev/kvm.
        .testTarget(name: "GuestMemoryTests", dependencies: ["GuestMemory"]),
        .testTarget(name: "BootTests", dependencies: ["Boot", "GuestMemory"]),
        .testTarget(name: "CoreTests", dependencies: ["Core", "CoreControl"]),
        .testTarget(name: "VirtioTests", dependencies: ["Virtio", "GuestMemory"]),
        .testTarget(name: "VhostUserTests", dependencies: ["VhostUser", "Virtio", "GuestMemory"]),
        .testTarget(name: "BlockBackendTests", dependencies: ["BlockBackend", "VhostUser", "VhostUserTesting", "Virtio", "GuestMemory"]),
        .testTarget(name: "NetBackendTests", dependencies: ["NetBackend", "VhostUser", "VhostUserTesting", "Virtio", "GuestMemory", "CLinux"]),
        .testTarget(name: "XenStoreTests", dependencies: ["XenStore", "UnixSocket"]),
        .testTarget(name: "DomainConfigTests", dependencies: ["DomainConfig"], exclude: ["corpus"]),
        .testTarget(name: "SandboxTests", dependencies: ["Sandbox", "Spawn", "UnixSocket"]),
        .testTarget(name: "SpawnTests", dependencies: ["Spawn"]),
        .testTarget(name: "UnixSocketTests", dependencies: ["UnixSocket"]),
        .testTarget(name: "QemuEngineTests", dependencies: ["QemuEngine", "DomainConfig"]),
        .testTarget(name: "ConsoleBackendTests", dependencies: ["ConsoleBackend"]),
        .testTarget(name: "XendTests", dependencies: ["Xend", "XendAPI"]),
        .testTarget(name: "XMTests", dependencies: ["XM", "XendAPI"]),
        .testTarget(name: "PciBackTests", dependencies: ["PciBack", "DomainConfig"]),
        .testTarget(name: "MigrationTests", dependencies: ["Migration", "Spawn", "CLinux"]),
        .executableTarget(name: "sandbox-probe", dependencies: ["Sandbox"], path: "Tests/SandboxProbe"),
        .testTarget(name: "IntegrationTests", dependencies: ["Core", "KVM", "ConsoleBackend", "QemuEngine", "DomainConfig"], path: "integration", exclude: ["README.md"]),
    ]
)

// Fuzz targets (fuzz/README.md): libFuzzer entry points over the parsers a guest, a peer or a
// local user reaches. Declared only when XENITH_FUZZ is set, as `make fuzz` does (with
// -sanitize=fuzzer,address and its own scratch path): they call into libFuzzer, so they
// cannot link in the normal build, and `swift build`/`swift test` never see them.
if Context.environment["XENITH_FUZZ"] != nil {
    let fuzzTargets: [(name: String, dependencies: [Target.Dependency])] = [
        ("fuzz-virtqueue", ["Virtio", "GuestMemory"]),
        ("fuzz-vhost-user", ["VhostUser", "BlockBackend", "Virtio", "GuestMemory", "CLinux"]),
        ("fuzz-virtio-blk", ["BlockBackend", "VhostUser", "Virtio", "GuestMemory"]),
        ("fuzz-qcow2", ["BlockBackend", "CLinux"]),
        ("fuzz-virtio-net", ["NetBackend", "VhostUser", "Virtio", "GuestMemory", "CLinux"]),
        ("fuzz-xenstore", ["XenStore"]),
        ("fuzz-sxp", ["DomainConfig"]),
        ("fuzz-domain-config", ["DomainConfig"]),
        ("fuzz-xend-config", ["DomainConfig"]),
        ("fuzz-manifest", ["Sandbox"]),
        ("fuzz-qmp", ["QemuEngine"]),
        ("fuzz-migration", ["Migration", "CLinux"]),
    ]
    package.targets.append(.target(name: "CFuzz", path: "fuzz/CFuzz"))
    package.targets.append(.target(name: "FuzzSupport", dependencies: ["CFuzz", "GuestMemory"], path: "fuzz/FuzzSupport",
                                   swiftSettings: swiftSettings))
    for t in fuzzTargets {
        package.products.append(.executable(name: t.name, targets: [t.name]))
        package.targets.append(.executableTarget(name: t.name, dependencies: t.dependencies + ["FuzzSupport"],
                                                 path: "fuzz/\(t.name)", swiftSettings: swiftSettings))
    }
}

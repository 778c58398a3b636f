#!/bin/bash
# build-vfio-host.sh OUTDIR BINDIR
# Writes OUTDIR/vfio-host.img: an ext4 root for the nested PCI-passthrough test
# (integration/PciPassthroughNestedTests.swift). It boots with the Debian image's own
# kernel and initrd (build/guest/debian-vmlinuz, debian-initrd.img; root=/dev/vda) under
# QEMU with an emulated IOMMU and runs /init-vfio, which holds:
#   - busybox (static) and the Debian kernel's modules (vfio-pci and the rest), taken from
#     build/guest/debian.img with debugfs (nothing is mounted);
#   - this host's qemu-system-x86_64 (Debian's QEMU 7.2) with its shared libraries and
#     firmware files;
#   - the project's binaries from BINDIR (xend, xm, xenstored, xenconsoled, pciback) with
#     their shared libraries (the Swift runtime), and manifests/;
#   - the test guest (build/guest/vmlinuz, initrd.img) to run inside.
# The kernel modules part is cached in $XENITH_CACHE keyed by the image's kernel; the
# rest is copied each time (the binaries change with every build) and takes seconds.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OUTDIR BINDIR" >&2; exit 2; }
OUT=$1 BIN=$2
HERE=$(cd "$(dirname "$0")" && pwd)
TOP=$(cd "$HERE/.." && pwd)
. "$HERE/common.sh"
need debugfs mkfs.ext4 ldd busybox qemu-system-x86_64 sha256sum
G=$TOP/build/guest
for f in debian.img debian-vmlinuz debian-initrd.img vmlinuz initrd.img; do
    [ -f "$G/$f" ] || die "missing $G/$f (make guest debian-image)"
done
for b in xend xm xenstored xenconsoled pciback; do [ -x "$BIN/$b" ] || die "missing $BIN/$b (swift build)"; done

# The image kernel's modules, cached by the kernel file's hash.
KEY=vfio-modules-$(sha256sum "$G/debian-vmlinuz" | cut -c1-12)
if [ ! -d "$XENITH_CACHE/$KEY" ]; then
    cache_begin "$KEY"
    mkdir -p "$BUILD_DIR/out/lib"
    debugfs -R "rdump /usr/lib/modules $BUILD_DIR/out/lib" "$G/debian.img" >/dev/null 2>&1 \
        || debugfs -R "rdump /lib/modules $BUILD_DIR/out/lib" "$G/debian.img" >/dev/null 2>&1
    ls "$BUILD_DIR"/out/lib/modules/*/kernel/drivers/vfio/pci/vfio-pci.ko* >/dev/null 2>&1 \
        || die "no vfio-pci module in $G/debian.img"
    cache_publish
fi

R=$(mktemp -d "${TMPDIR:-/tmp}/pci-vfio-root.XXXXXX")
trap 'rm -rf "$R"' EXIT
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,etc,lib,lib64,root,xenith/bin,guest,usr/share}
cp -a "$XENITH_CACHE/$KEY/lib/modules" "$R/lib/"
cp /usr/bin/busybox "$R/bin/busybox"
for a in $("$R/bin/busybox" --list-full); do [ -e "$R/$a" ] || ln -s /bin/busybox "$R/$a"; done

# Executables and every shared library they load (ldd's absolute paths, kept in place).
copy_with_libs() {
    local exe=$1 dest=$2 lib
    cp -L "$exe" "$dest"
    for lib in $(ldd "$exe" | awk '/=> \// { print $3 } /^\t\// { print $1 }'); do
        [ -e "$R$lib" ] || { mkdir -p "$R$(dirname "$lib")"; cp -L "$lib" "$R$lib"; }
    done
}
copy_with_libs /usr/bin/qemu-system-x86_64 "$R/usr/bin/"
cp -rL /usr/share/qemu "$R/usr/share/qemu"
cp -rL /usr/share/seabios "$R/usr/share/seabios"   # Debian's QEMU looks for bios-256k.bin there
# QEMU's loadable modules: TCG itself is one (accel-tcg-x86_64.so).
mkdir -p "$R/usr/lib/x86_64-linux-gnu/qemu"
copy_with_libs /usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so "$R/usr/lib/x86_64-linux-gnu/qemu/"
for b in xend xm xenstored xenconsoled pciback; do copy_with_libs "$BIN/$b" "$R/xenith/bin/"; done
cp -r "$TOP/manifests" "$R/xenith/manifests"
cp "$G/vmlinuz" "$G/initrd.img" "$R/guest/"
cp "$HERE/vfio-host-init" "$R/init-vfio"
chmod 0755 "$R/init-vfio"
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$R/etc/passwd"
printf 'root:x:0:\n' > "$R/etc/group"

mkdir -p "$OUT"
size_mib=$(( $(du -sxk "$R" | cut -f1) / 1024 * 12 / 10 + 64 ))
mkfs.ext4 -q -F -L vfio-host -d "$R" "$OUT/vfio-host.img" "${size_mib}M" >/dev/null
echo "build-vfio-host: $OUT/vfio-host.img (${size_mib} MiB)" >&2

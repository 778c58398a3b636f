#!/bin/bash
# build-debian-image.sh OUTDIR
# Writes OUTDIR/debian.img (ext4, Debian 12 with systemd, no partition table),
# OUTDIR/debian-vmlinuz and OUTDIR/debian-initrd.img (the image's own kernel and
# initramfs-tools initrd).  A TEST image: root logs in on ttyS0 with no
# password.  See guest/README.md.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
need mmdebstrap mkfs.ext4 apt-cache sha256sum
[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap --mode=root)"

SUITE=bookworm
PACKAGES="systemd,systemd-sysv,udev,dbus,linux-image-cloud-amd64,initramfs-tools,e2fsprogs,kmod,iproute2,procps,less"
FREE_MIB=256

SOURCES=$(debian_sources "$SUITE")
[ -n "$SOURCES" ] || die "this machine's apt configuration has no $SUITE source"
KPKG=$(kernel_package)
KEY_SRC=$(printf '%s\n' "$SUITE" "$PACKAGES" "$KPKG=$(apt_candidate "$KPKG")" "free=$FREE_MIB"
          hash_files "$HERE/build-debian-image.sh" "$HERE/common.sh")
KEY=debian-12-$(printf '%s' "$KEY_SRC" | sha256sum | cut -c1-12)

if [ ! -d "$XENITH_CACHE/$KEY" ]; then
    start=$(date +%s)
    cache_begin "$KEY"
    B=$BUILD_DIR R=$BUILD_DIR/rootfs
    mkdir -p "$B/out"
    mapfile -t mirrors <<< "$SOURCES"
    # Before the kernel is installed: / is ext4 on vda, so the initramfs that
    # the kernel's postinst builds carries fsck.ext4 (it cannot probe / here).
    mmdebstrap --mode=root --variant=minbase --format=directory --quiet \
        --include="$PACKAGES" \
        --essential-hook='printf "/dev/vda\t/\text4\terrors=remount-ro\t0\t1\n" > "$1/etc/fstab"' \
        --essential-hook='mkdir -p "$1/etc/initramfs-tools/conf.d" && echo FSTYPE=ext4 > "$1/etc/initramfs-tools/conf.d/xenith-fstype.conf"' \
        "$SUITE" "$R" "${mirrors[@]}"

    # Test-image settings: passwordless root (serial-getty on ttyS0 comes from
    # console=ttyS0 through systemd-getty-generator), fixed hostname.
    sed -i 's/^root:[^:]*:/root::/' "$R/etc/shadow"
    echo xenith-debian > "$R/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\txenith-debian\n' > "$R/etc/hosts"
    # The virtio NIC (en*, eth*) takes an address by DHCP (xenbr0 of the shipped
    # xend-config: network-nat-default). Nothing waits for the network: boot goes on
    # without a lease.
    mkdir -p "$R/etc/systemd/network" "$R/etc/systemd/system/multi-user.target.wants"
    printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n' > "$R/etc/systemd/network/80-xenith-dhcp.network"
    ln -sf /lib/systemd/system/systemd-networkd.service "$R/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    ln -sf /dev/null "$R/etc/systemd/system/systemd-networkd-wait-online.service"
    ln -sf /dev/null "$R/etc/systemd/system/systemd-networkd-wait-online@.service"

    KVER=$(cd "$R/boot" && ls vmlinuz-* | sed 's/^vmlinuz-//' | sort -V | tail -n1)
    [ -n "$KVER" ] && [ -f "$R/boot/initrd.img-$KVER" ] || die "no kernel/initrd in the image"
    cp "$R/boot/vmlinuz-$KVER" "$B/out/debian-vmlinuz"
    cp "$R/boot/initrd.img-$KVER" "$B/out/debian-initrd.img"

    used_mib=$(( $(du -sxk "$R" | cut -f1) / 1024 ))
    # ext4 metadata (inode tables, journal) takes ~7% plus a fixed part.
    size_mib=$(( used_mib + used_mib / 10 + FREE_MIB + 8 ))
    mkfs.ext4 -q -F -L xenith-debian -d "$R" "$B/out/debian.img" "${size_mib}M" >/dev/null
    printf '%s\n' "$KEY_SRC" "kernel=$KVER" "rootfs=${used_mib}MiB" "image=${size_mib}MiB" > "$B/out/manifest"
    rm -rf "$R"
    cache_publish
    echo "build-debian-image: built $KEY in $(( $(date +%s) - start )) s" >&2
fi
CACHE_DIR=$XENITH_CACHE/$KEY
cache_export "$OUT" debian.img debian-vmlinuz debian-initrd.img

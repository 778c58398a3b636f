#!/bin/bash
# build-test-guest.sh OUTDIR
# Writes OUTDIR/vmlinuz (Debian's cloud kernel) and OUTDIR/initrd.img (busybox
# initramfs with that kernel's virtio modules, e2fsprogs' mke2fs, Debian's iperf3
# and guest/init as /init).
# Everything comes from Debian packages; see guest/README.md.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
need apt-get apt-cache dpkg-deb depmod modprobe cpio gzip ldd sha256sum

MODULES="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
virtio_blk failover net_failover virtio_net virtio_console virtio_balloon vmxnet3 button evdev pvpanic_mmio pvpanic_pci"

MKE2FS=$(command -v mke2fs || true)
[ -x "$MKE2FS" ] || MKE2FS=/sbin/mke2fs
[ -x "$MKE2FS" ] || die "mke2fs not found (install e2fsprogs)"
MKE2FS_FILES=$(ldd "$MKE2FS" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')

KPKG=$(kernel_package)
KVER=${KPKG#linux-image-}
KPKG_V=$(apt_candidate "$KPKG")
BB_V=$(apt_candidate busybox-static)
# iperf3 (bench/net.py) and the libraries it links that the host's libc6 does not
# provide; those come from the host like mke2fs's, so libc6's version is in the key.
IPERF_PKGS=""
for p in iperf3 libiperf0 libsctp1 libssl3; do IPERF_PKGS="$IPERF_PKGS $p=$(apt_candidate $p)"; done
LIBC_V=$(dpkg-query -W -f '${Version}' libc6 2>/dev/null) || die "libc6 is not installed on this host"
KEY_SRC=$(printf '%s\n' "$KPKG=$KPKG_V" "busybox-static=$BB_V" $IPERF_PKGS "host-libc6=$LIBC_V" "$MODULES"
          hash_files "$MKE2FS" $MKE2FS_FILES /etc/mke2fs.conf \
              "$HERE/init" "$HERE/udhcpc.script" "$HERE/build-test-guest.sh" "$HERE/common.sh")
KEY=test-guest-$KVER-$(printf '%s' "$KEY_SRC" | sha256sum | cut -c1-12)

if [ ! -d "$XENITH_CACHE/$KEY" ]; then
    start=$(date +%s)
    cache_begin "$KEY"
    B=$BUILD_DIR
    mkdir -p "$B/debs" "$B/x" "$B/root" "$B/out"
    apt_fetch "$B/debs" "$KPKG=$KPKG_V" "busybox-static=$BB_V" $IPERF_PKGS
    for d in "$B"/debs/*.deb; do dpkg-deb -x "$d" "$B/x"; done

    # Modules: depmod the full tree once to learn the dependency closure, copy
    # just that closure, then depmod the copy so its modules.dep is its own.
    depmod -b "$B/x" "$KVER"
    R=$B/root
    for m in $MODULES; do
        modprobe -d "$B/x" -S "$KVER" --show-depends "$m" \
            || die "module $m not in $KPKG"
    done | awk '$1 == "insmod" { print $2 }' | sort -u | while read -r ko; do
        rel=${ko#"$B/x"}
        mkdir -p "$R$(dirname "$rel")"
        cp "$ko" "$R$rel"
    done
    cp "$B/x/lib/modules/$KVER"/modules.{order,builtin,builtin.modinfo} "$R/lib/modules/$KVER/"
    depmod -b "$R" "$KVER"
    rm "$R/lib/modules/$KVER/modules.builtin.modinfo"   # 400 kB only depmod reads

    # busybox and its applet links (mke2fs stays e2fsprogs' own, below).
    mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,mnt,root,usr/share/udhcpc}
    cp "$B/x/bin/busybox" "$R/bin/busybox"
    "$R/bin/busybox" --list-full | while read -r a; do
        case $a in bin/busybox|*/mke2fs|*/mkfs.ext2) continue ;; esac
        ln -sf /bin/busybox "$R/$a"
    done

    # e2fsprogs' mke2fs with its shared libraries (busybox's only makes ext2).
    for f in "$MKE2FS" $MKE2FS_FILES; do
        real=$(readlink -f "$f")
        mkdir -p "$R$(dirname "$f")"
        cp "$real" "$R$f"
    done
    if [ "$MKE2FS" != /sbin/mke2fs ] && [ ! -e "$R/sbin/mke2fs" ]; then ln -s "$MKE2FS" "$R/sbin/mke2fs"; fi
    for t in mkfs.ext4 mkfs.ext3 mkfs.ext2; do ln -sf mke2fs "$R/sbin/$t"; done
    cp /etc/mke2fs.conf "$R/etc/mke2fs.conf"

    # iperf3 and exactly the shared objects it loads: those ldd finds in the
    # extracted packages (libiperf, libcrypto, libsctp; not libssl, nor
    # OpenSSL's engines and modules) go to the same path in the image, the
    # rest (libc, libm, the loader) are the host's, as for mke2fs.
    XL=$B/x/usr/lib/x86_64-linux-gnu
    IPERF_FILES=$(LD_LIBRARY_PATH=$XL ldd "$B/x/usr/bin/iperf3" \
        | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
    [ -n "$IPERF_FILES" ] || die "ldd found no libraries for iperf3"
    for f in /usr/bin/iperf3 $IPERF_FILES; do
        case $f in
            "$B/x"/*) src=$f; dst=${f#"$B/x"} ;;
            /usr/bin/iperf3) src=$B/x$f; dst=$f ;;
            *) src=$f; dst=$f ;;
        esac
        [ -e "$R$dst" ] && continue
        mkdir -p "$R$(dirname "$dst")"
        cp "$(readlink -f "$src")" "$R$dst"
    done

    install -m 0755 "$HERE/init" "$R/init"
    install -m 0755 "$HERE/udhcpc.script" "$R/usr/share/udhcpc/default.script"
    printf 'root:x:0:0:root:/root:/bin/sh\n' > "$R/etc/passwd"
    printf 'root:x:0:\n' > "$R/etc/group"
    printf "export PS1='\\\\h:\\\\w# '\n" > "$R/etc/profile"
    chmod 1777 "$R/tmp"

    ( cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet ) \
        | gzip -9 -n > "$B/out/initrd.img"
    cp "$B/x/boot/vmlinuz-$KVER" "$B/out/vmlinuz"
    printf '%s\n' "$KEY_SRC" > "$B/out/manifest"
    cache_publish
    echo "build-test-guest: built $KEY in $(( $(date +%s) - start )) s" >&2
fi
CACHE_DIR=$XENITH_CACHE/$KEY
cache_export "$OUT" vmlinuz initrd.img

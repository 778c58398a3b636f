#!/bin/bash
# build-hvm-iso.sh OUTDIR
# Writes OUTDIR/hvm-test.iso: a BIOS-bootable CD-ROM image (grub-mkrescue, GRUB for
# i386-pc on an El Torito ISO 9660 made by xorriso) holding the test guest's kernel and
# initramfs, for HVM domains that boot from CD-ROM (boot='d'). GRUB talks on COM1 and
# the VGA console and boots at once; the kernel writes to tty0 (VNC) and ttyS0 (xm console).
# Host packages: grub-pc-bin grub-common xorriso mtools. See guest/README.md.
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 OUTDIR" >&2; exit 2; }
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/common.sh"
need grub-mkrescue xorriso mformat sha256sum
[ -d /usr/lib/grub/i386-pc ] || die "GRUB for BIOS is missing (install grub-pc-bin)"

"$HERE/build-test-guest.sh" "$OUT"
GRUB_V=$(dpkg-query -W -f='${Version}' grub-pc-bin 2>/dev/null || echo unknown)
KEY_SRC=$(printf '%s\n' "grub-pc-bin=$GRUB_V"
          hash_files "$OUT/vmlinuz" "$OUT/initrd.img" "$HERE/build-hvm-iso.sh" "$HERE/common.sh")
KEY=hvm-iso-$(printf '%s' "$KEY_SRC" | sha256sum | cut -c1-12)

if [ ! -d "$XENITH_CACHE/$KEY" ]; then
    start=$(date +%s)
    cache_begin "$KEY"
    B=$BUILD_DIR
    mkdir -p "$B/iso/boot/grub" "$B/out"
    cp "$OUT/vmlinuz" "$OUT/initrd.img" "$B/iso/boot/"
    cat > "$B/iso/boot/grub/grub.cfg" <<'CFG'
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry "Xenith HVM test guest" {
    linux /boot/vmlinuz console=tty0 console=ttyS0 quiet cryptomgr.notests
    initrd /boot/initrd.img
}
CFG
    grub-mkrescue -o "$B/out/hvm-test.iso" "$B/iso" 2>"$B/log" \
        || { cat "$B/log" >&2; die "grub-mkrescue failed"; }
    printf '%s\n' "$KEY_SRC" > "$B/out/manifest"
    cache_publish
    echo "build-hvm-iso: built $KEY in $(( $(date +%s) - start )) s" >&2
fi
CACHE_DIR=$XENITH_CACHE/$KEY
cache_export "$OUT" hvm-test.iso

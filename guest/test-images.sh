#!/bin/bash
# test-images.sh OUTDIR [check...]
# Builds (or takes from the cache) both guest images into OUTDIR and boots them
# under QEMU TCG: ready line, xenith.run, virtio disk, Ctrl-C, poweroff, reboot,
# panic, ip=, and the Debian image's passwordless root login.  Exit status 0 only
# if every check passed.  Prints "SKIP: ..." and exits 0 when QEMU is missing.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 OUTDIR [run disk interactive reboot panic net dhcp debian]" >&2; exit 2; }
OUT=$1; shift
HERE=$(cd "$(dirname "$0")" && pwd)

command -v qemu-system-x86_64 >/dev/null || { echo "SKIP: qemu-system-x86_64 not installed (Debian package qemu-system-x86)"; exit 0; }
command -v python3 >/dev/null || { echo "SKIP: python3 not installed"; exit 0; }

checks=("$@")
want_debian=0 want_test=0
if [ ${#checks[@]} -eq 0 ]; then want_debian=1 want_test=1; fi
for c in "${checks[@]}"; do
    if [ "$c" = debian ]; then want_debian=1; else want_test=1; fi
done

if [ $want_test = 1 ]; then
    t0=$SECONDS; "$HERE/build-test-guest.sh" "$OUT"
    echo "test guest ready in $OUT ($((SECONDS - t0)) s)"
fi
if [ $want_debian = 1 ]; then
    t0=$SECONDS; "$HERE/build-debian-image.sh" "$OUT"
    echo "debian image ready in $OUT ($((SECONDS - t0)) s)"
fi
exec python3 "$HERE/test_images.py" "$OUT" "${checks[@]}"

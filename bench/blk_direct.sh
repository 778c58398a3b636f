#!/bin/bash
# Direct I/O benchmark: the host's own O_DIRECT figures (fio), blkback in direct mode
# (--cache direct) and qemu-storage-daemon with cache.direct=on, side by side, on the same
# image file on a disk file system (not tmpfs: its "direct" I/O is memory copies, and before Linux 6.6 it refused O_DIRECT), the two back-ends
# driven by the same synthetic front-end (vhost-user-frontend bench); blkback twice, with its
# I/O threads and with --aio io_uring. Figures: 4 KiB random
# reads at QD32 (IOPS), 1 MiB sequential reads and writes at QD8 (MB/s); fio runs the same
# shapes (libaio, direct=1, iodepth 32 and 8).
#
#   bench/blk_direct.sh          # release build in .build-vhost (swift build -c release ...)
#   BENCH_SECONDS=5 BENCH_RUNS=5 BENCH_IMAGE_MIB=2048 BENCH_DIR=/var/tmp SCRATCH=.build bench/blk_direct.sh
# The three run alternately BENCH_RUNS times (default 3); the table shows medians and the
# load average. Targets: blkback ≥ 0.9× the host (fio) and ≥ 1.0× qemu-storage-daemon.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH=${SCRATCH:-.build-vhost}
BIN="$ROOT/$SCRATCH/release"
SECS=${BENCH_SECONDS:-3}
RUNS=${BENCH_RUNS:-3}
MIB=${BENCH_IMAGE_MIB:-1024}
DIR=${BENCH_DIR:-/var/tmp}
for b in blkback vhost-user-frontend; do
    [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: swift build -c release --scratch-path $SCRATCH --product $b" >&2; exit 1; }
done
command -v qemu-storage-daemon >/dev/null || { echo "SKIP: blk_direct.sh: qemu-storage-daemon not installed (Debian qemu-system-common)"; exit 0; }
command -v fio >/dev/null || { echo "SKIP: blk_direct.sh: fio not installed (Debian fio; make deps)"; exit 0; }
fstype=$(findmnt -n -o FSTYPE -T "$DIR" 2>/dev/null || stat -f -c %T "$DIR")
[ "$fstype" != tmpfs ] || { echo "SKIP: blk_direct.sh: $DIR is tmpfs, not a disk (set BENCH_DIR)"; exit 0; }

WORK=$(mktemp -d "$DIR/blk-direct-bench.XXXXXX")
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
IMG="$WORK/disk.img"
# Fully allocated (not sparse): every read reaches the device.
dd if=/dev/urandom of="$IMG" bs=1M count="$MIB" status=none conv=fsync

declare -A R
add() { R[$1]="${R[$1]:-} $2"; }
backend() {   # name, socket, command...
    local name=$1 sock=$2; shift 2
    rm -f "$sock"
    "$@" >"$WORK/$name.log" 2>&1 &
    PID=$!
    for _ in $(seq 500); do [ -S "$sock" ] && break; sleep 0.01; done
    sleep 0.2
    "$BIN/vhost-user-frontend" bench --socket "$sock" --seconds "$SECS" >"$WORK/$name.out"
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
    while IFS='=' read -r k v; do add "$name.$k" "$v"; done <"$WORK/$name.out"
}
fio_one() {   # key, fio options...
    local key=$1; shift
    fio --name=b --filename="$IMG" --direct=1 --ioengine=libaio --time_based --runtime="$SECS" \
        --output-format=json "$@" >"$WORK/fio.json"
    python3 - "$WORK/fio.json" "$key" >>"$WORK/host.out" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
key = sys.argv[2]
if key.endswith("_iops"):
    print(f"{key}={int(j['read']['iops'])}")
else:
    side = "read" if "read" in key else "write"
    print(f"{key}={int(j[side]['bw_bytes'] / 1e6)}")
PY
}
host() {
    : >"$WORK/host.out"
    fio_one randread_4k_qd32_iops --rw=randread --bs=4k --iodepth=32
    fio_one seqread_1m_mbps --rw=read --bs=1M --iodepth=8
    fio_one seqwrite_1m_mbps --rw=write --bs=1M --iodepth=8
    while IFS='=' read -r k v; do add "host.$k" "$v"; done <"$WORK/host.out"
}

for _ in $(seq "$RUNS"); do
    host
    backend blkback "$WORK/blkback.sock" "$BIN/blkback" --socket "$WORK/blkback.sock" --image "file:$IMG" --cache direct --quiet ${BLKBACK_ARGS:-}
    backend uring "$WORK/uring.sock" "$BIN/blkback" --socket "$WORK/uring.sock" --image "file:$IMG" --cache direct --aio io_uring --quiet
    backend qsd "$WORK/qsd.sock" qemu-storage-daemon \
        --blockdev "driver=file,node-name=f,filename=$IMG,cache.direct=on,aio=native" \
        --export "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$WORK/qsd.sock,writable=on"
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
m() { median <<<"${R[$1]:-}"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
echo "direct I/O (O_DIRECT): medians of $RUNS alternating runs, ${SECS}s per figure, ${MIB} MiB image on $fstype ($DIR); load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-36s %18s %16s %17s\n' "" "randread 4K QD32" "seqread 1M MB/s" "seqwrite 1M MB/s"
for n in host blkback uring qsd; do
    case $n in host) label="host fio (libaio, direct=1)";; blkback) label="blkback --cache direct";; uring) label="blkback --cache direct --aio io_uring";; qsd) label="qemu-storage-daemon cache.direct=on";; esac
    printf '%-36s %13s IOPS %16s %17s\n' "$label" "$(m $n.randread_4k_qd32_iops)" "$(m $n.seqread_1m_mbps)" "$(m $n.seqwrite_1m_mbps)"
done
echo "each run (in order):"
for n in host blkback uring qsd; do
    printf '  %-8s randread %s | seqread %s | seqwrite %s\n' "$n" "${R[$n.randread_4k_qd32_iops]:-}" "${R[$n.seqread_1m_mbps]:-}" "${R[$n.seqwrite_1m_mbps]:-}"
done
for ours in blkback uring; do
for peer in host qsd; do
    printf '%-36s %18s %16s %17s\n' "$([ $ours = uring ] && echo "blkback io_uring" || echo blkback) / $peer" \
        "$(ratio "$(m $ours.randread_4k_qd32_iops)" "$(m $peer.randread_4k_qd32_iops)")" \
        "$(ratio "$(m $ours.seqread_1m_mbps)" "$(m $peer.seqread_1m_mbps)")" \
        "$(ratio "$(m $ours.seqwrite_1m_mbps)" "$(m $peer.seqwrite_1m_mbps)")"
done
done

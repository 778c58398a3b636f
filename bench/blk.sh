#!/bin/bash
# Block back-end benchmark: blkback and qemu-storage-daemon's vhost-user-blk export side by
# side, on the same image, driven by the same synthetic front-end (vhost-user-frontend
# bench), blkback both with its I/O threads and with --aio io_uring: 4 KiB random reads at QD32 (IOPS), 1 MiB sequential reads and writes at QD8
# (MB/s), and each back-end's resident memory (VmRSS, VmHWM from /proc/PID/status).
#
#   bench/blk.sh                 # release build in .build-vhost (swift build -c release ...)
#   BENCH_SECONDS=5 BENCH_RUNS=5 BENCH_IMAGE_MIB=2048 SCRATCH=.build bench/blk.sh
# The back-ends run alternately BENCH_RUNS times (default 3); the table shows medians, since
# a shared 2-core host is noisy. BLKBACK_ARGS adds blkback options (e.g. --io-threads 4).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCRATCH=${SCRATCH:-.build-vhost}
BIN="$ROOT/$SCRATCH/release"
SECS=${BENCH_SECONDS:-3}
RUNS=${BENCH_RUNS:-3}
MIB=${BENCH_IMAGE_MIB:-1024}
for b in blkback vhost-user-frontend; do
    [ -x "$BIN/$b" ] || { echo "missing $BIN/$b: swift build -c release --scratch-path $SCRATCH --product $b" >&2; exit 1; }
done
command -v qemu-storage-daemon >/dev/null || { echo "SKIP: qemu-storage-daemon not installed (Debian qemu-system-common)"; exit 0; }

WORK=$(mktemp -d /tmp/blk-bench.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
IMG="$WORK/disk.img"
# A fully allocated image (not sparse), in the page cache for both back-ends alike.
dd if=/dev/urandom of="$IMG" bs=1M count="$MIB" status=none

declare -A R
run() {   # name, socket, command...
    local name=$1 sock=$2; shift 2
    "$@" >"$WORK/$name.log" 2>&1 &
    PID=$!
    for _ in $(seq 500); do [ -S "$sock" ] && break; sleep 0.01; done
    sleep 0.2
    "$BIN/vhost-user-frontend" bench --socket "$sock" --seconds "$SECS" >"$WORK/$name.out"
    echo "rss=$(awk '/VmRSS/ {print int($2/1024)}' /proc/$PID/status)" >>"$WORK/$name.out"
    echo "hwm=$(awk '/VmHWM/ {print int($2/1024)}' /proc/$PID/status)" >>"$WORK/$name.out"
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
    while IFS='=' read -r k v; do R[$name.$k]="${R[$name.$k]:-} $v"; done <"$WORK/$name.out"
    rm -f "$WORK/$name.out"
}
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

for _ in $(seq "$RUNS"); do
    rm -f "$WORK/blkback.sock" "$WORK/qsd.sock"
    run blkback "$WORK/blkback.sock" "$BIN/blkback" --socket "$WORK/blkback.sock" --image "file:$IMG" --quiet ${BLKBACK_ARGS:-}
    rm -f "$WORK/uring.sock"
    run uring "$WORK/uring.sock" "$BIN/blkback" --socket "$WORK/uring.sock" --image "file:$IMG" --quiet --aio io_uring
    run qsd "$WORK/qsd.sock" qemu-storage-daemon \
        --blockdev "driver=file,node-name=f,filename=$IMG" \
        --export "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path=$WORK/qsd.sock,writable=on"
done

echo "medians of $RUNS alternating runs, ${SECS}s per figure, ${MIB} MiB image"
printf '%-20s %18s %16s %17s %9s %9s\n' backend "randread 4K QD32" "seqread 1M MB/s" "seqwrite 1M MB/s" "RSS MiB" "peak MiB"
for n in blkback uring qsd; do
    label=$n; [ $n = qsd ] && label=qemu-storage-daemon; [ $n = uring ] && label="blkback io_uring"
    printf '%-20s %13s IOPS %16s %17s %9s %9s\n' "$label" \
        "$(median <<<"${R[$n.randread_4k_qd32_iops]}")" "$(median <<<"${R[$n.seqread_1m_mbps]}")" \
        "$(median <<<"${R[$n.seqwrite_1m_mbps]}")" "$(median <<<"${R[$n.rss]}")" "$(median <<<"${R[$n.hwm]}")"
done

# Restart: SIGKILL of blkback with writes in flight → first completed request after the
# restarted back-end came up (includes its start-up), three times.
rm -f "$WORK/restart.sock"
"$BIN/vhost-user-frontend" restart --socket "$WORK/restart.sock" --kills 3 \
    --backend-cmd "$BIN/blkback --socket $WORK/restart.sock --image file:$IMG --quiet --num-queues 2" >"$WORK/restart.out" 2>&1 || true
printf 'blkback SIGKILL → first completion after restart: %s ms (%s)\n' \
    "$(grep '^restart_ms=' "$WORK/restart.out" | cut -d= -f2 | paste -sd' ')" "$(grep '^verified' "$WORK/restart.out")"

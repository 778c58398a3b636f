#!/usr/bin/env python3
"""Network back-end benchmark (make bench): netback side by side with its peers.

1. 64-byte frames per second from a synthetic virtio-net driver (vhost-user-frontend
   net-bench) through netback into a tap on a bridge, next to the kernel's vhost-net
   where /dev/vhost-net exists (it does not on every machine; then it says so).
2. Guest-to-guest TCP throughput: iperf3 -s in one test guest (make guest), iperf3 -c in
   the other (one stream, BENCH_TCP_SECONDS, first second omitted; the receiver's figure),
   both under QEMU TCG, alternately with netback as both guests' vhost-user-net back-end
   and with QEMU's own virtio-net on the same taps (-netdev tap,vhost=off): same engine,
   same guests, same bridge. Target: netback >= QEMU's built-in. Both use INTx
   (vectors=0): QEMU 7.2 crashes with vhost-user virtio-net and MSI-X under TCG.
3. The host CPU each back-end costs per GB moved: over the transfer window (from the
   sender guest's console marker before iperf3 -c to the one after it) the utime + stime
   (+ waited-for children) of both netbacks and both QEMUs from /proc/PID/stat, against
   the two QEMUs alone with QEMU's own virtio-net, divided by the bytes the bridge handed
   to the receiver's tap in the same window (its tx_bytes). The QEMUs' share includes the
   TCG guests themselves, which is the same work in both set-ups. Target: netback's whole
   set-up below QEMU's.

Everything runs in a network namespace this script creates and removes.
Environment: BIN (directory with netback and vhost-user-frontend; default .build/release),
BIN_BEFORE (optional: a second directory with an older netback, run as a third mode in
every round, for before/after figures), BENCH_SECONDS (pps run length, 3), BENCH_RUNS
(alternating rounds, medians; 5), BENCH_TCP_SECONDS (iperf3 -t, 10).
Needs root, iproute2, qemu-system-x86_64 and build/guest; prints SKIP otherwise.
"""
import os, re, shutil, signal, statistics, subprocess, sys, tempfile, threading, time, urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BIN", os.path.join(ROOT, ".build", "release"))
SECS = int(os.environ.get("BENCH_SECONDS", "3"))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
BIN_BEFORE = os.environ.get("BIN_BEFORE")
TICK = os.sysconf("SC_CLK_TCK")
TCP_SECS = int(os.environ.get("BENCH_TCP_SECONDS", "10"))
NS = "xnb-bench-%d" % os.getpid()
GUEST = os.path.join(ROOT, "build", "guest")
MANIFEST = os.path.join(ROOT, "manifests", "netback.manifest")


def sh(cmd, check=True):
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True)


def nsx(cmd, check=True):
    return sh("ip netns exec %s %s" % (NS, cmd), check)


def setup():
    sh("ip netns add " + NS)
    nsx("ip link set lo up")
    nsx(os.path.join(ROOT, "services/scripts/network-bridge") + " start bridge=xenbr0 netdev=none")
    nsx("ip addr add 10.77.0.1/24 dev xenbr0")
    for vif in ("vif1.0", "vif2.0"):
        nsx("ip tuntap add dev %s mode tap vnet_hdr" % vif)
        nsx(os.path.join(ROOT, "services/scripts/vif-bridge") + " online vif=" + vif)


def netback(vif, sock, mac, bindir=BIN):
    if os.path.exists(sock):
        os.unlink(sock)
    # ip netns exec execs the command in its own process: the pid is netback's.
    p = subprocess.Popen(["ip", "netns", "exec", NS, os.path.join(bindir, "netback"), "--socket", sock, "--tap", vif,
                          "--mac", mac, "--manifest", MANIFEST, "--quiet"], stderr=subprocess.PIPE, text=True)
    for _ in range(500):
        if os.path.exists(sock):
            break
        time.sleep(0.01)
    return p


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def pps(work):
    sock = os.path.join(work, "pps.sock")
    nb = netback("vif1.0", sock, "02:16:3e:00:00:02")
    try:
        out = subprocess.run([os.path.join(BIN, "vhost-user-frontend"), "net-bench", "--socket", sock,
                              "--seconds", str(SECS)], capture_output=True, text=True, timeout=60).stdout
        m = re.search(r"tx_64b_pps=(\d+)", out)
        return int(m.group(1)) if m else None
    finally:
        stop(nb)


def qemu_args(nic, mac, ip, script):
    run = urllib.parse.quote(script, safe="")
    return ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-M", "q35", "-smp", "1", "-m", "256M",
            "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-serial", "stdio",
            "-no-reboot", "-object", "memory-backend-memfd,id=mem,size=256M,share=on", "-numa", "node,memdev=mem"] + nic + [
            "-device", "virtio-net-pci,netdev=net0,mac=%s,vectors=0" % mac,
            "-kernel", os.path.join(GUEST, "vmlinuz"), "-initrd", os.path.join(GUEST, "initrd.img"),
            "-append", "console=ttyS0 quiet cryptomgr.notests panic=-1 ip=%s::10.77.0.1:255.255.255.0:g:eth0:off xenith.run=%s" % (ip, run)]


def cpu_seconds(pid):
    """utime + stime + cutime + cstime in seconds (/proc/PID/stat, proc(5)) of `pid` and every
    live descendant (netback runs in a child it forks into its sandbox's namespaces; its
    time reaches the parent's cutime only when it exits), or 0 once gone."""
    def stat(p):
        try:
            with open("/proc/%s/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        # After "pid (comm)": state is field 3, ppid field 4, utime..cstime fields 14..17.
        return int(fields[1]), sum(int(v) for v in fields[11:15])
    stats = {}
    for p in os.listdir("/proc"):
        if p.isdigit():
            st = stat(p)
            if st:
                stats[int(p)] = st
    if pid not in stats:
        return 0.0
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += stats[p][1]
        todo.extend(c for c, (pp, _) in stats.items() if pp == p)
    return total / TICK


def tap_tx(vif):
    """(bytes, frames) the kernel handed to the reader of tap `vif` (tx_bytes, tx_packets) in the
    bench namespace."""
    out = nsx("cat /sys/class/net/%s/statistics/tx_bytes /sys/class/net/%s/statistics/tx_packets" % (vif, vif)).stdout.split()
    return int(out[0]), int(out[1])


def throughput(work, mode):
    """One guest 1 → guest 2 run: (iperf3's receiver Mbit/s, CPU s/GB of everything, CPU s/GB
    of the back-ends alone or None, mean bytes per frame into the receiver's tap) or None. `mode` is "netback", "before" (netback from
    BIN_BEFORE) or "qemu"."""
    recv = "iperf3 -s -1 >/dev/null 2>&1; echo XENITH-RECEIVED; sleep 2; poweroff -f"
    send = ("i=0; until ping -c 1 -W 1 10.77.0.12 >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 60 ] && break; done; "
            "echo XENITH-START; "
            "for i in 1 2 3 4 5 6 7 8 9 10; do iperf3 -c 10.77.0.12 -t %d -O 1 -f m > /tmp/out 2>&1 && break; sleep 1; done; "
            "echo XENITH-END; "
            "sed -n 's|.* \\([0-9.]*\\) Mbits/sec.*receiver.*|XENITH-MBITS \\1|p' /tmp/out; "
            "grep -q receiver /tmp/out || cat /tmp/out; poweroff -f") % TCP_SECS
    procs, backends = [], []
    try:
        guests = []
        for vif, mac, ip, script in (("vif2.0", "00:16:3e:00:02:01", "10.77.0.12", recv),
                                     ("vif1.0", "00:16:3e:00:01:01", "10.77.0.11", send)):
            if mode in ("netback", "before"):
                sock = os.path.join(work, vif + ".sock")
                backends.append(netback(vif, sock, mac, BIN_BEFORE if mode == "before" else BIN))
                nic = ["-chardev", "socket,id=n0,path=%s,reconnect=1" % sock, "-netdev", "vhost-user,id=net0,chardev=n0"]
                cmd = qemu_args(nic, mac, ip, script)
            else:
                nic = ["-netdev", "tap,id=net0,ifname=%s,script=no,downscript=no,vhost=off" % vif]
                cmd = ["ip", "netns", "exec", NS] + qemu_args(nic, mac, ip, script)
            guests.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            procs.append(guests[-1])
            time.sleep(0.5)
        pids = [p.pid for p in guests + backends]
        marks, lines = {}, []

        def sample():
            return (time.monotonic(), [cpu_seconds(pid) for pid in pids], tap_tx("vif2.0"))

        def reader():
            # The sender's console, line by line: sample at the markers around iperf3 -c.
            for line in guests[1].stdout:
                lines.append(line)
                for tag in ("XENITH-START", "XENITH-END"):
                    if line.strip() == tag and tag not in marks:
                        marks[tag] = sample()
        t = threading.Thread(target=reader, daemon=True)
        t.start()
        guests[1].wait(timeout=180 + 2 * TCP_SECS)
        t.join(10)
        out = "".join(lines)
        m = re.search(r"XENITH-MBITS ([\d.]+)", out)
        if not m or len(marks) != 2:
            sys.stderr.write("%s: no iperf3 figure from the sender guest:\n%s\n" % (mode, out[-1500:]))
            return None
        (t0, c0, b0), (t1, c1, b1) = marks["XENITH-START"], marks["XENITH-END"]
        gb = (b1[0] - b0[0]) / 1e9
        frame = (b1[0] - b0[0]) / max(1, b1[1] - b0[1])
        if gb <= 0:
            sys.stderr.write("%s: no bytes reached the receiver's tap\n" % mode)
            return None
        cpu = [b - a for a, b in zip(c0, c1)]
        nb = sum(cpu[len(guests):]) / gb if backends else None
        return float(m.group(1)), sum(cpu) / gb, nb, frame
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for b in backends:
            stop(b)


def fmt(v, unit):
    return "n/a" if v is None else ("%d %s" % (v, unit) if v >= 100 else "%.1f %s" % (v, unit))


def main():
    if os.getuid() != 0:
        print("SKIP: bench/net.py needs root (network namespaces, taps)"); return
    for b in ("netback", "vhost-user-frontend"):
        if not os.access(os.path.join(BIN, b), os.X_OK):
            print("SKIP: %s missing (BIN=%s; make release or swift build -c release)" % (b, BIN)); return
    work = tempfile.mkdtemp(prefix="net-bench.")
    try:
        setup()
        rates = [r for r in (pps(work) for _ in range(RUNS)) if r]
        print("64-byte frames, synthetic driver → tap (%d s, median of %d):" % (SECS, len(rates)))
        print("  netback (vhost-user)      %s" % fmt(statistics.median(rates) if rates else None, "frames/s"))
        if os.path.exists("/dev/vhost-net"):
            print("  kernel vhost-net          not measured (needs a vhost-kernel driver in the synthetic front-end)")
        else:
            print("  kernel vhost-net          unavailable (/dev/vhost-net does not exist here)")
        if not shutil.which("qemu-system-x86_64") or not os.path.exists(os.path.join(GUEST, "vmlinuz")):
            print("SKIP: guest-to-guest TCP (needs qemu-system-x86_64 and make guest)"); return
        modes = ["netback", "qemu"] + (["before"] if BIN_BEFORE else [])
        names = {"netback": "netback", "qemu": "QEMU virtio-net", "before": "netback (BIN_BEFORE)"}
        load0 = " ".join(open("/proc/loadavg").read().split()[:3])
        res = {m: [] for m in modes}
        for _ in range(RUNS):
            for mode in modes:
                v = throughput(work, mode)
                if v:
                    res[mode].append(v)

        def med(mode, i):
            vals = [r[i] for r in res[mode] if r[i] is not None]
            return statistics.median(vals) if vals else None
        print("guest → guest TCP, iperf3 -t %d, 1 stream, QEMU TCG guests (%d alternating rounds; medians):"
              % (TCP_SECS, RUNS))
        print("  %-36s" % "" + "".join("%-24s" % names[m] for m in modes))
        print("  %-36s" % "throughput (median)" + "".join("%-24s" % fmt(med(m, 0), "Mbit/s") for m in modes))
        print("  %-36s" % "host CPU s/GB, back-end + 2 QEMUs" + "".join("%-24s" % fmt(med(m, 1), "s/GB") for m in modes))
        print("  %-36s" % "host CPU s/GB, netback alone" + "".join("%-24s" % ("n/a" if med(m, 2) is None else "%.2f s/GB" % med(m, 2)) for m in modes))
        print("  %-36s" % "mean frame to the receiver" + "".join("%-24s" % fmt(med(m, 3), "bytes") for m in modes))
        for m in modes:
            print("  runs, %-20s Mbit/s %s; CPU s/GB %s" % (names[m], " ".join("%.0f" % r[0] for r in res[m]) or "-",
                                                          " ".join("%.1f" % r[1] for r in res[m]) or "-"))
        nb, qm = med("netback", 0), med("qemu", 0)
        verdict = "n/a" if nb is None or qm is None else ("met" if nb >= qm else "NOT met (%.0f %% of QEMU)" % (100 * nb / qm))
        print("  target netback throughput >= QEMU's built-in: %s" % verdict)
        nc, qc = med("netback", 1), med("qemu", 1)
        verdict = "n/a" if nc is None or qc is None else ("met" if nc < qc else "NOT met (%.0f %% of QEMU)" % (100 * nc / qc))
        print("  target netback + 2 QEMUs CPU/GB < 2 QEMUs with their own virtio-net: %s" % verdict)
        print("  load average: %s before, %s after" % (load0, " ".join(open("/proc/loadavg").read().split()[:3])))
    finally:
        sh("ip netns del " + NS, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

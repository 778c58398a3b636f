#!/usr/bin/env python3
"""Live migration benchmark (make bench): `xm migrate --live` next to raw QEMU-to-QEMU.

The same idle test guest (make guest; BENCH_MEMORY MiB, 1 vCPU, counting on its console,
no disk or NIC) under QEMU TCG, between two network namespaces joined by a veth pair:

  xenith  `xm migrate --live DOM HOST` (the API's reply gives its figures): xend's
          handshake with the target's relocation server, the sandboxed migration
          services framing and checking the stream, the target domain made with
          `-incoming defer`, QEMU's pre-copy (downtime-limit 300 ms), switch-over, the
          source removed. Downtime: the guest stopped on the source until it runs on the
          target (end to end); total: the request to the guest running on the target.
  raw     QEMU alone with the same flags: a target QEMU `-incoming tcp:`, the source
          `migrate tcp:` with downtime-limit 300 ms and max-bandwidth unlimited; downtime
          end to end as ours (QEMU's `downtime` plus the wait from the source's completion
          to the target's `cont`, QMP polled every 10 ms), total is QEMU's `total-time`
          (the target QEMU is started beforehand).

Alternately, BENCH_RUNS times each (xenith goes there and back); medians side by side.
Target: xenith within 1.1x of raw. Xen's paper reports 60-210 ms downtime.

Environment: BIN (directory with xend, xm, migration, xenstored, xenconsoled; default
.build/release), BENCH_RUNS (3), BENCH_MEMORY (MiB, 256).
Needs root, iproute2, qemu-system-x86_64 and build/guest; prints SKIP otherwise.
"""
import http.client, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.parse

from qmp import QMP, wait_count

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BIN", os.path.join(ROOT, ".build", "release"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
MEM = int(os.environ.get("BENCH_MEMORY", "256"))
GUEST = os.path.join(ROOT, "build", "guest")
SCRIPT = "i=0; while true; do echo count=$i; i=$((i+1)); sleep 0.5; done"
EXTRA = "quiet cryptomgr.notests xenith.run=" + urllib.parse.quote(SCRIPT, safe="")
TAG = "xbm%d" % (os.getpid() % 100000)
NS = {"a": TAG + "a", "b": TAG + "b"}
IP = {"a": "10.91.0.1", "b": "10.91.0.2"}


def skip(why):
    print("SKIP: migration: " + why)
    sys.exit(0)


def sh(*args, check=True):
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=300)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(300)
        self.sock.connect(self.path)


def raw_qemu(tmp, side, incoming):
    qmp = os.path.join(tmp, "raw-%s.qmp" % side)
    if os.path.exists(qmp):
        os.unlink(qmp)
    args = ["ip", "netns", "exec", NS[side], "qemu-system-x86_64", "-nodefaults", "-no-user-config", "-machine", "q35",
            "-accel", "tcg,thread=multi", "-cpu", "max", "-m", "%dM" % MEM, "-smp", "1",
            "-kernel", GUEST + "/vmlinuz", "-initrd", GUEST + "/initrd.img",
            "-append", EXTRA + " console=ttyS0", "-serial", "file:" + os.path.join(tmp, "raw-%s.console" % side),
            "-display", "none", "-qmp", "unix:%s,server=on,wait=off" % qmp,
            "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
    if incoming:
        args += ["-incoming", "tcp:%s:4444" % IP[side]]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p, QMP(qmp)


def raw_round(tmp):
    """One raw QEMU live migration a → b; returns (downtime ms, total s)."""
    con = os.path.join(tmp, "raw-a.console")
    if os.path.exists(con):
        os.unlink(con)
    src, qs = raw_qemu(tmp, "a", False)
    dst, qd = raw_qemu(tmp, "b", True)
    try:
        if not wait_count(con, 3):
            raise RuntimeError("raw guest did not boot")
        qs.cmd("migrate-set-parameters", {"max-bandwidth": 1 << 40, "downtime-limit": 300})
        qs.cmd("migrate", {"uri": "tcp:%s:4444" % IP["b"]})
        while True:
            r = qs.cmd("query-migrate")
            if r.get("status") == "completed":
                break
            if r.get("status") in ("failed", "cancelled"):
                raise RuntimeError("raw migration " + r.get("status"))
            time.sleep(0.01)
        seen = time.monotonic()
        while qd.cmd("query-migrate").get("status") != "completed":
            time.sleep(0.01)
        qd.cmd("cont")
        # End to end as ours: QEMU's downtime plus its completion seen here to the target's cont.
        e2e = r.get("downtime", 0) + int((time.monotonic() - seen) * 1000)
        return r.get("downtime", 0), e2e, r.get("total-time", 0) / 1000.0
    finally:
        for p in (src, dst):
            p.kill()
            p.wait()


def main():
    if os.geteuid() != 0:
        skip("needs root")
    if not shutil.which("qemu-system-x86_64"):
        skip("qemu-system-x86_64 is not installed")
    if not shutil.which("ip"):
        skip("iproute2 (ip) is not installed")
    if not os.path.exists(GUEST + "/vmlinuz"):
        skip("no test guest: run `make guest`")
    for b in ("xend", "xm", "migration"):
        if not os.access(os.path.join(BIN, b), os.X_OK):
            skip("no %s in %s (make release, or BIN=...)" % (b, BIN))
    tmp = tempfile.mkdtemp(prefix="xenith-bench-mig-")
    roots = {s: os.path.join(tmp, "host-" + s) for s in "ab"}
    results = {"xenith": ([], []), "raw": ([], [])}
    raw_qemu_downtime = []
    try:
        for s in "ab":
            sh("ip", "netns", "add", NS[s])
            sh("ip", "-n", NS[s], "link", "set", "lo", "up")
        sh("ip", "link", "add", TAG + "va", "type", "veth", "peer", "name", TAG + "vb")
        for s in "ab":
            sh("ip", "link", "set", TAG + "v" + s, "netns", NS[s])
            sh("ip", "-n", NS[s], "addr", "add", IP[s] + "/24", "dev", TAG + "v" + s)
            sh("ip", "-n", NS[s], "link", "set", TAG + "v" + s, "up")
            os.makedirs(roots[s] + "/etc/xen")
            open(roots[s] + "/etc/xen/xend-config.sxp", "w").write(
                "(domain-engine qemu)\n(xend-relocation-server yes)\n(xend-relocation-port 8002)\n")
            sh("ip", "netns", "exec", NS[s], "env", "XENITH_ROOT=" + roots[s], os.path.join(BIN, "xend"), "start")
        cfg = tmp + "/b.cfg"
        open(cfg, "w").write('kernel = "%s/vmlinuz"\nramdisk = "%s/initrd.img"\nmemory = %d\nvcpus = 1\nname = "b"\nextra = "%s"\n'
                             % (GUEST, GUEST, MEM, EXTRA))
        r = subprocess.run([os.path.join(BIN, "xm"), "create", cfg], env=dict(os.environ, XENITH_ROOT=roots["a"]),
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("xm create: " + r.stderr.strip())
        here, there = "a", "b"
        seen = {"a": 0, "b": 0}

        def counted(side):
            try:
                return open(roots[side] + "/var/log/xen/console/guest-b.log", errors="replace").read().count("count=")
            except OSError:
                return 0
        for n in range(RUNS):
            # The guest counts where it runs before each move.
            if not wait_count(roots[here] + "/var/log/xen/console/guest-b.log", seen[here] + 3):
                raise RuntimeError("xenith guest is not counting")
            seen[there] = counted(there)
            c = UnixHTTP(roots[here] + "/var/lib/xend/xend-socket")
            c.request("POST", "/api/v1/domains/b/migrate", json.dumps({"host": IP[there], "port": 8002, "live": True}),
                      {"Content-Type": "application/json"})
            reply = json.loads(c.getresponse().read())
            if "downtime_ms" not in reply:
                raise RuntimeError("xm migrate: %s" % reply)
            results["xenith"][0].append(reply["downtime_ms"])
            results["xenith"][1].append(reply["seconds"])
            here, there = there, here
            q, d, t = raw_round(tmp)
            raw_qemu_downtime.append(q)
            results["raw"][0].append(d)
            results["raw"][1].append(t)
    finally:
        for s in "ab":
            env = dict(os.environ, XENITH_ROOT=roots[s])
            subprocess.run([os.path.join(BIN, "xm"), "destroy", "b"], env=env, capture_output=True)
            subprocess.run(["ip", "netns", "exec", NS[s], os.path.join(BIN, "xend"), "stop"], env=env, capture_output=True)
            for d in ("xenstored", "xenconsoled"):
                try:
                    os.kill(int(open("%s/run/%s/%s.pid" % (roots[s], d, d)).read()), 15)
                except (OSError, ValueError):
                    pass
            sh("ip", "netns", "del", NS[s], check=False)
        shutil.rmtree(tmp, ignore_errors=True)

    load = os.getloadavg()[0]
    print("live migration, idle test guest %d MiB, QEMU TCG, veth between two namespaces, %d runs each, alternating"
          " (medians; load average %.1f)" % (MEM, RUNS, load))
    print("%-8s %14s %12s" % ("", "downtime (ms)", "total (s)"))
    med = {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in results.items()}
    for k in ("xenith", "raw"):
        print("%-8s %14d %12.2f   (runs: %s ms)" % (k, med[k][0], med[k][1], ", ".join(str(x) for x in results[k][0])))
    rd = med["xenith"][0] / max(1, med["raw"][0])
    rt = med["xenith"][1] / max(0.001, med["raw"][1])
    print("ratio    %13.2fx %11.2fx   (target <= 1.1x: downtime %s, total %s)"
          % (rd, rt, "met" if rd <= 1.1 else "NOT met", "met" if rt <= 1.1 else "NOT met"))
    print("downtime of an idle %d MiB guest: %d ms (xenith, end to end), %d ms (raw QEMU end to end; %d ms as QEMU reports it)"
          % (MEM, med["xenith"][0], med["raw"][0], statistics.median(raw_qemu_downtime)))


if __name__ == "__main__":
    main()

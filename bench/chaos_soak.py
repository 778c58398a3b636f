#!/usr/bin/env python3
"""Chaos soak (issue 16): two guests under load while services are killed at random.

xend runs in a scratch XENITH_ROOT inside a network namespace this script makes (bridge
xenbr0, no route out). Two test guests (make guest) on the qemu engine, each with a
`file:` disk on blkback and a vif on netback:

  g1  write-and-verify on its disk: 64 KiB of random bytes at a rotating offset, fsync,
      page cache dropped, read back from the device, compared; SOAK-IOERR / SOAK-MISMATCH
      lines on its console for any failure, SOAK-IO N every 25 rounds
  g2  the same on its own disk, and an iperf3 client streaming to g1 (iperf3 -s) for the
      whole soak; SOAK-TCP-RC 0 at the end when the one TCP connection lasted, anything
      else (or no line) counts as a dropped connection

Every KILL_EVERY seconds one service is chosen at random and SIGKILLed — blkback,
netback, xenconsoled, xenstored or xend — and the script waits for a new process of the
same kind (xend supervises the others; xend itself is started again by this script, as
init's Restart= would). At the end it prints kills and restarts per service, the guests'
I/O errors and mismatches, whether each guest's I/O went on after the last kill, and the
TCP outcome. Target (issue 16): zero errors, zero mismatches, zero lost connections.

Environment: BIN (directory with xend, xm and the services; default .build/release),
SOAK_SECONDS (600), KILL_EVERY (5), SOAK_SEED (random), SOAK_SERVICES (comma list;
default all five), SOAK_KEEP (leave xend, guests, root and namespace for inspection). Needs root, iproute2, qemu-system-x86_64 and build/guest; prints SKIP
otherwise. Exit status 1 when the target is missed.
"""
import os, random, re, shutil, signal, subprocess, sys, tempfile, time, urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BIN", os.path.join(ROOT, ".build", "release"))
SECONDS = int(os.environ.get("SOAK_SECONDS", "600"))
EVERY = float(os.environ.get("KILL_EVERY", "5"))
SEED = int(os.environ.get("SOAK_SEED", str(random.randrange(1 << 30))))
SERVICES = os.environ.get("SOAK_SERVICES", "blkback,netback,xenconsoled,xenstored,xend").split(",")
GUEST = os.path.join(ROOT, "build", "guest")
NS = "xsoak-%d" % os.getpid()
BRIDGE_IP = "10.78.0.1"


def sh(cmd, check=True, timeout=120):
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True, timeout=timeout)


class Host:
    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="xenith-soak.")
        os.chmod(self.root, 0o755)   # QEMU runs as its own uid and reconnects to run/xenith/*.sock
        os.makedirs(self.root + "/etc/xen")
        sh("ip netns add " + NS)
        sh("ip -n %s link set lo up" % NS)
        sh("ip netns exec %s %s/services/scripts/network-bridge start bridge=xenbr0 netdev=none" % (NS, ROOT))
        sh("ip -n %s addr add %s/24 dev xenbr0" % (NS, BRIDGE_IP))
        with open(self.root + "/etc/xen/xend-config.sxp", "w") as f:
            f.write("(domain-engine qemu)\n")

    def env(self):
        return dict(os.environ, XENITH_ROOT=self.root)

    def xend(self, verb):
        return subprocess.run(["ip", "netns", "exec", NS, "env", "XENITH_ROOT=" + self.root, os.path.join(BIN, "xend"), verb],
                              capture_output=True, text=True, timeout=120)

    def xm(self, *args, timeout=120):
        return subprocess.run([os.path.join(BIN, "xm")] + list(args), env=self.env(), capture_output=True, text=True,
                              timeout=timeout)

    def console(self, name):
        try:
            with open(self.root + "/var/log/xen/console/guest-%s.log" % name, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def pids(self, service):
        """Live processes of `service` started for this root (sandbox parents and the
        services inside them alike: killing either is a crash of that back-end)."""
        out = []
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % d) as f:
                    stat = f.read()
                comm = stat[stat.index("(") + 1:stat.rindex(")")]
                if comm != service or stat[stat.rindex(")") + 2] == "Z":
                    continue
                with open("/proc/%s/environ" % d, "rb") as f:
                    env = f.read() + b"\0"
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    args = f.read()
                if ("XENITH_ROOT=" + self.root).encode() + b"\0" not in env and (self.root + "/").encode() not in args:
                    continue
                out.append(int(d))
            except (OSError, ValueError):
                continue
        return out

    def teardown(self):
        for name in ("g1", "g2"):
            try:
                self.xm("destroy", name, timeout=30)
            except Exception:
                pass
        try:
            self.xend("stop")
        except Exception:
            pass
        for s in ("xenconsoled", "xenstored", "blkback", "netback", "xend", "migration"):
            for p in self.pids(s):
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        for p in qemu_pids(self.root) + cmdline_pids(self.root):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        sh("ip netns del " + NS, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def cmdline_pids(root):
    """Processes naming the root in their arguments (xenstored's --socket, say)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    if root.encode() in f.read():
                        out.append(int(d))
            except OSError:
                pass
    return out


def qemu_pids(root):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/cmdline" % d, "rb") as f:
                    c = f.read()
                if b"qemu-system" in c and root.encode() in c:
                    out.append(int(d))
            except OSError:
                pass
    return out


def disk_loop(tag):
    # 16 pages at offset (round % 64) * 16 pages: written, synced, cache dropped, read back.
    return ("i=0; while true; do i=$((i+1)); o=$(( (i %% 64) * 16 )); "
            "dd if=/dev/urandom of=/tmp/p bs=4096 count=16 2>/dev/null; "
            "dd if=/tmp/p of=/dev/vda bs=4096 seek=$o count=16 conv=fsync 2>/dev/null || echo SOAK-IOERR %s w $i; "
            "echo 3 > /proc/sys/vm/drop_caches; "
            "dd if=/dev/vda of=/tmp/q bs=4096 skip=$o count=16 2>/dev/null || echo SOAK-IOERR %s r $i; "
            "cmp -s /tmp/p /tmp/q || echo SOAK-MISMATCH %s $i; "
            "[ $((i %% 25)) = 0 ] && echo SOAK-IO %s $i; done") % (tag, tag, tag, tag)


def config(host, name, mac, ip, script, disk):
    path = os.path.join(host.root, name + ".cfg")
    with open(path, "w") as f:
        f.write('kernel = "%s/vmlinuz"\nramdisk = "%s/initrd.img"\nmemory = 256\nvcpus = 1\nname = "%s"\n'
                'engine = "qemu"\ndisk = [\'file:%s,xvda,w\']\nvif = [\'mac=%s, bridge=xenbr0\']\n'
                'ip = "%s"\nnetmask = "255.255.255.0"\ngateway = "%s"\n'
                'extra = "quiet cryptomgr.notests panic=-1 xenith.run=%s"\non_poweroff = "destroy"\n'
                % (GUEST, GUEST, name, disk, mac, ip, BRIDGE_IP, urllib.parse.quote(script, safe="")))
    return path


def wait_for(pred, timeout, step=0.1):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()


def main():
    if os.getuid() != 0:
        print("SKIP: chaos_soak needs root (network namespaces, taps)"); return 0
    for b in ("xend", "xm", "blkback", "netback", "xenconsoled", "xenstored"):
        if not os.access(os.path.join(BIN, b), os.X_OK):
            print("SKIP: chaos_soak: %s missing (BIN=%s)" % (b, BIN)); return 0
    if not shutil.which("qemu-system-x86_64") or not os.path.exists(os.path.join(GUEST, "vmlinuz")):
        print("SKIP: chaos_soak needs qemu-system-x86_64 and make guest"); return 0
    rng = random.Random(SEED)
    host = Host()
    try:
        r = host.xend("start")
        if r.returncode != 0:
            print("xend start failed: " + r.stderr); return 1
        disks = []
        for n in ("g1", "g2"):
            d = os.path.join(host.root, n + ".img")
            with open(d, "wb") as f:
                f.truncate(64 << 20)
            disks.append(d)
        tcp_secs = SECONDS + 120
        g1 = disk_loop("g1") + " & iperf3 -s >/dev/null 2>&1 & sleep 100000"
        g2 = ("(j=0; until ping -c 1 -W 1 10.78.0.11 >/dev/null 2>&1; do j=$((j+1)); [ $j -gt 120 ] && break; done; "
              "k=0; until iperf3 -c 10.78.0.11 -t 1 >/dev/null 2>&1; do k=$((k+1)); [ $k -gt 60 ] && break; sleep 1; done; "
              "echo SOAK-TCP-START; iperf3 -c 10.78.0.11 -t %d -b 20M > /tmp/iperf 2>&1; echo SOAK-TCP-RC $?; "
              "tail -4 /tmp/iperf) & " % tcp_secs) + disk_loop("g2")
        for name, mac, ip, script, disk in (("g1", "00:16:3e:5a:00:01", "10.78.0.11", g1, disks[0]),
                                            ("g2", "00:16:3e:5a:00:02", "10.78.0.12", g2, disks[1])):
            c = host.xm("create", config(host, name, mac, ip, script, disk))
            if c.returncode != 0:
                print("xm create %s failed: %s" % (name, c.stderr)); return 1
        if not wait_for(lambda: "SOAK-TCP-START" in host.console("g2") and "SOAK-IO g1" in host.console("g1"), 300, 1):
            print("guests did not start their load:\n--- g1\n%s\n--- g2\n%s" % (host.console("g1")[-1500:], host.console("g2")[-1500:]))
            return 1
        print("chaos soak: seed %d, %d s, a kill every %.0f s among %s" % (SEED, SECONDS, EVERY, ",".join(SERVICES)))
        kills = {s: 0 for s in SERVICES}
        restarts = {s: 0 for s in SERVICES}
        slow = []
        end = time.time() + SECONDS
        while time.time() < end:
            time.sleep(EVERY)
            s = rng.choice(SERVICES)
            before = host.pids(s)
            if not before:
                # Not running (a restart still under way): counted as not restarted below.
                slow.append("%s: none running at %.0f s" % (s, SECONDS - (end - time.time())))
                continue
            victim = rng.choice(before)
            try:
                os.kill(victim, signal.SIGKILL)
            except OSError:
                continue
            kills[s] += 1
            t0 = time.time()
            if s == "xend":
                wait_for(lambda: victim not in host.pids("xend"), 5)
                host.xend("start")
            back = wait_for(lambda: any(p not in before for p in host.pids(s)), 15)
            if back:
                restarts[s] += 1
                dt = time.time() - t0
                if dt > 3:
                    slow.append("%s back after %.1f s" % (s, dt))
            else:
                slow.append("%s not back within 15 s" % s)
        # Let the guests' I/O show it went on after the last kill.
        marks = {n: len(re.findall(r"SOAK-IO %s " % n, host.console(n))) for n in ("g1", "g2")}
        io_after = {n: wait_for(lambda n=n: len(re.findall(r"SOAK-IO %s " % n, host.console(n))) > marks[n], 120, 1)
                    for n in ("g1", "g2")}
        tcp_done = wait_for(lambda: "SOAK-TCP-RC" in host.console("g2"), 240, 1)
        logs = host.console("g1") + host.console("g2")
        ioerr = len(re.findall(r"SOAK-IOERR", logs))
        mism = len(re.findall(r"SOAK-MISMATCH", logs))
        rounds = {n: max([int(x) for x in re.findall(r"SOAK-IO %s (\d+)" % n, host.console(n))] or [0]) for n in ("g1", "g2")}
        m = re.search(r"SOAK-TCP-RC (\d+)", host.console("g2"))
        dropped = 0 if (m and m.group(1) == "0") else 1
        print("  %-12s %6s %9s" % ("service", "kills", "restarts"))
        for s in SERVICES:
            print("  %-12s %6d %9d" % (s, kills[s], restarts[s]))
        print("  total kills %d, restarts %d" % (sum(kills.values()), sum(restarts.values())))
        for line in slow:
            print("  note: " + line)
        print("  guest I/O rounds: g1 %d, g2 %d (went on after the last kill: g1 %s, g2 %s)"
              % (rounds["g1"], rounds["g2"], io_after["g1"], io_after["g2"]))
        print("  guest I/O errors %d, data mismatches %d, TCP connections dropped %d%s"
              % (ioerr, mism, dropped, "" if tcp_done else " (iperf3 did not finish)"))
        for n in ("g1", "g2"):
            if not io_after[n]:
                print("  %s's console, last lines: %s" % (n, " | ".join(host.console(n).strip().splitlines()[-8:])))
        if dropped:
            print("  iperf3 (g2): " + " | ".join(host.console("g2").split("SOAK-TCP-RC")[-1].strip().splitlines()[:5]))
        ok = ioerr == 0 and mism == 0 and dropped == 0 and all(io_after.values()) \
            and sum(restarts.values()) == sum(kills.values())
        print("  target (zero errors, mismatches, lost connections; every kill restarted): %s" % ("met" if ok else "NOT met"))
        print("  load average: %s" % " ".join(open("/proc/loadavg").read().split()[:3]))
        return 0 if ok else 1
    finally:
        if os.environ.get("SOAK_KEEP"):
            print("  kept for inspection: XENITH_ROOT=%s, namespace %s (SOAK_KEEP)" % (host.root, NS))
        else:
            host.teardown()


if __name__ == "__main__":
    sys.exit(main())

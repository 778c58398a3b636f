#!/usr/bin/env python3
"""Boots the guest images under QEMU TCG and checks the contract in guest/README.md.

Usage: test_images.py OUTDIR [check...]   (checks: run disk interactive reboot panic
net dhcp debian; default all).  Standard library only.  Exit status 0 when every
check passed; prints one "PASS name (figures)" or "FAIL name: why" line each.
"""
import os, re, select, shutil, subprocess, sys, tempfile, time, urllib.parse

SCALE = float(os.environ.get("XENITH_TEST_TIMEOUT_SCALE", "1"))
BASE = ["qemu-system-x86_64", "-accel", "tcg", "-M", "q35", "-nodefaults",
        "-display", "none", "-monitor", "none",
        "-chardev", "stdio,id=ser0,signal=off", "-serial", "chardev:ser0"]
APPEND = "console=ttyS0 quiet cryptomgr.notests"


class Fail(Exception):
    pass


class Guest:
    """One QEMU process whose serial console is our stdin/stdout pipe."""

    def __init__(self, args, log):
        self.log = open(log, "wb")
        self.t0 = time.monotonic()
        self.p = subprocess.Popen(BASE + args, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        os.set_blocking(self.p.stdout.fileno(), False)
        self.buf, self.pos = b"", 0

    def _read(self, until):
        r, _, _ = select.select([self.p.stdout], [], [], max(0.0, min(0.5, until - time.monotonic())))
        if r:
            data = self.p.stdout.read()
            if data:
                self.buf += data
                self.log.write(data)
                self.log.flush()
                return True
        return False

    def expect(self, pattern, timeout):
        """Waits for regex `pattern` after the previous match; returns the match."""
        rx = re.compile(pattern.encode())
        until = time.monotonic() + timeout * SCALE
        while True:
            m = rx.search(self.buf, self.pos)
            if m:
                self.pos = m.end()
                return m
            if time.monotonic() > until:
                raise Fail(f"no {pattern!r} within {timeout * SCALE:.0f} s")
            if not self._read(until) and self.p.poll() is not None:
                while self._read(time.monotonic()):
                    pass
                m = rx.search(self.buf, self.pos)
                if m:
                    self.pos = m.end()
                    return m
                raise Fail(f"QEMU exited ({self.p.returncode}) before {pattern!r}")

    def send(self, text):
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def wait_exit(self, timeout):
        until = time.monotonic() + timeout * SCALE
        while self.p.poll() is None:
            if time.monotonic() > until:
                raise Fail(f"QEMU still running after {timeout * SCALE:.0f} s")
            self._read(until)
        while self._read(time.monotonic()):
            pass
        return self.p.returncode

    def elapsed(self):
        return time.monotonic() - self.t0

    def close(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.log.close()


def test_guest(out, append="", run=None, extra=(), mem="256"):
    cmdline = APPEND + (" " + append if append else "")
    if run is not None:
        cmdline += " xenith.run=" + urllib.parse.quote(run, safe="")
    return ["-m", mem, "-kernel", f"{out}/vmlinuz", "-initrd", f"{out}/initrd.img",
            "-append", cmdline, *extra]


def ready(g):
    m = g.expect(r"xenith-guest: ready (\d+\.\d+)\r?\n", 120)
    return float(m.group(1)), g.elapsed()


def check_run(out, tmp, log):
    g = Guest(test_guest(out, run="echo run-$((6*7)); poweroff -f", extra=["-no-reboot"]), log)
    try:
        up, wall = ready(g)
        g.expect(r"run-42", 30)
        g.expect(r"reboot: Power down", 30)
        rc = g.wait_exit(30)
        if rc != 0:
            raise Fail(f"QEMU exit status {rc}")
        return f"ready at guest uptime {up:.2f} s, {wall:.2f} s wall; poweroff -f ended QEMU in {g.elapsed():.2f} s"
    finally:
        g.close()


def check_disk(out, tmp, log):
    img = os.path.join(tmp, "disk.img")
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    run = ("set -e; test -b /dev/vda; mkfs.ext4 -q -F /dev/vda; mount /dev/vda /mnt; "
           "dd if=/dev/urandom of=/mnt/blob bs=64k count=16 2>/dev/null; "
           "sha256sum /mnt/blob > /mnt/sum; sync; umount /mnt; "
           "mount -o ro /dev/vda /mnt; sha256sum -c /mnt/sum; umount /mnt; echo DISK-OK; poweroff -f")
    g = Guest(test_guest(out, run=run, extra=["-no-reboot",
              "-drive", f"file={img},if=virtio,format=raw"]), log)
    try:
        ready(g)
        g.expect(r"DISK-OK", 60)
        g.wait_exit(30)
    finally:
        g.close()
    # The host reads the guest's ext4 back on its own.
    sums = subprocess.run(["debugfs", "-R", "cat /sum", img], capture_output=True, text=True).stdout.split()
    subprocess.run(["debugfs", "-R", f"dump /blob {tmp}/blob", img], capture_output=True, check=True)
    host = subprocess.run(["sha256sum", f"{tmp}/blob"], capture_output=True, text=True).stdout.split()
    if not sums or not host or sums[0] != host[0]:
        raise Fail(f"host sees sha256 {host[:1]} but guest wrote {sums[:1]}")
    return "/dev/vda: mkfs.ext4, mount, 1 MiB write, read back; host debugfs agrees"


def check_interactive(out, tmp, log):
    g = Guest(test_guest(out), log)
    try:
        ready(g)
        time.sleep(0.5)
        g.send("echo shell-$((6*7))\n")
        g.expect(r"shell-42", 30)
        g.send("sleep 300; echo sleep-finished\n")
        time.sleep(1.5)
        g.send("\x03")
        g.send("echo after-$((1+1))\n")
        g.expect(r"after-2", 15)
        if re.search(rb"(?m)^sleep-finished", g.buf):
            raise Fail("Ctrl-C did not interrupt sleep")
        g.send("poweroff\n")
        g.expect(r"reboot: Power down", 30)
        g.wait_exit(30)
        return "shell answers, Ctrl-C interrupts, plain poweroff ends QEMU"
    finally:
        g.close()


def check_reboot(out, tmp, log):
    g = Guest(test_guest(out, run="reboot", extra=["-no-reboot"]), log)
    try:
        ready(g)
        g.expect(r"reboot: Restarting system", 30)
        g.wait_exit(30)
        return "plain reboot restarts (QEMU -no-reboot exited)"
    finally:
        g.close()


def check_panic(out, tmp, log):
    g = Guest(test_guest(out, append="panic=-1", run="echo c > /proc/sysrq-trigger",
                         extra=["-no-reboot"]), log)
    try:
        ready(g)
        g.expect(r"Kernel panic - not syncing", 30)
        g.wait_exit(30)
        return "sysrq c panics (panic=-1 + -no-reboot exited)"
    finally:
        g.close()


NET = ["-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0"]


def check_net(out, tmp, log):
    g = Guest(test_guest(out, append="ip=10.0.2.15::10.0.2.2:255.255.255.0:xnet:eth0:off",
                         run="ip -4 addr show eth0; ip route; echo host-$(hostname); poweroff -f",
                         extra=["-no-reboot", *NET]), log)
    try:
        ready(g)
        g.expect(r"inet 10\.0\.2\.15/24", 30)
        g.expect(r"default via 10\.0\.2\.2 dev eth0", 30)
        g.expect(r"host-xnet", 30)
        g.wait_exit(30)
        return "ip=10.0.2.15::10.0.2.2:255.255.255.0:xnet:eth0:off applied"
    finally:
        g.close()


def check_dhcp(out, tmp, log):
    g = Guest(test_guest(out, append="ip=dhcp",
                         run="ip -4 addr show eth0; ip route; poweroff -f",
                         extra=["-no-reboot", *NET]), log)
    try:
        ready(g)
        g.expect(r"inet 10\.0\.2\.15/24", 30)
        g.wait_exit(30)
        return "ip=dhcp got 10.0.2.15/24 from QEMU's built-in DHCP (restrict=on: no router offered)"
    finally:
        g.close()


def check_debian(out, tmp, log):
    g = Guest(["-m", "512", "-kernel", f"{out}/debian-vmlinuz", "-initrd", f"{out}/debian-initrd.img",
               "-append", "root=/dev/vda console=ttyS0",
               "-drive", f"file={out}/debian.img,if=virtio,format=raw,snapshot=on"], log)
    try:
        g.expect(r"xenith-debian login: ", 300)
        t_login = g.elapsed()
        time.sleep(0.5)
        g.send("root\n")
        m = g.expect(r"(Password: |root@xenith-debian:~# )", 60)
        if m.group(1).startswith(b"Password"):
            raise Fail("root was asked for a password")
        g.send("echo state-$(systemctl is-system-running --wait) root-$(id -u)\n")
        m = g.expect(r"state-(\w+) root-0", 120)
        state = m.group(1).decode()
        if state not in ("running", "degraded"):
            raise Fail(f"systemd state {state}")
        if state == "degraded":
            g.send("systemctl --failed --no-legend --plain | cat\n")
        g.send("poweroff\n")
        g.wait_exit(120)
        return f"login prompt after {t_login:.1f} s wall, passwordless root, systemd {state}, poweroff {g.elapsed():.1f} s total"
    finally:
        g.close()


CHECKS = {"run": check_run, "disk": check_disk, "interactive": check_interactive,
          "reboot": check_reboot, "panic": check_panic, "net": check_net,
          "dhcp": check_dhcp, "debian": check_debian}


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out, names = sys.argv[1], sys.argv[2:] or list(CHECKS)
    logdir = os.environ.get("XENITH_TEST_LOGS") or tempfile.mkdtemp(prefix="xenith-guest-logs.")
    os.makedirs(logdir, exist_ok=True)
    failed = 0
    for name in names:
        tmp = tempfile.mkdtemp(prefix=f"xenith-{name}.")
        log = os.path.join(logdir, f"{name}.log")
        t0 = time.monotonic()
        try:
            what = CHECKS[name](out, tmp, log)
            print(f"PASS {name} ({time.monotonic() - t0:.1f} s): {what}", flush=True)
        except Exception as e:  # one failing check must not hide the others
            failed += 1
            print(f"FAIL {name} ({time.monotonic() - t0:.1f} s): {e} (console: {log})", flush=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"console logs in {logdir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

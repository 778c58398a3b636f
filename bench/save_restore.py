#!/usr/bin/env python3
"""Save/restore benchmark (make bench): `xm save` / `xm restore` next to raw QEMU.

The same test guest (make guest; 256 MiB, 1 vCPU, counting on its console) under QEMU TCG:

  xenith  `xm save DOM FILE` and `xm restore FILE` through xend (qemu engine, the
          sandboxed migration service writing Xen's envelope and CRC-checked frames;
          save includes destroying the domain, restore re-making it and resuming it)
  raw     QEMU alone: QMP `stop`, `migrate fd:` straight into the file, `quit`; then a new
          QEMU with `-incoming defer -S`, `migrate-incoming fd:` from the file, `cont`
  raw-memfd  the same, with the guest's RAM a shared memfd (`memory-backend-memfd,share=on`),
          as qemu-engine domains had it before `qemu-ram-directory` (vhost-user back-ends
          map guest RAM, so it must be a shareable file): QEMU reads every page of a save
          and a read of a shmem hole allocates and clears a page, where anonymous RAM maps
          the shared zero page; on restore it writes 4 KiB shmem pages.
  raw-ramdir the same, with the guest's RAM a file on xend's `qemu-ram-directory` tmpfs
          (`memory-backend-file,mem-path=DIR,align=2M,share=on`, huge=advise), as every
          qemu-engine domain has it now.
  xenith-memfd  xenith with `(qemu-ram-directory none)`: its domains' RAM in a memfd.
          The raw-* and xenith-memfd rows are printed for comparison; the target is
          against `raw`.

alternately, BENCH_RUNS times each; medians side by side with the ratio. Target: xenith
within 1.1x of raw.

Environment: BIN (directory with xend, xm, migration, xenstored, xenconsoled; default
.build/release), BENCH_RUNS (3), BENCH_MEMORY (MiB, 256).
Needs root, qemu-system-x86_64 and build/guest; prints SKIP otherwise.
"""
import json, os, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.parse

from qmp import QMP, wait_count

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("BIN", os.path.join(ROOT, ".build", "release"))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
MEM = int(os.environ.get("BENCH_MEMORY", "256"))
GUEST = os.path.join(ROOT, "build", "guest")
# xend-config's qemu-ram-directory default, mounted by xend at start.
RAMDIR = "/run/xenith/guest-ram"
SCRIPT = "i=0; while true; do echo count=$i; i=$((i+1)); sleep 0.5; done"
EXTRA = "quiet cryptomgr.notests xenith.run=" + urllib.parse.quote(SCRIPT, safe="")


def skip(why):
    print("SKIP: save_restore: " + why)
    sys.exit(0)


def raw_qemu(tmp, incoming, shared=None):
    qmp = os.path.join(tmp, "raw.qmp")
    if os.path.exists(qmp):
        os.unlink(qmp)
    args = ["qemu-system-x86_64", "-nodefaults", "-no-user-config", "-machine", "q35", "-accel", "tcg,thread=multi",
            "-cpu", "max", "-m", "%dM" % MEM, "-smp", "1", "-kernel", GUEST + "/vmlinuz", "-initrd", GUEST + "/initrd.img",
            "-append", EXTRA + " console=ttyS0", "-serial", "file:" + os.path.join(tmp, "raw.console"),
            "-display", "none", "-qmp", "unix:%s,server=on,wait=off" % qmp,
            "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"]
    if shared == "memfd":
        args[args.index("q35")] = "q35,memory-backend=ram0"
        args += ["-object", "memory-backend-memfd,id=ram0,size=%dM,share=on" % MEM]
    elif shared == "ramdir":
        args[args.index("q35")] = "q35,memory-backend=ram0"
        args += ["-object", "memory-backend-file,id=ram0,size=%dM,share=on,mem-path=%s,align=2M" % (MEM, RAMDIR)]
    if incoming:
        args += ["-incoming", "defer", "-S"]
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return p, QMP(qmp)


def raw_round(tmp, shared=None):
    """One raw save and restore (guest RAM anonymous, or "memfd" or "ramdir" as `shared` says); returns (save_s, restore_s, bytes)."""
    con = os.path.join(tmp, "raw.console")
    if os.path.exists(con):
        os.unlink(con)
    p, q = raw_qemu(tmp, False, shared)
    if not wait_count(con, 3):
        p.kill()
        raise RuntimeError("raw guest did not boot")
    f = os.path.join(tmp, "raw.state")
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    t0 = time.monotonic()
    q.cmd("stop")
    q.cmd("migrate-set-parameters", {"max-bandwidth": 1 << 40})
    q.cmd("getfd", {"fdname": "m"}, fd=fd)
    q.cmd("migrate", {"uri": "fd:m"})
    q.wait_migration()
    os.fsync(fd)
    try:
        q.cmd("quit")
    except Exception:
        pass
    p.wait()
    save = time.monotonic() - t0
    os.close(fd)
    size = os.path.getsize(f)
    t1 = time.monotonic()
    p, q = raw_qemu(tmp, True, shared)
    fd = os.open(f, os.O_RDONLY)
    q.cmd("getfd", {"fdname": "m"}, fd=fd)
    q.cmd("migrate-incoming", {"uri": "fd:m"})
    q.wait_migration()
    q.cmd("cont")
    restore = time.monotonic() - t1
    os.close(fd)
    try:
        q.cmd("quit")
    except Exception:
        pass
    p.wait()
    os.unlink(f)
    return save, restore, size


def main():
    if os.geteuid() != 0:
        skip("needs root")
    if not shutil.which("qemu-system-x86_64"):
        skip("qemu-system-x86_64 is not installed")
    if not os.path.exists(GUEST + "/vmlinuz"):
        skip("no test guest: run `make guest`")
    for b in ("xend", "xm", "migration"):
        if not os.access(os.path.join(BIN, b), os.X_OK):
            skip("no %s in %s (make release, or BIN=...)" % (b, BIN))
    roots = {}
    for kind, settings in (("xenith", "(domain-engine qemu)\n"),
                           ("xenith-memfd", "(domain-engine qemu)\n(qemu-ram-directory none)\n")):
        tmp = tempfile.mkdtemp(prefix="xenith-bench-save-")
        os.makedirs(tmp + "/etc/xen")
        open(tmp + "/etc/xen/xend-config.sxp", "w").write(settings)
        cfg = tmp + "/b.cfg"
        open(cfg, "w").write('kernel = "%s/vmlinuz"\nramdisk = "%s/initrd.img"\nmemory = %d\nvcpus = 1\nname = "b"\nextra = "%s"\n'
                             % (GUEST, GUEST, MEM, EXTRA))
        roots[kind] = tmp

    def xm(kind, *args):
        env = dict(os.environ, XENITH_ROOT=roots[kind])
        r = subprocess.run([os.path.join(BIN, "xm")] + list(args), env=env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError("xm %s (%s): %s" % (" ".join(args), kind, r.stderr.strip()))
        return r

    kinds = ("xenith", "xenith-memfd", "raw", "raw-memfd", "raw-ramdir")
    results = {k: ([], []) for k in kinds}
    sizes = {}
    try:
        for kind, tmp in roots.items():
            subprocess.run([os.path.join(BIN, "xend"), "start"], env=dict(os.environ, XENITH_ROOT=tmp), check=True)
            xm(kind, "create", tmp + "/b.cfg")
        if not os.path.ismount(RAMDIR):
            raise RuntimeError("xend did not mount its qemu-ram-directory " + RAMDIR)
        for n in range(RUNS):
            for kind, tmp in roots.items():
                # xenith: the domain runs (counting) before each save.
                con = tmp + "/var/log/xen/console/guest-b.log"
                if not wait_count(con, 3 + n * 6):
                    raise RuntimeError("%s guest is not counting" % kind)
                f = tmp + "/b.chk"
                t0 = time.monotonic()
                xm(kind, "save", "b", f)
                results[kind][0].append(time.monotonic() - t0)
                sizes[kind] = os.path.getsize(f)
                t1 = time.monotonic()
                xm(kind, "restore", f)
                results[kind][1].append(time.monotonic() - t1)
                os.unlink(f)
            for kind in ("raw", "raw-memfd", "raw-ramdir"):
                s, r, size = raw_round(roots["xenith"], {"raw": None, "raw-memfd": "memfd", "raw-ramdir": "ramdir"}[kind])
                results[kind][0].append(s)
                results[kind][1].append(r)
                sizes[kind] = size
        for kind in roots:
            xm(kind, "destroy", "b")
    finally:
        for kind, tmp in roots.items():
            env = dict(os.environ, XENITH_ROOT=tmp)
            subprocess.run([os.path.join(BIN, "xm"), "destroy", "b"], env=env, capture_output=True)
            subprocess.run([os.path.join(BIN, "xend"), "stop"], env=env, capture_output=True)
            for d in ("xenstored", "xenconsoled"):
                try:
                    os.kill(int(open("%s/run/%s/%s.pid" % (tmp, d, d)).read()), 15)
                except (OSError, ValueError):
                    pass
            shutil.rmtree(tmp, ignore_errors=True)

    load = os.getloadavg()[0]
    print("save/restore, test guest %d MiB, QEMU TCG, %d runs each, alternating (medians; load average %.1f)" % (MEM, RUNS, load))
    print("%-13s %9s %12s %14s" % ("", "save (s)", "restore (s)", "file (MiB)"))
    med = {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in results.items()}
    for k in kinds:
        print("%-13s %9.2f %12.2f %14.1f" % (k, med[k][0], med[k][1], sizes[k] / 1048576))
    rs, rr = med["xenith"][0] / med["raw"][0], med["xenith"][1] / med["raw"][1]
    print("ratio      %11.2fx %11.2fx   (xenith / raw; target <= 1.1x: save %s, restore %s)"
          % (rs, rr, "met" if rs <= 1.1 else "NOT met", "met" if rr <= 1.1 else "NOT met"))
    for other in ("raw-ramdir", "xenith-memfd"):
        print("ratio      %11.2fx %11.2fx   (xenith / %s, for comparison)"
              % (med["xenith"][0] / med[other][0], med["xenith"][1] / med[other][1], other))


if __name__ == "__main__":
    main()

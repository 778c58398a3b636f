#!/usr/bin/env python3
"""xm list latency with 0 and 50 idle fixture domains (extra "h": halted, no CPU), and xm create -n parse time over the
DomainConfig good corpus. Uses a temporary XENITH_ROOT; needs /dev/kvm for the 50 domains."""
import glob, os, subprocess, sys, tempfile, time, statistics
root_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
bindir = os.environ.get("XENITH_BIN") or subprocess.check_output(["swift", "build", "-c", "release", "--static-swift-stdlib", "--show-bin-path"], cwd=root_dir, text=True).strip()
xm, xend = os.path.join(bindir, "xm"), os.path.join(bindir, "xend")
root = tempfile.mkdtemp(prefix="xenith-bench-")
env = dict(os.environ, XENITH_ROOT=root)
def run(*a, check=True):
    return subprocess.run(list(a), env=env, cwd=root_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=check)
def timed(args, n=30):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); run(*args); ts.append((time.perf_counter() - t) * 1000)
    return statistics.median(ts), min(ts)
run(xend, "start")
try:
    med, lo = timed([xm, "list"])
    print(f"xm list, 0 domains:  median {med:.1f} ms (min {lo:.1f})   target < 30 ms")
    if os.access("/dev/kvm", os.R_OK | os.W_OK):
        for i in range(50):
            run(xm, "create", "-q", "services/examples/fixture.cfg", f"name=b{i}", "extra=h")
        med, lo = timed([xm, "list"])
        print(f"xm list, 50 domains: median {med:.1f} ms (min {lo:.1f})   target < 30 ms")
    else:
        print("SKIP: xm list with 50 domains: /dev/kvm is not accessible")
    files = sorted(glob.glob(os.path.join(root_dir, "Tests/DomainConfigTests/corpus/good/*")))
    ts = []
    for f in files:
        t = time.perf_counter(); r = run(xm, "create", "-n", f, check=False); ts.append((time.perf_counter() - t) * 1000)
    if ts:
        print(f"xm create -n over {len(ts)} corpus configs: median {statistics.median(ts):.1f} ms, max {max(ts):.1f} ms (whole xm process)")
finally:
    for i in range(50):
        run(xm, "destroy", f"b{i}", check=False)
    run(xend, "stop")
    # xenconsoled outlives xend (it holds the consoles of running domains): stop it too.
    for rel in ("run/xenstored/xenstored.pid", "run/xenconsoled/xenconsoled.pid"):
        pid = os.path.join(root, rel)
        if os.path.exists(pid):
            os.kill(int(open(pid).read().strip()), 15)

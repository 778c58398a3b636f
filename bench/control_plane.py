#!/usr/bin/env python3
"""xm list latency with 0 and 50 idle fixture domains (extra "h": halted, no CPU), and xm create -n parse time over the
DomainConfig good corpus. Uses a temporary XENITH_ROOT; needs /dev/kvm for the 50 domains.

With XENITH_BIN_BASELINE set to the bin directory of another build (e.g. a release build of an earlier commit), the
same measurements run for both builds, alternating, and are printed side by side: "before" is the baseline, "after"
this tree's build (or XENITH_BIN)."""
import glob, os, subprocess, sys, tempfile, time, statistics
root_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
bindir = os.environ.get("XENITH_BIN") or subprocess.check_output(["swift", "build", "-c", "release", "--static-swift-stdlib", "--show-bin-path"], cwd=root_dir, text=True).strip()
builds = [("after", bindir)]
if os.environ.get("XENITH_BIN_BASELINE"):
    builds.insert(0, ("before", os.environ["XENITH_BIN_BASELINE"]))
kvm = os.access("/dev/kvm", os.R_OK | os.W_OK)
files = sorted(glob.glob(os.path.join(root_dir, "Tests/DomainConfigTests/corpus/good/*")))

def measure(label, bindir):
    xm, xend = os.path.join(bindir, "xm"), os.path.join(bindir, "xend")
    root = tempfile.mkdtemp(prefix="xenith-bench-")
    env = dict(os.environ, XENITH_ROOT=root)
    def run(*a, check=True):
        return subprocess.run(list(a), env=env, cwd=root_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=check)
    def timed(args, n=30):
        ts = []
        for _ in range(n):
            t = time.perf_counter(); run(*args); ts.append((time.perf_counter() - t) * 1000)
        return statistics.median(ts)
    out = {}
    run(xend, "start")
    try:
        out["xm list, 0 domains (ms)"] = timed([xm, "list"])
        if kvm:
            for i in range(50):
                run(xm, "create", "-q", "services/examples/fixture.cfg", f"name=b{i}", "extra=h")
            out["xm list, 50 domains (ms)"] = timed([xm, "list"])
            t = time.perf_counter()
            for i in range(50, 60):
                run(xm, "create", "-q", "services/examples/fixture.cfg", f"name=b{i}", "extra=h")
            out["xm create beside 50 domains (ms each)"] = (time.perf_counter() - t) * 100
        ts = []
        for f in files:
            t = time.perf_counter(); run(xm, "create", "-n", f, check=False); ts.append((time.perf_counter() - t) * 1000)
        if ts:
            out[f"xm create -n, {len(ts)} corpus configs (median ms)"] = statistics.median(ts)
    finally:
        for i in range(60):
            run(xm, "destroy", f"b{i}", check=False)
        run(xend, "stop")
        # xenconsoled outlives xend (it holds the consoles of running domains): stop it too.
        for rel in ("run/xenstored/xenstored.pid", "run/xenconsoled/xenconsoled.pid"):
            pid = os.path.join(root, rel)
            if os.path.exists(pid):
                try: os.kill(int(open(pid).read().strip()), 15)
                except (ProcessLookupError, ValueError): pass
    return out

if not kvm:
    print("SKIP: xm list with 50 domains: /dev/kvm is not accessible")
results = {label: measure(label, b) for label, b in builds}
keys = list(results[builds[-1][0]].keys())
print(f"{'control plane':44} " + " ".join(f"{l:>10}" for l, _ in builds) + "   target")
for k in keys:
    target = "< 30" if k.startswith("xm list") else ""
    if len(builds) == 2 and k in results["before"]:
        target = (target + "; " if target else "") + "after <= 1.1 x before"
    print(f"{k:44} " + " ".join(f"{results[l].get(k, float('nan')):10.1f}" for l, _ in builds) + f"   {target}")

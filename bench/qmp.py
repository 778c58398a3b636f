"""Shared by the benchmarks that drive QEMU directly (save_restore.py, migration.py): a
minimal QMP client over a Unix socket (descriptors passed with SCM_RIGHTS for `getfd`)
and a wait for the test guest's console counter."""
import json, socket, time


class QMP:
    def __init__(self, path, timeout=30):
        deadline = time.time() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.s.connect(path)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.02)
        self.f = self.s.makefile("r")
        self.f.readline()
        self.cmd("qmp_capabilities")

    def cmd(self, name, args=None, fd=None):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        data = (json.dumps(msg) + "\n").encode()
        if fd is None:
            self.s.sendall(data)
        else:
            socket.send_fds(self.s, [data], [fd])
        while True:
            r = json.loads(self.f.readline())
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise RuntimeError("%s: %s" % (name, r["error"]["desc"]))

    def wait_migration(self):
        while True:
            st = self.cmd("query-migrate").get("status")
            if st == "completed":
                return
            if st in ("failed", "cancelled"):
                raise RuntimeError("migration " + st)
            time.sleep(0.01)


def wait_count(path, at_least, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            text = open(path, errors="replace").read()
            if text.count("count=") >= at_least:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False

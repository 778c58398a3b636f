#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs (fuzz/README.md) into fuzz/seeds/<target>/.

Text formats are seeded from the repository's own files (examples, manifests, the
DomainConfig test corpus); binary formats are built here, byte for byte as the specs (and
the tests) lay them out: xenstore wire messages, split virtqueues in a guest-memory image,
virtio-blk requests, vhost-user message streams, save files, QMP lines.
Run from the repository root: python3 fuzz/seeds/make-seeds.py [TARGET...] (only those
targets' seeds are written when some are named).
"""
import os, shutil, struct, glob, sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SEEDS = os.path.join(ROOT, "fuzz", "seeds")


ONLY = set(sys.argv[1:])


def out(target, name, data):
    if ONLY and target not in ONLY:
        return
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def copy(target, pattern):
    for p in sorted(glob.glob(os.path.join(ROOT, pattern))):
        if os.path.isfile(p) and os.path.getsize(p) <= 16384:
            out(target, os.path.basename(p), open(p, "rb").read())


# --- text formats -------------------------------------------------------------------
copy("fuzz-domain-config", "services/examples/*.cfg")
copy("fuzz-domain-config", "Tests/DomainConfigTests/corpus/good/*")
copy("fuzz-domain-config", "Tests/DomainConfigTests/corpus/bad/*")
out("fuzz-domain-config", "args.cfg", '#args memory=256 name=x\nname = "g" + str(memory)\nmemory = int(memory)\n'
    'disk = ["file:/tmp/a.img,xvda,w"]\nvif = ["mac=00:16:3e:00:00:01,bridge=xenbr0"]\nkernel = "/boot/vmlinuz"\n')
copy("fuzz-xend-config", "services/xend-config.sxp")
out("fuzz-xend-config", "small.sxp", "(xend-http-server yes)\n(xend-port 8000)\n(logfile /var/log/xen/xend.log)\n"
    "(loglevel DEBUG)\n(network-script network-bridge)\n(dom0-min-mem 196)\n")
copy("fuzz-sxp", "services/xend-config.sxp")
out("fuzz-sxp", "domain.sxp", '(domain (domid 3) (name "web") (memory 256) (image (linux (kernel /boot/vmlinuz) '
    '(args "root=/dev/xvda1 ro"))) (device (vbd (uname file:/x.img) (dev xvda) (mode w))))\n')
out("fuzz-sxp", "escapes.sxp", "(a 'it\\'s' \"\\x41\\101\\n\\t\" # comment\n (b) () sym-bol)\n")
copy("fuzz-manifest", "manifests/*.manifest")

# --- xenstore wire (xenstore.txt: u32 type, req_id, tx_id, len; payload) --------------
XS = dict(directory=1, read=2, getPerms=3, watch=4, unwatch=5, tStart=6, tEnd=7, introduce=8,
          release=9, getDomainPath=10, write=11, mkdir=12, rm=13, setPerms=14,
          isIntroduced=17, resume=18, setTarget=19, restrict=20, resetWatches=21, directoryPart=22)


def xs(kind, *strings, rid=0, tx=0, raw=None):
    p = raw if raw is not None else b"".join(s.encode() + b"\0" for s in strings)
    return struct.pack("<IIII", XS[kind], rid, tx, len(p)) + p


# request id % 3 picks the connection: 0 = dom0, 1 = domid 1, 2 = domid 2
out("fuzz-xenstore", "basic", xs("write", raw=b"/local/domain/1/data\0hello", rid=0) +
    xs("read", "/local/domain/1/data", rid=3) + xs("directory", "/local/domain", rid=6) +
    xs("mkdir", "/tool/x", rid=9) + xs("rm", "/tool", rid=12) + xs("getPerms", "/local", rid=15))
out("fuzz-xenstore", "transaction", xs("tStart", "", rid=0) + xs("write", raw=b"/a/b\0v", rid=3, tx=1) +
    xs("read", "/a/b", rid=6, tx=1) + xs("tEnd", "T", rid=9, tx=1) +
    xs("tStart", "", rid=12) + xs("write", raw=b"/a/c\0w", rid=15, tx=2) + xs("tEnd", "F", rid=18, tx=2))
out("fuzz-xenstore", "watch", xs("watch", "/local/domain/1", "tok", rid=0) + xs("watch", "@introduceDomain", "i", rid=3) +
    xs("write", raw=b"/local/domain/1/x\0y", rid=6) + xs("introduce", "1", "4096", "5", rid=9) +
    xs("watch", "data", "rel", rid=1) + xs("unwatch", "/local/domain/1", "tok", rid=12) + xs("release", "1", rid=15))
out("fuzz-xenstore", "perms", xs("write", raw=b"/local/domain/1/p\0v", rid=0) +
    xs("setPerms", "/local/domain/1/p", "n1", "r2", rid=3) + xs("read", "/local/domain/1/p", rid=1) +
    xs("read", "/local/domain/1/p", rid=2) + xs("write", raw=b"/local/domain/1/p\0z", rid=2) +
    xs("setTarget", "2", "1", rid=6) + xs("restrict", "1", rid=9) + xs("getDomainPath", "2", rid=5) +
    xs("isIntroduced", "1", rid=8) + xs("directoryPart", "/local/domain", "0", rid=12) + xs("resetWatches", "", rid=15))

# --- split virtqueues in guest memory (virtio 1.2 §2.7) ----------------------------------
# Layout used by the targets: descriptor table at 0, avail ring at 0x1000, used ring at
# 0x2000, buffers from 0x3000; region 1 is [0, 0x8000), region 2 [0x10000, 0x18000).
# The image given in the input covers region 1 then region 2 (so image offset 0x8000 is
# guest address 0x10000).
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4


def ring_image(chains, size=8, extra=None):
    """chains: list of lists of (addr, len, flags); chained by next. Returns a region image."""
    mem = bytearray(0x8000)
    i = 0
    heads = []
    for c in chains:
        heads.append(i)
        for j, (a, l, f) in enumerate(c):
            nx = i + 1 if j + 1 < len(c) else 0
            fl = f | (F_NEXT if j + 1 < len(c) else 0)
            struct.pack_into("<QIHH", mem, 16 * i, a, l, fl, nx)
            i += 1
    struct.pack_into("<HH", mem, 0x1000, 0, len(heads))
    for k, h in enumerate(heads):
        struct.pack_into("<H", mem, 0x1004 + 2 * k, h)
    for addr, data in (extra or []):
        mem[addr:addr + len(data)] = data
    # trailing zeros are what the target zeroes anyway
    return bytes(mem).rstrip(b"\0") or b"\0"


img = ring_image([[(0x3000, 64, 0), (0x3100, 128, F_WRITE)], [(0x3200, 16, 0)]])
out("fuzz-virtqueue", "two-chains", bytes([3, 0, 0, 0]) + img)
ind = bytearray(48)
struct.pack_into("<QIHH", ind, 0, 0x3400, 32, F_NEXT, 1)
struct.pack_into("<QIHH", ind, 16, 0x10000, 64, F_WRITE, 0)
img = ring_image([[(0x3300, 32, F_INDIRECT)]], extra=[(0x3300, bytes(ind[:32]))])
out("fuzz-virtqueue", "indirect", bytes([3, 1, 0, 0]) + img)
out("fuzz-virtqueue", "event-idx", bytes([4, 3, 0, 0]) + ring_image([[(0x7ff0, 32, 0)], [(0x3000, 1, F_WRITE)]]))

# virtio-blk: 16-byte header (type, reserved, sector), data, 1-byte status (§5.2.6)
def blk(kind, sector, data_len, write_data=False, extra=b""):
    hdr = struct.pack("<IIQ", kind, 0, sector)
    chain = [(0x3000, 16, 0)]
    if data_len:
        chain.append((0x4000, data_len, 0 if write_data else F_WRITE))
    chain.append((0x5000, 1, F_WRITE))
    return chain, [(0x3000, hdr), (0x4000, extra)]


reqs = [blk(0, 0, 512), blk(1, 8, 1024, True, b"x" * 1024), blk(4, 0, 0), blk(8, 0, 20),
        blk(11, 0, 16, True, struct.pack("<QII", 0, 8, 0)), blk(13, 0, 16, True, struct.pack("<QII", 16, 8, 1))]
for n, (chain, extra) in enumerate(reqs):
    out("fuzz-virtio-blk", "req-%d" % n, bytes([0, 0]) + ring_image([chain], extra=extra))
chains, extras = [], []
for n, (chain, extra) in enumerate(reqs[:3]):
    shifted = [(a + 0x100 * n, l, f) for a, l, f in chain]
    chains.append(shifted)
    extras += [(a + 0x100 * n, d) for a, d in extra]
out("fuzz-virtio-blk", "batch", bytes([2, 0]) + ring_image(chains, extra=extras))

# vhost-user message streams (vhost-user.rst); flags' top 4 bits: descriptors attached.
def vu(req, payload=b"", flags=1, fds=0):
    return struct.pack("<III", req, flags | (fds << 28), len(payload)) + payload


GET_FEATURES, SET_FEATURES, SET_OWNER, GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES = 1, 2, 3, 15, 16
SET_MEM_TABLE, SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 5, 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, GET_QUEUE_NUM, SET_VRING_ENABLE, GET_CONFIG = 12, 13, 17, 18, 24
GET_INFLIGHT_FD, SET_STATUS, GET_STATUS = 31, 39, 40
USER_BASE = 0x7f0000000000
stream = (vu(SET_OWNER) + vu(GET_FEATURES) + vu(GET_PROTOCOL_FEATURES) +
          vu(SET_PROTOCOL_FEATURES, struct.pack("<Q", 0x9)) + vu(SET_FEATURES, struct.pack("<Q", (1 << 32) | (1 << 30) | (1 << 28) | (1 << 29))) +
          vu(GET_QUEUE_NUM) + vu(GET_CONFIG, struct.pack("<III", 0, 60, 0) + bytes(60)) +
          vu(SET_MEM_TABLE, struct.pack("<II", 1, 0) + struct.pack("<QQQQ", 0, 0x10000, USER_BASE, 0), fds=1) +
          vu(SET_VRING_NUM, struct.pack("<II", 0, 8)) +
          vu(SET_VRING_ADDR, struct.pack("<IIQQQQ", 0, 0, USER_BASE, USER_BASE + 0x2000, USER_BASE + 0x1000, 0)) +
          vu(SET_VRING_BASE, struct.pack("<II", 0, 0)) + vu(SET_VRING_CALL, struct.pack("<Q", 0), fds=1) +
          vu(SET_VRING_KICK, struct.pack("<Q", 0), fds=1) + vu(SET_VRING_ENABLE, struct.pack("<II", 0, 1)) +
          vu(GET_STATUS) + vu(GET_VRING_BASE, struct.pack("<II", 0, 0)) + vu(GET_INFLIGHT_FD, struct.pack("<QQHH", 0, 0, 1, 8)) +
          vu(SET_STATUS, struct.pack("<Q", 15), flags=9))
chain, extra = blk(0, 0, 512)
out("fuzz-vhost-user", "blk-read", struct.pack("<H", len(stream)) + stream + ring_image([chain], extra=extra))
out("fuzz-vhost-user", "handshake", struct.pack("<H", 7 * 12 + 8 + 8) + vu(SET_OWNER) + vu(GET_FEATURES) + vu(GET_PROTOCOL_FEATURES) +
    vu(SET_PROTOCOL_FEATURES, struct.pack("<Q", 0x9)) + vu(GET_QUEUE_NUM) + vu(99, flags=9) + vu(GET_STATUS))

# --- save file / migration stream (Sources/Migration/README.md §1) ------------------------
def crc32c(data, crc=0xFFFFFFFF):
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc


def crc(data):
    return crc32c(data) ^ 0xFFFFFFFF


def frame(kind, payload):
    h = struct.pack(">II", kind, len(payload)) + payload
    return h + struct.pack(">I", crc(h))


def save_file(config, chunks, end=True):
    c = config.encode()
    hdr = b"XNTHSTRM" + struct.pack(">II", 1, crc(c))
    hdr += struct.pack(">I", crc(hdr))
    body = b"".join(frame(1, x) for x in chunks)
    allb = b"".join(chunks)
    if end:
        body += frame(2, struct.pack(">QQI", len(allb), len(chunks), crc(allb)))
    return b"LinuxGuestRecord" + struct.pack(">I", len(c)) + c + hdr + body


assert crc(b"123456789") == 0xE3069283
cfg = '(domain (name g) (memory 64))'
out("fuzz-migration", "two-frames", save_file(cfg, [b"QEVM" + bytes(60), b"\x01\x02\x03"]))
out("fuzz-migration", "empty-stream", save_file(cfg, []))
out("fuzz-migration", "abort", save_file(cfg, [b"x"], end=False) + frame(3, b"engine failed"))

# --- QMP lines (qmp-spec) ------------------------------------------------------------------
out("fuzz-qmp", "session", '{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": ["oob"]}}\n'
    '{"return": {}, "id": 1}\n{"return": {"status": "running", "singlestep": false, "running": true}, "id": 2}\n'
    '{"return": [{"cpu-index": 0, "thread-id": 4242, "qom-path": "/machine/unattached/device[0]"}], "id": 3}\n'
    '{"return": {"actual": 268435456}, "id": 4}\n'
    '{"error": {"class": "GenericError", "desc": "no such device"}, "id": 5}\n'
    '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}\n')


# --- qcow2 images (fuzz-qcow2): byte 0 read-only flag, byte 1 offset seed, then the file.
# Small images (512-byte clusters) made by qemu-img when it is installed.
import subprocess, tempfile
def qcow2_seeds():
    if not shutil.which("qemu-img"):
        return
    with tempfile.TemporaryDirectory() as d:
        cases = [("v3", ["-o", "cluster_size=512"], []), ("v2", ["-o", "cluster_size=512,compat=0.10"], []),
                 ("data", ["-o", "cluster_size=512"], ["write -P 0x5a 0 4k", "write -z 8k 1k", "discard 1k 512"]),
                 ("backing", ["-o", "cluster_size=512", "-b", "base.raw", "-F", "raw"], ["write -P 0x11 512 512"]),
                 ("c4k", ["-o", "cluster_size=4096"], ["write -P 0x22 32k 8k"])]
        open(os.path.join(d, "base.raw"), "wb").truncate(64 << 10)
        for name, opts, io in cases:
            img = os.path.join(d, name + ".qcow2")
            args = ["qemu-img", "create", "-q", "-f", "qcow2"] + opts + [img] + ([] if "-b" in opts else ["64K"])
            subprocess.run(args, check=True, cwd=d)
            for c in io:
                subprocess.run(["qemu-io", "-f", "qcow2", "-c", c, img], check=True, stdout=subprocess.DEVNULL)
            data = open(img, "rb").read()
            out("fuzz-qcow2", name + "-rw", bytes([0, 7]) + data)
            out("fuzz-qcow2", name + "-ro", bytes([1, 3]) + data)
if not ONLY or "fuzz-qcow2" in ONLY:
    qcow2_seeds()


# --- virtio-net (fuzz-virtio-net): byte 0 features, byte 1 queue sizes and rate, byte 2
# frame count and transmit kicks, byte 3 buffers posted per kick (0: all at once), the frames (u16 length, pattern length, pattern), then
# guest memory: receive ring at 0x0/0x400/0x500, transmit ring at 0x800/0xc00/0xd00,
# buffers from 0x1000 (inputs are cut at 20000 bytes) and in the second region (guest 0x10000).
def virtio_net_seeds():
    INDIRECT, EVENT_IDX, MRG, V1, GUEST_OFF, HOST_OFF, RATE, JUMBO = 1, 2, 4, 8, 0x10, 0x20, 0x40, 0x80
    mac = bytes([2, 0x16, 0x3e, 0, 0, 1])

    def hdr(hl, flags=0, gso=0, hdr_len=0, gso_size=0, start=0, off=0):
        return struct.pack("<BBHHHH", flags, gso, hdr_len, gso_size, start, off) + (b"\1\0" if hl == 12 else b"")

    def eth(n, seed=1):
        return mac + bytes([2, 0, 0, 0, 0, seed, 0x08, 0x00]) + bytes((i * 7 + seed) & 0xff for i in range(n - 14))

    def frame(hl, n, seed=1):
        pat = (bytes(hl) + eth(min(n, 100), seed))[:127]   # repeated to the full length
        return struct.pack("<HB", hl + n, len(pat)) + pat

    def image(rx, tx, extra=()):
        mem = bytearray(0x10000)
        for desc, avail, chains in ((0, 0x400, rx), (0x800, 0xc00, tx)):
            i, heads = 0, []
            for c in chains:
                heads.append(i)
                for j, (a, l, f) in enumerate(c):
                    last = j + 1 == len(c)
                    struct.pack_into("<QIHH", mem, desc + 16 * i, a, l, f | (0 if last else F_NEXT), 0 if last else i + 1)
                    i += 1
            struct.pack_into("<HH", mem, avail, 0, len(heads))
            for k, h in enumerate(heads):
                struct.pack_into("<H", mem, avail + 4 + 2 * k, h)
        for a, data in extra:
            o = a if a < 0x10000 else 0x8000 + a - 0x10000
            mem[o:o + len(data)] = data
        return bytes(mem).rstrip(b"\0") or b"\0"

    def seed(name, f0, sizes, frames, kicks, rx, tx=(), extra=(), step=0):
        out("fuzz-virtio-net", name, bytes([f0, sizes, len(frames) | kicks << 3, step]) + b"".join(frames) + image(rx, tx, extra))

    rx2k = [[(0x10000 + 0x800 * i, 0x800, F_WRITE)] for i in range(8)]
    # Mergeable buffers: a 3000-byte frame takes two 2 KiB chains (num_buffers 2).
    seed("rx-mergeable", MRG | V1, 3 | 3 << 3, [frame(12, 60), frame(12, 3000, 2), frame(12, 1514, 3)], 0, rx2k)
    # Jumbo MTU with guest TSO: netback lines up 64 KiB before each read; the driver posts
    # 2 KiB buffers two per kick, so the 9000-byte frame waits in the bounce buffer until
    # five are there.
    seed("rx-bounce", MRG | V1 | GUEST_OFF | JUMBO, 3 | 3 << 3, [frame(12, 9000), frame(12, 60, 2)], 0, rx2k, step=2)
    # No MRG_RXBUF, small chains: a frame larger than one chain is dropped.
    small = [[(0x10000 + 0x100 * i, 0x100, F_WRITE)] for i in range(4)]
    seed("rx-small-chains", V1, 2 | 2 << 3, [frame(12, 1514), frame(12, 100, 2)], 0, small)
    # Legacy 10-byte header (neither VERSION_1 nor MRG_RXBUF), header and frame split.
    seed("rx-legacy", 0, 2 | 2 << 3, [frame(10, 60), frame(10, 600, 2)], 0,
         [[(0x10000, 10, F_WRITE), (0x10100, 1514, F_WRITE)], [(0x11000, 2048, F_WRITE)]])
    # Hostile receive chains (readable, outside memory, empty) ahead of good ones; indirect.
    ind = struct.pack("<QIHH", 0x12000, 0x800, F_WRITE, 0)   # an indirect table at 0x1000
    seed("rx-hostile", MRG | V1 | INDIRECT | EVENT_IDX, 3 | 3 << 3, [frame(12, 1000), frame(12, 3000, 2)], 0,
         [[(0x10000, 0x800, 0)], [(0x7fff0000, 0x800, F_WRITE)], [(0x10800, 0, F_WRITE)],
          [(0x1000, 16, F_INDIRECT)], [(0x11000, 0x800, F_WRITE)], [(0x11800, 0x800, F_WRITE)]],
         extra=[(0x1000, ind)])
    # Transmit: header + frame split, one buffer, a GSO TCPv4 frame with a partial
    # checksum, a non-GSO frame over the MTU (dropped), a too-short chain (dropped).
    tcp = eth(4000)
    tx = [[(0x1000, 12, 0), (0x1100, 60, 0)], [(0x1200, 12 + 1514, 0)], [(0x1800, 12 + 4000, 0)],
          [(0x2800, 12 + 2000, 0)], [(0x1180, 20, 0)]]
    txmem = [(0x1000, hdr(12)), (0x1100, eth(60)), (0x1200, hdr(12) + eth(1514, 2)),
             (0x1800, hdr(12, 1, 1, 54, 1448, 34, 16) + tcp), (0x2800, hdr(12) + eth(2000, 3)), (0x1180, hdr(12))]
    seed("tx-frames", V1 | HOST_OFF, 3 | 3 << 3, [], 0, [], tx, txmem)
    # The same behind a 64-bytes-per-millisecond rate limit: the queue is throttled.
    seed("tx-rate", V1 | HOST_OFF | RATE, 3 | 3 << 3, [frame(12, 60)], 1, rx2k[:2], tx, txmem)
    # Both directions, transmit kicked between received frames.
    seed("both", MRG | V1 | EVENT_IDX | HOST_OFF, 3 | 3 << 3, [frame(12, 60), frame(12, 1514, 2), frame(12, 200, 3)],
         0b101, rx2k[:4], tx[:3], txmem)


if not ONLY or "fuzz-virtio-net" in ONLY:
    virtio_net_seeds()

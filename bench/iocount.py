#!/usr/bin/python3
"""iocount.py - I/O done by each snapshot operation, next to a lower bound.

For each image (default A100 and A) and each snapshot operation (create;
apply with the disk already equal to the snapshot; apply after the 10%
rewrite of run.py; delete), for qimg and for qemu-img: one run under
`strace -f`, counting on the image file only (every descriptor opened on
its path, followed through dup and close) the bytes read and written, the
read and write system calls, the flushes (fsync, fdatasync,
sync_file_range) and fallocate calls.

The lower bound comes from the image as it is just before the operation,
parsed here (qcow2 header, L1 tables, refcount table and blocks, L2
tables). The refcount of a cluster is the number of L1 tables that reach
it, so an operation changes the refcounts of:
  create  every cluster the active L1 reaches, +1 (and a new L1 copy);
  delete  every cluster the snapshot's L1 reaches, -1;
  apply   per L1 index where the two L1 tables differ: +1 for what the
          snapshot's L2 table reaches, -1 for what the active one reaches.
Lower bound = read once: the L1 tables used, the L2 tables behind the
changed L1 entries (all of them for create and delete) and the refcount
blocks covering changed clusters; written once: those refcount blocks,
the L2 tables whose COPIED flags must change (qemu-img check insists they
equal refcount == 1), the new L1 table(s), the new snapshot table, and a
512-byte header sector. Opening (header, refcount table, snapshot table)
is counted as read once.

  bench/iocount.py                  # A100 and A, all four operations
  bench/iocount.py -i A100 -o create,delete --markdown
"""
import argparse
import array
import os
import re
import shutil
import struct
import sys
import tempfile

import run

L1E_MASK = 0x00fffffffffffe00
COPIED = 1 << 63
COMPRESSED = 1 << 62
OPS = ["create", "apply", "apply10", "delete"]
TRACE = ("openat,open,close,dup,dup2,dup3,fcntl,read,write,pread64,"
         "pwrite64,preadv,pwritev,preadv2,pwritev2,fsync,fdatasync,"
         "sync_file_range,fallocate,ftruncate,copy_file_range")


# ---- The image, parsed ----------------------------------------------------

class Image:
    def __init__(self, path):
        self.f = open(path, "rb")
        h = self.f.read(104)
        (magic, self.version, _, _, self.cluster_bits, self.size, _,
         self.l1_size, self.l1_off, self.rt_off, self.rt_clusters,
         self.nb_snapshots, self.snap_off) = struct.unpack(">IIQIIQIIQQIIQ",
                                                          h[:72])
        assert magic == 0x514649fb, "not qcow2"
        self.refcount_order = (struct.unpack(">I", h[96:100])[0]
                               if self.version >= 3 else 4)
        self.cs = 1 << self.cluster_bits
        self.rb_entries_bits = self.cluster_bits + 3 - self.refcount_order
        self.file_clusters = (os.fstat(self.f.fileno()).st_size
                              + self.cs - 1) >> self.cluster_bits
        self.snaps = self.read_snapshots()
        self.rt = self.read_u64(self.rt_off, self.rt_clusters * self.cs // 8)
        self.snap_table_bytes = 0
        self._rc = None

    def pread(self, off, n):
        self.f.seek(off)
        return self.f.read(n)

    def read_u64(self, off, n):
        a = array.array("Q", self.pread(off, 8 * n))
        if sys.byteorder == "little":
            a.byteswap()
        return a

    def read_snapshots(self):
        snaps, off = {}, self.snap_off
        for _ in range(self.nb_snapshots):
            (l1_off, l1_size, id_len, name_len, _, _, _, _,
             extra) = struct.unpack(">QIHHIIQII", self.pread(off, 40))
            p = off + 40 + extra
            name = self.pread(p + id_len, name_len).decode()
            snaps[name] = (l1_off, l1_size)
            off = (p + id_len + name_len + 7) & ~7
        self.snap_table_end = off
        return snaps

    def l1(self, name=None):
        if name is None:
            return self.read_u64(self.l1_off, self.l1_size)
        off, n = self.snaps[name]
        return self.read_u64(off, n)

    def l2(self, off):
        return self.read_u64(off, self.cs // 8)

    def refcounts(self):
        """Refcount of every cluster of the file, in one array."""
        if self._rc is not None:
            return self._rc
        code = {3: "B", 4: "H", 5: "I", 6: "Q"}[self.refcount_order]
        per = 1 << self.rb_entries_bits
        rc = array.array(code)
        for i in range((self.file_clusters + per - 1) // per):
            blk = self.rt[i] & L1E_MASK if i < len(self.rt) else 0
            if blk:
                a = array.array(code, self.pread(blk, self.cs))
                if sys.byteorder == "little" and a.itemsize > 1:
                    a.byteswap()
            else:
                a = array.array(code, bytes(self.cs))
            rc.extend(a)
        self._rc = rc
        return rc


class Bound:
    """Bytes a minimal implementation reads and writes."""

    def __init__(self, img):
        self.img = img
        # refcount change per cluster of the file (+1 for a new L1 copy)
        self.delta = array.array("h", bytes(2 * (img.file_clusters + 64)))
        self.l2 = {}            # L2 tables read: offset -> entries
        self.r = self.w = self.l1_read = 0

    def add(self, c, sign):
        if c >= len(self.delta):
            self.delta.extend([0] * (c + 1 - len(self.delta)))
        self.delta[c] += sign

    def add_refs(self, l2_off, sign):
        """Count the L2 table at l2_off and the clusters it maps."""
        img, d = self.img, self.delta
        bits = img.cluster_bits
        t = self.l2.get(l2_off)
        if t is None:
            t = self.l2[l2_off] = img.l2(l2_off)
        self.add(l2_off >> bits, sign)
        for e in t:
            off = e & L1E_MASK
            if off and not e & COMPRESSED:  # none in the standard images
                d[off >> bits] += sign

    def refblocks(self):
        shift = self.img.rb_entries_bits
        return {i >> shift for i, v in enumerate(self.delta) if v}

    def copied_fixups(self, new_l1):
        """Is the new active L1 dirty, and which of the L2 tables read
        have COPIED flags that no longer match refcount == 1."""
        img, rc, d = self.img, self.img.refcounts(), self.delta
        bits = img.cluster_bits
        n = len(rc)

        def rc_new(c):
            return (rc[c] if c < n else 0) + d[c]

        l1_dirty, l2_dirty = False, set()
        for e in new_l1:
            off = e & L1E_MASK
            if not off:
                continue
            if bool(e & COPIED) != (rc_new(off >> bits) == 1):
                l1_dirty = True
            if off in l2_dirty or off not in self.l2:
                continue
            for x in self.l2[off]:
                xo = x & L1E_MASK
                if xo and not x & COMPRESSED and \
                        bool(x & COPIED) != (rc_new(xo >> bits) == 1):
                    l2_dirty.add(off)
                    break
        return l1_dirty, l2_dirty

    def finish(self, new_l1, extra_l1_bytes, snap_entry_delta):
        img = self.img
        cs = img.cs
        l1_dirty, l2_dirty = self.copied_fixups(new_l1)
        rbs = self.refblocks()
        opened = 512 + img.rt_clusters * cs + \
            (img.snap_table_end - img.snap_off)
        self.r = opened + len(self.l2) * cs + len(rbs) * cs + self.l1_read
        self.w = len(l2_dirty) * cs + len(rbs) * cs + extra_l1_bytes + \
            (8 * img.l1_size if l1_dirty else 0) + 512 + \
            max(0, img.snap_table_end - img.snap_off + snap_entry_delta)
        # the clusters read one by one: L2 tables and refcount blocks
        self.read_offs = sorted(list(self.l2) + [
            img.rt[i] & L1E_MASK for i in rbs
            if i < len(img.rt) and img.rt[i] & L1E_MASK])
        self.detail = "%d L2 read, %d L2 written, %d refblocks" % (
            len(self.l2), len(l2_dirty), len(rbs))
        return self


def bound_create(img):
    b = Bound(img)
    act = img.l1()
    b.l1_read = 8 * img.l1_size
    for e in act:
        if e & L1E_MASK:
            b.add_refs(e & L1E_MASK, +1)
    # the new L1 copy: clusters past the end of the file
    for k in range((8 * img.l1_size + img.cs - 1) // img.cs):
        b.add(img.file_clusters + k, +1)
    return b.finish(act, 8 * img.l1_size, 40 + 16 + 16)


def bound_delete(img, name):
    b = Bound(img)
    off, n = img.snaps[name]
    b.l1_read = 8 * n + 8 * img.l1_size
    for e in img.l1(name):
        if e & L1E_MASK:
            b.add_refs(e & L1E_MASK, -1)
    for c in range(off >> img.cluster_bits,
                   (off + 8 * n + img.cs - 1) >> img.cluster_bits):
        b.add(c, -1)
    return b.finish(img.l1(), 0, -(40 + 16 + 16))


def bound_apply(img, name):
    b = Bound(img)
    act, snap = img.l1(), img.l1(name)
    b.l1_read = 8 * img.l1_size + 8 * len(snap)
    new = array.array("Q", snap)
    for i in range(max(len(act), len(snap))):
        a = act[i] & L1E_MASK if i < len(act) else 0
        s = snap[i] & L1E_MASK if i < len(snap) else 0
        if a == s:
            continue
        if s:
            b.add_refs(s, +1)
        if a:
            b.add_refs(a, -1)
    changed = any((act[i] ^ new[i]) & L1E_MASK
                  for i in range(min(len(act), len(new))))
    return b.finish(new, 8 * img.l1_size if changed else 0, 0)


# ---- Tracing ------------------------------------------------------------

LINE = re.compile(r"^(\d+\.\d+) (\w+)\((.*)\)\s+= (-?\d+|0x[0-9a-f]+)")


def parse_trace(prefix, path):
    """Merge the per-thread strace files; count I/O on fds open on path."""
    events = []
    d, base = os.path.split(prefix)
    for fn in os.listdir(d):
        if fn.startswith(base + "."):
            with open(os.path.join(d, fn)) as f:
                for ln in f:
                    m = LINE.match(ln)
                    if m:
                        events.append((float(m.group(1)), m.group(2),
                                       m.group(3), int(m.group(4), 0)))
    events.sort(key=lambda e: e[0])
    fds = set()
    c = dict(rbytes=0, wbytes=0, reads=0, writes=0, flushes=0, falloc=0)
    for _, name, args, ret in events:
        first = args.split(",", 1)[0]
        if name in ("openat", "open"):
            m = re.search(r'"((?:[^"\\]|\\.)*)"', args)
            if ret >= 0 and m and os.path.abspath(m.group(1)) == path:
                fds.add(ret)
            elif ret >= 0:
                fds.discard(ret)
            continue
        if not first.isdigit():
            continue
        fd = int(first)
        if name == "close":
            fds.discard(fd)
        elif name in ("dup", "dup2", "dup3") or (
                name == "fcntl" and "F_DUPFD" in args):
            (fds.add if fd in fds else fds.discard)(ret)
        elif fd not in fds:
            continue
        elif name in ("read", "pread64", "preadv", "preadv2"):
            c["reads"] += 1
            c["rbytes"] += max(ret, 0)
        elif name in ("write", "pwrite64", "pwritev", "pwritev2"):
            c["writes"] += 1
            c["wbytes"] += max(ret, 0)
        elif name in ("fsync", "fdatasync", "sync_file_range"):
            c["flushes"] += 1
        elif name == "fallocate":
            c["falloc"] += 1
    return c


def traced(tool_argv, path):
    tmp = tempfile.mkdtemp(prefix="iocount.")
    try:
        prefix = os.path.join(tmp, "t")
        run.sh(["strace", "-f", "-ff", "-qq", "-ttt", "-s", "0", "-o",
                prefix, "-e", "trace=" + TRACE] + tool_argv)
        return parse_trace(prefix, path)
    finally:
        shutil.rmtree(tmp)


# ---- Driving ------------------------------------------------------------

def prepare(op, path, rewrite_mode):
    """Untimed set-up with qemu-img/qemu-io; returns the tool arguments."""
    if op == "create":
        return ["snapshot", "-c", "io-c", path]
    if op == "delete":
        run.sh(["qemu-img", "snapshot", "-c", "io-d", path])
        return ["snapshot", "-d", "io-d", path]
    run.sh(["qemu-img", "snapshot", "-c", "io-a", path])
    if op == "apply10":
        size = run.virtual_size(path)
        cmds = run.rewrite_cmds(size, run.rewrite_mode(size, rewrite_mode))
        run.sh(["qemu-io", "-f", "qcow2"] + cmds + [path])
    return ["snapshot", "-a", "io-a", path]


def lower_bound(op, path):
    img = Image(path)
    if op == "create":
        return bound_create(img)
    if op == "delete":
        return bound_delete(img, "io-d")
    return bound_apply(img, "io-a")


def measure(args, image, op):
    src = os.path.join(run.BENCH_DIR, "pristine", image + ".qcow2")
    path = os.path.join(run.BENCH_DIR, "copies", "io-%s.qcow2" % image)
    rows = []
    for tool in ("qimg", "qemu-img"):
        if os.path.exists(path):
            os.unlink(path)
        run.sh(["cp", "--sparse=always", src, path])
        argv = prepare(op, path, args.rewrite)
        if tool == "qimg":
            b = lower_bound(op, path)
            rows.append(dict(tool="lower bound", rbytes=b.r, wbytes=b.w,
                             reads=None, writes=None, flushes=None,
                             falloc=None, note=b.detail))
        exe = args.qimg if tool == "qimg" else args.qemu_img
        c = traced([exe] + argv, path)
        c.update(tool=tool, note="")
        rows.append(c)
    os.unlink(path)
    lb = rows[0]["rbytes"] + rows[0]["wbytes"]
    for r in rows[1:]:
        r["note"] = "%.2fx bound" % ((r["rbytes"] + r["wbytes"]) / lb)
    return rows


def mib(v):
    return "" if v is None else "%.2f" % (v / 1048576)


def num(v):
    return "" if v is None else str(v)


HEAD = ["image", "operation", "tool", "read MiB", "written MiB", "reads",
        "writes", "flushes", "fallocate", "notes"]


def print_table(all_rows, markdown):
    body = [[r["image"], r["op"], r["tool"], mib(r["rbytes"]),
             mib(r["wbytes"]), num(r["reads"]), num(r["writes"]),
             num(r["flushes"]), num(r["falloc"]), r["note"]]
            for r in all_rows]
    if markdown:
        print("| " + " | ".join(HEAD) + " |")
        print("|" + "|".join("---" for _ in HEAD) + "|")
        for r in body:
            print("| " + " | ".join(r) + " |")
        return
    w = [max(len(x) for x in col) for col in zip(HEAD, *body)]
    for r in [HEAD] + body:
        print("  ".join(x.ljust(n) for x, n in zip(r, w)).rstrip())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-i", "--images", default="A100,A")
    p.add_argument("-o", "--ops", default=",".join(OPS))
    p.add_argument("--rewrite", choices=["auto", "data", "zero"],
                   default="auto")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--qimg", default=os.path.join(run.ROOT, "build", "qimg"))
    p.add_argument("--qemu-img", default="qemu-img")
    args = p.parse_args()
    all_rows = []
    for image in args.images.split(","):
        for op in args.ops.split(","):
            if op not in OPS:
                sys.exit("unknown operation %s (%s)" % (op, ", ".join(OPS)))
            print("# %s on %s ..." % (op, image), file=sys.stderr, flush=True)
            for r in measure(args, image, op):
                r.update(image=image, op=op)
                all_rows.append(r)
    print_table(all_rows, args.markdown)


if __name__ == "__main__":
    main()

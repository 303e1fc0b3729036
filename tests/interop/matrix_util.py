"""Helpers for test_matrix.py: the image-variant covering array, a byte
model of guest contents, the operation list and its command forms for
qcow2 and for a raw reference, and a sparse-aware file comparison.

Not a test module (pytest collects only test_*.py); nothing here runs a
tool.
"""
import errno
import itertools
import os
from dataclasses import dataclass

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

# Each dimension of the image matrix and its values.
DIMS = [
    ("compat", ["0.10", "1.1"]),
    ("cluster", [512, 4 * KiB, 64 * KiB, 2 * MiB]),
    ("refbits", [1, 16, 64]),
    ("ext_l2", [False, True]),
    ("compression", ["zlib", "zstd"]),
    ("backing", [None, "qcow2", "raw"]),
]


@dataclass(frozen=True)
class Variant:
    compat: str
    cluster: int
    refbits: int
    ext_l2: bool
    compression: str
    backing: object      # None, "qcow2" or "raw"

    @property
    def v3(self):
        return self.compat == "1.1"

    @property
    def l2span(self):
        """Guest bytes one L2 table maps (16-byte entries with ext L2)."""
        return self.cluster * (self.cluster // (16 if self.ext_l2 else 8))

    @property
    def size(self):
        """Two L2 tables and a bit: the last cluster is partial (512 B)
        except with 512-byte clusters."""
        tail = 512 if self.cluster > 512 else 0
        return 2 * self.l2span + 4 * self.cluster + tail

    @property
    def backing_size(self):
        """Ends inside the cluster after [S + 3c, S + 4c), mid-cluster
        where the cluster is bigger than a sector."""
        c = self.cluster
        return self.l2span + 3 * c + max(512, c // 2)

    def create_opts(self):
        return ("compat=%s,cluster_size=%d,refcount_bits=%d,extended_l2=%s,"
                "compression_type=%s" % (
                    self.compat, self.cluster, self.refbits,
                    "on" if self.ext_l2 else "off", self.compression))

    def ident(self):
        c = self.cluster
        cs = "%dM" % (c // MiB) if c >= MiB else (
            "%dk" % (c // KiB) if c >= KiB else "%d" % c)
        return "v%s-c%s-r%d-%s-%s-%s" % (
            "3" if self.v3 else "2", cs, self.refbits,
            "el2" if self.ext_l2 else "l2", self.compression,
            "b" + self.backing if self.backing else "nob")


def valid(v):
    """QEMU's own constraints: extended L2 needs v3 and >= 16k clusters;
    zstd and refcount widths other than 16 need v3."""
    if not v.v3 and (v.ext_l2 or v.compression != "zlib" or v.refbits != 16):
        return False
    return not (v.ext_l2 and v.cluster < 16 * KiB)


def all_valid():
    return [v for v in (Variant(*t) for t in itertools.product(
        *[vals for _, vals in DIMS])) if valid(v)]


def pairs_of(v):
    vals = [getattr(v, name) for name, _ in DIMS]
    return {(i, vals[i], j, vals[j])
            for i, j in itertools.combinations(range(len(DIMS)), 2)}


def covering_array():
    """Greedy pairwise covering array over the valid variants: every pair
    of values that some valid variant has appears in at least one chosen
    variant. Invalid combinations are never candidates, so no test has to
    skip. Deterministic (ties go to the first candidate)."""
    cands = all_valid()
    todo = set().union(*(pairs_of(v) for v in cands))
    chosen = []
    while todo:
        best = max(cands, key=lambda v: len(pairs_of(v) & todo))
        chosen.append(best)
        todo -= pairs_of(best)
    return chosen


# ---- guest contents model ---------------------------------------------------


class Model:
    """Guest contents as disjoint runs of one byte value; gaps read 0."""

    def __init__(self):
        self.segs = []

    def set(self, lo, hi, val):
        if lo >= hi:
            return
        out = []
        for a, b, v in self.segs:
            if b <= lo or a >= hi:
                out.append((a, b, v))
                continue
            if a < lo:
                out.append((a, lo, v))
            if b > hi:
                out.append((hi, b, v))
        out.append((lo, hi, val))
        self.segs = sorted(out)

    def pieces(self, lo, hi):
        """(offset, length, byte) runs covering [lo, hi)."""
        pos = lo
        for a, b, v in self.segs:
            if b <= lo or a >= hi:
                continue
            a, b = max(a, lo), min(b, hi)
            if a > pos:
                yield (pos, a - pos, 0)
            yield (a, b - a, v)
            pos = b
        if pos < hi:
            yield (pos, hi - pos, 0)


def discard_range(v, off, length, size):
    """The part of a discard QEMU's qcow2 driver really drops: whole
    clusters only (the block layer hands partial clusters down separately
    and qcow2 ignores them, except a whole partial cluster at the end of
    an unaligned image), and nothing at all on a v2 image with a backing
    file (qcow2 answers -ENOTSUP, which the block layer treats as done).
    Returns (lo, hi), possibly empty."""
    if not v.v3 and v.backing:
        return (0, 0)
    c = v.cluster
    lo = -(-off // c) * c
    end = off + length
    hi = size if end == size and size % c else end // c * c
    return (lo, max(lo, hi))


def apply(model, v, ops, size):
    for kind, off, length, pat in ops:
        if kind in ("write", "comp"):
            model.set(off, off + length, pat)
        elif kind in ("zero", "zero_u"):
            model.set(off, off + length, 0)
        else:
            lo, hi = discard_range(v, off, length, size)
            model.set(lo, hi, 0)


def qcow2_cmd(op):
    kind, off, length, pat = op
    return {"write": "write -q -P %#x %d %d" % (pat or 0, off, length),
            "comp": "write -q -c -P %#x %d %d" % (pat or 0, off, length),
            "zero": "write -q -z %d %d" % (off, length),
            "zero_u": "write -q -z -u %d %d" % (off, length),
            "discard": "discard -q %d %d" % (off, length)}[kind]


def raw_cmds(v, op, size):
    """The same operation on a raw reference file. Raw has no compressed
    clusters and its discard punches exactly the bytes asked for, so a
    compressed write becomes a plain write and a discard becomes a zero
    write of what qcow2 really drops (discard_range)."""
    kind, off, length, pat = op
    if kind == "comp":
        return [qcow2_cmd(("write", off, length, pat))]
    if kind == "discard":
        lo, hi = discard_range(v, off, length, size)
        return ["write -q -z %d %d" % (lo, hi - lo)] if hi > lo else []
    return [qcow2_cmd(op)]


def cmd_args(cmds):
    args = []
    for c in cmds:
        args += ["-c", c]
    return args


# ---- files ------------------------------------------------------------------


def data_extents(path):
    """(size, [(lo, hi), ...]) of the file's data (non-hole) ranges."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        ext, pos = [], 0
        while pos < size:
            try:
                lo = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            hi = os.lseek(fd, lo, os.SEEK_HOLE)
            ext.append((lo, hi))
            pos = hi
        return size, ext
    finally:
        os.close(fd)


def first_difference(a, b):
    """cmp(1) for sparse files: None if equal, else a description. Holes
    read as zeros, so only the union of both files' data ranges is read
    (a 1 TiB raw image costs what its data costs)."""
    sa, ea = data_extents(a)
    sb, eb = data_extents(b)
    if sa != sb:
        return "sizes differ: %d vs %d" % (sa, sb)
    merged = []
    for lo, hi in sorted(ea + eb):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for lo, hi in merged:
            pos = lo
            while pos < hi:
                n = min(hi - pos, 4 * MiB)
                fa.seek(pos)
                fb.seek(pos)
                da, db = fa.read(n), fb.read(n)
                if da != db:
                    i = next(k for k in range(n) if da[k] != db[k])
                    return "differ at byte %d: %#x vs %#x" % (
                        pos + i, da[i], db[i])
                pos += n
    return None

"""qimg check against qemu-img check (7.2) on a corruption corpus.

Every damaged image is made here: qemu-img/qemu-io write data and take
snapshots, then precise byte edits (located through the header, L1/L2
tables, refcount structures and the snapshot table) break one thing.
For each kind of damage:

  * plain check: exit code, human stdout, JSON counts and key order (minus
    qimg's extra "findings" key) and stderr (minus qimg's indented
    "    referenced by ..." / "    in ..." continuation lines) equal
    qemu-img's;
  * `-r all` on two copies (qemu-img on one, qimg on the other): same exit
    code and counts; afterwards qemu-img check finds on qimg's copy exactly
    what it finds on its own; guest data reachable before the damage (raw
    conversion of the active disk and of each snapshot) is unchanged, and
    equal to what qemu-img's repair left;
  * the reverse: after qemu-img's repair, qimg check agrees.

One difference is by design: qimg writes a rebuilt refcount structure
past the end of the file (it never overwrites a cluster the old structure
could still be using), QEMU into the first clusters its new table calls
free. So after "Rebuilding refcount structure" the "Image end offset"
differs, and QEMU prints "Repairing cluster N refcount=1 reference=0" for
its old refcount table/blocks, which qimg leaves out of the new structure
from the start. Those lines and that number are masked only in rebuild
cases (norm_rebuild()), and the tests assert that the rebuild happened on
both sides, that the counts agree and that the result checks clean.

Where qemu-img's own repair fails midway (QEMU_REPAIR_FAILS) or destroys
guest data (QEMU_LOSES_DATA), qimg's output is compared up to that point
and its result is pinned instead; see those tables for why.
"""
import json
import os
import re
import shutil
import struct

import pytest

from conftest import QIMG, qemu_img, qemu_io, run, strip_prog

QCOW_OFLAG_COPIED = 1 << 63
QCOW_OFLAG_COMPRESSED = 1 << 62
QCOW_OFLAG_ZERO = 1
OFF_MASK = 0x00fffffffffffe00


# ---- Reading and editing an image ----------------------------------------

class Img:
    """Header fields plus accessors for the tables of one qcow2 file."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            h = f.read(104)
        (_, self.version, _, _, self.cluster_bits, self.size, _,
         self.l1_size, self.l1_off, self.rt_off, self.rt_clusters,
         self.nb_snaps, self.snap_off) = struct.unpack(">IIQIIQIIQQIIQ",
                                                       h[:72])
        self.incompat = 0
        self.refcount_order = 4
        if self.version >= 3:
            self.incompat = struct.unpack(">Q", h[72:80])[0]
            self.refcount_order = struct.unpack(">I", h[96:100])[0]
        self.cs = 1 << self.cluster_bits
        self.ext_l2 = bool(self.incompat & 16)
        self.l2e_size = 16 if self.ext_l2 else 8
        self.l2_entries = self.cs // self.l2e_size

    def read(self, off, n):
        with open(self.path, "rb") as f:
            f.seek(off)
            return f.read(n).ljust(n, b"\0")

    def write(self, off, data):
        with open(self.path, "r+b") as f:
            f.seek(off)
            f.write(data)

    def u64(self, off):
        return struct.unpack(">Q", self.read(off, 8))[0]

    def set_u64(self, off, v):
        self.write(off, struct.pack(">Q", v))

    def file_clusters(self):
        return (os.path.getsize(self.path) + self.cs - 1) // self.cs

    # refcounts
    def rt(self, i):
        return self.u64(self.rt_off + 8 * i)

    def _rc_loc(self, k):
        bits = 1 << self.refcount_order
        per_block = self.cs * 8 // bits
        block = self.rt(k // per_block) & ~0x1ff
        assert block, "no refcount block for cluster %d" % k
        return block, k % per_block, bits

    def refcount(self, k):
        block, i, bits = self._rc_loc(k)
        if bits >= 8:
            return int.from_bytes(self.read(block + i * bits // 8, bits // 8),
                                  "big")
        b = self.read(block + i * bits // 8, 1)[0]
        return (b >> (i * bits % 8)) & ((1 << bits) - 1)

    def set_refcount(self, k, v):
        block, i, bits = self._rc_loc(k)
        if bits >= 8:
            self.write(block + i * bits // 8, v.to_bytes(bits // 8, "big"))
            return
        off = block + i * bits // 8
        shift = i * bits % 8
        b = self.read(off, 1)[0] & ~(((1 << bits) - 1) << shift)
        self.write(off, bytes([b | (v << shift)]))

    # L1 / L2
    def l1e_off(self, i, l1_off=None):
        return (self.l1_off if l1_off is None else l1_off) + 8 * i

    def l2_off(self, guest, l1_off=None):
        span = self.cs * self.l2_entries
        return self.u64(self.l1e_off(guest // span, l1_off)) & OFF_MASK

    def l2e_off(self, guest, l1_off=None):
        j = guest // self.cs % self.l2_entries
        return self.l2_off(guest, l1_off) + j * self.l2e_size

    def l2e(self, guest, l1_off=None):
        return self.u64(self.l2e_off(guest, l1_off))

    def set_l2e(self, guest, v, l1_off=None):
        self.set_u64(self.l2e_off(guest, l1_off), v)

    def bitmap(self, guest):
        return self.u64(self.l2e_off(guest) + 8)

    def set_bitmap(self, guest, v):
        self.set_u64(self.l2e_off(guest) + 8, v)

    def data_cluster(self, guest, l1_off=None):
        return (self.l2e(guest, l1_off) & OFF_MASK) >> self.cluster_bits

    # snapshot table
    def snapshots(self):
        out, off = [], self.snap_off
        for _ in range(self.nb_snaps):
            e = self.read(off, 40)
            l1_off, l1_size, id_len, name_len = struct.unpack(">QIHH",
                                                              e[:16])
            extra_len = struct.unpack(">I", e[36:40])[0]
            rest = self.read(off + 40, extra_len + id_len + name_len)
            out.append(dict(off=off, fixed=bytearray(e), l1_off=l1_off,
                            l1_size=l1_size, extra=rest[:extra_len],
                            id=rest[extra_len:extra_len + id_len],
                            name=rest[extra_len + id_len:]))
            off = (off + 40 + extra_len + id_len + name_len + 7) & ~7
        return out

    def write_snapshots(self, snaps, at=None):
        """Encode `snaps` (as returned by snapshots(), edited) at `at`."""
        buf = b""
        for s in snaps:
            fixed = bytearray(s["fixed"])
            struct.pack_into(">QIHH", fixed, 0, s["l1_off"], s["l1_size"],
                             len(s["id"]), len(s["name"]))
            struct.pack_into(">I", fixed, 36, len(s["extra"]))
            e = bytes(fixed) + s["extra"] + s["id"] + s["name"]
            buf += e + b"\0" * (-len(e) % 8)
        self.write(self.snap_off if at is None else at, buf)
        return len(buf)

    def set_incompat(self, bits):
        self.set_u64(72, self.incompat | bits)


# ---- Base images -----------------------------------------------------------

def io(path, *cmds):
    args = []
    for c in cmds:
        args += ["-c", c]
    qemu_io("-f", "qcow2", *args, path, check=True)


def mk(path, opts=None, size="8M"):
    o = ["-o", opts] if opts else []
    qemu_img("create", "-q", "-f", "qcow2", *o, path, size, check=True)


def snap(path, name):
    qemu_img("snapshot", "-c", name, path, check=True)


def base_std(p, opts=None):
    """Data at 0..256k (shared with s1), a compressed cluster at 1M, then
    after snapshot s1: 64k rewritten (COW of the L2 table and the cluster)
    and a new cluster at 2M (refcount 1, COPIED)."""
    mk(p, opts)
    io(p, "write -q -P 0x11 0 256k", "write -q -c -P 0x55 1M 64k")
    snap(p, "s1")
    io(p, "write -q -P 0x22 64k 64k", "write -q -P 0x33 2M 64k")


def base_shared(p):
    """std, then snapshot s2: the active L2 table is shared (refcount 2)."""
    base_std(p)
    snap(p, "s2")


def base_nosnap(p, opts=None):
    """Two compressed clusters sharing a host cluster (the second starts
    inside a sector)."""
    mk(p, opts)
    io(p, "write -q -P 0x11 0 256k", "write -q -c -P 0x55 1M 64k",
       "write -q -c -P 0x56 1088k 64k", "write -q -P 0x33 2M 64k")


def base_late(p):
    """Guest data only from 4M on, so the first entries of the L2 table
    are unused (room for an overlapping snapshot table)."""
    mk(p)
    io(p, "write -q -P 0x66 4M 128k")
    snap(p, "s1")
    io(p, "write -q -P 0x77 4M 64k")


def base_lazy(p):
    mk(p, "lazy_refcounts=on")
    io(p, "write -q -P 0x11 0 256k", "write -q -P 0x33 2M 64k")


def base_words(p):
    """4k clusters: 200 data clusters written in order, so whole 64-cluster
    runs of host clusters are active, COPIED and referenced once (check
    compares such runs in one step)."""
    mk(p, "cluster_size=4k")
    io(p, "write -q -P 0x44 0 800k")


def d_dup_copied(img):
    """Guest cluster 195's entry points at guest cluster 65's host cluster
    (COPIED kept): that cluster is counted twice (refcount 2, correct), the
    entry's old cluster is freed (refcount 0, correct): only the COPIED
    flags are wrong, inside a run of clusters otherwise all COPIED."""
    K = 4096
    old = img.data_cluster(195 * K)
    img.set_l2e(195 * K, img.l2e(65 * K))
    img.set_refcount(img.data_cluster(65 * K), 2)
    img.set_refcount(old, 0)


def base_rc2_snaps(p):
    """4k clusters, 2-bit refcounts: data at 0 in an L2 table shared by
    the active disk and two snapshots (refcount 3, the maximum), then data
    at 4M in a table of the active disk only."""
    mk(p, "refcount_bits=2,cluster_size=4k")
    io(p, "write -q -P 0x11 0 8k")
    snap(p, "s1")
    snap(p, "s2")
    io(p, "write -q -P 0x22 4M 4k")


BASES = {
    "std": base_std,
    "shared": base_shared,
    "nosnap": base_nosnap,
    "late": base_late,
    "lazy": base_lazy,
    "v2": lambda p: base_nosnap(p, "compat=0.10"),
    "rc1": lambda p: base_nosnap(p, "refcount_bits=1"),
    "rc2": lambda p: base_nosnap(p, "refcount_bits=2"),
    "rc2snaps": base_rc2_snaps,
    "words": base_words,
    "rc4": lambda p: base_std(p, "refcount_bits=4"),
    "rc64": lambda p: base_std(p, "refcount_bits=64"),
    "extl2": lambda p: base_std(p, "extended_l2=on,cluster_size=64k"),
}


def views(path):
    """Names of the data views of an image: the active disk and each
    snapshot."""
    r = qemu_img("snapshot", "-l", path)
    names = [l.split()[1] for l in r.out.splitlines()[2:] if l.strip()]
    return ["active"] + names


def raw(path, view, out):
    """Raw guest data of one view, or None if qemu-img cannot read it."""
    args = ["convert", "-U", "-O", "raw"]
    if view != "active":
        args += ["-l", "snapshot.name=" + view]
    r = qemu_img(*args, path, out)
    if r.rc != 0:
        return None
    with open(out, "rb") as f:
        data = f.read()
    os.unlink(out)
    return data


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    d = tmp_path_factory.mktemp("bases")
    out = {}
    for name, fn in BASES.items():
        p = str(d / (name + ".qcow2"))
        fn(p)
        r = qemu_img("check", p)
        assert r.rc == 0, r
        out[name] = (p, {v: raw(p, v, str(d / "raw")) for v in views(p)})
    return out


# ---- Damage ---------------------------------------------------------------

def cl_of(img, guest):
    return img.data_cluster(guest)


def snap_l1(img, i=0):
    return img.snapshots()[i]["l1_off"]


def d_refcount(target, value):
    def fn(img):
        img.set_refcount(target(img), value)
    return fn


def d_leak_infile(img, raise_l1=True):
    """Two unreferenced in-file clusters with refcount 1 (the file grown
    by three clusters), and the L1 table's refcount raised to 3."""
    n = img.file_clusters()
    with open(img.path, "r+b") as f:
        f.truncate((n + 3) * img.cs)
    img.set_refcount(n, 1)
    img.set_refcount(n + 2, 1)
    if raise_l1:
        img.set_refcount(img.l1_off // img.cs, 3)


def d_leak_past_eof(img):
    img.set_refcount(img.file_clusters() + 2, 1)


def d_refblock_zeroed(img):
    img.write(img.rt(0) & OFF_MASK, b"\0" * img.cs)


def d_rt0(fn):
    def d(img):
        img.set_u64(img.rt_off, fn(img, img.rt(0)))
    return d


def d_l2e(guest, fn, l1=None):
    def d(img):
        l1_off = l1(img) if l1 else None
        img.set_l2e(guest, fn(img, img.l2e(guest, l1_off)), l1_off)
    return d


def d_l1e(fn, l1=None):
    def d(img):
        off = img.l1e_off(0, l1(img) if l1 else None)
        img.set_u64(off, fn(img, img.u64(off)))
    return d


def d_snap(**fields):
    """Edit fields of snapshot 0 and rewrite the table in place (it may
    shrink; growing stays within its cluster here)."""
    def d(img):
        snaps = img.snapshots()
        for k, v in fields.items():
            snaps[0][k] = v(img, snaps[0][k]) if callable(v) else v
        img.write_snapshots(snaps)
    return d


def d_snap_l1_past_eof(img):
    """Snapshot 0's L1 table moved to the last cluster, its size grown to
    end two clusters past the end of the file (read as zeros there)."""
    s = img.snapshots()
    new = img.file_clusters() * img.cs
    img.write(new, img.read(s[0]["l1_off"], img.cs))
    s[0]["l1_off"] = new
    s[0]["l1_size"] = 3 * img.cs // 8
    img.write_snapshots(s)


def d_snaptable_on_l2(img):
    """Move the snapshot table onto the active L2 table's first (unused)
    entries."""
    l2 = img.l2_off(4 << 20)
    img.write_snapshots(img.snapshots(), at=l2)
    img.set_u64(64, l2)


def d_nb_snaps(fn):
    def d(img):
        img.write(60, struct.pack(">I", fn(img.nb_snaps)))
    return d


def d_lazy_crash(img):
    """A crash with lazy refcounts: data written, refcounts never were."""
    img.set_incompat(1)
    for g in (0, 64 << 10, 128 << 10, 192 << 10, 2 << 20):
        img.set_refcount(cl_of(img, g), 0)


def d_copy_entry(src, dsts):
    def d(img):
        for g in dsts:
            img.set_l2e(g, img.l2e(src))
    return d


def d_bitmap(guest, fn):
    def d(img):
        img.set_bitmap(guest, fn(img.bitmap(guest)))
    return d


def d_many(*fns):
    def d(img):
        for fn in fns:
            fn(img)
            img.__init__(img.path)
    return d


M = 1 << 20
K64 = 64 << 10
# name: (base, damage, views whose data must survive qimg's repair)
KINDS = {
    # refcounts lowered
    "rc_data_zero": ("std", d_refcount(lambda i: cl_of(i, 2 * M), 0), None),
    "rc_shared_low": ("std", d_refcount(lambda i: cl_of(i, 0), 1), None),
    "rc_l2_zero": ("std", d_refcount(lambda i: i.l2_off(0) // i.cs, 0), None),
    "rc_l1_zero": ("std", d_refcount(lambda i: i.l1_off // i.cs, 0), None),
    "rc_header_zero": ("std", d_refcount(lambda i: 0, 0), None),
    "rc_refblock_zero": ("std", d_refcount(lambda i: i.rt(0) // i.cs, 0),
                         None),
    "rc_reftable_zero": ("std", d_refcount(lambda i: i.rt_off // i.cs, 0),
                         None),
    "rc_snaptable_zero": ("std", d_refcount(lambda i: i.snap_off // i.cs, 0),
                          None),
    "rc_snap_l1_zero": ("std", d_refcount(lambda i: snap_l1(i) // i.cs, 0),
                        None),
    "rc_shared_l2_low": ("shared",
                         d_refcount(lambda i: i.l2_off(0) // i.cs, 1), None),
    # refcounts raised
    "rc_data_raised": ("std", d_refcount(lambda i: cl_of(i, 2 * M), 2), None),
    "leak_infile": ("std", d_leak_infile, None),
    "leak_past_eof": ("std", d_leak_past_eof, None),
    # refcount structures
    "refblock_zeroed": ("std", d_refblock_zeroed, None),
    "reftable_entry_zeroed": ("std", d_rt0(lambda i, e: 0), None),
    "reftable_entry_unaligned": ("std", d_rt0(lambda i, e: e + 0x200), None),
    "reftable_entry_reserved": ("std", d_rt0(lambda i, e: e | 1), None),
    "reftable_entry_past_eof": ("std", d_rt0(lambda i, e: 256 * M), None),
    "reftable_entry_at_l2": ("std", d_rt0(lambda i, e: i.l2_off(0)), None),
    # L2 entries
    "l2_past_eof": ("std", d_l2e(2 * M, lambda i, e: QCOW_OFLAG_COPIED |
                                 16 * M), ["s1"]),
    "l2_unaligned": ("std", d_l2e(2 * M, lambda i, e: e + 0x200), ["s1"]),
    "l2_prealloc_unaligned": ("std", d_l2e(2 * M, lambda i, e: (e + 0x200) |
                                           QCOW_OFLAG_ZERO), ["s1"]),
    "l2_into_reftable": ("std", d_l2e(2 * M, lambda i, e: QCOW_OFLAG_COPIED |
                                      i.rt_off), ["s1"]),
    "l2_shared_rc1": ("std", d_copy_entry(2 * M, [3 * M]), ["s1"]),
    "l2_reserved": ("std", d_l2e(2 * M, lambda i, e: e | 2), None),
    # in a table shared with s2: reported once per walk, as QEMU does
    "l2_reserved_shared": ("shared", d_l2e(2 * M, lambda i, e: e | 2),
                           None),
    "l2_reserved_high": ("std", d_l2e(2 * M, lambda i, e: e | (1 << 56)),
                         None),
    "compressed_copied": ("nosnap", d_l2e(M, lambda i, e: e |
                                          QCOW_OFLAG_COPIED), None),
    "compressed_past_eof": ("nosnap", d_l2e(M + K64, lambda i, e: e +
                                            32 * M), []),
    "snap_l2_unaligned": ("std", d_l2e(0, lambda i, e: e + 0x200, snap_l1),
                          ["active"]),
    # COPIED flags
    "copied_l2_set_rc2": ("std", d_l2e(0, lambda i, e: e | QCOW_OFLAG_COPIED),
                          None),
    "copied_l2_clear_rc1": ("std", d_l2e(2 * M, lambda i, e: e &
                                         ~QCOW_OFLAG_COPIED), None),
    "copied_l1_set_rc2": ("shared", d_l1e(lambda i, e: e | QCOW_OFLAG_COPIED),
                          None),
    "copied_l1_clear_rc1": ("std", d_l1e(lambda i, e: e & ~QCOW_OFLAG_COPIED),
                            None),
    # L1 entries
    "l1_reserved": ("std", d_l1e(lambda i, e: e | 1), None),
    "l1_reserved_high": ("std", d_l1e(lambda i, e: e | (1 << 57)), None),
    "l1_unaligned": ("std", d_l1e(lambda i, e: e + 0x200), ["s1"]),
    "snap_l1_entry_unaligned": ("std", d_l1e(lambda i, e: e + 0x200, snap_l1),
                                ["active"]),
    # snapshot table
    "snap_l1_off_unaligned": ("std", d_snap(l1_off=lambda i, v: v + 0x200),
                              ["active"]),
    "snap_l1_size_huge": ("std", d_snap(l1_size=0x1000000), ["active"]),
    "snap_l1_past_eof": ("std", d_snap_l1_past_eof, ["active"]),
    "snap_l1_is_active_l1": ("std", d_snap(l1_off=lambda i, v: i.l1_off),
                             ["active"]),
    "snaptable_on_l2": ("late", d_snaptable_on_l2, ["s1"]),
    "snap_incomplete": ("std", d_snap(extra=lambda i, v: v[:8]), None),
    "snap_no_extra": ("shared", d_snap(extra=b""), None),
    "snap_extra_too_big": ("std", d_snap(extra=lambda i, v: v + b"\0" * 1100),
                           None),
    "nb_snaps_huge": ("std", d_nb_snaps(lambda n: 70000), ["active"]),
    "nb_snaps_plus_one": ("std", d_nb_snaps(lambda n: n + 1), None),
    # header bits, lazy refcounts
    "dirty_bit": ("std", lambda i: i.set_incompat(1), None),
    "corrupt_bit": ("std", lambda i: i.set_incompat(2), None),
    "lazy_crash": ("lazy", d_lazy_crash, None),
    # refcount widths
    "rc1_overflow": ("rc1", d_copy_entry(0, [K64]), []),
    "rc2_overflow": ("rc2", d_copy_entry(0, [K64, 2 * K64, 3 * K64]),
                     []),
    # a shared table is counted once per reference: the overflow is
    # met in the active walk (the unshared table), as QEMU meets it
    "rc2_overflow_shared": ("rc2snaps", d_copy_entry(0, [4 * M]), []),
    "rc1_data_zero": ("rc1", d_refcount(lambda i: cl_of(i, 2 * M), 0), None),
    "rc1_leak": ("rc1", lambda i: d_leak_infile(i, raise_l1=False), None),
    "rc4_low": ("rc4", d_refcount(lambda i: cl_of(i, 0), 1), None),
    "rc4_data_zero": ("rc4", d_refcount(lambda i: cl_of(i, 2 * M), 0), None),
    "rc64_leak": ("rc64", d_refcount(lambda i: cl_of(i, 2 * M), 7), None),
    "rc64_l2_zero": ("rc64", d_refcount(lambda i: i.l2_off(0) // i.cs, 0),
                     None),
    "v2_data_zero": ("v2", d_refcount(lambda i: cl_of(i, 2 * M), 0), None),
    # extended L2 entries
    "extl2_alloc_and_zero": ("extl2", d_bitmap(0, lambda b: b | (1 << 32)),
                             ["s1"]),
    "extl2_compressed_bitmap": ("extl2", d_bitmap(M, lambda b: b | 1),
                                ["active", "s1"]),
    "extl2_unalloc_bitmap": ("extl2", d_bitmap(3 * M, lambda b: b | 1),
                             ["s1"]),
    "extl2_bit0": ("extl2", d_l2e(2 * M, lambda i, e: e | 1), None),
    "extl2_prealloc_unaligned": ("extl2", d_many(
        d_l2e(2 * M, lambda i, e: e + 0x200),
        d_bitmap(2 * M, lambda b: 0xffffffff00000000)), ["s1"]),
    # two findings at once
    "copied_rc2_in_full_run": ("words", d_dup_copied, None),
    "snap_incomplete_and_rebuild": ("std", d_many(
        d_snap(extra=lambda i, v: v[:8]),
        d_refcount(lambda i: cl_of(i, 2 * M), 0)), None),
    "snap_incomplete_and_copied": ("std", d_many(
        d_snap(extra=lambda i, v: v[:8]),
        d_l2e(2 * M, lambda i, e: e & ~QCOW_OFLAG_COPIED)), None),
}


# Kinds whose `qemu-img check -r all` fails ("Check failed": QEMU's
# metadata overlap check or its unusable-refcount-block handling stops it
# midway); qimg completes the repair. Value: what qemu-img check finds
# after qimg's repair (exit code, corruptions, leaks).
QEMU_REPAIR_FAILS = {
    "reftable_entry_reserved": (0, 0, 0),
    "reftable_entry_unaligned": (0, 0, 0),
    "snap_l1_is_active_l1": (0, 0, 0),
    # The oversized snapshot L1 stays (neither tool drops a snapshot);
    # the leaks around it are repaired.
    "snap_l1_size_huge": (2, 1, 0),
}
# Kinds where `qemu-img check -r all` overwrites guest data: it "repairs"
# entries of an L2 table read from an unaligned offset, i.e. writes into
# the next cluster (here the active disk's data at guest offset 0). qimg
# leaves such entries alone. Value as above.
QEMU_LOSES_DATA = {
    "snap_l1_entry_unaligned": (2, 193, 0),
}
# Kinds compared on plain checks only: with more than 65536 snapshots
# QEMU's -r all reads 65536 entries, past the end of the file, as zeros
# (and then fails); qimg stops at the end of the file, changing nothing.
PLAIN_ONLY = {"nb_snaps_huge"}
# Lines where QEMU's failing repair departs from what qimg does.
QEMU_FAIL_LINE = re.compile(
    r"qcow2: Marking image as corrupt: Preventing invalid write|"
    r"ERROR: Could not write L2 table; metadata overlap|"
    r"ERROR: Overlap check failed|ERROR writing refblock|Check failed")


# ---- Comparing -----------------------------------------------------------

CONT = re.compile(r"    (referenced by|in) \S")


def cont_lines_removed(err):
    """qimg's stderr without its indented continuation lines (each follows
    one of qemu-img's lines)."""
    lines = err.split("\n")
    for i, l in enumerate(lines):
        if CONT.match(l):
            assert i > 0 and not CONT.match(lines[i - 1]), err
    return "\n".join(l for l in lines if not CONT.match(l))


def norm_err(err, prog):
    e = strip_prog(err, prog)
    if prog == "qimg":
        e = cont_lines_removed(e)
    return e.replace("Try '%s --help'" % prog, "Try 'PROG --help'")


REPAIR_CLUSTER = re.compile(r"Repairing cluster \d+ refcount=\d+ "
                            r"reference=\d+$")


def norm_rebuild(err, out, prog):
    """Mask what legitimately differs once refcounts were rebuilt (see the
    module docstring)."""
    if "Rebuilding refcount structure" not in err:
        return err, out
    lines = err.split("\n")
    k = lines.index("Rebuilding refcount structure")
    tail = [l for l in lines[k + 1:] if not REPAIR_CLUSTER.match(l)]
    if prog == "qimg":
        assert tail == lines[k + 1:], err
    out = re.sub(r"Image end offset: \d+", "Image end offset: N", out)
    out = re.sub(r'"image-end-offset": \d+', '"image-end-offset": "N"', out)
    return "\n".join(lines[:k + 1] + tail), out


def json_items(text):
    """Keys and values in printed order, without qimg's "findings"."""
    if not text.strip():
        return None
    pairs = json.loads(text, object_pairs_hook=lambda p: p)
    return [(k, v) for k, v in pairs if k != "findings"]


def findings(text):
    return dict(json.loads(text)).get("findings", [])


def compare(args, path, mask_rebuild=False):
    """Run qemu-img and qimg with the same arguments on the same file."""
    r1 = qemu_img("check", *args, path)
    r2 = run([QIMG, "check"] + list(args) + [path])
    e1, e2 = norm_err(r1.err, "qemu-img"), norm_err(r2.err, "qimg")
    o1, o2 = r1.out, r2.out
    if mask_rebuild:
        e1, o1 = norm_rebuild(e1, o1, "qemu-img")
        e2, o2 = norm_rebuild(e2, o2, "qimg")
    ctx = "\nqemu-img: %r\nqimg: %r" % (r1, r2)
    assert r2.rc == r1.rc, ctx
    assert e2 == e1, ctx
    if "--output=json" in args:
        assert json_items(o2) == json_items(o1), ctx
    else:
        assert o2 == o1, ctx
    return r1, r2


def counts(path, tool="qemu-img"):
    prog = ["qemu-img"] if tool == "qemu-img" else [QIMG]
    r = run(prog + ["check", "--output=json", path])
    j = dict(json_items(r.out) or [])
    return (r.rc, j.get("corruptions", 0), j.get("leaks", 0),
            j.get("check-errors"))


def check_better_repair(kind, rq, ri, pi, before, keep, tmp):
    """QEMU's repair fails; qimg's prints the same up to where QEMU's
    failure starts, then completes."""
    assert rq.rc == 1 and "Check failed" in rq.err, rq
    eq = norm_err(rq.err, "qemu-img").split("\n")
    cut = next(i for i, l in enumerate(eq) if QEMU_FAIL_LINE.search(l))
    ei = norm_err(ri.err, "qimg").split("\n")
    assert ei[:cut] == eq[:cut], (rq, ri)
    rc, corruptions, leaks = QEMU_REPAIR_FAILS[kind]
    assert ri.rc == rc, ri
    assert counts(pi)[:3] == (rc, corruptions, leaks)
    assert counts(pi, "qimg") == counts(pi)
    # QEMU marks the image corrupt on the way; a completed repair clears it.
    assert not Img(pi).incompat & 2
    for v, data in before.items():
        if keep is None or v in keep:
            assert raw(pi, v, str(tmp / "raw")) == data, "view %s changed" % v


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_corpus(kind, bases, tmp):
    base, damage, keep = KINDS[kind]
    src, before = bases[base]
    path = str(tmp / "d.qcow2")
    shutil.copy(src, path)
    damage(Img(path))

    # Plain check: JSON and human.
    r1, r2 = compare(["--output=json"], path)
    compare([], path)
    if r1.rc == 2 or r1.rc == 3:
        assert findings(r2.out), "no findings in qimg's JSON"

    # Repair on two copies.
    pq, pi = str(tmp / "q.qcow2"), str(tmp / "i.qcow2")
    shutil.copy(path, pq)
    shutil.copy(path, pi)
    if kind in PLAIN_ONLY:
        assert qemu_img("check", "-r", "all", pq).rc == 1
        assert run([QIMG, "check", "-r", "all", pi]).rc == 1
        assert open(pi, "rb").read() == open(path, "rb").read()
        return
    rq = qemu_img("check", "-r", "all", pq)
    ri = run([QIMG, "check", "-r", "all", pi])
    ctx = "\nqemu-img: %r\nqimg: %r" % (rq, ri)
    if kind in QEMU_REPAIR_FAILS:
        check_better_repair(kind, rq, ri, pi, before, keep, tmp)
        return
    if kind in QEMU_LOSES_DATA:
        rc, corruptions, leaks = QEMU_LOSES_DATA[kind]
        assert ri.rc == rc, ri
        assert counts(pi)[:3] == (rc, corruptions, leaks)
        assert counts(pi, "qimg") == counts(pi)
        for v in keep:
            assert raw(pq, v, str(tmp / "raw")) != before[v]
            assert raw(pi, v, str(tmp / "raw")) == before[v]
        return
    assert ri.rc == rq.rc, ctx
    assert ("Rebuilding refcount structure" in ri.err) == \
        ("Rebuilding refcount structure" in rq.err), ctx
    eq, oq = norm_rebuild(norm_err(rq.err, "qemu-img"), rq.out, "qemu-img")
    ei, oi = norm_rebuild(norm_err(ri.err, "qimg"), ri.out, "qimg")
    assert ei == eq, ctx
    assert oi == oq, ctx

    # What qemu-img thinks of qimg's repair = what it thinks of its own.
    assert counts(pi) == counts(pq)
    # The reverse: qimg agrees with qemu-img on qemu-img's repair.
    assert counts(pq, "qimg") == counts(pq)

    # Guest data: what was reachable and not damaged is unchanged, and
    # equal to what qemu-img's repair left.
    for v, data in before.items():
        after_q = raw(pq, v, str(tmp / "raw"))
        after_i = raw(pi, v, str(tmp / "raw"))
        assert after_i == after_q, "view %s differs from qemu's repair" % v
        if keep is None or v in keep:
            assert after_i == data, "view %s changed" % v


# ---- -r with JSON, -r leaks needing a rebuild --------------------------------

@pytest.mark.parametrize("kind", ["rc_data_zero", "leak_infile",
                                  "copied_l2_clear_rc1", "snap_incomplete",
                                  "rc_data_raised"])
def test_repair_json(kind, bases, tmp):
    base, damage, _ = KINDS[kind]
    path = str(tmp / "d.qcow2")
    shutil.copy(bases[base][0], path)
    damage(Img(path))
    # Same file name in two directories: "filename" is compared too.
    for d in ("q", "i"):
        os.mkdir(str(tmp / d))
        shutil.copy(path, str(tmp / d / "x.qcow2"))
    r1 = run(["qemu-img", "check", "-r", "all", "--output=json", "x.qcow2"],
             cwd=str(tmp / "q"))
    r2 = run([QIMG, "check", "-r", "all", "--output=json", "x.qcow2"],
             cwd=str(tmp / "i"))
    e1, o1 = norm_rebuild(norm_err(r1.err, "qemu-img"), r1.out, "qemu-img")
    e2, o2 = norm_rebuild(norm_err(r2.err, "qimg"), r2.out, "qimg")
    assert r2.rc == r1.rc
    assert e2 == e1
    assert json_items(o2) == json_items(o1)


@pytest.mark.parametrize("kind", ["rc_data_zero", "rc_l2_zero",
                                  "refblock_zeroed", "leak_infile",
                                  "rc_shared_low", "reftable_entry_zeroed",
                                  "copied_l2_clear_rc1",
                                  "snap_incomplete_and_copied",
                                  "reftable_entry_unaligned"])
def test_repair_leaks_only(kind, bases, tmp):
    """-r leaks: a rebuild needed is "ERROR need to rebuild refcount
    structures", exit 1; otherwise leaks are repaired."""
    base, damage, _ = KINDS[kind]
    path = str(tmp / "d.qcow2")
    shutil.copy(bases[base][0], path)
    damage(Img(path))
    dq, di = str(tmp / "q"), str(tmp / "i")
    os.mkdir(dq)
    os.mkdir(di)
    pq, pi = os.path.join(dq, "x.qcow2"), os.path.join(di, "x.qcow2")
    for args in (["-r", "leaks"], ["-r", "leaks", "--output=json"],
                 ["-q", "-r", "leaks"]):
        shutil.copy(path, pq)
        shutil.copy(path, pi)
        r1 = run(["qemu-img", "check"] + args + ["x.qcow2"], cwd=dq)
        r2 = run([QIMG, "check"] + args + ["x.qcow2"], cwd=di)
        assert r2.rc == r1.rc, (r1, r2)
        assert norm_err(r2.err, "qimg") == norm_err(r1.err, "qemu-img")
        if "--output=json" in args:
            assert json_items(r2.out) == json_items(r1.out)
        else:
            assert r2.out == r1.out
        assert counts(pi) == counts(pq)
        assert Img(pi).incompat == Img(pq).incompat
    if kind in ("rc_data_zero", "rc_l2_zero", "refblock_zeroed"):
        assert "ERROR need to rebuild refcount structures" in r1.err
        assert r1.rc == 1


# ---- Header bits -------------------------------------------------------------

def incompat(path):
    return Img(path).incompat


@pytest.mark.parametrize("bit", [1, 2])
@pytest.mark.parametrize("mode", [None, "leaks", "all"])
def test_header_bits(bit, mode, bases, tmp):
    """Plain check reports like qemu-img and leaves the dirty (1) or
    corrupt (2) bit; -r clears it like qemu-img."""
    pq, pi = str(tmp / "q.qcow2"), str(tmp / "i.qcow2")
    shutil.copy(bases["std"][0], pq)
    Img(pq).set_incompat(bit)
    shutil.copy(pq, pi)
    args = ["-r", mode] if mode else []
    r1 = qemu_img("check", *args, pq)
    r2 = run([QIMG, "check"] + args + [pi])
    assert (r2.rc, r2.out, r2.err) == (r1.rc, r1.out, r1.err)
    assert incompat(pi) == incompat(pq)
    assert bool(incompat(pi) & bit) == (mode is None)


# ---- JSON key sets and order ------------------------------------------------

def test_json_clean_exact(bases, tmp):
    """No findings: qimg's JSON is byte-identical, filename included."""
    for name in ("std", "nosnap", "extl2", "rc1", "v2"):
        p = bases[name][0]
        r1 = qemu_img("check", "--output=json", p)
        r2 = run([QIMG, "check", "--output=json", p])
        assert (r2.rc, r2.out, r2.err) == (r1.rc, r1.out, r1.err)
    mk(str(tmp / "e.qcow2"))
    r1 = qemu_img("check", "--output=json", "e.qcow2", cwd=str(tmp))
    r2 = run([QIMG, "check", "--output=json", "e.qcow2"], cwd=str(tmp))
    assert (r2.rc, r2.out, r2.err) == (r1.rc, r1.out, r1.err)


@pytest.mark.parametrize("kind,keys", [
    ("leak_infile", ["image-end-offset", "total-clusters", "check-errors",
                     "leaks", "allocated-clusters", "filename", "format",
                     "fragmented-clusters", "compressed-clusters"]),
    ("rc_data_zero", ["image-end-offset", "total-clusters", "corruptions",
                      "check-errors", "allocated-clusters", "filename",
                      "format", "fragmented-clusters",
                      "compressed-clusters"]),
])
def test_json_keys(kind, keys, bases, tmp):
    base, damage, _ = KINDS[kind]
    path = str(tmp / "d.qcow2")
    shutil.copy(bases[base][0], path)
    damage(Img(path))
    r1 = qemu_img("check", "--output=json", path)
    r2 = run([QIMG, "check", "--output=json", path])
    k1 = [k for k, _ in json_items(r1.out)]
    assert sorted(k1) == sorted(keys)
    assert [k for k, _ in json_items(r2.out)] == k1
    # The addition names referrers.
    f = findings(r2.out)
    assert all(set(x) <= {"kind", "message", "error", "where"} for x in f)
    assert any("where" in x for x in f)


def test_findings_name_referrers(bases, tmp):
    """The continuation lines say which table slot holds the reference."""
    path = str(tmp / "d.qcow2")
    shutil.copy(bases["std"][0], path)
    img = Img(path)
    img.set_refcount(cl_of(img, 0), 1)  # shared by active and s1
    r = run([QIMG, "check", path])
    lines = r.err.splitlines()
    i = lines.index("ERROR cluster %d refcount=1 reference=2" %
                    cl_of(img, 0))
    assert lines[i + 1] == ("    referenced by active L1 index 0, L2 index 0;"
                            " snapshot 1 (s1) L1 index 0, L2 index 0")


@pytest.mark.parametrize("fix", [[], ["-r", "all"]])
def test_file_length_counts_in_sectors(tmp, fix):
    """QEMU measures the file in 512-byte sectors: a file cut 76 bytes into
    the L1 table's cluster still covers it."""
    p, q = str(tmp / "p.qcow2"), str(tmp / "q.qcow2")
    mk(p, "cluster_size=512", size="1M")
    os.truncate(p, 1100)
    shutil.copy(p, q)
    rq = qemu_img("check", *fix, q)
    rm = run([QIMG, "check"] + fix + [p])
    assert rq.rc == 0 and "No errors" in rq.out, rq
    assert (rm.rc, rm.out) == (rq.rc, rq.out), (rq, rm)


def test_overflow_met_where_qemu_meets_it(bases, tmp):
    """qimg counts a table shared by several L1 tables once for all of
    them; an overflow must still be reported at the reference where QEMU's
    one-reference-at-a-time walk meets it (snapshot s2's walk), not where
    the shortcut would (the active disk's unshared table)."""
    base, damage, _ = KINDS["rc2_overflow_shared"]
    path = str(tmp / "d.qcow2")
    shutil.copy(bases[base][0], path)
    damage(Img(path))
    lines = run([QIMG, "check", path]).err.splitlines()
    i = next(i for i, l in enumerate(lines) if "overflow cluster" in l)
    assert lines[i + 1] == "    in snapshot 2 (s2) L1 index 0, L2 index 0"


# ---- Options and errors -------------------------------------------------------

def test_quiet(bases, tmp):
    for kind in ("leak_infile", "rc_data_zero"):
        base, damage, _ = KINDS[kind]
        path = str(tmp / "d.qcow2")
        shutil.copy(bases[base][0], path)
        damage(Img(path))
        for args in (["-q"], ["-q", "--output=json"]):
            r1 = qemu_img("check", *args, path)
            r2 = run([QIMG, "check"] + args + [path])
            assert r2.rc == r1.rc and r2.out == r1.out == ""
            assert norm_err(r2.err, "qimg") == norm_err(r1.err, "qemu-img")


@pytest.mark.parametrize("args", [
    ["r.raw"], ["-f", "raw", "r.raw"], ["--output=json", "-f", "raw", "r.raw"],
    ["-f", "raw", "c.qcow2"], ["nonexist.qcow2"],
    ["--output=json", "nonexist.qcow2"], [], ["c.qcow2", "extra"],
    ["-r", "foo", "c.qcow2"], ["-r", "c.qcow2"], ["--output=foo", "c.qcow2"],
    ["-Z", "c.qcow2"], ["-U", "-r", "all", "c.qcow2"],
    ["-U", "-r", "leaks", "c.qcow2"], ["-U", "c.qcow2"],
    ["-U", "--output=json", "c.qcow2"], ["-r", "all", "r.raw"],
])
def test_errors(args, tmp):
    d = str(tmp)
    qemu_img("create", "-q", "-f", "raw", "r.raw", "1M", cwd=d, check=True)
    mk(str(tmp / "c.qcow2"))
    r1 = run(["qemu-img", "check"] + args, cwd=d)
    r2 = run([QIMG, "check"] + args, cwd=d)
    assert r2.rc == r1.rc, (r1, r2)
    assert r2.out == r1.out
    assert norm_err(r2.err, "qimg") == norm_err(r1.err, "qemu-img")

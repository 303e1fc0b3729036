"""Interop over a matrix of qcow2 variants, in both directions.

Variants: compat 0.10/1.1 x cluster 512/4k/64k/2M x refcount_bits 1/16/64
x extended_l2 off/on x compression zlib/zstd x backing none/qcow2/raw, cut
to a pairwise covering array (matrix_util.covering_array()) that holds
only combinations QEMU accepts. For each variant:
  (a) qimg creates and writes; qemu-img check is clean, qemu-io reads the
      expected patterns and qemu-img compare finds the image identical to
      a raw reference that qemu-io built with the same operations;
  (b) qemu-img creates and qemu-io writes; qimg converts it to raw equal
      to the reference and reads the patterns; then qimg writes more, and
      check / compare agree again;
  (c) qimg info equals qemu-img info (human, JSON, --backing-chain) on
      the same files, unmasked: both read the very same file, so even
      "disk size" (st_blocks) must match.
Then a randomized differential test: thousands of random writes, zero
writes and discards through `qimg io` on qcow2 and through `qemu-io -f
raw` on a raw reference, compared batch by batch.

All tools run in the test's directory on relative names.
"""
import os
import random

import pytest

from conftest import QIMG, qemu_img, run, strip_prog, check_clean
from matrix_util import (KiB, MiB, GiB, Model, Variant, apply, cmd_args,
                         covering_array, first_difference, pairs_of,
                         qcow2_cmd, raw_cmds, all_valid, DIMS)

VARIANTS = covering_array()


def test_covering_array():
    """Every value of every dimension appears, every valid pair is
    covered, and no invalid combination is in the list."""
    valid = all_valid()
    for name, vals in DIMS:
        assert {getattr(v, name) for v in VARIANTS} == set(vals), name
    need = set().union(*(pairs_of(v) for v in valid))
    have = set().union(*(pairs_of(v) for v in VARIANTS))
    assert need <= have
    assert all(v in valid for v in VARIANTS)


# ---- the operations ---------------------------------------------------------
# (kind, offset, length, pattern byte); c = cluster size, S = bytes mapped
# by one L2 table, N = virtual size.


def backing_ops(v):
    c, S = v.cluster, v.l2span
    return [("write", 0, 4 * c, 0xa1),
            ("write", S - 2 * c, 4 * c, 0xa2),
            # up to the backing file's end, which is inside a cluster
            ("write", S + 3 * c, v.backing_size - (S + 3 * c), 0xa3)]


def ops_first(v):
    """Written by the tool that creates the image."""
    c, S, N = v.cluster, v.l2span, v.size
    sub = max(c // 32, 1)          # a subcluster with extended L2
    last = (N - 1) // c * c
    return [
        ("write", c - 100, c + 300, 0x11),        # crosses clusters
        ("write", S - c // 2 - 7, c + 13, 0x22),  # crosses L2 tables
        ("write", S + 2 * c + 5, 3 * c, 0x33),
        ("zero", c + 50, c, None),                # unaligned, over data
        ("zero_u", 3 * c, 2 * c, None),           # whole clusters, unmap
        ("zero_u", S + 2 * c + 100, c + 1, None),  # unaligned, unmap
        ("zero", S + 4 * c + 3 * sub, 5 * sub, None),  # subclusters
        ("comp", 6 * c, 2 * c, 0x44),
        ("discard", 6 * c + 3, 2 * c, None),      # drops cluster 7 only
        ("discard", S - 2 * c, 4 * c, None),      # across L2 tables
        ("write", S - 3, 6, 0x55),
        ("comp", last, N - last, 0x66),           # the last cluster
        ("write", N - 1000, 999, 0x77),           # COW of a compressed one
    ]


def ops_second(v):
    """Written by the other tool afterwards."""
    c, S, N = v.cluster, v.l2span, v.size
    return [
        ("write", 5 * c - 1, 2, 0x88),            # into unmapped zeros
        ("write", 7 * c + 17, 100, 0x99),         # into a discarded cluster
        ("comp", 9 * c, c, 0xaa),
        ("write", 9 * c + 5, 10, 0xab),           # COW of a compressed one
        ("zero_u", 6 * c, 2 * c, None),           # frees a compressed one
        ("write", S + c - 1, 2, 0xbb),
        ("zero", 0, 2 * c + 1, None),
        ("discard", S + 2 * c, 2 * c, None),
        ("write", N - 2 * c - 1, c + 2, 0xcc),
    ]


def read_cmds(v, model, ops):
    """`read -q -P` commands over every byte near an operation."""
    c, N = v.cluster, v.size
    wins = sorted((max(0, off - c), min(N, off + length + c))
                  for _, off, length, _ in ops)
    merged = []
    for lo, hi in wins:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return ["read -q -P %#x %d %d" % (val, off, length)
            for lo, hi in merged for off, length, val in model.pieces(lo, hi)]


# ---- tools ------------------------------------------------------------------


def io(d, tool, img, cmds, fmt="qcow2"):
    """Run io commands (all with -q): silent success expected."""
    prog = [QIMG, "io"] if tool == "qimg" else ["qemu-io"]
    r = run(prog + ["-f", fmt] + cmd_args(cmds) + [img], cwd=d)
    assert (r.rc, r.out, r.err) == (0, "", ""), "%s io %s:\n%r" % (
        tool, img, r)


def make_backing(d, v):
    """The backing file, if any; returns the create arguments for it."""
    if not v.backing:
        return []
    name = "base." + v.backing
    run(["qemu-img", "create", "-q", "-f", v.backing, name,
         str(v.backing_size)], check=True, cwd=d)
    io(d, "qemu-io", name, [qcow2_cmd(op) for op in backing_ops(v)],
       fmt=v.backing)
    return ["-b", name, "-F", v.backing]


def make_ref(d, v, name, ops):
    """Raw reference: the backing contents, then `ops` by qemu-io."""
    path = d / name
    with open(path, "wb") as f:
        f.truncate(v.size)
    cmds = []
    if v.backing:
        cmds += [qcow2_cmd(op) for op in backing_ops(v)]
    for op in ops:
        cmds += raw_cmds(v, op, v.size)
    io(d, "qemu-io", name, cmds, fmt="raw")
    return name


def model_of(v, ops):
    m = Model()
    if v.backing:
        apply(m, v, backing_ops(v), v.size)
    apply(m, v, ops, v.size)
    return m


def identical(d, img, ref):
    r = qemu_img("compare", "-f", "qcow2", "-F", "raw", d / img, d / ref)
    assert (r.rc, r.out) == (0, "Images are identical.\n"), r


def same_info(d, v, img):
    """(c): qimg info prints what qemu-img info prints for this file."""
    variants = [[], ["--output=json"]]
    if v.backing:
        variants += [["--backing-chain"],
                     ["--backing-chain", "--output=json"]]
    for args in variants:
        r1 = run(["qemu-img", "info"] + args + [img], cwd=d)
        r2 = run([QIMG, "info"] + args + [img], cwd=d)
        assert r1.rc == 0, r1
        assert r2.out == r1.out, "info %s" % args
        assert strip_prog(r2.err, "qimg") == strip_prog(r1.err, "qemu-img")
        assert r2.rc == r1.rc


# ---- (a), (b), (c) ----------------------------------------------------------


@pytest.mark.parametrize("v", VARIANTS, ids=Variant.ident)
def test_qimg_writes_qemu_reads(tmp, v):
    bargs = make_backing(tmp, v)
    ops = ops_first(v)
    r = run([QIMG, "create", "-q", "-f", "qcow2", "-o", v.create_opts()] +
            bargs + ["img.qcow2", str(v.size)], cwd=tmp)
    assert (r.rc, r.out, r.err) == (0, "", ""), r
    same_info(tmp, v, "img.qcow2")
    io(tmp, "qimg", "img.qcow2", [qcow2_cmd(op) for op in ops])
    check_clean(tmp / "img.qcow2")
    io(tmp, "qemu-io", "img.qcow2", read_cmds(v, model_of(v, ops), ops))
    identical(tmp, "img.qcow2", make_ref(tmp, v, "ref.raw", ops))
    same_info(tmp, v, "img.qcow2")


@pytest.mark.parametrize("v", VARIANTS, ids=Variant.ident)
def test_qemu_writes_qimg_reads(tmp, v):
    bargs = make_backing(tmp, v)
    first, second = ops_first(v), ops_second(v)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", v.create_opts()] +
        bargs + ["img.qcow2", str(v.size)], check=True, cwd=tmp)
    same_info(tmp, v, "img.qcow2")
    io(tmp, "qemu-io", "img.qcow2", [qcow2_cmd(op) for op in first])
    ref1 = make_ref(tmp, v, "ref1.raw", first)
    identical(tmp, "img.qcow2", ref1)       # the reference is right
    r = run([QIMG, "convert", "-O", "raw", "img.qcow2", "out.raw"], cwd=tmp)
    assert (r.rc, r.out, r.err) == (0, "", ""), r
    assert first_difference(tmp / "out.raw", tmp / ref1) is None
    io(tmp, "qimg", "img.qcow2", read_cmds(v, model_of(v, first), first))
    same_info(tmp, v, "img.qcow2")

    io(tmp, "qimg", "img.qcow2", [qcow2_cmd(op) for op in second])
    check_clean(tmp / "img.qcow2")
    identical(tmp, "img.qcow2", make_ref(tmp, v, "ref2.raw", first + second))
    both = first + second
    io(tmp, "qemu-io", "img.qcow2", read_cmds(v, model_of(v, both), both))
    same_info(tmp, v, "img.qcow2")


# ---- randomized differential test -------------------------------------------

# (name, variant, size, guest windows the offsets are drawn from)
RANDOM_VARIANTS = [
    ("64k-v3", Variant("1.1", 64 * KiB, 16, False, "zlib", None), GiB,
     [(0, 8 * MiB), (512 * MiB - 4 * MiB, 512 * MiB + 4 * MiB),
      (GiB - 2 * MiB, GiB)]),
    ("512-v3-r1-zstd", Variant("1.1", 512, 1, False, "zstd", None),
     4 * MiB, [(0, 4 * MiB)]),
    ("4k-v2-backing", Variant("0.10", 4 * KiB, 16, False, "zlib", "qcow2"),
     8 * MiB, [(0, 8 * MiB)]),
]
NOPS, BATCH = 2000, 250
SEED = int(os.environ.get("QIMG_MATRIX_SEED", "20240611"))


def random_length(rng, c):
    r = rng.random()
    if r < 0.4:
        return rng.randint(1, 2 * c)
    if r < 0.8:
        return rng.randint(1, 8 * c)
    return rng.randint(1, 256 * KiB)


def random_op(rng, v, size, windows, touched):
    """One random operation; compressed writes only where nothing was
    written yet (QEMU refuses to compress onto an allocated cluster)."""
    c = v.cluster
    lo, hi = rng.choice(windows)
    align = rng.choice([1, 1, 512, c])
    off = rng.randrange(lo, hi) // align * align
    length = -(-random_length(rng, c) // align) * align
    length = max(1, min(length, size - off))
    kind = rng.choices(["write", "zero", "zero_u", "discard", "comp"],
                       [50, 15, 10, 15, 10])[0]
    if kind == "comp":
        kind = "write"
        for _ in range(20):     # look for clusters nothing allocated yet
            off = rng.randrange(lo, hi) // c * c
            length = min(c * rng.randint(1, 3), size - off)
            if not touched & set(range(off // c, -(-(off + length) // c))):
                kind = "comp"
                break
    span = set(range(off // c, -(-(off + length) // c)))
    whole = set(range(-(-off // c), (off + length) // c))
    if v.v3 and kind in ("discard", "zero_u"):
        touched -= whole                # unmapped again
        if kind == "zero_u":
            touched |= span - whole     # partial ends may allocate
    elif kind != "discard":
        touched |= span
    pat = rng.randrange(1, 256) if kind in ("write", "comp") else None
    return (kind, off, length, pat)


def random_backing(d, v, rng, size):
    """A qcow2 backing file (3/4 of the image) with random contents, and
    the raw reference starting as its copy."""
    bsize = size * 3 // 4
    run(["qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2",
         str(bsize)], check=True, cwd=d)
    cmds = []
    for _ in range(60):
        off = rng.randrange(0, bsize)
        length = min(rng.randint(1, 64 * KiB), bsize - off)
        cmds.append("write -q -P %#x %d %d" % (rng.randrange(1, 256), off,
                                               length))
    io(d, "qemu-io", "base.qcow2", cmds)
    run(["qemu-img", "convert", "-O", "raw", "base.qcow2", "ref.raw"],
        check=True, cwd=d)
    os.truncate(d / "ref.raw", size)
    return ["-b", "base.qcow2", "-F", "qcow2"]


def ops_at(ops, offset):
    return [op for op in ops if op[1] <= offset < op[1] + op[2]]


@pytest.mark.parametrize("name,v,size,windows", RANDOM_VARIANTS,
                         ids=[x[0] for x in RANDOM_VARIANTS])
def test_random_differential(tmp, name, v, size, windows):
    seed = SEED + sum(map(ord, name))
    rng = random.Random(seed)
    why = "seed %d (QIMG_MATRIX_SEED=%d), variant %s" % (seed, SEED, name)
    bargs = []
    if v.backing:
        bargs = random_backing(tmp, v, rng, size)
    else:
        with open(tmp / "ref.raw", "wb") as f:
            f.truncate(size)
    r = run([QIMG, "create", "-q", "-f", "qcow2", "-o", v.create_opts()] +
            bargs + ["img.qcow2", str(size)], cwd=tmp)
    assert r.rc == 0, r
    touched, done = set(), []
    for batch in range(NOPS // BATCH):
        ops = [random_op(rng, v, size, windows, touched)
               for _ in range(BATCH)]
        done += ops
        r = run([QIMG, "io"] + cmd_args(qcow2_cmd(op) for op in ops) +
                ["img.qcow2"], cwd=tmp)
        assert (r.rc, r.out, r.err) == (0, "", ""), "%s, batch %d\n%r" % (
            why, batch, r)
        raw = [c for op in ops for c in raw_cmds(v, op, size)]
        io(tmp, "qemu-io", "ref.raw", raw, fmt="raw")
        r = qemu_img("compare", "-f", "qcow2", "-F", "raw",
                     tmp / "img.qcow2", tmp / "ref.raw")
        if r.rc != 0 and "mismatch at offset" in r.out:
            at = int(r.out.split("offset ")[1].rstrip("!\n"))
            pytest.fail("%s, batch %d: %s ops touching it: %s" % (
                why, batch, r.out.strip(), ops_at(done, at)))
        assert (r.rc, r.out) == (0, "Images are identical.\n"), (why, r)
    check_clean(tmp / "img.qcow2")

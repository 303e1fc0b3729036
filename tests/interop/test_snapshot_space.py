"""qimg snapshot -l --space (issue 17): the space each snapshot and the
active disk take in the file. Judged against what QEMU does: deleting a
snapshot with qemu-img gives back exactly its exclusive bytes, give or
take its own L1 table and the snapshot table (qemu-img check's count of
allocated clusters before and after); referenced = exclusive + shared;
the totals add up to what the file holds."""
import json
import os
import random
import shutil
import struct

import pytest

from conftest import QIMG, create_argv as create, qemu_img, qimg, \
    qio_argv as qio, run

MIB = 1 << 20


def build(tmp, opts, seed):
    rnd = random.Random(seed)
    steps = [create("a.img", "16M", "-o", opts)]
    for k in range(4):
        cmds = []
        for _ in range(rnd.randint(1, 4)):
            off = rnd.randrange(0, 16 * MIB, 4096)
            ln = rnd.choice([4096, 65536, 300000, MIB])
            ln = min(ln, 16 * MIB - off)
            kind = rnd.choice(["write -P %d" % (k + 1), "write -z",
                               "write -c -P 7" if "extended_l2" not in opts
                               else "write -P 8"])
            if kind.startswith("write -c"):
                off, ln = off // 65536 * 65536, 65536
            cmds.append("%s %d %d" % (kind, off, ln))
        steps.append(qio("a.img", *cmds))
        steps.append(["qemu-img", "snapshot", "-c", "s%d" % k, "a.img"])
    steps.append(qio("a.img", "write -P 9 2M 3M"))
    for s in steps:
        run(s, check=True, cwd=tmp)
    return tmp / "a.img"


def space(path):
    r = qimg("snapshot", "-l", "--space", "--output=json", path)
    assert r.rc == 0, r
    return json.loads(r.out)


def allocated(path):
    """Host clusters in use: refcounts above 0, read from the file's
    refcount structure (qcow2-format.md §4); the image checked clean by
    qemu-img first."""
    r = qemu_img("check", "--output=json", path)
    assert r.rc == 0, r
    j = json.loads(r.out)
    assert j.get("corruptions", 0) == 0 and j.get("leaks", 0) == 0, j
    data = path.read_bytes()
    cbits, = struct.unpack_from(">I", data, 20)
    rt_off, rt_clusters = struct.unpack_from(">QI", data, 48)
    order = 4
    if struct.unpack_from(">I", data, 4)[0] >= 3:
        order, = struct.unpack_from(">I", data, 96)
    cs, bits = 1 << cbits, 1 << order
    n = 0
    for i in range(rt_clusters * cs // 8):
        rb, = struct.unpack_from(">Q", data, rt_off + 8 * i)
        rb &= ~0x1ff
        if not rb:
            continue
        block = int.from_bytes(data[rb:rb + cs], "big")
        per = cs * 8 // bits
        mask = (1 << bits) - 1
        n += sum(1 for k in range(per) if block >> (bits * k) & mask)
    return n


OPTS = ["cluster_size=64k", "cluster_size=4k", "cluster_size=512",
        "cluster_size=64k,extended_l2=on", "compat=0.10"]


# The sanitizer build runs one history per geometry.
SEEDS = [1] if os.environ.get("QIMG_SANITIZE", "none") != "none" else [1, 2]


@pytest.mark.parametrize("opts", OPTS)
@pytest.mark.parametrize("seed", SEEDS)
def test_exclusive_is_what_delete_frees(tmp, opts, seed):
    img = build(tmp, opts, seed)
    cs = int(json.loads(qemu_img("info", "--output=json", img).out)[
        "cluster-size"])
    sp = space(img)
    before = allocated(img)
    for u in sp["snapshots"] + [sp["active"]]:
        assert u["referenced-bytes"] == u["exclusive-bytes"] + \
            u["shared-bytes"], u
    for s in sp["snapshots"]:
        copy = tmp / ("del-%s.img" % s["id"])
        shutil.copy(img, copy)
        run(["qemu-img", "snapshot", "-d", s["name"], copy], check=True)
        freed = (before - allocated(copy)) * cs
        l1 = -(-(16 * MIB // (cs * cs // 8 // (2 if "extended" in opts
                                                 else 1))) * 8 // cs) * cs
        # its L1 table, and the snapshot table may shrink by a cluster
        assert s["exclusive-bytes"] <= freed <= \
            s["exclusive-bytes"] + max(l1, cs) + cs, (s, freed)
    # the file: data and metadata in use, and free clusters it holds
    size = img.stat().st_size
    assert sp["data-bytes"] + sp["metadata-bytes"] == before * cs
    assert sp["data-bytes"] + sp["metadata-bytes"] + \
        sp["free-held-bytes"] <= -(-size // cs) * cs


def refcounts(path):
    """Every cluster's refcount, read from the file (qcow2-format.md §4)."""
    data = path.read_bytes()
    cbits, = struct.unpack_from(">I", data, 20)
    rt_off, rt_clusters = struct.unpack_from(">QI", data, 48)
    order = struct.unpack_from(">I", data, 96)[0] \
        if struct.unpack_from(">I", data, 4)[0] >= 3 else 4
    cs, bits = 1 << cbits, 1 << order
    per, mask, out = cs * 8 // bits, (1 << (1 << order)) - 1, []
    for i in range(rt_clusters * cs // 8):
        rb, = struct.unpack_from(">Q", data, rt_off + 8 * i)
        rb &= ~0x1ff
        block = int.from_bytes(data[rb:rb + cs], "big") if rb else 0
        out += [block >> (bits * (per - 1 - k)) & mask for k in range(per)]
    return cs, out


@pytest.mark.parametrize("tool", ["qemu-img", "qimg"])
def test_free_held(tmp, tool):
    """Free clusters the file still holds (not holes), counted from the
    refcounts and the file's data/hole map, after a delete by either tool
    (QEMU punches what a snapshot delete frees; qimg punches most)."""
    img = build(tmp, "cluster_size=64k", 3)
    prog = QIMG if tool == "qimg" else "qemu-img"
    run([prog, "snapshot", "-d", "s1", img], check=True)
    run([prog, "snapshot", "-d", "s2", img], check=True)
    sp = space(img)
    cs, rc = refcounts(img)
    size = img.stat().st_size
    held = 0
    with open(img, "rb") as f:
        for c in range(-(-size // cs)):
            if c < len(rc) and rc[c]:
                continue
            o, end = c * cs, min((c + 1) * cs, size)
            while o < end:
                try:
                    d = os.lseek(f.fileno(), o, os.SEEK_DATA)
                except OSError:
                    break
                if d >= end:
                    break
                h = os.lseek(f.fileno(), d, os.SEEK_HOLE)
                held += min(h, end) - d
                o = h
    assert sp["free-held-bytes"] == held, (sp, held)
    assert sp["reclaimable-bytes"] == sp["free-held-bytes"]


def test_human(tmp):
    img = build(tmp, "cluster_size=64k", 4)
    r = qimg("snapshot", "-l", "--space", img)
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[0] == "Snapshot space:"
    assert lines[1].split() == ["ID", "TAG", "EXCLUSIVE", "SHARED",
                                "REFERENCED"]
    assert [l.split()[1] for l in lines[2:6]] == ["s0", "s1", "s2", "s3"]
    assert lines[6].startswith("-         (active disk)")
    assert lines[7].startswith("data: ")
    r = qimg("snapshot", "-c", "x", "--space", img)
    assert r.rc == 1 and "--space only goes with -l" in r.err, r

"""qimg diff FILE FROM [TO] (issue 17): the guest ranges that changed
between two snapshots QEMU made, or a snapshot and the active disk,
judged by exports of both (qemu-img convert -l ... -O raw): every byte
outside the reported ranges is equal; a range reported as zero reads as
zeros in TO; with --exact every reported cluster holds a differing byte
and nothing that differs is missed."""
import json
import random

import pytest

from conftest import create_argv as create, qemu_img, qimg, \
    qio_argv as qio, run

MIB = 1 << 20


def build(tmp, opts, seed, backing=False, grow=False):
    rnd = random.Random(seed)
    steps = []
    if backing:
        steps += [create("b.img", "16M"), qio("b.img", "write -P 11 0 16M")]
        steps.append(create("a.img", "16M", "-o", opts, backing="b.img"))
    else:
        steps.append(create("a.img", "16M", "-o", opts))
    for k in range(4):
        cmds = []
        # compressed writes go to clusters nothing wrote before
        if "extended_l2" not in opts and "compat=0.10" not in opts:
            cmds.append("write -c -P 7 %d 65536" % ((240 + k) * 65536))
        for _ in range(rnd.randint(1, 5)):
            off = rnd.randrange(0, 15 * MIB, 512)
            ln = min(rnd.choice([512, 4096, 65536, 300000, MIB]),
                     15 * MIB - off)
            kind = rnd.choice(["write -P %d" % (k + 1), "write -z",
                               "discard", "write -P 0"])
            cmds.append("%s %d %d" % (kind, off, ln))
        steps.append(qio("a.img", *cmds))
        steps.append(["qemu-img", "snapshot", "-c", "s%d" % k, "a.img"])
    if grow:
        steps.append(["qemu-img", "resize", "a.img", "20M"])
        steps.append(qio("a.img", "write -P 9 17M 64k"))
    steps.append(qio("a.img", "write -P 9 2M 3M"))
    for s in steps:
        run(s, check=True, cwd=tmp)
    return tmp / "a.img"


def export(tmp, img, snap):
    out = tmp / ("%s.raw" % (snap or "active"))
    args = ["qemu-img", "convert", "-O", "raw"]
    if snap:
        args += ["-l", "snapshot.name=" + snap]
    run(args + [img, out], check=True)
    return out.read_bytes()


def ranges(img, frm, to, exact=False):
    args = ["diff", "--output=json"] + (["--exact"] if exact else []) + \
        [img, frm] + ([to] if to else [])
    r = qimg(*args)
    assert r.rc == 0, r
    return json.loads(r.out)


def judge(a, b, got, exact):
    covered = bytearray(len(b))
    last = -1
    for e in got:
        assert e["start"] > last and e["length"] > 0
        last = e["start"] + e["length"] - 1
        covered[e["start"]:e["start"] + e["length"]] = \
            b"\1" * e["length"]
        if e["zero"]:
            assert b[e["start"]:e["start"] + e["length"]] == \
                bytes(e["length"]), e
    for i in range(0, len(b), 4096):
        x = a[i:i + 4096] if i < len(a) else b""
        y = b[i:i + 4096]
        if x != y:
            off = next(k for k in range(len(y))
                       if k >= len(x) or x[k] != y[k])
            assert covered[i + off], ("missed a change at", i + off)
    if exact:
        for e in got:
            assert a[e["start"]:e["start"] + e["length"]] != \
                b[e["start"]:e["start"] + e["length"]], e


OPTS = ["cluster_size=64k", "cluster_size=512", "cluster_size=4k",
        "cluster_size=64k,extended_l2=on", "compat=0.10"]


@pytest.mark.parametrize("opts", OPTS)
@pytest.mark.parametrize("seed", [1, 2])
def test_diff(tmp, opts, seed):
    img = build(tmp, opts, seed)
    views = {s: export(tmp, img, s) for s in ("s0", "s1", "s2", "s3", None)}
    for frm, to in (("s0", "s1"), ("s1", "s3"), ("s3", None), ("s0", None),
                    ("s2", "s2"), ("s3", "s1")):
        for exact in (False, True):
            got = ranges(img, frm, to, exact)
            judge(views[frm], views[to], got, exact)
        if frm == to:
            assert got == []


def test_backing_and_growth(tmp):
    """Unallocated on both sides reads the backing file on both: equal;
    what a resize added is reported."""
    img = build(tmp, "cluster_size=64k", 5, backing=True, grow=True)
    a, b = export(tmp, img, "s1"), export(tmp, img, None)
    for exact in (False, True):
        got = ranges(img, "s1", None, exact)
        judge(a, b, got, exact)
        assert got[-1]["start"] + got[-1]["length"] <= 20 * MIB


@pytest.mark.parametrize("args,msg", [
    (["nope"], "Snapshot 'nope' not found"),
    (["s0", "nope"], "Snapshot 'nope' not found"),
    ([], "Expecting an image file name, a snapshot"),
])
def test_refusals(tmp, args, msg):
    img = build(tmp, "cluster_size=64k", 6)
    before = img.read_bytes()
    r = qimg("diff", img, *args)
    assert r.rc == 1 and msg in r.err, r
    assert img.read_bytes() == before


def test_human(tmp):
    img = build(tmp, "cluster_size=64k", 7)
    r = qimg("diff", img, "s0", "s3")
    assert r.rc == 0, r
    lines = r.out.splitlines()
    assert lines[0].split() == ["Offset", "Length", "Zero"]
    got = ranges(img, "s0", "s3")
    assert len(lines) == len(got) + 1
    for line, e in zip(lines[1:], got):
        off, ln, z = line.split()
        assert (int(off, 16), int(ln, 16), z) == (
            e["start"], e["length"], "yes" if e["zero"] else "no")


@pytest.mark.parametrize("opts", ["cluster_size=64k", "cluster_size=512",
                                  "cluster_size=64k,extended_l2=on",
                                  "compat=0.10"])
@pytest.mark.parametrize("to", ["s3", None])
def test_convert_diff_from(tmp, opts, to):
    """convert [-l TO] --diff-from FROM: the delta on top of an export of
    FROM reads as TO (rebase -u onto it, or -B at conversion); it holds
    no more than the changed ranges."""
    img = build(tmp, opts, 8)
    run(["qemu-img", "convert", "-O", "raw", "-l", "snapshot.name=s1", img,
         tmp / "from.raw"], check=True)
    to_raw = tmp / "to.raw"
    export_args = ["-l", "snapshot.name=" + to] if to else []
    run(["qemu-img", "convert", "-O", "raw"] + export_args + [img, to_raw],
        check=True)
    lflag = ["-l", to] if to else []
    r = qimg("convert", "-O", "qcow2", *lflag, "--diff-from", "s1", img,
             tmp / "delta.qcow2")
    assert r.rc == 0, r
    run(["qemu-img", "check", tmp / "delta.qcow2"], check=True)
    run(["qemu-img", "rebase", "-u", "-b", "from.raw", "-F", "raw",
         tmp / "delta.qcow2"], check=True)
    r = qemu_img("compare", "-f", "qcow2", "-F", "raw", tmp / "delta.qcow2",
                 to_raw)
    assert r.rc == 0, r
    # the same with the backing file named at conversion
    r = qimg("convert", "-O", "qcow2", *lflag, "--diff-from", "s1", "-B",
             "from.raw", "-F", "raw", img, tmp / "delta2.qcow2")
    assert r.rc == 0, r
    r = qemu_img("compare", "-f", "qcow2", "-F", "raw", tmp / "delta2.qcow2",
                 to_raw)
    assert r.rc == 0, r
    # only the changed ranges are allocated in the delta
    got = ranges(img, "s1", to)
    m = json.loads(qemu_img("map", "--output=json", tmp / "delta.qcow2").out)
    changed = sum(e["length"] for e in got)
    present = sum(e["length"] for e in m if e["depth"] == 0 and
                  e["present"])
    assert present <= changed + 65536 * len(got), (present, changed)


def test_convert_diff_from_refusals(tmp):
    img = build(tmp, "cluster_size=64k", 9)
    for args in (["-O", "raw"], ["-O", "qcow2", "-c"]):
        r = qimg("convert", *args, "--diff-from", "s1", img, tmp / "x")
        assert r.rc == 1 and "--diff-from needs" in r.err, r
        assert not (tmp / "x").exists()
    r = qimg("convert", "-O", "qcow2", "--diff-from", "nope", img, tmp / "y")
    assert r.rc == 1 and "Snapshot 'nope' not found" in r.err, r
    assert not (tmp / "y").exists()


def test_convert_diff_from_sizes(tmp):
    """Snapshots of different sizes: the delta has TO's size."""
    for s in [create("a.img", "8M"), qio("a.img", "write -P 1 0 8M"),
              ["qemu-img", "snapshot", "-c", "small", "a.img"],
              ["qemu-img", "resize", "a.img", "12M"],
              qio("a.img", "write -P 2 9M 1M", "write -P 3 1M 64k"),
              ["qemu-img", "snapshot", "-c", "big", "a.img"],
              ["qemu-img", "resize", "--shrink", "a.img", "10M"]]:
        run(s, check=True, cwd=tmp)
    img = tmp / "a.img"
    run(["qemu-img", "convert", "-O", "raw", "-l", "snapshot.name=small", img,
         tmp / "small.raw"], check=True)
    run(["qemu-img", "convert", "-O", "raw", "-l", "snapshot.name=big", img,
         tmp / "big.raw"], check=True)
    r = qimg("convert", "-O", "qcow2", "-l", "big", "--diff-from", "small",
             "-B", "small.raw", "-F", "raw", img, tmp / "d.qcow2")
    assert r.rc == 0, r
    info = json.loads(qemu_img("info", "--output=json", tmp / "d.qcow2").out)
    assert info["virtual-size"] == 12 << 20
    r = qemu_img("compare", "-f", "qcow2", "-F", "raw", tmp / "d.qcow2",
                 tmp / "big.raw")
    assert r.rc == 0, r

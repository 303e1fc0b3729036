"""qimg resize beside qemu-img 7.2's resize: each tool resizes its own copy
of the same image (made by qemu-img/qemu-io); the same stdout, stderr
(program name aside), exit code and virtual size; both copies read the
same (qemu-img compare), every snapshot of qimg's copy reads as qemu-img's
does, `qemu-img check` finds qimg's clean, and a refusal leaves the file
byte for byte as it was."""
import json
import os
import shutil

import pytest

from conftest import (QIMG, create_argv as create, qio_argv as qio, run,
                      strip_prog)


def image(opts=(), fmt="qcow2", snapshot=True, compressed=True):
    o = list(opts)
    steps = [create("a.img", "8M", *o, fmt=fmt),
             qio("a.img", "write -P 1 0 3M", "write -P 2 5M 1M",
                 "write -P 3 7M 512k", fmt=fmt)]
    if fmt == "qcow2" and compressed:
        steps.append(qio("a.img", "write -c -P 4 6M 64k"))
    if snapshot and fmt == "qcow2":
        steps += [["qemu-img", "snapshot", "-c", "s1", "a.img"],
                  qio("a.img", "write -P 5 2M 2M", "write -z 7M 64k")]
    return steps


IMAGES = {
    "v3": image(),
    "v2": image(["-o", "compat=0.10"], snapshot=False),
    "v2-snapshot": image(["-o", "compat=0.10"]),
    "extended-l2": image(["-o", "extended_l2=on"]),
    "512-byte-clusters": image(["-o", "cluster_size=512"]),
    "2M-clusters": image(["-o", "cluster_size=2M"], compressed=False),
    "refcount-1": image(["-o", "refcount_bits=1"], snapshot=False),
    "refcount-64": image(["-o", "refcount_bits=64"]),
    "raw": image(fmt="raw"),
}

# On every image: growing (the L1 table too), shrinking through data,
# preallocating, quietly.
SIZES = [["+16M"], ["--shrink", "3000064"], ["1P"]]
# On the v3 image only.
MORE_SIZES = [
    ["1G"], ["--shrink", "3M"], ["--shrink", "-5M"], ["8M"], ["-q", "+1M"],
    ["--shrink", "1k"], ["--preallocation=metadata", "+24M"],
    ["--preallocation=falloc", "20M"], ["--preallocation=full", "+8M"],
]
# Refused, on v3 (and the first three on raw, which takes them).
REFUSED = [
    ["+100"], ["--preallocation=falloc", "+1M"], ["--shrink", "-5M"],
    ["5M"], ["0"], ["abc"], ["9E"], ["+9E"],
    ["--preallocation=full", "--shrink", "4M"],
    ["--preallocation=bogus", "+1M"],
]


def build(d, steps):
    d.mkdir()
    for s in steps:
        run(s, check=True, cwd=d)


def virtual_size(d, name="a.img", fmt=None):
    args = ["qemu-img", "info", "-U", "--output=json"]
    r = run(args + (["-f", fmt] if fmt else []) + [name], cwd=d)
    assert r.rc == 0, r
    return json.loads(r.out)["virtual-size"]


def both(tmp, steps, args, fmt="qcow2", name="a.img"):
    build(tmp / "q", steps)
    shutil.copytree(tmp / "q", tmp / "m")
    before = (tmp / "m" / name).read_bytes()
    f = ["-f", fmt]
    r1 = run(["qemu-img", "resize"] + f + args[:-1] + [name, args[-1]],
             cwd=tmp / "q")
    r2 = run([QIMG, "resize"] + f + args[:-1] + [name, args[-1]],
             cwd=tmp / "m")
    e1 = strip_prog(r1.err, "qemu-img").replace("qemu-img", "qimg")
    assert (r2.rc, strip_prog(r2.err, "qimg"), r2.out) == \
        (r1.rc, e1, r1.out), (args, r1, r2)
    if r2.rc:
        assert (tmp / "m" / name).read_bytes() == before
    assert virtual_size(tmp / "m", name, fmt) == \
        virtual_size(tmp / "q", name, fmt)
    return r2


def snapshots(d):
    r = run(["qemu-img", "snapshot", "-l", "a.img"], cwd=d)
    return [l.split()[1] for l in r.out.splitlines()[2:]]


def same_snapshots(tmp):
    """Every snapshot of qimg's copy reads as the one in qemu-img's."""
    for s in snapshots(tmp / "q"):
        for side in ("q", "m"):
            r = run(["qemu-img", "convert", "-U", "-l", s, "-O", "raw",
                     "a.img", s + ".raw"], cwd=tmp / side)
            assert r.rc == 0, r
        assert (tmp / "m" / (s + ".raw")).read_bytes() == \
            (tmp / "q" / (s + ".raw")).read_bytes(), s


def resize_and_compare(tmp, name, args):
    fmt = "raw" if name == "raw" else "qcow2"
    r = both(tmp, IMAGES[name], args, fmt)
    if r.rc:
        return
    d = tmp / "m"
    # qemu-img compare takes 14 s over a petabyte, qimg's 0.2 s; qemu-io
    # then reads the data qimg's copy holds.
    big = virtual_size(d, fmt=fmt) > 64 << 20
    c = run([QIMG if big else "qemu-img", "compare", "-f", fmt, "-F", fmt,
             str(tmp / "q" / "a.img"), str(d / "a.img")])
    assert c.rc == 0, c
    if big:
        c = run(qio("a.img", "read -P 1 0 2M", "read -P 2 5M 1M", fmt=fmt),
                cwd=d)
        assert "verification failed" not in c.out, c
    if fmt == "raw":
        return
    c = run(["qemu-img", "check", "a.img"], cwd=d)
    assert c.rc == 0 and "No errors" in c.out, c
    # (qemu-img convert -l writes a snapshot at the disk's size.)
    if not big:
        same_snapshots(tmp)


# The sanitizer build takes every other image (qemu-img's time dominates).
SANITIZED = os.environ.get("QIMG_SANITIZE", "none") != "none"


@pytest.mark.parametrize("name", sorted(IMAGES)[::2] if SANITIZED
                         else sorted(IMAGES))
@pytest.mark.parametrize("args", SIZES, ids=" ".join)
def test_resize(tmp, name, args):
    resize_and_compare(tmp, name, args)


@pytest.mark.parametrize("args", MORE_SIZES, ids=" ".join)
def test_resize_v3(tmp, args):
    resize_and_compare(tmp, "v3", args)


@pytest.mark.parametrize("args", REFUSED, ids=" ".join)
def test_resize_refused(tmp, args):
    both(tmp, IMAGES["v3"], args)


@pytest.mark.parametrize("args", REFUSED[:3], ids=" ".join)
def test_resize_raw(tmp, args):
    resize_and_compare(tmp, "raw", args)


def norm_map(d):
    """qemu-img map without host offsets, neighbours of one kind merged
    (where the data lies in the file is each tool's own choice)."""
    r = run(["qemu-img", "map", "--output=json", "a.img"], cwd=d)
    assert r.rc == 0, r
    out = []
    for e in json.loads(r.out):
        k = (e["depth"], e["present"], e["zero"], e["data"])
        if out and out[-1][2] == k:
            out[-1][1] += e["length"]
        else:
            out.append([e["start"], e["length"], k])
    return out


def disk_usage(p):
    return p.stat().st_blocks * 512


@pytest.mark.parametrize("mode", ["metadata", "falloc", "full"])
@pytest.mark.parametrize("opts", [[], ["-o", "extended_l2=on"],
                                  ["-o", "compat=0.10"],
                                  ["-o", "cluster_size=4k"]],
                         ids=lambda o: " ".join(o) or "v3")
def test_resize_preallocation(tmp, mode, opts):
    """Preallocated growth maps the new clusters as qemu-img does (the
    same map, offsets aside) and takes as much space."""
    steps = [create("a.img", "16M", *opts),
             qio("a.img", "write -P 1 0 3M")]
    both(tmp, steps, ["--preallocation=" + mode, "+48M"])
    assert norm_map(tmp / "m") == norm_map(tmp / "q")
    q, m = disk_usage(tmp / "q" / "a.img"), disk_usage(tmp / "m" / "a.img")
    # Data space alike; a few clusters of metadata either way.
    assert abs(m - q) <= q // 20 + (512 << 10), (q, m)
    c = run(["qemu-img", "check", "a.img"], cwd=tmp / "m")
    assert c.rc == 0 and "No errors" in c.out, c


@pytest.mark.parametrize("top", ["4M", "4000256"])
@pytest.mark.parametrize("opts", [[], ["-o", "extended_l2=on"],
                                  ["-o", "compat=0.10"]],
                         ids=lambda o: " ".join(o) or "v3")
@pytest.mark.parametrize("prealloc", [[], ["--preallocation=metadata"]],
                         ids=lambda o: " ".join(o) or "off")
def test_resize_overlay_hides_longer_backing(tmp, top, opts, prealloc):
    """Growing an overlay over a longer backing file: what it gains reads
    as zeros, not the backing file's data (v2 cannot: both refuse)."""
    steps = [create("base.img", "8M"), qio("base.img", "write -P 5 0 8M"),
             create("a.img", top, *opts, backing="base.img"),
             qio("a.img", "write -P 6 1M 64k")]
    r = both(tmp, steps, prealloc + ["+4M"])
    if r.rc:
        return
    d = tmp / "m"
    c = run(["qemu-img", "compare", str(tmp / "q" / "a.img"),
             str(d / "a.img")])
    assert c.rc == 0, c
    n = 4 << 20 if top == "4M" else 4000256
    c = run(qio("a.img", "read -P 0 %d %d" % (n, 4 << 20)), cwd=d)
    assert "verification failed" not in c.out, c
    if not prealloc:
        assert norm_map(d) == norm_map(tmp / "q")
    c = run(["qemu-img", "check", "a.img"], cwd=d)
    assert c.rc == 0 and "No errors" in c.out, c


def test_resize_keeps_snapshots_applicable(tmp):
    """A snapshot taken at the old size keeps its size and data through a
    grow and a shrink; applying it (qemu-img) brings both back."""
    build(tmp / "m", image())
    d = tmp / "m"
    run(["qemu-img", "convert", "-l", "s1", "-O", "raw", "a.img",
         "s1.raw"], check=True, cwd=d)
    for args in (["+1G"], ["--shrink", "1M"], ["3M"]):
        r = run([QIMG, "resize"] + args[:-1] + ["a.img", args[-1]], cwd=d)
        assert r.rc == 0, r
    assert virtual_size(d) == 3 << 20
    c = run(qio("a.img", "read -P 1 0 1M", "read -P 0 1M 2M"), cwd=d)
    assert "verification failed" not in c.out, c
    run(["qemu-img", "snapshot", "-a", "s1", "a.img"], check=True, cwd=d)
    assert virtual_size(d) == 8 << 20
    run(["qemu-img", "convert", "-O", "raw", "a.img", "now.raw"], check=True,
        cwd=d)
    assert (d / "now.raw").read_bytes() == (d / "s1.raw").read_bytes()
    c = run(["qemu-img", "check", "a.img"], cwd=d)
    assert c.rc == 0 and "No errors" in c.out, c


def test_resize_then_shrink_cuts_data(tmp):
    """Data past a smaller size is gone: grown again, the disk reads zeros
    there (the cluster the size ends in keeps its data, as qemu-img's)."""
    build(tmp / "m", image(snapshot=False))
    d = tmp / "m"
    for args in (["--shrink", "2M"], ["8M"]):
        r = run([QIMG, "resize"] + args[:-1] + ["a.img", args[-1]], cwd=d)
        assert r.rc == 0, r
    c = run(qio("a.img", "read -P 1 0 2M", "read -P 0 2M 6M"), cwd=d)
    assert "verification failed" not in c.out, c
    c = run(["qemu-img", "check", "a.img"], cwd=d)
    assert c.rc == 0 and "No errors" in c.out, c


def test_resize_bitmaps(tmp):
    """A bitmap's table covering the new size stays as it is (qemu-img
    reads it); one whose table must grow gets a new one in the same
    switch (test_bitmap compares the bits with qemu-img's); after a guest
    write through qimg the bitmap is consistent again and resizes as
    qemu-img resizes it."""
    build(tmp / "m", [create("a.img", "1G"),
                      ["qemu-img", "bitmap", "--add", "a.img", "b0"]])
    d = tmp / "m"
    r = run([QIMG, "resize", "a.img", "4G"], cwd=d)
    assert r.rc == 0, r
    info = json.loads(run(["qemu-img", "info", "--output=json", "a.img"],
                          cwd=d).out)
    bms = info["format-specific"]["data"]["bitmaps"]
    assert [b["name"] for b in bms] == ["b0"]
    run(["qemu-img", "bitmap", "--disable", "a.img", "b0"], check=True, cwd=d)
    c = run(["qemu-img", "check", "a.img"], cwd=d)
    assert c.rc == 0 and "No errors" in c.out, c

    run(["qemu-img", "bitmap", "--add", "-g", "512", "a.img", "fine"],
        check=True, cwd=d)
    r = run([QIMG, "resize", "a.img", "8G"], cwd=d)
    assert r.rc == 0, r
    run(["qemu-img", "bitmap", "--clear", "a.img", "fine"], check=True, cwd=d)
    c = run(["qemu-img", "check", "a.img"], cwd=d)
    assert c.rc == 0 and "No errors" in c.out, c

    build(tmp / "u", [create("a.img", "1G"),
                      ["qemu-img", "bitmap", "--add", "a.img", "b0"]])
    run([QIMG, "io", "-c", "write 0 4k", "a.img"], check=True, cwd=tmp / "u")
    shutil.copytree(tmp / "u", tmp / "u2")
    r1 = run(["qemu-img", "resize", "a.img", "2G"], cwd=tmp / "u")
    r2 = run([QIMG, "resize", "a.img", "2G"], cwd=tmp / "u2")
    assert r1.rc == r2.rc == 0
    assert strip_prog(r2.err, "qimg") == strip_prog(r1.err, "qemu-img")


@pytest.mark.parametrize("argv", [
    [], ["a.img"], ["a.img", "1G", "extra"], ["-x", "a.img", "1G"],
    ["-U", "a.img", "1G"], ["--foo", "a.img", "1G"], ["-f", "a.img", "1G"],
    ["missing.img", "1G"], ["-f", "bogus", "a.img", "1G"],
], ids=lambda a: " ".join(a) or "none")
def test_resize_bad_arguments(tmp, argv):
    build(tmp / "q", image(snapshot=False))
    shutil.copytree(tmp / "q", tmp / "m")
    r1 = run(["qemu-img", "resize"] + argv, cwd=tmp / "q")
    r2 = run([QIMG, "resize"] + argv, cwd=tmp / "m")
    e1 = strip_prog(r1.err, "qemu-img").replace("qemu-img", "qimg")
    assert (r2.rc, strip_prog(r2.err, "qimg")) == (r1.rc, e1), (r1, r2)
    assert (tmp / "m" / "a.img").read_bytes() == \
        (tmp / "q" / "a.img").read_bytes()


def test_resize_locked(tmp):
    """An image another process holds for writing is refused."""
    build(tmp / "m", image(snapshot=False))
    d = tmp / "m"
    before = (d / "a.img").read_bytes()
    holder = __import__("subprocess").Popen(
        ["qemu-io", "-c", "sleep 5000", "a.img"], cwd=d)
    try:
        import time
        time.sleep(1)
        r = run([QIMG, "resize", "a.img", "+1M"], cwd=d)
    finally:
        holder.kill()
        holder.wait()
    assert r.rc == 1 and "lock" in r.err, r
    assert (d / "a.img").read_bytes() == before

"""qimg amend beside qemu-img 7.2's amend: each tool amends its own copy
of the same image (made by qemu-img/qemu-io); the same stdout, stderr
(program name aside), exit code and format properties; both copies read
the same (qemu-img compare), every snapshot of qimg's copy reads as
qemu-img's does (where qemu-img keeps them intact), `qemu-img check` finds
qimg's clean, and a refusal leaves the file byte for byte as it was."""
import json
import os
import shutil
import struct

import pytest

from conftest import (QIMG, create_argv as create, qio_argv as qio, run,
                      strip_prog)


def image(opts=(), snapshot=True, compressed=True, backing=False):
    o = list(opts)
    steps = []
    if backing:
        steps += [create("b.img", "8M"),
                  qio("b.img", "write -P 9 0 8M"),
                  create("a.img", "8M", *o, backing="b.img")]
    else:
        steps.append(create("a.img", "8M", *o))
    steps.append(qio("a.img", "write -P 1 0 3M", "write -P 2 5M 1M",
                     "write -P 3 7M 512k"))
    if compressed:
        steps.append(qio("a.img", "write -c -P 4 6M 64k"))
    if snapshot:
        steps += [["qemu-img", "snapshot", "-c", "s1", "a.img"],
                  qio("a.img", "write -P 5 2M 2M")]
    return steps


IMAGES = {
    "v3": image(),
    "v3-plain": image(snapshot=False),
    "v2": image(["-o", "compat=0.10"], snapshot=False),
    "v2-snapshot": image(["-o", "compat=0.10"]),
    "v3-lazy": image(["-o", "lazy_refcounts=on"]),
    "extended-l2": image(["-o", "extended_l2=on"]),
    "512-byte-clusters": image(["-o", "cluster_size=512"]),
    "2M-clusters": image(["-o", "cluster_size=2M"], compressed=False),
    "refcount-1": image(["-o", "refcount_bits=1"], snapshot=False),
    "refcount-64": image(["-o", "refcount_bits=64"]),
    "zstd": image(["-o", "compression_type=zstd"], compressed=False),
    "overlay": image(backing=True),
}

# On every image.
CHANGES = [
    ["compat=1.1"], ["compat=0.10"], ["refcount_bits=1"], ["refcount_bits=8"],
    ["refcount_bits=64"], ["lazy_refcounts=on"], ["lazy_refcounts=off"],
]
# On the v3 image only.
MORE = [
    ["refcount_bits=2,lazy_refcounts=on"], ["refcount_bits=4"],
    ["refcount_bits=32"], ["refcount_bits=16"], ["compat=v3"],
    ["size=16M"], ["size=4M"], ["size=0"], ["compat=1.1", "refcount_bits=2"],
    ["-p", "refcount_bits=8"], ["-q", "refcount_bits=8"],
    ["-p", "-q", "lazy_refcounts=on"], ["lazy_refcounts"],
    ["nolazy_refcounts"], ["data_file_raw=off"], ["refcount_bits=0x20"],
]
# Refused (before anything is written, by qimg), on v3.
REFUSED = [
    [], ["cluster_size=4k"], ["preallocation=full"], ["extended_l2=on"],
    ["compression_type=zstd"], ["foo=1"], ["refcount_bits=3"],
    ["refcount_bits=128"], ["refcount_bits=0"], ["refcount_bits=-1"],
    ["refcount_bits=abc"], ["compat=0.11"], ["compat="], ["size=abc"],
    ["size=1000"], ["lazy_refcounts=foo"], ["backing_file=b.img"],
    ["backing_fmt=qcow2"], ["data_file=x"], ["data_file_raw=on"],
    ["encrypt.state=active"], ["encrypt.keyslot=x"], ["compat=1.1,"],
    ["compat=1.1,,x"], ["refcount_bits=8,compat=0.10"],
    ["lazy_refcounts=on,compat=0.10"], ["compat=0.10,size=16M"],
    ["size=4M,compat=0.10"], ["refcount_bits=16,compat=0.10,size=6M"],
]


def build(d, steps):
    d.mkdir()
    for s in steps:
        run(s, check=True, cwd=d)


def info(d, name="a.img"):
    r = run(["qemu-img", "info", "-U", "--output=json", name], cwd=d)
    assert r.rc == 0, r
    j = json.loads(r.out)
    data = j.get("format-specific", {}).get("data", {})
    return (j["virtual-size"], data.get("compat"), data.get("refcount-bits"),
            data.get("lazy-refcounts"), data.get("compression-type"))


def amend_argv(prog, args, name="a.img"):
    flags = [a for a in args if a.startswith("-")]
    opts = ["-o" + a for a in args if not a.startswith("-")]
    return [prog, "amend", "-f", "qcow2"] + flags + opts + [name]


def progress(out):
    """-p: qemu-img's steps between 0 and 100 are its own; the first and
    the last line are what a parser meets."""
    steps = out.splitlines()  # (text mode reads each \r as a line end)
    return (steps[0], steps[-1]) if len(steps) >= 2 else out


def both(tmp, steps, args, name="a.img"):
    build(tmp / "q", steps)
    shutil.copytree(tmp / "q", tmp / "m")
    before = (tmp / "m" / name).read_bytes()
    r1 = run(amend_argv("qemu-img", args, name), cwd=tmp / "q")
    r2 = run(amend_argv(QIMG, args, name), cwd=tmp / "m")
    e1 = strip_prog(r1.err, "qemu-img").replace("qemu-img", "qimg")
    assert (r2.rc, strip_prog(r2.err, "qimg"), progress(r2.out)) == \
        (r1.rc, e1, progress(r1.out)), (args, r1, r2)
    if r2.rc:
        assert (tmp / "m" / name).read_bytes() == before
    else:
        assert info(tmp / "m", name) == info(tmp / "q", name)
    return r2


def snapshots(d):
    r = run(["qemu-img", "snapshot", "-l", "a.img"], cwd=d)
    return [l.split()[1] for l in r.out.splitlines()[2:]]


def snapshot_images(d, s):
    r = run(["qemu-img", "convert", "-U", "-l", s, "-O", "raw", "a.img",
             s + ".raw"], cwd=d)
    assert r.rc == 0, r
    return (d / (s + ".raw")).read_bytes()


def amend_alone(tmp, name, args):
    """qimg's amend judged without qemu-img's: the same disk and snapshots
    as before, the properties asked for, a clean check."""
    build(tmp / "q", IMAGES[name])
    shutil.copytree(tmp / "q", tmp / "m")
    before = (tmp / "m" / "a.img").read_bytes()
    r = run(amend_argv(QIMG, args), cwd=tmp / "m")
    if args == ["refcount_bits=1"]:  # the snapshot shares clusters
        assert r.rc == 1 and "has a refcount of 2" in r.err, r
        assert (tmp / "m" / "a.img").read_bytes() == before
        return
    assert r.rc == 0 and not r.out and not r.err, r
    want = dict(a.split("=") for a in args)
    got = info(tmp / "m")
    assert got[2] == int(want["refcount_bits"]), got
    c = run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
             str(tmp / "q" / "a.img"), str(tmp / "m" / "a.img")])
    assert c.rc == 0, c
    c = run(["qemu-img", "check", "a.img"], cwd=tmp / "m")
    assert c.rc == 0 and "No errors" in c.out, c
    for s in snapshots(tmp / "q"):
        assert snapshot_images(tmp / "m", s) == snapshot_images(tmp / "q", s)


def amend_and_compare(tmp, name, args):
    # qemu-img 7.2 takes 9 minutes to change the refcount width of an
    # 8 MiB image with 2 MiB clusters (its walk is quadratic in the
    # entries per block); qimg is judged alone there.
    if name == "2M-clusters" and args[0].startswith("refcount_bits"):
        amend_alone(tmp, name, args)
        return
    r = both(tmp, IMAGES[name], args)
    if r.rc:
        return
    d = tmp / "m"
    c = run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
             str(tmp / "q" / "a.img"), str(d / "a.img")])
    assert c.rc == 0, c
    c = run(["qemu-img", "check", "a.img"], cwd=d)
    assert c.rc == 0 and "No errors" in c.out, c
    for s in snapshots(tmp / "q"):
        assert snapshot_images(d, s) == snapshot_images(tmp / "q", s), s


# The sanitizer build takes every other image (qemu-img's time dominates).
SANITIZED = os.environ.get("QIMG_SANITIZE", "none") != "none"


@pytest.mark.parametrize("name", sorted(IMAGES)[::2] if SANITIZED
                         else sorted(IMAGES))
@pytest.mark.parametrize("args", CHANGES, ids=" ".join)
def test_amend(tmp, name, args):
    amend_and_compare(tmp, name, args)


@pytest.mark.parametrize("args", MORE, ids=" ".join)
def test_amend_v3(tmp, args):
    amend_and_compare(tmp, "v3", args)


@pytest.mark.parametrize("args", REFUSED, ids=" ".join)
def test_amend_refused(tmp, args):
    both(tmp, IMAGES["v3"], args)


def test_amend_v2_snapshot_size(tmp):
    """compat=1.1 first, then the size: a v2 image with snapshots grows."""
    amend_and_compare(tmp, "v2-snapshot", ["compat=1.1,size=12M"])


def test_amend_help(tmp):
    build(tmp / "d", IMAGES["v3-plain"])
    for args in (["-o", "help", "a.img"], ["-f", "qcow2", "-o", "?", "x"],
                 ["-o", "compat=1.1,help", "a.img"]):
        r1 = run(["qemu-img", "amend"] + args, cwd=tmp / "d")
        r2 = run([QIMG, "amend"] + args, cwd=tmp / "d")
        assert (r2.rc, r2.out) == (r1.rc, r1.out), (args, r1, r2)


@pytest.mark.parametrize("args", [
    ["-o", "compat=1.1"], ["-o", "compat=1.1", "a.img", "b.img"],
    ["-o", "compat=1.1", "nofile"], ["-x", "-o", "compat=1.1", "a.img"],
    ["-o", "compat=1.1", "-t", "bogus", "a.img"],
    ["-o", "compat=1.1", "-U", "a.img"], ["-o", "help", "r.raw"],
    ["-o", "compat=1.1", "r.raw"], ["-f", "raw", "-o", "size=2M", "r.raw"],
    ["-o", "", "a.img"], ["-f", "raw", "-o", "help"],
    ["-f", "vmdk", "-o", "help", "x"], ["-f", "foo", "-o", "help", "x"],
    ["-o", "help", "-f", "raw", "x"], ["-f", "qcow2", "-o", "help"],
    ["--image-opts", "-o", "compat=1.1",
     "driver=qcow2,file.filename=a.img"],
], ids=" ".join)
def test_amend_bad_arguments(tmp, args):
    d = tmp / "d"
    build(d, IMAGES["v3-plain"] + [create("r.raw", "1M", fmt="raw")])
    before = (d / "a.img").read_bytes()
    r1 = run(["qemu-img", "amend"] + args, cwd=d)
    r2 = run([QIMG, "amend"] + args, cwd=d)
    e1 = strip_prog(r1.err, "qemu-img").replace("qemu-img", "qimg")
    assert (r2.rc, strip_prog(r2.err, "qimg"), r2.out) == \
        (r1.rc, e1, r1.out), (args, r1, r2)
    assert (d / "a.img").read_bytes() == before


def old_snapshot_table(path):
    """Rewrite a v2 image's snapshot table as QEMU before 1.x wrote it:
    entries without extra data."""
    with open(path, "r+b") as f:
        h = f.read(72)
        nb, off = struct.unpack(">IQ", h[60:72])
        f.seek(off)
        t = f.read(65536)
        out, pos = b"", 0
        for _ in range(nb):
            id_len, name_len = struct.unpack(">HH", t[pos + 12:pos + 16])
            extra = struct.unpack(">I", t[pos + 36:pos + 40])[0]
            ent = t[pos:pos + 36] + struct.pack(">I", 0)
            rest = t[pos + 40 + extra:pos + 40 + extra + id_len + name_len]
            ent += rest
            ent += b"\0" * (-len(ent) % 8)
            out += ent
            pos += 40 + extra + id_len + name_len
            pos += -pos % 8
        f.seek(off)
        f.write(out + b"\0" * (pos - len(out)))


def test_amend_upgrade_old_snapshot_table(tmp):
    """v3 wants 16 bytes of extra data per snapshot entry: both tools
    rewrite a table that has none."""
    steps = IMAGES["v2-snapshot"] + [
        ["qemu-img", "snapshot", "-c", "s2", "a.img"]]
    build(tmp / "q", steps)
    old_snapshot_table(tmp / "q" / "a.img")
    c = run(["qemu-img", "check", "a.img"], cwd=tmp / "q")
    assert c.rc == 0 and "No errors" in c.out, c
    shutil.copytree(tmp / "q", tmp / "m")
    for d, prog in ((tmp / "q", "qemu-img"), (tmp / "m", QIMG)):
        r = run(amend_argv(prog, ["compat=1.1"]), cwd=d)
        assert r.rc == 0, r
    assert info(tmp / "m") == info(tmp / "q")
    c = run(["qemu-img", "check", "a.img"], cwd=tmp / "m")
    assert c.rc == 0 and "No errors" in c.out, c
    for s in ("s1", "s2"):
        assert snapshot_images(tmp / "m", s) == snapshot_images(tmp / "q", s)


def test_amend_then_qemu(tmp):
    """QEMU goes on using what qimg amended: writes, a snapshot, a new
    width of its own, and its check."""
    d = tmp / "d"
    build(d, IMAGES["v2-snapshot"])
    for o in ("compat=1.1", "refcount_bits=4", "lazy_refcounts=on",
              "refcount_bits=64"):
        r = run([QIMG, "amend", "-o", o, "a.img"], cwd=d)
        assert r.rc == 0, r
        run(qio("a.img", "write -P 7 1M 1M"), check=True, cwd=d)
        run(["qemu-img", "snapshot", "-c", o, "a.img"], check=True, cwd=d)
        c = run(["qemu-img", "check", "a.img"], cwd=d)
        assert c.rc == 0 and "No errors" in c.out, (o, c)
    run(["qemu-img", "amend", "-o", "refcount_bits=16", "a.img"], check=True,
        cwd=d)
    r = run([QIMG, "amend", "-o", "compat=0.10,lazy_refcounts=off", "a.img"],
            cwd=d)
    assert r.rc == 0, r
    c = run(["qemu-img", "check", "a.img"], cwd=d)
    assert c.rc == 0 and "No errors" in c.out, c
    c = run(qio("a.img", "read -P 7 1M 1M", "read -P 1 0 1M"), cwd=d)
    assert "verification failed" not in c.out, c


ZERO_CASES = {
    # zero clusters in the active disk and in a snapshot, one keeping a
    # cluster the snapshot holds data in
    "shared": [qio("a.img", "write -P 1 0 1M", "write -z 1M 1M",
                   "write -P 2 4M 64k"),
               ["qemu-img", "snapshot", "-c", "s1", "a.img"],
               qio("a.img", "write -z 4M 64k", "write -z 8M 64k",
                   "write -z -u 0 64k", "write -z 12M 128k")],
    # ... then the snapshot that shared the table goes: a dropped
    # reference leaves an active cluster at refcount 1 (COPIED fixed)
    "copied-fix": [qio("a.img", "write -P 2 4M 64k"),
                   ["qemu-img", "snapshot", "-c", "s1", "a.img"],
                   qio("a.img", "write -z 4M 64k"),
                   ["qemu-img", "snapshot", "-c", "s2", "a.img"],
                   ["qemu-img", "snapshot", "-a", "s1", "a.img"],
                   ["qemu-img", "snapshot", "-d", "s1", "a.img"]],
    "many": [qio("a.img", *["write -z %dk 64k" % (k * 128)
                            for k in range(64)])],
}


@pytest.mark.parametrize("backing", [False, True], ids=["plain", "overlay"])
@pytest.mark.parametrize("case", sorted(ZERO_CASES))
def test_amend_downgrade_zero_clusters(tmp, case, backing):
    """A v2 image cannot say 'zero': the downgrade turns zero clusters
    into nothing (no backing file) or data clusters of zeros, and the
    active disk and every snapshot read as before (qemu-img 7.2 zeroes a
    cluster a snapshot shares in place, and the snapshot loses its data
    there; with `write -z -u` over a shared cluster it leaves a zero entry
    that makes its own v2 image corrupt)."""
    d = tmp / "d"
    steps = [create("a.img", "16M")]
    if backing:
        steps = [create("b.img", "16M"), qio("b.img", "write -P 9 0 16M"),
                 create("a.img", "16M", backing="b.img")]
    build(d, steps + ZERO_CASES[case])
    shutil.copy(d / "a.img", d / "orig.img")
    r = run(amend_argv(QIMG, ["compat=0.10"]), cwd=d)
    assert r.rc == 0 and not r.out and not r.err, r
    assert info(d)[1] == "0.10"
    c = run(["qemu-img", "check", "a.img"], cwd=d)
    assert c.rc == 0 and "No errors" in c.out, c
    c = run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", "orig.img",
             "a.img"], cwd=d)
    assert c.rc == 0, c
    for s in snapshots(d):
        shutil.copy(d / "orig.img", d / "o2.img")
        r = run(["qemu-img", "convert", "-U", "-l", s, "-O", "raw", "o2.img",
                 "o.raw"], cwd=d)
        assert r.rc == 0, r
        assert snapshot_images(d, s) == (d / "o.raw").read_bytes(), s
    # QEMU writes on: a snapshot of the v2 image, then its check.
    run(qio("a.img", "write -P 7 0 2M"), check=True, cwd=d)
    c = run(["qemu-img", "check", "a.img"], cwd=d)
    assert c.rc == 0 and "No errors" in c.out, c


def test_amend_downgrade_bitmaps(tmp):
    """v2 keeps no persistent bitmaps: qimg frees them with the switch, so
    `qemu-img check` finds the v2 image clean (qemu-img 7.2 leaves the
    extension, which v2 readers ignore: its check then finds every bitmap
    cluster leaked)."""
    steps = [create("a.img", "16M"),
             ["qemu-img", "bitmap", "--add", "a.img", "b0"],
             ["qemu-img", "bitmap", "--add", "--disable", "a.img", "b1"],
             qio("a.img", "write -P 1 0 1M"),
             ["qemu-img", "snapshot", "-c", "s1", "a.img"]]
    build(tmp / "q", steps)
    shutil.copytree(tmp / "q", tmp / "m")
    for d, prog in ((tmp / "q", "qemu-img"), (tmp / "m", QIMG)):
        r = run(amend_argv(prog, ["compat=0.10"]), cwd=d)
        assert r.rc == 0 and not r.err, r
    q = run(["qemu-img", "check", "a.img"], cwd=tmp / "q")
    assert q.rc == 3 and "leaked clusters were found" in q.out, q
    c = run(["qemu-img", "check", "a.img"], cwd=tmp / "m")
    assert c.rc == 0 and "No errors" in c.out and not c.err, c
    r = run(["qemu-img", "info", "a.img"], cwd=tmp / "m")
    assert "compat: 0.10" in r.out and "bitmaps" not in r.out + r.err, r
    assert snapshot_images(tmp / "m", "s1") == \
        snapshot_images(tmp / "q", "s1")
    c = run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
             str(tmp / "q" / "a.img"), str(tmp / "m" / "a.img")])
    assert c.rc == 0, c

"""qimg compact FILE (qemu-img has no such command: its remedy is a convert,
which drops every internal snapshot): on images qemu-img and qemu-io made,
with QEMU's snapshots deleted down to a few. Afterwards the file is
smaller, qemu-img check finds it clean, every snapshot and the active disk
read as before through qemu-img, bitmaps and the backing link are kept,
qemu-img applies every snapshot; a refusal leaves the file byte for byte
as it was."""
import json
import os
import random
import re
import subprocess
import time

import pytest

from conftest import add_leak, check_clean, create_argv as create, \
    qemu_img, qimg, qio_argv as qio, run
from test_bitmap import read_bitmaps


def snap_names(path):
    info = json.loads(qemu_img("info", "--output=json", "-U", path).out)
    return [s["name"] for s in info.get("snapshots", [])]


def exports(tmp, path, names):
    """Every snapshot's disk and the active disk, as raw bytes."""
    out = {}
    for n in names + [None]:
        raw = tmp / "export.raw"
        args = ["qemu-img", "convert", "-U", "-O", "raw"]
        if n is not None:
            args += ["-l", "snapshot.name=" + n]
        run(args + [path, raw], check=True)
        out[n] = raw.read_bytes()
        raw.unlink()
    return out


def space(path):
    return json.loads(qimg("snapshot", "-l", "--space", "--output=json",
                           path, check=True).out)


def history(tmp, seed, opts, keep=2, compressed=True):
    """An image qemu-img made, written by qemu-io and snapshotted by
    qemu-img, most snapshots deleted again (by seed)."""
    rnd = random.Random(seed)
    # (2 MiB clusters: room for a compressed cluster per other step.)
    size = (64 if "cluster_size=2M" in opts else 24) << 20
    img = tmp / "a.qcow2"
    run(create(img, size, *opts), check=True)
    ccs = json.loads(qemu_img("info", "--output=json", img).out)[
        "cluster-size"]
    cs = 64 << 10
    names = []
    zone = size * 3 // 4  # compressed writes only where nothing was
    for step in range(10):
        cmds = []
        if compressed and step % 2:
            cmds.append("write -c -P %d %d %d" % (rnd.randint(1, 250),
                                                   zone + step // 2 * ccs,
                                                   ccs))
        for _ in range(rnd.randint(1, 4)):
            off = rnd.randrange(0, zone // cs) * cs
            n = min(rnd.randint(1, 24) * cs, zone - off)
            kind = rnd.random()
            if kind < 0.7:
                cmds.append("write -P %d %d %d" % (rnd.randint(1, 250), off,
                                                    n))
            elif kind < 0.9:
                cmds.append("write -z %d %d" % (off, n))
            else:
                cmds.append("discard %d %d" % (off, n))
        run(qio(img, *cmds), check=True)
        name = "s%d" % step
        run(["qemu-img", "snapshot", "-c", name, img], check=True)
        names.append(name)
    for name in rnd.sample(names, len(names) - keep):
        run(["qemu-img", "snapshot", "-d", name, img], check=True)
    run(qio(img, "write -P 77 %d %d" % (rnd.randrange(0, size // cs) * cs,
                                        cs)), check=True)
    return img


GEOMETRIES = [
    [],
    ["-o", "cluster_size=512"],
    ["-o", "cluster_size=2M"],
    ["-o", "extended_l2=on"],
    ["-o", "compat=0.10"],
    ["-o", "compression_type=zstd"],
    ["-o", "cluster_size=4k,refcount_bits=64"],
    ["-o", "refcount_bits=4"],
]


@pytest.mark.parametrize("seed,opts", enumerate(GEOMETRIES),
                         ids=lambda o: (o[1] if o else "default")
                         if isinstance(o, list) else str(o))
def test_compact_keeps_every_snapshot(tmp, seed, opts):
    img = history(tmp, seed, opts)
    names = snap_names(img)
    before = exports(tmp, img, names)
    old = os.path.getsize(img)
    r = qimg("compact", img)
    assert r.rc == 0 and r.err == "", r
    assert re.fullmatch(r"Image compacted: file size \S+ \S+ -> \S+ \S+ "
                        r"\(\S+ \S+ moved\)\.\n", r.out), r
    check_clean(img)
    assert snap_names(img) == names
    assert exports(tmp, img, names) == before
    new = os.path.getsize(img)
    s = space(img)
    cs = json.loads(qemu_img("info", "--output=json", img).out)[
        "cluster-size"]
    # No free cluster is held (clusters smaller than a file system block
    # share it), and the file ends near what is in use.
    assert s["free-held-bytes"] == 0 or cs < 4096, s
    assert new <= s["data-bytes"] + 2 * s["metadata-bytes"] + 8 * cs, \
        (old, new, s)
    assert new <= old
    # Nothing more to gain: a second run moves nothing.
    again = json.loads(qimg("compact", "--output=json", img,
                            check=True).out)
    assert again["moved-bytes"] == 0 and again["new-file-size"] == new
    # QEMU goes on using it: applies each snapshot, writes, stays clean.
    for n in names:
        run(["qemu-img", "snapshot", "-a", n, img], check=True)
        check_clean(img)
    run(qio(img, "write -P 5 0 1M"), check=True)
    check_clean(img)


def test_compact_shrinks_after_deletes(tmp):
    """Deleting most snapshots leaves holes; compact gives them back."""
    img = tmp / "a.qcow2"
    run(create(img, "64M"), check=True)
    for i in range(6):
        run(qio(img, "write -P %d 0 16M" % (i + 1)), check=True)
        run(["qemu-img", "snapshot", "-c", "s%d" % i, img], check=True)
    for i in range(5):
        run(["qemu-img", "snapshot", "-d", "s%d" % i, img], check=True)
    before = exports(tmp, img, ["s5"])
    old = os.path.getsize(img)
    out = json.loads(qimg("compact", "--output=json", img, check=True).out)
    new = os.path.getsize(img)
    assert out["old-file-size"] == old and out["new-file-size"] == new
    assert new < 20 << 20 < old, (old, new)
    assert out["moved-bytes"] >= 15 << 20
    check_clean(img)
    assert exports(tmp, img, ["s5"]) == before


def test_compressed_clusters_at_the_end_are_packed(tmp):
    img = tmp / "a.qcow2"
    run(create(img, "64M"), check=True)
    run(qio(img, "write -P 1 0 8M"), check=True)
    run(["qemu-img", "snapshot", "-c", "a", img], check=True)
    run(qio(img, "write -P 2 0 8M", "write -c -P 9 16M 4M",
            "write -c -P 8 24M 64k"), check=True)
    run(["qemu-img", "snapshot", "-c", "b", img], check=True)
    run(qio(img, "write -c -P 3 30M 1M"), check=True)
    run(["qemu-img", "snapshot", "-d", "a", img], check=True)
    before = exports(tmp, img, ["b"])
    old = os.path.getsize(img)
    qimg("compact", img, check=True)
    check_clean(img)
    assert exports(tmp, img, ["b"]) == before
    assert os.path.getsize(img) < old - (6 << 20)
    m = json.loads(qemu_img("map", "--output=json", img).out)
    assert any(e["data"] and not e.get("offset") and e["length"] for e in m)


@pytest.mark.parametrize("cs", ["64k", "512"])
def test_bitmaps_and_backing_link_kept(tmp, cs):
    """The bitmaps QEMU stored at the end of the file move too, every bit
    kept; the backing link stays."""
    base = tmp / "base.qcow2"
    img = tmp / "top.qcow2"
    run(create(base, "16M"), check=True)
    run(qio(base, "write -P 1 0 16M"), check=True)
    run(create(img, None, "-o", "cluster_size=" + cs, backing="base.qcow2"),
        check=True, cwd=tmp)
    run(qio(img, "write -P 2 1M 4M"), check=True)
    run(["qemu-img", "snapshot", "-c", "x", img], check=True)
    run(qio(img, "write -P 3 1M 4M"), check=True)
    run(["qemu-img", "bitmap", "--add", "-g", "512", img, "b0"], check=True)
    run(["qemu-img", "bitmap", "--add", img, "b1"], check=True)
    run(qio(img, "write -P 4 8M 64k", "write -P 5 12M 3M"), check=True)
    run(["qemu-img", "bitmap", "--disable", img, "b1"], check=True)
    run(["qemu-img", "snapshot", "-d", "x", img], check=True)
    bits = read_bitmaps(img)
    assert bits and bits[0][3], bits
    info0 = json.loads(qemu_img("info", "--output=json", img).out)
    before = exports(tmp, img, [])
    old = os.path.getsize(img)
    qimg("compact", img, check=True)
    info1 = json.loads(qemu_img("info", "--output=json", img).out)
    check_clean(img)
    assert exports(tmp, img, []) == before
    assert os.path.getsize(img) < old - (3 << 20)
    assert read_bitmaps(img) == bits
    for k in ("backing-filename", "backing-filename-format",
              "format-specific"):
        assert info1.get(k) == info0.get(k), k
    # QEMU uses them: a merge, and a guest write tracked by b0.
    run(["qemu-img", "bitmap", "--merge", "b0", img, "b1"], check=True)
    check_clean(img)


def test_leaks_repaired(tmp):
    img = tmp / "a.qcow2"
    run(create(img, "8M"), check=True)
    run(qio(img, "write -P 1 0 2M"), check=True)
    run(["qemu-img", "snapshot", "-c", "s", img], check=True)
    run(qio(img, "write -P 2 0 2M"), check=True)
    add_leak(img)
    r = qemu_img("check", img)
    assert r.rc == 3 and "1 leaked clusters were found" in r.out, r
    before = exports(tmp, img, ["s"])
    r = qimg("compact", img, check=True)
    assert r.out.startswith("1 leaked clusters were repaired.\n"), r
    check_clean(img)
    assert exports(tmp, img, ["s"]) == before
    out = json.loads(qimg("compact", "--output=json", img, check=True).out)
    assert out["leaks-repaired"] == 0


def test_progress_and_quiet(tmp):
    img = history(tmp, 3, [])
    r = qimg("compact", "-p", img)
    assert r.rc == 0, r
    # (Text mode reads qemu-img's \r as a line end.)
    lines = r.out.split("\n")
    prog = [float(m.group(1)) for m in
            (re.fullmatch(r"    \((\d+\.\d\d)/100%\)", l) for l in lines) if m]
    assert prog[0] == 0 and prog[-1] == 100 and prog == sorted(prog), r
    assert prog.count(100) == 1, r
    assert lines[len(prog)].startswith("Image compacted:"), r
    r = qimg("compact", "-q", img)
    assert (r.rc, r.out, r.err) == (0, "", "")


def unchanged(img, *args):
    before = img.read_bytes()
    r = qimg(*args)
    assert r.rc == 1, r
    assert img.read_bytes() == before
    return r


def test_refusals(tmp):
    raw = tmp / "a.raw"
    run(["qemu-img", "create", "-q", "-f", "raw", raw, "1M"], check=True)
    r = unchanged(raw, "compact", "-f", "raw", raw)
    assert r.err == "qimg: Only qcow2 images can be compacted\n", r
    img = history(tmp, 4, [], keep=1)
    r = unchanged(img, "compact", "--output=xml", img)
    assert "--output must be used with human or json" in r.err
    r = unchanged(img, "compact", img, img)
    assert r.err.startswith("qimg: Expecting one image file name"), r
    # Damage that check counts as corruption: refused, file as it was.
    data = bytearray(img.read_bytes())
    rt = int.from_bytes(data[48:56], "big")
    rb = int.from_bytes(data[rt:rt + 8], "big")
    # The active L1 table's refcount dropped to 0.
    l1 = int.from_bytes(data[40:48], "big")
    k = l1 // 65536
    data[rb + 2 * k:rb + 2 * k + 2] = b"\0\0"
    img.write_bytes(bytes(data))
    r = unchanged(img, "compact", img)
    assert "The image has errors" in r.err, r


def test_locked_image_refused(tmp):
    img = history(tmp, 5, [], keep=1)
    before = img.read_bytes()
    p = subprocess.Popen(["qemu-io", "-c", "sleep 3000", str(img)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        r = qimg("compact", img)
    finally:
        p.kill()
        p.wait()
    assert r.rc == 1 and "lock" in r.err, r
    assert img.read_bytes() == before

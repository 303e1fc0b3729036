"""qimg rebase beside qemu-img 7.2's rebase: each tool rebases its own copy
of the same chain (made by qemu-img/qemu-io); the same stdout, stderr
(program name aside), exit code and `qemu-img info` backing lines; the
image reads as it did before (safe mode), `qemu-img check` finds it
clean, and qemu-io reads what qimg wrote."""
import re
import shutil

import pytest

from conftest import (QIMG, compressed_images, create_argv as create,
                      damage_compressed, qio_argv as qio, run, strip_prog)


def chain(opts=(), base_fmt="qcow2"):
    o = list(opts)
    return [
        create("base.img", "8M", *(o if base_fmt == "qcow2" else []),
               fmt=base_fmt),
        qio("base.img", "write -P 1 0 2M", "write -P 8 6M 1M", fmt=base_fmt),
        create("mid.img", None, *o, backing="base.img", bfmt=base_fmt),
        qio("mid.img", "write -P 2 1M 64k", "write -z 6M 64k",
            "write -P 2 5M 100k"),
        create("top.img", None, *o, backing="mid.img"),
        qio("top.img", "write -P 3 3M 64k", "write -z 0 64k",
            "write -P 4 1536k 4k"),
        create("other.img", "8M", *o), qio("other.img", "write -P 9 2M 3M"),
        create("short.img", "3M", *o), qio("short.img", "write -P 1 0 2M"),
    ]


CHAINS = {
    "v3": chain(),
    "v2": chain(["-o", "compat=0.10"]),
    "extended-l2": chain(["-o", "extended_l2=on"]),
    "small-clusters": chain(["-o", "cluster_size=512"]),
    "big-clusters": chain(["-o", "cluster_size=2M"]),
    "raw-base": chain(base_fmt="raw"),
}

REBASES = [
    ["-b", "base.img", "-F", "qcow2"],     # drop the middle layer
    ["-b", "other.img", "-F", "qcow2"],    # another image altogether
    ["-b", "short.img", "-F", "qcow2"],    # shorter than the disk
    ["-b", ""],                            # flatten
    ["-u", "-b", "base.img", "-F", "qcow2"],
    ["-u", "-b", "missing.img", "-F", "raw"],
    ["-u", "-b", ""],
    ["-q", "-b", "other.img", "-F", "qcow2"],
]


def build(d, steps):
    d.mkdir()
    for s in steps:
        run(s, check=True, cwd=d)


def info_backing(d, name):
    r = run(["qemu-img", "info", "-U", name], cwd=d)
    return [l for l in r.out.splitlines() if "backing" in l], r.rc


def view(d, name, out):
    r = run(["qemu-img", "convert", "-U", "-O", "raw", name, out], cwd=d)
    assert r.rc == 0, r


def both(tmp, steps, args):
    build(tmp / "q", steps)
    shutil.copytree(tmp / "q", tmp / "m")
    shutil.copytree(tmp / "q", tmp / "o")
    view(tmp / "q", "top.img", "before.raw")
    r1 = run(["qemu-img", "rebase"] + args + ["top.img"], cwd=tmp / "q")
    r2 = run([QIMG, "rebase"] + args + ["top.img"], cwd=tmp / "m")
    e1 = strip_prog(r1.err, "qemu-img").replace("qemu-img", "qimg")
    assert (r2.rc, strip_prog(r2.err, "qimg")) == (r1.rc, e1), (args, r1, r2)
    if "-p" in args:
        check_progress(r1.out, r2.out)
    else:
        assert r2.out == r1.out
    assert info_backing(tmp / "m", "top.img") == \
        info_backing(tmp / "q", "top.img")
    return r1


def check_progress(out1, out2):
    pat = re.compile(r"^(?:    \(\d{1,3}\.\d\d/100%\)\n)+$")
    assert pat.match(out1) and pat.match(out2), (out1, out2)
    assert out2.startswith("    (0.00/100%)\n")
    assert out2.endswith("    (100.00/100%)\n")


@pytest.mark.parametrize("name", sorted(CHAINS))
@pytest.mark.parametrize("args", REBASES + [["-p", "-b", "base.img", "-F",
                                             "qcow2"]],
                         ids=lambda a: " ".join(a) or "none")
def test_rebase(tmp, name, args):
    if name == "raw-base" and args[-1] == "qcow2" and "base.img" in args:
        args = args[:-1] + ["raw"]
    r = both(tmp, CHAINS[name], args)
    assert r.rc == 0, r
    d = tmp / "m"
    if "missing.img" in args:
        return
    c = run(["qemu-img", "check", "top.img"], cwd=d)
    assert c.rc == 0 and "No errors" in c.out, c
    # Safe mode keeps what the image reads; -u keeps the image's own data
    # (qemu-img's copy, rebased the same way, reads the same).
    if "-u" not in args:
        view(d, "top.img", "after.raw")
        assert (d / "after.raw").read_bytes() == \
            (tmp / "q" / "before.raw").read_bytes()
    r = run([QIMG, "compare", "-U", str(tmp / "q" / "top.img"),
             str(d / "top.img")])
    assert r.rc == 0, r


def test_rebase_onto_file_read_as_raw_keeps_the_view(tmp):
    """qemu-img 7.2, rebasing onto a file of the old chain read with
    another format, skips comparing (the file is "in the chain") and the
    image reads differently afterwards; qimg compares and keeps it."""
    build(tmp / "m", CHAINS["v3"])
    view(tmp / "m", "top.img", "before.raw")
    r = run([QIMG, "rebase", "-b", "base.img", "-F", "raw", "top.img"],
            cwd=tmp / "m")
    assert r.rc == 0, r
    view(tmp / "m", "top.img", "after.raw")
    assert (tmp / "m" / "after.raw").read_bytes() == \
        (tmp / "m" / "before.raw").read_bytes()


@pytest.mark.parametrize("args", [
    ["-b", "base.img"],                     # no -F: refused before writing
    ["-u", "-b", "base.img"],
    ["-b", "missing.img", "-F", "qcow2"],
    ["-b", "base.img", "-F", "bogus"],
    ["-t", "bad", "-b", "base.img", "-F", "qcow2"],
    ["-T", "bad", "-b", "base.img", "-F", "qcow2"],
    [], ["-x"], ["-b"],
], ids=lambda a: " ".join(a) or "none")
def test_rebase_refusals(tmp, args):
    """Refused with qemu-img's words, nothing written (qemu-img 7.2 copies
    the data before it finds -F missing)."""
    r = both(tmp, CHAINS["v3"], args)
    assert r.rc == 1, r
    for n in ("base.img", "mid.img", "top.img"):
        assert (tmp / "m" / n).read_bytes() == (tmp / "o" / n).read_bytes(), n


def test_rebase_raw_image(tmp):
    steps = [create("top.img", "1M", fmt="raw"), create("base.img", "1M")]
    build(tmp / "q", steps)
    shutil.copytree(tmp / "q", tmp / "m")
    for args in (["-u", "-b", "base.img", "-F", "qcow2"],
                 ["-f", "raw", "-u", "-b", "base.img", "-F", "qcow2"]):
        r1 = run(["qemu-img", "rebase"] + args + ["top.img"], cwd=tmp / "q")
        r2 = run([QIMG, "rebase"] + args + ["top.img"], cwd=tmp / "m")
        assert r1.rc == r2.rc == 1
        assert strip_prog(r2.err, "qimg") == \
            strip_prog(r1.err, "qemu-img").replace("qemu-img", "qimg")


def test_rebase_missing_old_backing(tmp):
    """-u repairs an image whose backing file is gone; safe mode cannot
    read the old chain and says so."""
    build(tmp / "q", CHAINS["v3"])
    (tmp / "q" / "mid.img").unlink()
    shutil.copytree(tmp / "q", tmp / "m")
    for args in (["-b", "base.img", "-F", "qcow2"],
                 ["-u", "-b", "base.img", "-F", "qcow2"]):
        r1 = run(["qemu-img", "rebase"] + args + ["top.img"], cwd=tmp / "q")
        r2 = run([QIMG, "rebase"] + args + ["top.img"], cwd=tmp / "m")
        assert r1.rc == r2.rc, (r1, r2)
        assert strip_prog(r2.err, "qimg") == \
            strip_prog(r1.err, "qemu-img").replace("qemu-img", "qimg")
    assert info_backing(tmp / "m", "top.img") == \
        info_backing(tmp / "q", "top.img")


@pytest.mark.parametrize("cluster", ["4k", "64k", "2M"])
def test_rebase_long_name(tmp, cluster):
    """A backing name that does not fit in header sector 0 with the
    extensions goes past everything the old header uses, then sector 0
    switches to it; qemu-img reads it."""
    deep = "/".join(["d" * 120] * 3)
    (tmp / deep).mkdir(parents=True)
    build(tmp / "w", [create("base.img", "4M", "-o",
                             "cluster_size=" + cluster),
                      qio("base.img", "write -P 5 0 1M"),
                      create("top.img", None, "-o", "cluster_size=" + cluster,
                             backing="base.img"),
                      qio("top.img", "write -P 6 512k 4k")])
    shutil.copy(tmp / "w" / "base.img", tmp / deep / "nb.img")
    name = "../" + deep + "/nb.img"
    r = run([QIMG, "rebase", "-b", name, "-F", "qcow2", "top.img"],
            cwd=tmp / "w")
    assert r.rc == 0, r
    lines, rc = info_backing(tmp / "w", "top.img")
    assert rc == 0 and lines[0].startswith("backing file: " + name), lines
    r = run(["qemu-io", "-c", "read -P 5 0 512k", "-c", "read -P 6 512k 4k",
             "top.img"], cwd=tmp / "w")
    assert r.rc == 0 and "read 4096/4096" in r.out, r
    c = run(["qemu-img", "check", "top.img"], cwd=tmp / "w")
    assert c.rc == 0, c
    # Another long name: it goes before the first one, which the old
    # header still names until sector 0 switches.
    name2 = "../" + deep + "/./nb.img"
    r = run([QIMG, "rebase", "-u", "-b", name2, "-F", "qcow2", "top.img"],
            cwd=tmp / "w")
    assert r.rc == 0, r
    lines, rc = info_backing(tmp / "w", "top.img")
    assert rc == 0 and lines[0].startswith("backing file: " + name2), lines
    r = run(["qemu-io", "-c", "read -P 5 0 512k", "top.img"], cwd=tmp / "w")
    assert r.rc == 0 and "read 524288/524288" in r.out, r
    # And back to a short name, which fits in sector 0 again.
    r = run([QIMG, "rebase", "-u", "-b", "base.img", "-F", "qcow2",
             "top.img"], cwd=tmp / "w")
    assert r.rc == 0, r
    assert info_backing(tmp / "w", "top.img")[0][0] == \
        "backing file: base.img"


def test_qemu_rebases_what_qimg_rebased(tmp):
    build(tmp / "w", CHAINS["v3"])
    d = tmp / "w"
    run([QIMG, "rebase", "-b", "base.img", "-F", "qcow2", "top.img"],
        check=True, cwd=d)
    run(["qemu-img", "rebase", "-b", "other.img", "-F", "qcow2", "top.img"],
        check=True, cwd=d)
    run([QIMG, "rebase", "-b", "", "top.img"], check=True, cwd=d)
    lines, _ = info_backing(d, "top.img")
    assert lines == []
    r = run(["qemu-io", "-c", "read -P 3 3M 64k", "-c", "read -P 2 1M 64k",
             "-c", "read -P 1 0x110000 64k", "top.img"], cwd=d)
    assert r.rc == 0 and r.out.count("read 65536/65536") == 3, r


def test_rebase_down_the_chain_reads_only_what_the_layers_above_hold(tmp):
    """Onto a file further down its own chain, what no layer above it
    allocates reads the same before and after: it is neither read nor
    compared (as qemu-img does). Shown with an L2 entry of the base made
    unreadable (unaligned) under a range only the base maps: qimg
    succeeds, and reads the rest as before; a layer shorter than the
    base still has its tail compared (it read zeros there)."""
    d = tmp / "w"
    build(d, [
        create("base.img", "8M"),
        qio("base.img", "write -P 1 0 8M"),
        create("mid.img", "4M", backing="base.img", bfmt="qcow2"),
        qio("mid.img", "write -P 2 1M 64k"),
        create("top.img", "8M", backing="mid.img"),
        qio("top.img", "write -P 3 3M 64k"),
    ])
    view(d, "top.img", "before.raw")
    with open(d / "base.img", "r+b") as f:
        h = f.read(72)
        l1_off = int.from_bytes(h[40:48], "big")
        f.seek(l1_off)
        l2_off = int.from_bytes(f.read(8), "big") & 0x00fffffffffffe00
        f.seek(l2_off + 8 * 40)  # the cluster at 2.5M: only the base
        e = int.from_bytes(f.read(8), "big")
        f.seek(l2_off + 8 * 40)
        f.write((e | 0x200).to_bytes(8, "big"))
    r = run([QIMG, "rebase", "-b", "base.img", "-F", "qcow2", "top.img"],
            cwd=d)
    assert r.rc == 0, r
    r = run(["qemu-io", "-r", "-c", "read -P 3 3M 64k", "-c",
             "read -P 2 1M 64k", "-c", "read -P 0 4M 4M", "-c",
             "read -P 1 0 1M", "top.img"], cwd=d)
    assert r.rc == 0 and r.out.count("read ") == 4 and \
        "Pattern verification failed" not in r.out, r
    c = run(["qemu-img", "check", "top.img"], cwd=d)
    assert c.rc == 0, c


@pytest.mark.parametrize("bad", [("base",), ("other",), ("base", "other")])
def test_rebase_read_errors(tmp, bad):
    """An unreadable cluster in the old chain, the new one or both (the
    two are read at once): qemu-img's message and exit code (the old
    chain's error when both fail, as qemu-img reads it first), and the
    image still names its old backing file."""
    d = tmp / "w"
    d.mkdir()
    compressed_images(d, ("base.img", "other.img"))
    run(create("top.img", None, backing="base.img"), check=True, cwd=d)
    run(qio("top.img", "write -P 3 1M 64k"), check=True, cwd=d)
    for n in bad:
        damage_compressed(d / (n + ".img"), 3 << 20)
    if bad == ("other",):
        damage_compressed(d / "other.img", 5 << 20)
    shutil.copytree(d, tmp / "q")
    shutil.copytree(d, tmp / "m")
    args = ["rebase", "-b", "other.img", "-F", "qcow2", "top.img"]
    r1 = run(["qemu-img"] + args, cwd=tmp / "q")
    r2 = run([QIMG] + args, cwd=tmp / "m")
    e1 = strip_prog(r1.err, "qemu-img").replace("qemu-img", "qimg")
    assert (r2.rc, r2.out, strip_prog(r2.err, "qimg")) == \
        (r1.rc, r1.out, e1), (r1, r2)
    assert r2.rc == 1 and r2.err.count("\n") == 1, r2
    assert info_backing(tmp / "m", "top.img") == \
        info_backing(d, "top.img")

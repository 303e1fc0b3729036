"""qimg commit beside qemu-img 7.2's commit: each tool commits its own
copy of the same chain (made by qemu-img/qemu-io); the same stdout, stderr
(program name aside) and exit code, every image of both chains reading
the same afterwards (qimg compare, checked against qemu-img compare), and
`qemu-img check` clean on every image qimg touched."""
import re
import shutil
import subprocess

import pytest

from conftest import (QIMG, create_argv as create, qio_argv as qio, run,
                      strip_prog)


# Chains: base.img <- (mid.img <-) top.img
CHAINS = {
    "two-levels": [
        create("base.img", "8M"), qio("base.img", "write -P 1 0 2M"),
        create("top.img", backing="base.img"),
        qio("top.img", "write -P 3 1M 64k", "write -z 0 64k",
            "write -P 4 1536k 4k", "discard 1792k 64k")],
    "three-levels": [
        create("base.img", "8M"), qio("base.img", "write -P 1 0 2M"),
        create("mid.img", backing="base.img"),
        qio("mid.img", "write -P 2 1M 64k", "write -P 2 5M 1M"),
        create("top.img", backing="mid.img"),
        qio("top.img", "write -P 3 3M 64k", "write -z 0 64k",
            "write -P 4 1536k 4k")],
    "v2": [
        create("base.img", "8M", "-o", "compat=0.10"),
        qio("base.img", "write -P 1 0 2M"),
        create("top.img", None, "-o", "compat=0.10", backing="base.img"),
        qio("top.img", "write -P 3 1M 64k", "write -z 0 64k")],
    "raw-base": [
        create("base.img", "8M", fmt="raw"),
        qio("base.img", "write -P 1 0 2M", fmt="raw"),
        create("top.img", backing="base.img", bfmt="raw"),
        qio("top.img", "write -P 3 1M 64k", "write -z 0 64k",
            "write -P 5 7M 1M")],
    "compressed-and-extended-l2": [
        create("base.img", "8M", "-o", "extended_l2=on"),
        qio("base.img", "write -P 1 0 2M"),
        create("top.img", None, "-o", "extended_l2=on", backing="base.img"),
        qio("top.img", "write -c -P 6 2M 64k", "write -P 7 8k 2k",
            "write -z 100k 4k")],
    "small-clusters": [
        create("base.img", "4M", "-o", "cluster_size=512"),
        qio("base.img", "write -P 1 0 1M"),
        create("top.img", None, "-o", "cluster_size=512",
               backing="base.img"),
        qio("top.img", "write -P 3 100k 37k", "write -z 300k 3k")],
    "top-with-snapshots": [
        create("base.img", "8M"), qio("base.img", "write -P 1 0 2M"),
        create("top.img", backing="base.img"),
        qio("top.img", "write -P 3 1M 64k"),
        ["qemu-img", "snapshot", "-c", "s1", "top.img"],
        qio("top.img", "write -P 4 1M 4k", "write -P 5 4M 64k")],
    "empty-top": [
        create("base.img", "8M"), qio("base.img", "write -P 1 0 2M"),
        create("top.img", backing="base.img")],
    "larger-base": [
        create("base.img", "16M"), qio("base.img", "write -P 1 0 2M"),
        create("top.img", "8M", backing="base.img"),
        qio("top.img", "write -P 3 1M 64k")],
}

LAYERS = ["base.img", "mid.img", "top.img"]


def build(d, steps):
    d.mkdir()
    for s in steps:
        run(s, check=True, cwd=d)


def layers(d):
    return [n for n in LAYERS if (d / n).exists()]


def views(d):
    """Each layer's guest view, as a raw file next to it."""
    out = {}
    for n in layers(d):
        raw = d / (n + ".view")
        run(["qemu-img", "convert", "-U", "-O", "raw", n, raw.name],
            check=True, cwd=d)
        out[n] = raw
    return out


def same_content(a, b):
    r1 = run(["qemu-img", "compare", "-U", str(a), str(b)])
    r2 = run([QIMG, "compare", "-U", str(a), str(b)])
    assert (r2.rc, r2.out) == (r1.rc, r1.out), (a, b, r1, r2)
    return r1.rc == 0


def both(tmp, chain, args):
    """Commit a qemu-img copy and a qimg copy of the chain."""
    build(tmp / "q", CHAINS[chain])
    shutil.copytree(tmp / "q", tmp / "m")
    before = views(tmp / "q")
    r1 = run(["qemu-img", "commit"] + args + ["top.img"], cwd=tmp / "q")
    r2 = run([QIMG, "commit"] + args + ["top.img"], cwd=tmp / "m")
    e1 = strip_prog(r1.err, "qemu-img").replace("qemu-img", "qimg")
    assert (r2.rc, e2(r2)) == (r1.rc, e1), (args, r1, r2)
    if "-p" in args:
        check_progress(r1.out, r2.out)
    else:
        assert r2.out == r1.out, (args, r1, r2)
    for n in layers(tmp / "m"):
        assert same_content(tmp / "q" / n, tmp / "m" / n), n
        r = run(["qemu-img", "check", n], cwd=tmp / "m")
        assert (r.rc == 0 and "No errors" in r.out) or \
            "does not support checks" in r.err, (n, r)
    return r1, before


def e2(r):
    return strip_prog(r.err, "qimg")


# (run() reads text: each "\r" arrives as "\n", the last one with the
# newline that ends the progress.)
PROGRESS = re.compile(r"^((?:    \(\d{1,3}\.\d\d/100%\)\n)+)(.*)$", re.S)


def check_progress(out1, out2):
    """qemu-img's steps depend on its block job; the form and the ends
    must match."""
    m1, m2 = PROGRESS.match(out1), PROGRESS.match(out2)
    assert m1 and m2, (out1, out2)
    assert m2.group(2) == m1.group(2)
    vals = [float(v) for v in re.findall(r"\((\d+\.\d\d)/", m2.group(1))]
    assert vals[0] == 0 and vals[-1] == 100 and vals == sorted(vals), vals


@pytest.mark.parametrize("chain", sorted(CHAINS))
@pytest.mark.parametrize("args", [[], ["-d"], ["-q"], ["-p"]])
def test_commit(tmp, chain, args):
    r, before = both(tmp, chain, args)
    assert r.rc == 0, r
    d = tmp / "m"
    below = "mid.img" if (d / "mid.img").exists() else "base.img"
    # What the top read is now what the image below it reads ...
    assert same_content(d / below, before["top.img"])
    # ... and the top, emptied, reads the same through it (with -d it
    # was left as it was).
    assert same_content(d / "top.img", before["top.img"])
    if "-d" in args:
        q = tmp / "q"
        assert (d / "top.img").read_bytes() == (q / "top.img").read_bytes() \
            or same_content(d / "top.img", q / "top.img")


@pytest.mark.parametrize("chain", ["three-levels"])
@pytest.mark.parametrize("args", [["-b", "base.img"], ["-b", "mid.img"],
                                  ["-b", "base.img", "-p"]])
def test_commit_to_base(tmp, chain, args):
    r, before = both(tmp, chain, args)
    assert r.rc == 0, r
    d = tmp / "m"
    assert same_content(d / args[1], before["top.img"])
    # -b implies -d: the top is untouched.
    assert same_content(d / "top.img", before["top.img"])


@pytest.mark.parametrize("args", [
    ["-b", "nope.img"], ["-b", "top.img"], ["-r", "abc"], ["-t", "bad"],
    ["-f", "raw"], ["-x"], ["-b"],
])
def test_commit_refusals(tmp, args):
    r, _ = both(tmp, "three-levels", args)
    assert r.rc == 1, r
    for n in LAYERS:
        assert (tmp / "m" / n).read_bytes() == (tmp / "q" / n).read_bytes()


def test_commit_usage(tmp):
    build(tmp / "q", CHAINS["two-levels"])
    for args in ([], ["top.img", "top.img"]):
        r1 = run(["qemu-img", "commit"] + args, cwd=tmp / "q")
        r2 = run([QIMG, "commit"] + args, cwd=tmp / "q")
        assert r1.rc == r2.rc == 1
        assert e2(r2) == strip_prog(r1.err, "qemu-img").replace("qemu-img",
                                                                "qimg")


def test_commit_no_backing(tmp):
    build(tmp / "q", [create("top.img", "1M")])
    shutil.copytree(tmp / "q", tmp / "m")
    r1 = run(["qemu-img", "commit", "top.img"], cwd=tmp / "q")
    r2 = run([QIMG, "commit", "top.img"], cwd=tmp / "m")
    assert (r2.rc, e2(r2)) == (1, "Image does not have a backing file\n")
    assert r1.rc == 1 and "does not have a backing file" in r1.err
    assert (tmp / "m" / "top.img").read_bytes() == \
        (tmp / "q" / "top.img").read_bytes()


def test_commit_locked_base(tmp):
    """A base another process writes to is refused, nothing written."""
    build(tmp / "m", CHAINS["two-levels"])
    before = {n: (tmp / "m" / n).read_bytes() for n in layers(tmp / "m")}
    p = subprocess.Popen(["qemu-io", "-f", "qcow2", "base.img"],
                         cwd=tmp / "m", stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        p.stdin.write("read 0 512\n")
        p.stdin.flush()
        p.stdout.readline()
        r = run([QIMG, "commit", "top.img"], cwd=tmp / "m")
        assert r.rc == 1 and "lock" in r.err, r
    finally:
        p.stdin.close()
        p.wait(timeout=30)
    for n, b in before.items():
        assert (tmp / "m" / n).read_bytes() == b, n


@pytest.mark.parametrize("base_fmt", ["qcow2", "raw"])
def test_commit_into_smaller_base_grows_it(tmp, base_fmt):
    """As qemu-img: the base grows to the image's size (qcow2 with one
    header write), then takes the data; both bases read the same."""
    steps = [create("base.img", "4M", fmt=base_fmt),
             qio("base.img", "write -P 1 0 4M", fmt=base_fmt),
             create("top.img", "8M", backing="base.img", bfmt=base_fmt),
             qio("top.img", "write -P 3 6M 64k", "write -P 4 3M 2M")]
    for side, tool in (("q", "qemu-img"), ("m", QIMG)):
        build(tmp / side, steps)
        r = run([tool, "commit", "top.img"], cwd=tmp / side)
        assert r.rc == 0 and r.out == "Image committed.\n", r
    r = run(["qemu-img", "compare", "-f", base_fmt, "-F", base_fmt,
             str(tmp / "q" / "base.img"), str(tmp / "m" / "base.img")])
    assert r.rc == 0, r
    if base_fmt == "qcow2":
        c = run(["qemu-img", "check", "base.img"], cwd=tmp / "m")
        assert c.rc == 0 and "No errors" in c.out, c


def test_qemu_reads_what_qimg_committed_and_the_reverse(tmp):
    """A chain qimg made, committed by qemu-img; one qemu-img made,
    committed by qimg: qemu-io reads the data each wrote."""
    d = tmp / "a"
    d.mkdir()
    run([QIMG, "create", "-q", "-f", "qcow2", "base.img", "4M"], check=True,
        cwd=d)
    run([QIMG, "create", "-q", "-f", "qcow2", "-b", "base.img", "-F",
         "qcow2", "top.img"], check=True, cwd=d)
    run([QIMG, "io", "-c", "write -P 9 64k 64k", "top.img"], check=True,
        cwd=d)
    run(["qemu-img", "commit", "top.img"], check=True, cwd=d)
    r = run(["qemu-io", "-c", "read -P 9 64k 64k", "base.img"], cwd=d)
    assert r.rc == 0 and "read 65536/65536" in r.out, r
    d = tmp / "b"
    build(d, CHAINS["two-levels"])
    run([QIMG, "commit", "top.img"], check=True, cwd=d)
    for n in ("base.img", "top.img"):
        r = run(["qemu-io", "-c", "read -P 3 1M 64k", n], cwd=d)
        assert r.rc == 0 and "read 65536/65536" in r.out, (n, r)


def test_commit_rate_limit(tmp):
    """-r holds the copy to the rate (bytes per second of what the chain
    allocates, zero ranges too, no wait after the last chunk, as QEMU's
    block job limit); the result is what an unlimited commit gives."""
    import time
    steps = [create("base.img", "64M"),
             create("top.img", backing="base.img"),
             qio("top.img", "write -P 3 0 2M", "write -z 10M 512k")]
    for d in ("rq", "rm"):
        build(tmp / d, steps)
    t0 = time.monotonic()
    r = run([QIMG, "commit", "-r", "1M", "top.img"], cwd=tmp / "rm")
    slow = time.monotonic() - t0
    assert r.rc == 0 and r.out == "Image committed.\n", r
    # 2.5 MiB at 1 MiB/s: 2 s of waits (the last 512 KiB chunk unwaited)
    assert slow >= 1.9, slow
    r = run(["qemu-img", "commit", "-r", "1M", "top.img"], cwd=tmp / "rq")
    assert r.rc == 0, r
    for n in ("base.img", "top.img"):
        assert same_content(tmp / "rq" / n, tmp / "rm" / n), n

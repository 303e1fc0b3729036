"""qimg compare beside qemu-img 7.2's compare: the same stdout, stderr
(program name aside) and exit code on the same pair of files, which
neither tool may change. The pairs are made with qemu-img/qemu-io."""
import hashlib
import os

import pytest

from conftest import (QIMG, compressed_images, create_argv as create,
                      damage_compressed, qio_argv as qio, run, strip_prog)

MiB = 1 << 20


# name -> steps making a.img and b.img (and whatever they name)
PAIRS = {
    "identical": [
        create("a.img", "8M"), qio("a.img", "write -P 1 1M 64k"),
        create("b.img", "8M"), qio("b.img", "write -P 1 1M 64k")],
    "data-differs-mid-cluster": [
        create("a.img", "8M"), qio("a.img", "write -P 1 1M 64k"),
        create("b.img", "8M"), qio("b.img", "write -P 1 1M 64k",
                                   "write -P 2 1060864 100")],
    "data-differs-last-byte": [
        create("a.img", "8M"), qio("a.img", "write -P 1 0 8M"),
        create("b.img", "8M"), qio("b.img", "write -P 1 0 8M",
                                   "write -P 2 8388607 1")],
    "written-zeros-vs-unallocated": [
        create("a.img", "8M"), qio("a.img", "write -P 0 2M 1M"),
        create("b.img", "8M")],
    "data-vs-unallocated": [
        create("a.img", "8M"), qio("a.img", "write -P 0 2M 1M",
                                   "write -P 3 2563584 512"),
        create("b.img", "8M")],
    "zero-clusters-vs-zero-data": [
        create("a.img", "8M"), qio("a.img", "write -z 0 4M"),
        create("b.img", "8M"), qio("b.img", "write -P 0 0 4M")],
    "discarded-vs-zero": [
        create("a.img", "8M"), qio("a.img", "write -P 5 0 1M",
                                   "discard 0 1M"),
        create("b.img", "8M"), qio("b.img", "write -z 0 1M")],
    "smaller-first-zero-tail": [
        create("a.img", "8M"), qio("a.img", "write -P 1 1M 64k"),
        create("b.img", "12M"), qio("b.img", "write -P 1 1M 64k",
                                    "write -P 0 10M 64k")],
    "larger-first-data-tail": [
        create("a.img", "12M"), qio("a.img", "write -P 1 1M 64k",
                                    "write -P 2 11M 1k"),
        create("b.img", "8M"), qio("b.img", "write -P 1 1M 64k")],
    "tail-zero-clusters": [
        create("a.img", "12M"), qio("a.img", "write -z 9M 2M"),
        create("b.img", "8M")],
    "raw-vs-qcow2": [
        create("a.img", "8M"), qio("a.img", "write -P 7 3M 5k"),
        ["qemu-img", "convert", "-O", "raw", "a.img", "b.img"]],
    "raw-vs-qcow2-differs": [
        create("a.img", "8M"), qio("a.img", "write -P 7 3M 5k"),
        ["qemu-img", "convert", "-O", "raw", "a.img", "b.img"],
        qio("b.img", "write -P 8 7M 512", fmt="raw")],
    "overlay-vs-flat": [
        create("base.img", "8M"), qio("base.img", "write -P 1 0 4M"),
        create("a.img", "8M", "-b", "base.img", "-F", "qcow2"),
        qio("a.img", "write -P 2 1M 64k", "write -z 3M 64k"),
        ["qemu-img", "convert", "-O", "qcow2", "a.img", "b.img"]],
    "overlay-vs-base": [
        create("b.img", "8M"), qio("b.img", "write -P 1 0 4M"),
        create("a.img", "8M", "-b", "b.img", "-F", "qcow2"),
        qio("a.img", "write -P 1 1M 64k")],
    "overlay-differs-from-base": [
        create("b.img", "8M"), qio("b.img", "write -P 1 0 4M"),
        create("a.img", "8M", "-b", "b.img", "-F", "qcow2"),
        qio("a.img", "write -P 1 1M 64k", "write -P 9 2M 4k")],
    "compressed-vs-plain": [
        create("a.img", "8M"), qio("a.img", "write -c -P 4 0 64k"),
        create("b.img", "8M"), qio("b.img", "write -P 4 0 64k")],
    "compressed-differs": [
        create("a.img", "8M"), qio("a.img", "write -c -P 4 0 64k"),
        create("b.img", "8M"), qio("b.img", "write -P 4 0 64k",
                                   "write -P 5 40000 3")],
    "small-clusters": [
        create("a.img", "4M", "-o", "cluster_size=512"),
        qio("a.img", "write -P 1 0 100k", "write -z 200k 10k"),
        create("b.img", "4M", "-o", "cluster_size=2M"),
        qio("b.img", "write -P 1 0 100k")],
    "extended-l2-subclusters": [
        create("a.img", "8M", "-o", "extended_l2=on"),
        qio("a.img", "write -P 6 4k 2k", "write -P 6 40k 4k"),
        create("b.img", "8M"), qio("b.img", "write -P 6 4k 2k",
                                   "write -P 6 40k 4k")],
    "v2-vs-v3": [
        create("a.img", "8M", "-o", "compat=0.10"),
        qio("a.img", "write -P 1 0 1M", "write -z 2M 1M"),
        create("b.img", "8M"), qio("b.img", "write -P 1 0 1M")],
    "internal-snapshot-differs": [
        create("a.img", "8M"), qio("a.img", "write -P 1 0 1M"),
        ["qemu-img", "snapshot", "-c", "s1", "a.img"],
        qio("a.img", "write -P 2 512k 4k"),
        create("b.img", "8M"), qio("b.img", "write -P 1 0 1M")],
    "empty-both": [create("a.img", "8M"), create("b.img", "8M")],
}

FLAGS = [[], ["-s"], ["-q"], ["-p"], ["-s", "-p"]]


def make_pair(tmp, steps):
    for s in steps:
        run(s, check=True, cwd=tmp)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def both(tmp, args):
    """Run qemu-img compare and qimg compare; their results, compared."""
    files = sorted(p for p in tmp.iterdir() if p.is_file())
    before = {p.name: digest(p) for p in files}
    r1 = run(["qemu-img", "compare"] + args, cwd=tmp)
    r2 = run([QIMG, "compare"] + args, cwd=tmp)
    assert {p.name: digest(p) for p in files} == before, "a file changed"
    e1 = strip_prog(r1.err, "qemu-img").replace("qemu-img", "qimg")
    e2 = strip_prog(r2.err, "qimg")
    assert (r2.rc, r2.out, e2) == (r1.rc, r1.out, e1), (args, r1, r2)
    return r1


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_compare_pairs(tmp, pair):
    make_pair(tmp, PAIRS[pair])
    rcs = set()
    for flags in FLAGS:
        rcs.add(both(tmp, flags + ["a.img", "b.img"]).rc)
        both(tmp, flags + ["b.img", "a.img"])
    # The pairs are meant to exercise a verdict, not errors.
    assert rcs <= {0, 1}, rcs


def test_compare_formats_given(tmp):
    make_pair(tmp, PAIRS["raw-vs-qcow2"])
    for args in (["-f", "qcow2", "-F", "raw"], ["-F", "raw"],
                 ["-f", "raw", "-F", "raw"], ["-f", "bogus"],
                 ["-F", "bogus"], ["-U"], ["-T", "none"],
                 ["-T", "writeback", "-U", "-q"]):
        both(tmp, args + ["a.img", "b.img"])
    both(tmp, ["--image-opts", "driver=qcow2,file.filename=a.img",
               "driver=raw,file.filename=b.img"])


@pytest.mark.parametrize("args", [
    [], ["a.img"], ["a.img", "b.img", "c.img"], ["-T", "bad", "a.img",
                                                 "a.img"],
    ["a.img", "missing.img"], ["missing.img", "a.img"], ["-x", "a.img",
                                                         "a.img"],
    ["-f"], ["-T"], ["not-an-image.txt", "a.img"],
])
def test_compare_bad_input(tmp, args):
    make_pair(tmp, [create("a.img", "1M")])
    (tmp / "not-an-image.txt").write_text("hello\n")
    r = both(tmp, args)
    assert r.rc != 0


def test_compare_locked_image(tmp):
    """A writer's lock stops compare (shared lock refused), not with -U."""
    make_pair(tmp, [create("a.img", "1M"), create("b.img", "1M")])
    import subprocess
    p = subprocess.Popen(["qemu-io", "-f", "qcow2", "a.img"], cwd=tmp,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        p.stdin.write("write -P 1 0 512\n")
        p.stdin.flush()
        p.stdout.readline()
        r = both(tmp, ["a.img", "b.img"])
        assert r.rc == 2, r
        r = both(tmp, ["-U", "a.img", "b.img"])
        assert r.rc == 1, r
    finally:
        p.stdin.close()
        p.wait(timeout=30)


def test_compare_huge_sparse_images_are_not_read(tmp):
    """Two 64 TiB images with data only at the ends: block status skips
    the rest (reading it would take days)."""
    steps = []
    for n in ("a.img", "b.img"):
        steps += [create(n, "64T"),
                  qio(n, "write -P 1 0 64k", "write -P 2 70368744112128 64k")]
    make_pair(tmp, steps)
    r = run([QIMG, "compare", "a.img", "b.img"], cwd=tmp, timeout=60)
    assert (r.rc, r.out) == (0, "Images are identical.\n"), r
    run(qio("b.img", "write -P 3 35184372088832 512"), check=True, cwd=tmp)
    r = run([QIMG, "compare", "-q", "a.img", "b.img"], cwd=tmp, timeout=60)
    assert (r.rc, r.out) == (1, ""), r
    r = run([QIMG, "compare", "a.img", "b.img"], cwd=tmp, timeout=60)
    assert r.out == "Content mismatch at offset 35184372088832!\n", r


@pytest.mark.parametrize("bad", [("b",), ("a",), ("a", "b")])
def test_compare_read_errors(tmp, bad):
    """A cluster that cannot be read: the same message and exit code 4 as
    qemu-img, whichever side (both: the first image's is reported, as
    qemu-img reads it first). Each compressed cluster is a read of its
    own."""
    compressed_images(tmp, ("a.img", "b.img"))
    for n in bad:
        damage_compressed(tmp / (n + ".img"), 3 * MiB)
    r = both(tmp, ["a.img", "b.img"])
    assert r.rc == 4 and "Error while reading offset 3145728 of %s.img" % (
        bad[0]) in r.err, r
    r = both(tmp, ["b.img", "a.img"])
    assert r.rc == 4 and "of %s.img" % bad[-1] in r.err, r

"""qimg convert against qemu-img convert.

Each case is run by both tools on identical copies of the inputs (one
directory each): stdout must be identical (that includes the -p progress
lines), stderr identical after the program name, exit codes equal. Raw
outputs must be byte-equal (cmp) and about as sparse (st_blocks), qcow2
outputs equal in content (qemu-img compare) and clean (qemu-img check).
"""
import filecmp
import hashlib
import json
import os
import subprocess

import pytest

from conftest import (QIMG, Result, check_clean, qemu_img, qemu_io,
                      strip_prog)


def io(path, *cmds, fmt="qcow2"):
    args = ["-f", fmt]
    for c in cmds:
        args += ["-c", c]
    r = qemu_io(*(args + [path]))
    assert r.rc == 0 and "error" not in r.out.lower() + r.err.lower(), r


def mk(path, size, *cmds, opts=None, backing=None):
    args = ["create", "-q", "-f", "qcow2"]
    if opts:
        args += ["-o", opts]
    if backing:
        args += ["-b", backing, "-F", "qcow2"]
    qemu_img(*(args + [path] + ([size] if size else [])), check=True)
    if cmds:
        io(path, *cmds)


def make_src(d):
    """qemu-ref.md section 6's source: snapshots 'one' (id 1) and 'two'
    (id 2), then the active state."""
    p = str(d / "src.qcow2")
    mk(p, "4M", "write -P 0x11 0 64k")
    qemu_img("snapshot", "-c", "one", p, check=True)
    io(p, "write -P 0x22 0 64k", "write -P 0x33 1M 64k")
    qemu_img("snapshot", "-c", "two", p, check=True)
    io(p, "write -P 0x44 0 64k", "write -z 1M 64k")
    return p


def make_mixed(d):
    """Compressed, zero, discarded, partial and unaligned writes over a
    backing file, and a snapshot of an earlier state."""
    base = str(d / "base.qcow2")
    mk(base, "6M", "write -P 0x11 0 1M", "write -P 0x12 5M 512k")
    top = str(d / "mixed.qcow2")
    mk(top, None, "write -P 0xab 0 64k", "write -c -P 0x33 512k 128k",
       "write -z 128k 64k", backing="base.qcow2")
    qemu_img("snapshot", "-c", "early", top, check=True)
    io(top, "write -P 0x44 1M 128k", "discard 1M 64k",
       "write -P 0x55 3000000 5000", "write -z -u 2M 64k",
       "write -P 0x66 6080k 4k")
    return top


def twin(tmp, setup):
    """Two directories holding the same inputs: one per tool. Each is made
    by running `setup` (a copy would not keep the files' holes, which
    -f raw sources show)."""
    dq, dr = tmp / "qemu", tmp / "qimg"
    for d in (dq, dr):
        d.mkdir()
        setup(d)
    return dq, dr


def run_raw(prog, args, cwd):
    """Like conftest.run(), but stdout keeps its '\r' (progress lines)."""
    env = dict(os.environ, LC_ALL="C")
    env.setdefault("TZ", "UTC")
    cp = subprocess.run([prog] + [str(a) for a in args], capture_output=True,
                        env=env, cwd=cwd)
    cp.stdout = cp.stdout.decode("utf-8", "replace")
    cp.stderr = cp.stderr.decode("utf-8", "replace")
    return Result(cp)


def norm_err(text, prog):
    return strip_prog(text, prog).replace("Try '%s --help'" % prog,
                                          "Try 'PROG --help'")


def run_both(dq, dr, *args):
    rq = run_raw("qemu-img", ["convert"] + list(args), dq)
    rr = run_raw(QIMG, ["convert"] + list(args), dr)
    assert rr.out == rq.out, (rq, rr)
    assert norm_err(rr.err, "qimg") == norm_err(rq.err, "qemu-img"), \
        (rq, rr)
    assert rr.rc == rq.rc, (rq, rr)
    return rq, rr


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def blocks(path):
    return os.stat(path).st_blocks


def same_raw(a, b):
    assert os.path.getsize(a) == os.path.getsize(b)
    assert filecmp.cmp(a, b, shallow=False), "%s and %s differ" % (a, b)
    # Holes: the same data is written, so about the same blocks are
    # allocated: file-system granularity (4k blocks = 8 st_blocks), and
    # qemu-img's block status may see holes of the source file inside
    # allocated clusters (a heuristic, see test_mixed_source), which then
    # stay holes even where a large -S would have kept short zero runs.
    slack = max(8 * 2, blocks(a) // 10)
    assert abs(blocks(a) - blocks(b)) <= slack, (blocks(a), blocks(b))


def same_qcow2(a, b):
    check_clean(a)
    check_clean(b)
    r = qemu_img("compare", a, b)
    assert r.rc == 0, r
    # Both leave zero ranges unallocated (the metadata layout may differ by
    # a few clusters); qimg also leaves out the zero sectors at the edges of
    # new clusters, so its file may be sparser, never fuller.
    assert blocks(b) <= blocks(a) + 8 * 2 * 16, (blocks(a), blocks(b))


SNAP_SPECS = [[], ["-l", "one"], ["-l", "snapshot.name=two"],
              ["-l", "snapshot.id=1"], ["-l", "2"],
              ["-l", "snapshot.id=2,snapshot.name=two"]]


@pytest.mark.parametrize("spec", SNAP_SPECS, ids=lambda s: " ".join(s) or
                         "active")
@pytest.mark.parametrize("out_fmt", ["raw", "qcow2"])
def test_export_snapshot(tmp, spec, out_fmt):
    dq, dr = twin(tmp, make_src)
    run_both(dq, dr, "-O", out_fmt, *spec, "src.qcow2", "out.img")
    if out_fmt == "raw":
        same_raw(dq / "out.img", dr / "out.img")
    else:
        same_qcow2(dq / "out.img", dr / "out.img")
        # And the other tool's raw export of the same state.
        qemu_img("convert", "-O", "raw", *spec, "src.qcow2", "ref.raw",
                 cwd=dq, check=True)
        assert qemu_img("compare", dr / "out.img", dq / "ref.raw").rc == 0


@pytest.mark.parametrize("args", [
    ["-O", "raw"], ["-O", "qcow2"], ["-O", "raw", "-S", "0"],
    ["-O", "raw", "-S", "64k"], ["-O", "raw", "-S", "512"],
    ["-O", "qcow2", "-c"], ["-O", "qcow2", "-o", "cluster_size=4k"],
    ["-O", "qcow2", "-o", "compat=0.10,cluster_size=512"],
    ["-O", "qcow2", "-o", "extended_l2=on,cluster_size=128k"],
    ["-O", "raw", "-l", "early"], ["-O", "qcow2", "-c", "-l", "early"],
    ["-f", "raw", "-O", "raw"], ["-U", "-f", "qcow2", "-O", "raw"],
    ["-O", "qcow2", "-o", "preallocation=metadata"],
    ["-O", "raw", "-o", "preallocation=falloc"],
    ["-t", "none", "-T", "writeback", "-m", "4", "-W", "-r", "1G", "-O",
     "raw"],
], ids=lambda a: " ".join(a))
def test_mixed_source(tmp, args):
    """(No -p here: qemu-img splits its progress at holes of the source
    *file* inside allocated clusters when a heuristic on the file's
    allocated blocks says "preallocated"; those holes depend on how the
    file system took qemu-io's zero-COW writes. test_progress_lines and
    test_source_layouts cover -p on sources without such holes.)"""
    dq, dr = twin(tmp, make_mixed)
    run_both(dq, dr, *args, "mixed.qcow2", "out.img")
    if args[:2] == ["-f", "raw"]:  # the qcow2 file's own bytes
        for d in (dq, dr):
            with open(d / "mixed.qcow2", "rb") as f:
                data = f.read()
            data += b"\0" * (-len(data) % 512)
            with open(d / "out.img", "rb") as f:
                assert f.read() == data
    elif "raw" in args and "preallocation=falloc" not in args:
        same_raw(dq / "out.img", dr / "out.img")
    elif "raw" in args:  # preallocated: every block allocated in both
        assert filecmp.cmp(dq / "out.img", dr / "out.img", shallow=False)
        assert blocks(dr / "out.img") >= blocks(dq / "out.img")
    else:
        same_qcow2(dq / "out.img", dr / "out.img")


def test_compressed_output_is_compressed(tmp):
    dq, dr = twin(tmp, make_src)
    run_both(dq, dr, "-c", "-O", "qcow2", "src.qcow2", "c.qcow2")
    rq = qemu_img("check", dq / "c.qcow2")
    rr = qemu_img("check", dr / "c.qcow2")
    # Same cluster counts, fragmentation and compression figures.
    assert rr.out.split("\n")[1] == rq.out.split("\n")[1], (rq, rr)
    assert "100.00% compressed" in rr.out


def make_layers(d):
    """Extended L2 with subcluster writes, 512-byte clusters, a raw file
    whose size is not a whole sector, zstd."""
    mk(str(d / "ext.qcow2"), "3M", "write -P 7 4k 2k", "write -P 8 70k 1k",
       "write -z 64k 4k", "write -c -P 9 1M 64k",
       opts="extended_l2=on,cluster_size=64k")
    mk(str(d / "small.qcow2"), "300k", "write -P 1 0 1k",
       "write -P 2 100k 10k", "write -c -P 3 200k 4k",
       opts="cluster_size=512,refcount_bits=2")
    mk(str(d / "zstd.qcow2"), "1M", "write -c -P 5 0 128k",
       opts="compression_type=zstd")
    with open(d / "odd.raw", "wb") as f:
        f.write(b"\x5a" * 1000 + b"\0" * 8000 + b"\x01" * 100)


@pytest.mark.parametrize("src", ["ext.qcow2", "small.qcow2", "zstd.qcow2",
                                 "odd.raw"])
@pytest.mark.parametrize("out_fmt", ["raw", "qcow2"])
def test_source_layouts(tmp, src, out_fmt):
    dq, dr = twin(tmp, make_layers)
    run_both(dq, dr, "-p", "-O", out_fmt, src, "out.img")
    if out_fmt == "raw":
        same_raw(dq / "out.img", dr / "out.img")
    else:
        same_qcow2(dq / "out.img", dr / "out.img")


def test_image_opts_source(tmp):
    dq, dr = twin(tmp, make_src)
    run_both(dq, dr, "--image-opts", "-l", "one", "-O", "raw",
             "driver=qcow2,file.driver=file,file.filename=src.qcow2",
             "o.raw")
    same_raw(dq / "o.raw", dr / "o.raw")


def test_concatenation(tmp):
    dq, dr = twin(tmp, make_layers)
    run_both(dq, dr, "-p", "-O", "raw", "small.qcow2", "odd.raw",
             "ext.qcow2", "cat.raw")
    same_raw(dq / "cat.raw", dr / "cat.raw")


def test_progress_lines(tmp):
    """qemu-ref.md 6.4: 10% steps for 2 MiB requests over 20 MiB of data,
    and 0/100/100 for an empty source."""
    def setup(d):
        mk(str(d / "big.qcow2"), "64M", "write -P 1 0 8M",
           "write -P 2 20M 8M", "write -P 3 60M 4M")
        mk(str(d / "empty.qcow2"), "64M")
    dq, dr = twin(tmp, setup)
    rq, _ = run_both(dq, dr, "-p", "-O", "raw", "big.qcow2", "b.raw")
    assert rq.out.count("\r") == 12 and rq.out.endswith("(100.00/100%)\r\n")
    rq, _ = run_both(dq, dr, "-p", "-O", "qcow2", "empty.qcow2", "e.qcow2")
    assert rq.out == "    (0.00/100%)\r    (100.00/100%)\r\n"
    run_both(dq, dr, "-p", "-q", "-O", "raw", "big.qcow2", "q.raw")
    run_both(dq, dr, "-p", "-S", "0", "-O", "raw", "empty.qcow2", "z.raw")


def test_overlay_flattened(tmp):
    dq, dr = twin(tmp, make_mixed)
    run_both(dq, dr, "-O", "qcow2", "mixed.qcow2", "flat.qcow2")
    same_qcow2(dq / "flat.qcow2", dr / "flat.qcow2")
    info = qemu_img("info", dr / "flat.qcow2").out
    assert "backing file" not in info


def test_backing_target(tmp):
    """-B/-F: ranges the overlay leaves to its backing file stay
    unallocated in the target; the target's own map matches qemu-img's."""
    dq, dr = twin(tmp, make_mixed)
    run_both(dq, dr, "-O", "qcow2", "-B", "base.qcow2", "-F", "qcow2",
             "mixed.qcow2", "re.qcow2")
    same_qcow2(dq / "re.qcow2", dr / "re.qcow2")
    mq = qemu_img("map", "--output=json", "re.qcow2", cwd=dq).out
    mr = qemu_img("map", "--output=json", "re.qcow2", cwd=dr).out

    def shape(m):
        """What is where: host offsets may differ, and so may "zero" on
        data (a host hole qimg left where a new cluster's zeros would go)."""
        out = []
        for e in json.loads(m):
            key = (e["depth"], e["present"], e["data"],
                   None if e["data"] else e["zero"])
            if out and out[-1][0] == key and \
                    out[-1][1] + out[-1][2] == e["start"]:
                out[-1][2] += e["length"]
            else:
                out.append([key, e["start"], e["length"]])
        return out
    assert shape(mr) == shape(mq)


def test_existing_targets_overwritten(tmp):
    def setup(d):
        make_src(d)
        mk(str(d / "exist.qcow2"), "100M", "write -P 0x99 2M 64k")
        with open(d / "exist.raw", "wb") as f:
            f.write(os.urandom(10000000))
    dq, dr = twin(tmp, setup)
    run_both(dq, dr, "-O", "qcow2", "src.qcow2", "exist.qcow2")
    same_qcow2(dq / "exist.qcow2", dr / "exist.qcow2")
    assert "virtual size: 4 MiB" in qemu_img("info", dr / "exist.qcow2").out
    run_both(dq, dr, "-O", "raw", "src.qcow2", "exist.raw")
    same_raw(dq / "exist.raw", dr / "exist.raw")


def test_no_create(tmp):
    """-n writes into an existing target, zeroing what the source does not
    allocate, and keeps whatever lies past the source's end."""
    def setup(d):
        make_src(d)
        mk(str(d / "tgt.qcow2"), "4M", "write -P 0x99 2M 64k")
        mk(str(d / "large.qcow2"), "8M", "write -P 0x98 0 8M")
        mk(str(d / "small.qcow2"), "1M")
        with open(d / "tgt.raw", "wb") as f:
            f.write(b"\x77" * (6 << 20))
    dq, dr = twin(tmp, setup)
    for tgt in ["tgt.qcow2", "large.qcow2"]:
        run_both(dq, dr, "-n", "-O", "qcow2", "src.qcow2", tgt)
        same_qcow2(dq / tgt, dr / tgt)
    run_both(dq, dr, "-n", "-l", "two", "src.qcow2", "tgt.raw")
    same_raw(dq / "tgt.raw", dr / "tgt.raw")
    for args in (["-n", "-O", "qcow2", "src.qcow2", "small.qcow2"],
                 ["-n", "src.qcow2", "tgt.qcow2"],
                 ["-n", "-O", "qcow2", "src.qcow2", "nonexist.qcow2"],
                 ["-n", "-O", "qcow2", "-o", "cluster_size=4k", "src.qcow2",
                  "tgt.qcow2"],
                 ["--target-is-zero", "-O", "qcow2", "src.qcow2", "t.qcow2"]):
        rq, _ = run_both(dq, dr, *args)
        assert rq.rc == 1


ERROR_CASES = [
    [],
    ["-O", "raw", "src.qcow2"],
    ["-O", "foo", "src.qcow2", "x.foo"],
    ["-O", "raw", "nonexist.qcow2", "x.raw"],
    ["-f", "foo", "src.qcow2", "x.raw"],
    ["-O", "qcow2", "-o", "foo=bar", "src.qcow2", "x.qcow2"],
    ["-O", "qcow2", "-o", ",foo", "src.qcow2", "x.qcow2"],
    ["-O", "qcow2", "-o", "cluster_size=abc", "src.qcow2", "x.qcow2"],
    ["-O", "qcow2", "-o", "cluster_size=3", "src.qcow2", "x.qcow2"],
    ["-O", "qcow2", "-o", "compat=9", "src.qcow2", "x.qcow2"],
    ["-O", "qcow2", "-o", "lazy_refcounts=x", "src.qcow2", "x.qcow2"],
    ["-O", "qcow2", "-o", "refcount_bits=x", "src.qcow2", "x.qcow2"],
    ["-O", "qcow2", "-o", "compat=0.10,extended_l2=on", "src.qcow2",
     "x.qcow2"],
    ["-O", "qcow2", "-o", "compat=0.10,compression_type=zstd", "src.qcow2",
     "x.qcow2"],
    ["-O", "raw", "-o", "cluster_size=4k", "src.qcow2", "x.raw"],
    ["-O", "raw", "-o", "preallocation=foo", "src.qcow2", "x.raw"],
    ["-O", "raw", "-o", "preallocation=metadata", "src.qcow2", "x.raw"],
    ["-O", "raw", "-c", "src.qcow2", "x.raw"],
    ["-O", "qcow2", "-c", "-o", "preallocation=full", "src.qcow2",
     "x.qcow2"],
    ["-O", "qcow2", "-B", "src.qcow2", "src.qcow2", "x.qcow2"],
    ["-O", "qcow2", "-F", "qcow2", "src.qcow2", "x.qcow2"],
    ["-O", "raw", "-B", "src.qcow2", "-F", "qcow2", "src.qcow2", "x.raw"],
    ["-O", "raw", "-l", "snapshot.name=nonexist", "src.qcow2", "x.raw"],
    ["-O", "raw", "-l", "snapshot.id=9", "src.qcow2", "x.raw"],
    ["-O", "raw", "-l", "snapshot.id=1,snapshot.name=two", "src.qcow2",
     "x.raw"],
    ["-O", "raw", "-l", "nonexist", "src.qcow2", "x.raw"],
    ["-O", "raw", "-l", "snapshot.foo=1", "src.qcow2", "x.raw"],
    ["-O", "raw", "-l", "snapshot.", "src.qcow2", "x.raw"],
    ["-O", "raw", "-l", "snapshot.id=", "src.qcow2", "x.raw"],
    ["-O", "raw", "-l", "one", "src.qcow2", "src.qcow2", "x.raw"],
    ["-O", "raw", "-s", "one", "src.qcow2", "x.raw"],
    ["-S", "100", "src.qcow2", "x.raw"],
    ["-S", "32M", "src.qcow2", "x.raw"],
    ["-S", "abc", "src.qcow2", "x.raw"],
    ["-m", "17", "src.qcow2", "x.raw"],
    ["-T", "bar", "src.qcow2", "x.raw"],
    ["-c", "-C", "-O", "qcow2", "src.qcow2", "x.qcow2"],
    ["-O", "qcow2", "src.qcow2", "src.qcow2"],
    ["-Z", "src.qcow2", "x.raw"],
    ["-l"],
    ["-O", "qcow2", "-o", "help"],
    ["-O", "raw", "-o", "help"],
    ["-O", "qcow2", "-o", "help", "src.qcow2", "x.qcow2"],
]


@pytest.mark.parametrize("args", ERROR_CASES, ids=lambda a: " ".join(a))
@pytest.mark.parametrize("progress", [False, True], ids=["", "-p"])
def test_errors(tmp, args, progress):
    dq, dr = twin(tmp, make_src)
    before = sha(dr / "src.qcow2")
    run_both(dq, dr, *((["-p"] if progress else []) + args))
    # A refused conversion leaves the source as it was.
    assert sha(dr / "src.qcow2") == before


def test_snapshot_lookup_order(tmp):
    """A plain -l matches IDs first, then names (qemu-ref.md 6.2)."""
    def setup(d):
        p = str(d / "idn.qcow2")
        mk(p, "1M", "write -P 0xa1 0 512")
        qemu_img("snapshot", "-c", "2", p, check=True)
        io(p, "write -P 0xa2 0 512")
        qemu_img("snapshot", "-c", "1", p, check=True)
    dq, dr = twin(tmp, setup)
    for spec in (["-l", "1"], ["-l", "snapshot.name=1"], ["-l", "2"],
                 ["-l", "snapshot.name=2"]):
        run_both(dq, dr, "-O", "raw", *spec, "idn.qcow2", "o.raw")
        same_raw(dq / "o.raw", dr / "o.raw")


def test_snapshot_of_other_size(tmp):
    """A snapshot taken before a resize exports at its own size."""
    def setup(d):
        p = str(d / "rs.qcow2")
        mk(p, "4M", "write -P 1 0 64k", "write -P 2 4032k 64k")
        qemu_img("snapshot", "-c", "small", p, check=True)
        qemu_img("resize", "-q", p, "8M", check=True)
        io(p, "write -P 3 7M 64k")
        p = str(d / "shr.qcow2")
        mk(p, "8M", "write -P 1 0 64k", "write -P 2 7M 64k")
        qemu_img("snapshot", "-c", "big", p, check=True)
        qemu_img("resize", "-q", "--shrink", p, "4M", check=True)
        mk(str(d / "base.qcow2"), "8M", "write -P 4 0 8M")
        p = str(d / "ov.qcow2")
        mk(p, "4M", "write -P 5 1M 64k", backing="base.qcow2")
        qemu_img("snapshot", "-c", "small", p, check=True)
        qemu_img("resize", "-q", p, "8M", check=True)
    dq, dr = twin(tmp, setup)
    # qemu-img exports a snapshot at the active disk's size.
    for img in ("rs.qcow2", "shr.qcow2", "ov.qcow2"):
        for spec in (["-l", "1"], []):
            for fmt in ("raw", "qcow2"):
                run_both(dq, dr, "-O", fmt, *spec, img, "o." + fmt)
            same_raw(dq / "o.raw", dr / "o.raw")
            same_qcow2(dq / "o.qcow2", dr / "o.qcow2")


def test_snapshot_name_with_comma(tmp):
    def setup(d):
        p = str(d / "c.qcow2")
        mk(p, "1M", "write -P 1 0 4k")
        qemu_img("snapshot", "-c", "a,b", p, check=True)
        io(p, "write -P 2 0 4k")
        qemu_img("snapshot", "-c", "a", p, check=True)
    dq, dr = twin(tmp, setup)
    for spec in ("snapshot.name=a,,b", "a,b", "snapshot.name=a"):
        run_both(dq, dr, "-O", "raw", "-l", spec, "c.qcow2", "o.raw")
        same_raw(dq / "o.raw", dr / "o.raw")


def test_output_past_the_writeback_kick_is_complete(tmp_path):
    """More than 64 MiB written to one file through the page cache (-t
    writeback): the posix backend hands the start of write-back to its
    helper thread (twice here) while writing goes on. Both outputs hold
    exactly the source's data."""
    src = str(tmp_path / "big.qcow2")
    mk(src, "200M", "write -P 0x5a 0 150M", "write -P 0xa5 150M 40M")
    raw, q2 = str(tmp_path / "out.raw"), str(tmp_path / "out.qcow2")
    r = subprocess.run([QIMG, "convert", "-t", "writeback", "-O", "raw", src,
                        raw])
    assert r.returncode == 0
    r = subprocess.run([QIMG, "convert", "-t", "writeback", "-O", "qcow2",
                        src, q2])
    assert r.returncode == 0
    check_clean(q2)
    for out, fmt in ((raw, "raw"), (q2, "qcow2")):
        r = qemu_img("compare", "-f", "qcow2", "-F", fmt, src, out)
        assert r.rc == 0, r


def cached_bytes(path):
    """Bytes of the file in the page cache (util-linux fincore)."""
    r = subprocess.run(["fincore", "--bytes", "--noheadings", "--output",
                        "RES", path], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[0])


def direct_io_works(d):
    """Whether the file system under d takes O_DIRECT writes."""
    p = str(d / "probe")
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    os.unlink(p)
    return True


@pytest.mark.parametrize("out_fmt", ["raw", "qcow2"])
def test_target_data_bypasses_the_page_cache(tmp_path, out_fmt):
    """By default the target's data goes through the page cache for the
    first GiB and is written with O_DIRECT after that; -t writeback keeps
    it all buffered. The output is exact either way (-S 0 writes the
    zeros too, so a sparse source makes 1.2 GiB of output; an unaligned
    tail and short pieces are written buffered in between), and where the
    file system takes O_DIRECT the page cache holds at most the first GiB
    of it by default, all of it with -t writeback."""
    gib, mib = 1 << 30, 1 << 20
    size = gib + 160 * mib + 3 * 512
    src = str(tmp_path / "src.qcow2")
    mk(src, str(size), "write -P 0x5a 0 2M", "write -P 0x33 20971520 3000",
       "write -P 0xa5 %d 3M" % (gib - mib), "write -P 0x77 %d 1536" %
       (gib + 160 * mib))
    cached = {}
    for cache in (None, "writeback"):
        out = str(tmp_path / ("%s.%s" % (cache, out_fmt)))
        args = [QIMG, "convert", "-S", "0", "-O", out_fmt] + \
            (["-t", cache] if cache else []) + [src, out]
        assert subprocess.run(args).returncode == 0
        cached[cache] = cached_bytes(out)  # before anything reads it
        if out_fmt == "qcow2":
            check_clean(out)
        r = qemu_img("compare", "-f", "qcow2", "-F", out_fmt, src, out)
        assert r.rc == 0, r
        os.unlink(out)
    if direct_io_works(tmp_path):
        assert cached[None] <= gib + 8 * mib, cached
    assert cached["writeback"] >= gib + 150 * mib, cached


def garbage_compressed(path):
    """A qcow2 image whose compressed cluster at 64k no longer inflates
    (every read of it fails with EIO), with good data at 1M."""
    mk(path, "4M", "write -c -P 7 64k 64k", "write -P 8 1M 64k")
    with open(path, "r+b") as f:
        d = f.read()
        l1 = int.from_bytes(d[40:48], "big")
        l2 = int.from_bytes(d[l1:l1 + 8], "big") & 0x00fffffffffffe00
        e = int.from_bytes(d[l2 + 8:l2 + 16], "big")
        assert e >> 62 == 1, hex(e)          # compressed
        f.seek(e & ((1 << 54) - 1))          # 64 KiB clusters: 54 bits
        f.write(b"\xff" * 64)


@pytest.mark.parametrize("args", [
    ["--salvage", "-O", "raw"], ["--salvage", "-q", "-O", "raw"],
    ["--salvage", "-O", "qcow2"], ["-O", "raw"]])
def test_salvage(tmp, args):
    """--salvage: each unreadable sector becomes zeros with qemu-img's
    warning; without it the first read error ends the convert."""
    src = tmp / "src.qcow2"
    garbage_compressed(src)
    out = {}
    for tool, prog in (("qemu", ["qemu-img"]), ("qimg", [QIMG])):
        dst = tmp / ("out-" + tool)
        r = Result(subprocess.run(prog + ["convert"] + args +
                                  [str(src), str(dst)], capture_output=True,
                                  text=True))
        out[tool] = (r.rc, r.out, r.err.replace("qemu-img:", "P:")
                     .replace("qimg:", "P:"))
    assert out["qimg"] == out["qemu"], out
    rc = out["qimg"][0]
    assert rc == (1 if "--salvage" not in args else 0)
    if rc == 0:
        assert out["qimg"][2].count("warning: error while reading") == \
            (0 if "-q" in args else 128)
        r = run_cmp(tmp / "out-qemu", tmp / "out-qimg")
        assert r.rc == 0, r
        fmt = args[-1]
        r = qemu_io("-f", fmt, "-c", "read -P 0 64k 64k", "-c",
                    "read -P 8 1M 64k", tmp / "out-qimg")
        assert r.rc == 0 and r.out.count("65536/65536") == 2, r


def run_cmp(a, b):
    return Result(subprocess.run([QIMG, "compare", str(a), str(b)],
                                 capture_output=True, text=True))

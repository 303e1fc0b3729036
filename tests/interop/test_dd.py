"""qimg dd beside qemu-img 7.2's dd: each tool writes its own output from
the same input (qcow2 with data, zero and compressed clusters, a snapshot
and a backing file; raw); the same stdout, stderr (program name aside)
and exit code; outputs of the same size that read the same (qemu-img
compare for qcow2 outputs, bytes for raw), and `qemu-img check` finds
qimg's qcow2 outputs clean."""
import shutil

import pytest

from conftest import (QIMG, create_argv as create, qio_argv as qio, run,
                      strip_prog)

SOURCES = [
    create("base.img", "12M"), qio("base.img", "write -P 9 0 12M"),
    create("a.img", "10M", backing="base.img"),
    qio("a.img", "write -P 7 0 3M", "write -z 4M 1M", "write -c -P 5 6M 64k",
        "write -P 3 9M 4k"),
    create("r.img", "5000000", fmt="raw"),
    qio("r.img", "write -P 1 1M 1M", fmt="raw"),
]

ARGS = [
    "if=a.img of=o", "bs=1M count=2 skip=1 if=a.img of=o",
    "bs=3000 count=5 if=a.img of=o", "bs=1k count=0 if=a.img of=o",
    "bs=1M skip=20 if=a.img of=o", "-O qcow2 bs=64k if=a.img of=o",
    "-O qcow2 bs=1M count=2 skip=1 if=a.img of=o",
    "bs=1k count=1.5k skip=0x10 if=a.img of=o", "bs=1.5k count=1 if=a.img of=o",
    "-f raw count=1 if=a.img of=o", "if=r.img of=o", "bs=4096 if=r.img of=o",
    "-O qcow2 bs=1M if=r.img of=o",
    "if=a.img of=o if=r.img", "-U if=a.img of=o",
    # refusals
    "if=a.img", "bs=0 if=a.img of=o", "bs=2G if=a.img of=o",
    "bs=-1 if=a.img of=o", "count=abc if=a.img of=o",
    "skip=abc if=a.img of=o", "foo=1 if=a.img of=o", "if=a.img of=o junk",
    "if=missing of=o", "if= of=o", "-O foo if=a.img of=o",
    "-n if=a.img of=o", "if=a.img of=/nonexistent/dir/o",
]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("dd")
    for s in SOURCES:
        run(s, check=True, cwd=d)
    return d


@pytest.mark.parametrize("args", ARGS)
def test_dd(src, tmp_path, args):
    for side in ("q", "m"):
        shutil.copytree(src, tmp_path / side)
    a = args.split()
    r1 = run(["qemu-img", "dd"] + a, cwd=tmp_path / "q")
    r2 = run([QIMG, "dd"] + a, cwd=tmp_path / "m")
    e1 = strip_prog(r1.err, "qemu-img").replace("qemu-img", "qimg")
    assert (r2.rc, r2.out, strip_prog(r2.err, "qimg")) == \
        (r1.rc, r1.out, e1), (r1, r2)
    q, m = tmp_path / "q" / "o", tmp_path / "m" / "o"
    assert q.exists() == m.exists()
    if not q.exists():
        return
    if "qcow2" in a:
        c = run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2",
                 str(q), str(m)])
        assert c.rc == 0, c
        c = run(["qemu-img", "check", str(m)])
        assert c.rc == 0 and "No errors" in c.out, c
    else:
        assert m.read_bytes() == q.read_bytes()

"""qimg measure beside qemu-img 7.2's measure: the same stdout (human and
JSON), stderr (program name aside) and exit code, for sizes, every qcow2
option that changes the figures, images of every kind as the source
(data, zero and compressed clusters, extended L2, small clusters, raw
with holes, an overlay, a v2 image, bitmaps, snapshots), and qemu-img's
refusals."""
import pytest

from conftest import (QIMG, create_argv as create, qio_argv as qio, run,
                      strip_prog)

SOURCES = [
    create("a.img", "1G"),
    qio("a.img", "write 0 3M", "write -z 5M 1M", "write 100M 100k",
        "write -c 200M 64k", "write 1000000000 5000"),
    ["qemu-img", "bitmap", "--add", "a.img", "bm"],
    ["qemu-img", "bitmap", "--add", "-g", "4k", "a.img", "a-longer-name"],
    ["qemu-img", "snapshot", "-c", "s", "a.img"],
    qio("a.img", "write 300M 1M"),
    create("ext.img", "100M", "-o", "extended_l2=on"),
    qio("ext.img", "write 0 7k", "write 1M 100k", "write -z 2M 64k"),
    create("small.img", "10M", "-o", "cluster_size=512"),
    qio("small.img", "write 0 1000", "write 5M 3k"),
    create("r.img", "100M", fmt="raw"),
    qio("r.img", "write 1M 1M", "write 50M 4k", fmt="raw"),
    create("odd.img", "1000000", fmt="raw"),
    create("v2.img", "1G", "-o", "compat=0.10"),
    qio("v2.img", "write 0 1M"),
    create("top.img", None, backing="a.img"),
    qio("top.img", "write 10M 1M"),
]

ARGS = [
    "--size 1G", "--size 1G -O qcow2", "--size 1G -O qcow2 --output=json",
    "--size 1000 -O raw", "--size 1000 -O qcow2", "-O raw --size 0",
    "--size 1T -O qcow2 -o cluster_size=512",
    "--size 1T -O qcow2 -o cluster_size=2M,refcount_bits=1",
    "--size 100G -O qcow2 -o extended_l2=on",
    "--size 100G -O qcow2 -o extended_l2=on,cluster_size=16k,"
    "refcount_bits=64",
    "--size 100G -O qcow2 -o preallocation=full",
    "--size 100G -O qcow2 -o preallocation=metadata,compat=0.10",
    "--size 100G -O qcow2 -o backing_file=x,preallocation=full",
    "--size 5T -O qcow2 -o cluster_size=512",
    "-O qcow2 -o cluster_size=4k -o compat=0.10 --size 1G",
    "-O qcow2 -o refcount_bits=8 --size 77777777",
    # refusals
    "--size 100G -O qcow2 -o cluster_size=3k",
    "--size 100G -O qcow2 -o cluster_size=abc",
    "--size 100G -O qcow2 -o compat=2.0",
    "--size 100G -O qcow2 -o refcount_bits=3",
    "--size 100G -O qcow2 -o compat=0.10,refcount_bits=8",
    "--size 100G -O qcow2 -o preallocation=foo",
    "--size 100G -O qcow2 -o extended_l2=on,cluster_size=4k",
    "--size 100G -O qcow2 -o foo=bar", "--size 4P -O qcow2", "--size abc",
    "--size 1G a.img", "-O qcow2", "", "-f qcow2 --size 1G", "a.img b.img",
    "-O foo --size 1G", "--output=xml --size 1G", "missing.img",
    "-O qcow2 -l nosuch a.img", "-f raw -l s r.img",
    # sources
    "a.img", "-O qcow2 a.img", "-O qcow2 --output=json a.img",
    "-O qcow2 -o cluster_size=4k a.img", "-O qcow2 -o compat=0.10 a.img",
    "-O qcow2 -o preallocation=falloc a.img", "-O qcow2 -o size=5G a.img",
    "-O qcow2 -l s a.img", "-O qcow2 -l snapshot.name=s a.img",
    "-O qcow2 -o backing_file=a.img top.img", "-O qcow2 top.img",
    "-O qcow2 ext.img", "-O qcow2 -o extended_l2=on ext.img",
    "-O qcow2 small.img", "-O qcow2 -o cluster_size=2M small.img",
    "-O qcow2 r.img", "-O raw r.img", "-O qcow2 -f raw r.img",
    "-O qcow2 odd.img", "-O raw odd.img",
    "-O qcow2 v2.img", "-O qcow2 --output=json v2.img",
]


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    d = tmp_path_factory.mktemp("measure")
    for s in SOURCES:
        run(s, check=True, cwd=d)
    return d


@pytest.mark.parametrize("args", ARGS, ids=lambda a: a or "none")
def test_measure(src, args):
    a = args.split()
    r1 = run(["qemu-img", "measure"] + a, cwd=src)
    r2 = run([QIMG, "measure"] + a, cwd=src)
    e1 = strip_prog(r1.err, "qemu-img").replace("qemu-img", "qimg")
    assert (r2.rc, r2.out, strip_prog(r2.err, "qimg")) == \
        (r1.rc, r1.out, e1), (r1, r2)

"""qimg map against qemu-img map: human and JSON, backing chains, zero and
compressed clusters, preallocated metadata over host holes, raw images,
--start-offset/--max-length, and the error cases."""
import pytest

from conftest import qemu_img, qemu_io, qimg, strip_prog


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("map")
    q = lambda *a: qemu_img(*a, check=True)  # noqa: E731
    io = lambda img, *cmds: qemu_io(  # noqa: E731
        "-f", "qcow2", *sum((["-c", c] for c in cmds), []), d / img,
        check=True)
    q("create", "-q", "-f", "qcow2", d / "base.qcow2", "4M")
    io("base.qcow2", "write -P 0x11 0 256k", "write -P 0x22 3M 64k")
    for name in ("mix", "mixnc"):
        q("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
          d / (name + ".qcow2"))
    io("mix.qcow2", "write -P 0xab 0 64k", "write -z 128k 64k",
       "write -c -P 0x33 512k 64k", "write -P 0x44 1M 128k",
       "discard 1M 64k", "write -z -u 2M 64k", "write -P 0x55 4032k 64k")
    io("mixnc.qcow2", "write -P 0xab 0 64k", "write -z 128k 64k",
       "write -P 0x44 1M 128k", "discard 1M 64k", "write -z -u 2M 64k",
       "write -P 0x55 4032k 64k")
    q("create", "-q", "-f", "qcow2", "-o", "preallocation=metadata",
      d / "pm.qcow2", "1M")
    q("create", "-q", "-f", "qcow2", d / "empty.qcow2", "4M")
    q("create", "-q", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=32k",
      d / "el2.qcow2", "4M")
    io("el2.qcow2", "write -P 1 1k 2k", "write -z 64k 8k", "write 1M 64k")
    q("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
      d / "big.qcow2", "8M")
    io("big.qcow2", "write -P 9 6M 64k")
    q("create", "-q", "-f", "raw", d / "r.raw", "4M")
    qemu_io("-f", "raw", "-c", "write -P 1 1M 64k", d / "r.raw", check=True)
    return d


CASES = [
    ["mix.qcow2"], ["mixnc.qcow2"], ["base.qcow2"], ["pm.qcow2"],
    ["empty.qcow2"], ["el2.qcow2"], ["big.qcow2"], ["r.raw"],
    ["-f", "raw", "r.raw"],
    ["--start-offset=1M", "--max-length=1M", "mix.qcow2"],
    ["--start-offset=1M", "mixnc.qcow2"],
    ["--start-offset=100M", "base.qcow2"],
    ["--start-offset=abc", "base.qcow2"],
    ["--max-length=-1", "base.qcow2"],
    ["nonexist.qcow2"],
    [],
]


@pytest.mark.parametrize("fmt", ["human", "json"])
@pytest.mark.parametrize("args", CASES, ids=lambda a: " ".join(a) or "none")
def test_map_matches_qemu(images, fmt, args):
    argv = ["map", "--output=" + fmt] + args
    q = qemu_img(*argv, cwd=images)
    m = qimg(*argv, cwd=images)
    assert m.rc == q.rc, (q, m)
    assert m.out == q.out
    assert (strip_prog(m.err, "qimg").replace("qimg --help", "qemu-img --help")
            == strip_prog(q.err, "qemu-img"))


def test_map_bad_output(images):
    q = qemu_img("map", "--output=xml", "base.qcow2", cwd=images)
    m = qimg("map", "--output=xml", "base.qcow2", cwd=images)
    assert q.rc == m.rc == 1
    assert strip_prog(m.err, "qimg") == strip_prog(q.err, "qemu-img")


@pytest.mark.parametrize("prealloc", ["off", "metadata"])
def test_map_partly_written_clusters(tmp_path, prealloc):
    """Clusters qemu-io wrote in part (QEMU fills the rest with zeros, in
    part as holes of the file): qemu-img reports them as plain data unless
    the image looks metadata-preallocated (more clusters counted than the
    file has blocks for); then it reports the holes as zeros. So does
    qimg."""
    img = str(tmp_path / "a.qcow2")
    qemu_img("create", "-q", "-f", "qcow2", "-o",
             "preallocation=" + prealloc, img, "1G", check=True)
    qemu_io("-c", "write 100M 100k", "-c", "write 1000000000 5000", img,
            check=True)
    q = qemu_img("map", "--output=json", img)
    m = qimg("map", "--output=json", img)
    assert (m.rc, m.out) == (q.rc, q.out), (q, m)

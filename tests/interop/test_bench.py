"""qimg bench against qemu-img bench: option checks, messages, exit codes,
the printed lines and the data a write run leaves on the disk.

The "Run completed in T seconds." line is masked to its shape: T is a
timing and legitimately differs between the tools.
"""
import re

import pytest

from conftest import qemu_img, qemu_io, qimg, strip_prog

TIME_RE = re.compile(r"^Run completed in \d+\.\d{3} seconds\.$", re.M)


def mask_time(text):
    return TIME_RE.sub("Run completed in T seconds.", text)


def both(*args):
    """Run both tools with the same arguments; return (qimg, qemu)."""
    return qimg("bench", *args), qemu_img("bench", *args)


def norm_err(text, prog):
    return strip_prog(text, prog).replace("Try '%s --help'" % prog,
                                          "Try 'PROG --help'")


def assert_same(a, b):
    assert a.rc == b.rc, (a, b)
    assert mask_time(a.out) == mask_time(b.out), (a, b)
    assert norm_err(a.err, "qimg") == norm_err(b.err, "qemu-img"), (a, b)


@pytest.fixture
def img(tmp):
    p = tmp / "t.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, "64M", check=True)
    return str(p)


@pytest.mark.parametrize("args", [
    ["-c", "10"],
    ["-c", "0x10", "-d", "2"],
    ["-c", "0"],
    ["-c", "-0"],
    ["-c", "3", "-s", "1.5k"],
    ["-c", "3", "-s", "0"],
    ["-c", "3", "-S", "1M", "-o", "62M", "-s", "1M", "-d", "1"],
    ["-c", "3", "-o", "1000", "-q"],
    ["-c", "5", "-t", "none"],
    ["-c", "5", "-t", "off", "-n"],
    ["-c", "5", "-i", "threads"],
    ["-c", "5", "-i", "io_uring", "--no-drain"],
    ["-c", "5", "-U"],
    ["-c", "5", "--force-share", "-f", "qcow2"],
])
def test_read_runs(img, args):
    assert_same(*both(*args, img))


@pytest.mark.parametrize("args", [
    ["-c", "10", "-w"],
    ["-c", "10", "-w", "--flush-interval=64"],
    ["-c", "10", "-w", "-d", "2", "--flush-interval=5"],
    ["-c", "10", "-w", "-d", "1", "--flush-interval=1", "-t", "unsafe"],
    ["-c", "3", "-w", "-d", "1", "-t", "writethrough"],
    ["-c", "3", "-w", "-t", "directsync", "-i", "native"],
])
def test_write_runs(img, args):
    assert_same(*both(*args, img))


@pytest.mark.parametrize("args", [
    ["-c", "-1"], ["-c", "x"], ["-c", ""], ["-c", "5 "], ["-c", "2147483648"],
    ["-d", "x"], ["-d", "-1"],
    ["-o", "1x"], ["-o", "-1"], ["-o", "8E"], ["-o", "20E"],
    ["-s", "3G"], ["-s", "2G"], ["-s", "x"], ["-S", "x"], ["-S", "2G"],
    ["--pattern=256"], ["--pattern=x"],
    ["--flush-interval=-1", "-w"], ["--flush-interval=x", "-w"],
    ["-c", "10", "--flush-interval=64"],
    ["-c", "10", "-w", "--flush-interval=5"],
    ["-i", "foo"], ["-t", "bad"],
    ["-c", "1", "-n"], ["-c", "1", "-i", "native"],
    ["-c", "1", "-U", "-w"],
    ["-c", "1", "-f", "foo"],
    ["-Z"], ["--foo"], ["--object", "x"],
])
def test_bad_options(img, args):
    assert_same(*both(*args, img))


def test_missing_argument_and_file_names(img):
    assert_same(*both("-c"))
    assert_same(*both())
    assert_same(*both(img, img))


def test_missing_file(tmp):
    assert_same(*both("-c", "1", str(tmp / "nonexist")))


def test_not_qcow2(tmp):
    raw = tmp / "r.raw"
    qemu_img("create", "-q", "-f", "raw", raw, "1M", check=True)
    assert_same(*both("-c", "1", "-f", "qcow2", str(raw)))
    assert_same(*both("-c", "4", str(raw)))
    # writing a probed raw image: QEMU's warning first
    assert_same(*both("-c", "4", "-w", str(raw)))


@pytest.mark.parametrize("args", [
    ["-c", "1", "-o", "64M"],
    ["-c", "1", "-o", "7E"],
    ["-c", "1", "-d", "1", "-o", str(64 * 2**20 - 2048)],
    ["-c", "1", "-d", "1", "-w", "-o", str(64 * 2**20 - 2048)],
])
def test_request_past_the_end(img, args):
    a, b = both(*args, img)
    assert_same(a, b)
    assert a.rc == 1 and "Failed request: Input/output error" in a.err


def test_written_data_matches(tmp):
    """Writes with a pattern and a step that wraps at the end of the disk
    leave the same guest data whichever tool ran them."""
    paths = []
    for tool in (qimg, qemu_img):
        p = tmp / ("%s.qcow2" % tool.__name__)
        qemu_img("create", "-q", "-f", "qcow2", p, "8M", check=True)
        r = tool("bench", "-w", "-c", "40", "-d", "1", "-s", "12k",
                 "-S", str(5 * 2**20 + 4096), "-o", "3000",
                 "--pattern=0x5a", p)
        assert r.rc == 0, r
        paths.append(str(p))
    r = qemu_img("compare", *paths)
    assert r.rc == 0, r
    r = qemu_io("-c", "read -P 0x5a 3000 12k", paths[0])
    assert "Pattern verification failed" not in r.out + r.err, r
    assert qemu_img("check", paths[0]).rc == 0

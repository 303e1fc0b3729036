"""Image locking both ways: qimg honours the OFD locks a running qemu-io
holds (and qemu-img's messages when it cannot get them), and qemu-io /
qemu-img cannot open for writing what qimg holds for writing."""
import contextlib
import hashlib
import os
import subprocess
import time

import pytest

from conftest import QIMG, qemu_img, qimg, strip_prog


def locked_bytes(path):
    ino = os.stat(path).st_ino
    out = set()
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            dev_ino = parts[5] if parts[1] != "->" else parts[6]
            if dev_ino.endswith(":%d" % ino):
                out.add((int(parts[-2]), int(parts[-1])))
    return out


@contextlib.contextmanager
def holder(argv, path):
    """Keep an interactive program holding `path` open until the block
    ends; wait until its locks are visible."""
    p = subprocess.Popen(argv, stdin=subprocess.PIPE,
                         stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if locked_bytes(path):
                break
            time.sleep(0.02)
        assert locked_bytes(path), "holder did not lock %s" % path
        yield p
    finally:
        p.stdin.close()
        p.wait(timeout=10)


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture
def img(tmp):
    p = tmp / "img.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", p, "64M", check=True)
    qemu_img("snapshot", "-c", "s1", p, check=True)
    return p


WRITE_LOCK = ('Failed to get "write" lock\n'
              "Is another process using the image [{0}]?")
SHARED_LOCK = ('Failed to get shared "write" lock\n'
               "Is another process using the image [{0}]?")


def run_both(args, path):
    q = qemu_img(*args)
    m = qimg(*args)
    return q, m


@pytest.mark.parametrize("args,message", [
    (["info", "{img}"], SHARED_LOCK),
    (["check", "{img}"], SHARED_LOCK),
    (["snapshot", "-l", "{img}"], SHARED_LOCK),
    (["snapshot", "-c", "x", "{img}"], WRITE_LOCK),
    (["snapshot", "-a", "s1", "{img}"], WRITE_LOCK),
    (["snapshot", "-d", "s1", "{img}"], WRITE_LOCK),
    (["check", "-r", "all", "{img}"], WRITE_LOCK),
    (["convert", "-O", "raw", "{img}", "{out}"], SHARED_LOCK),
])
def test_qimg_refuses_image_held_by_qemu(tmp, img, args, message):
    argv = [a.format(img=img, out=tmp / "out.raw") for a in args]
    with holder(["qemu-io", "-f", "qcow2", str(img)], img):
        before = sha(img)
        q = qemu_img(*argv)
        m = qimg(*argv)
        assert sha(img) == before
    assert q.rc == 1 and m.rc == 1, (q, m)
    assert message.format(img) in m.err
    assert strip_prog(m.err, "qimg") == strip_prog(q.err, "qemu-img")


def test_qimg_io_and_create_refuse_held_image(tmp, img):
    with holder(["qemu-io", "-f", "qcow2", str(img)], img):
        before = sha(img)
        r = qimg("io", "-c", "write 0 512", img)
        assert r.rc == 1
        assert 'Failed to get "write" lock' in r.out + r.err
        r = qimg("create", "-f", "qcow2", img, "1M")
        assert r.rc == 1 and WRITE_LOCK.format(img) in r.err
        assert sha(img) == before


@pytest.mark.parametrize("args", [
    ["info", "-U", "{img}"],
    ["snapshot", "-U", "-l", "{img}"],
    ["check", "-U", "{img}"],
])
def test_force_share_reads_held_image(img, args):
    argv = [a.format(img=img) for a in args]
    with holder(["qemu-io", "-f", "qcow2", str(img)], img):
        q = qemu_img(*argv)
        m = qimg(*argv)
    assert m.rc == q.rc == 0, (q, m)
    assert m.out == q.out


def test_force_share_with_write_is_refused(img):
    q = qemu_img("snapshot", "-U", "-c", "x", img)
    m = qimg("snapshot", "-U", "-c", "x", img)
    assert q.rc == m.rc == 1
    assert strip_prog(m.err, "qimg") == strip_prog(q.err, "qemu-img")


def test_read_only_holder_allows_readers_not_writers(img):
    with holder(["qemu-io", "-r", "-f", "qcow2", str(img)], img):
        assert qimg("info", img).rc == 0
        assert qimg("snapshot", "-l", img).rc == 0
        r = qimg("snapshot", "-c", "x", img)
        assert r.rc == 1 and WRITE_LOCK.format(img) in r.err


def test_qemu_refuses_image_held_by_qimg(img):
    with holder([QIMG, "io", "-f", "qcow2", str(img)], img):
        before = sha(img)
        r = qemu_img("info", img)
        assert r.rc == 1 and SHARED_LOCK.format(img) in r.err
        r = qemu_img("snapshot", "-c", "x", img)
        assert r.rc == 1 and WRITE_LOCK.format(img) in r.err
        r = subprocess.run(["qemu-io", "-c", "write 0 512", str(img)],
                           capture_output=True, text=True)
        assert r.returncode == 1 and 'Failed to get "write" lock' in r.stderr
        assert qemu_img("info", "-U", img).rc == 0
        assert sha(img) == before


def test_qimg_takes_qemus_lock_bytes(img):
    """The same bytes QEMU locks for a read-write and a read-only open."""
    with holder(["qemu-io", "-f", "qcow2", str(img)], img):
        qemu_rw = locked_bytes(img)
    with holder([QIMG, "io", "-f", "qcow2", str(img)], img):
        qimg_rw = locked_bytes(img)
    with holder(["qemu-io", "-r", "-f", "qcow2", str(img)], img):
        qemu_ro = locked_bytes(img)
    with holder([QIMG, "io", "-r", "-f", "qcow2", str(img)], img):
        qimg_ro = locked_bytes(img)

    def expand(ranges):
        return {b for lo, hi in ranges for b in range(lo, hi + 1)}
    assert expand(qimg_rw) == expand(qemu_rw) == {100, 101, 103, 201, 203}
    assert expand(qimg_ro) == expand(qemu_ro) == {100, 201, 203}


def test_backing_file_is_locked_read_only(tmp, img):
    top = tmp / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", img, "-F", "qcow2", top,
             check=True)
    with holder([QIMG, "io", "-f", "qcow2", str(top)], top):
        # The backing file may be read, not written, by others.
        assert qemu_img("info", img).rc == 0
        r = qemu_img("snapshot", "-c", "x", img)
        assert r.rc == 1 and WRITE_LOCK.format(img) in r.err


def test_locking_off(img):
    with holder(["qemu-io", "-f", "qcow2", str(img)], img):
        r = qimg("--no-locking", "info", img)
        assert r.rc == 0, r
        r = qimg("snapshot", "--image-opts", "-l",
                 "driver=qcow2,file.driver=file,file.filename=%s,"
                 "file.locking=off" % img)
        assert r.rc == 0, r

"""Shared fixtures for the interop suite: qimg beside real qemu-img/qemu-io.

Images are made at test time in a per-test temporary directory; nothing
binary is committed.
"""
import os
import subprocess

import pytest

QIMG = os.environ.get("QIMG") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "qimg")


class Result:
    def __init__(self, cp):
        self.rc = cp.returncode
        self.out = cp.stdout
        self.err = cp.stderr

    def __repr__(self):
        return "rc=%d\nstdout:\n%s\nstderr:\n%s" % (self.rc, self.out, self.err)


# No single command of a test may take this long: a hang fails the test
# instead of stalling the whole suite until meson kills it.
COMMAND_TIMEOUT = 300


def run(args, check=False, env=None, input=None, cwd=None,
        timeout=COMMAND_TIMEOUT):
    e = dict(os.environ)
    e.setdefault("TZ", "UTC")
    e["LC_ALL"] = "C"
    if env:
        e.update(env)
    cp = subprocess.run(args, capture_output=True, text=True, env=e,
                        input=input, cwd=cwd, timeout=timeout)
    r = Result(cp)
    if check and r.rc != 0:
        raise AssertionError("command failed: %s\n%r" % (args, r))
    return r


def qimg(*args, **kw):
    return run([QIMG] + [str(a) for a in args], **kw)


def qemu_img(*args, **kw):
    return run(["qemu-img"] + [str(a) for a in args], **kw)


def qemu_io(*args, **kw):
    return run(["qemu-io"] + [str(a) for a in args], **kw)


def qio_argv(name, *cmds, fmt="qcow2"):
    """A qemu-io command line running cmds on name."""
    args = ["qemu-io", "-f", fmt]
    for c in cmds:
        args += ["-c", c]
    return args + [name]


def create_argv(name, size=None, *opts, fmt="qcow2", backing=None,
                bfmt="qcow2"):
    """A qemu-img create command line (size None: the backing file's)."""
    args = ["qemu-img", "create", "-q", "-f", fmt] + list(opts)
    if backing:
        args += ["-b", backing, "-F", bfmt]
    return args + [name] + ([str(size)] if size else [])


def strip_prog(text, prog):
    """Drop the program name prefix so messages compare across tools."""
    return "\n".join(l[len(prog) + 2:] if l.startswith(prog + ": ") else l
                     for l in text.split("\n"))


def check_clean(path):
    """qemu-img check reports no leaks and no corruptions."""
    r = qemu_img("check", path)
    assert r.rc == 0, "qemu-img check %s:\n%r" % (path, r)
    assert "No errors were found on the image." in r.out
    return r


def add_leak(path):
    """Give a cluster past the end of a qcow2 file (64 KiB clusters, 16-bit
    refcounts) a refcount of 1 and grow the file over it: one leak."""
    raw = bytearray(path.read_bytes())
    rt = int.from_bytes(raw[48:56], "big")
    rb = int.from_bytes(raw[rt:rt + 8], "big")
    k = len(raw) // 65536 + 1
    raw[rb + 2 * k:rb + 2 * k + 2] = (1).to_bytes(2, "big")
    path.write_bytes(bytes(raw) + bytes((k + 1) * 65536 - len(raw)))


def damage_compressed(path, guest_off):
    """Overwrite the start of the compressed cluster holding guest_off
    (64 KiB clusters): reading it fails with EIO."""
    raw = bytearray(path.read_bytes())
    l1 = int.from_bytes(raw[40:48], "big")
    l2 = int.from_bytes(raw[l1:l1 + 8], "big") & ((1 << 56) - 512)
    i = guest_off >> 16
    e = int.from_bytes(raw[l2 + 8 * i:l2 + 8 * i + 8], "big")
    assert e >> 62 == 1, "not a compressed cluster"
    host = e & ((1 << 54) - 1)
    raw[host:host + 64] = b"\xff" * 64
    path.write_bytes(bytes(raw))


def compressed_images(d, names, size=8 << 20):
    """qcow2 images (64 KiB clusters) of the same compressible text, every
    cluster compressed, made by qemu-img convert -c in directory d."""
    text = b"".join(b"line %08d of a compressible image\n" % i
                    for i in range(size // 32))
    (d / "src.raw").write_bytes(text[:size])
    for n in names:
        run(["qemu-img", "convert", "-c", "-O", "qcow2", "src.raw", n],
            check=True, cwd=d)
    (d / "src.raw").unlink()


@pytest.fixture
def tmp(tmp_path):
    return tmp_path

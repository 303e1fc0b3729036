"""nbdkit-qimg-plugin (nbdkit qimg file=IMAGE [snapshot=S] [readonly=true])
against QEMU's NBD client and nbdinfo: what qemu-img reads over NBD equals
qimg convert of the same disk or snapshot, the extents nbdinfo sees equal
qimg map, writes through NBD leave an image qemu-img check finds clean and
qemu-io reads back, the image stays locked while served, and nbdkit killed
in the middle of a write stream leaves no corruption.

Run by meson only where the plugin is built (nbdkit's plugin header is
installed: scripts/install-deps.sh installs nbdkit, nbdkit-plugin-dev and
libnbd-bin); QIMG_NBDKIT_PLUGIN names it."""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from conftest import check_clean, create_argv as create, qemu_img, qimg, \
    qio_argv as qio, run

PLUGIN = os.environ.get("QIMG_NBDKIT_PLUGIN") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "nbdkit-qimg-plugin.so")


def nbdkit(*params, run_cmd):
    """nbdkit on a private socket running run_cmd ($uri set) while it
    serves; the command's Result."""
    return run(["nbdkit", "-U", "-", PLUGIN] + [str(p) for p in params] +
               ["--run", run_cmd])


def image(tmp, opts=()):
    img = tmp / "a.qcow2"
    for s in [create(img, "64M", *opts),
              qio(img, "write -P 1 0 4M", "write -z 8M 1M",
                  "write -c -P 9 16M 64k"),
              ["qemu-img", "snapshot", "-c", "snap", img],
              qio(img, "write -P 2 1M 1M", "discard 2M 64k",
                  "write -P 3 60M 4M")]:
        run(s, check=True)
    return img


def export(tmp, path, snapshot=None):
    raw = tmp / "ref.raw"
    args = ["qemu-img", "convert", "-U", "-O", "raw"]
    if snapshot:
        args += ["-l", snapshot]
    run(args + [path, raw], check=True)
    data = raw.read_bytes()
    raw.unlink()
    return data


def served(tmp, *params):
    out = tmp / "nbd.raw"
    r = nbdkit(*params, run_cmd='qemu-img convert -f raw "$uri" %s' % out)
    assert r.rc == 0, r
    data = out.read_bytes()
    out.unlink()
    return data


def runs(entries):
    """[(start, length, data, zero)], adjacent equal kinds merged."""
    out = []
    for start, length, data, zero in entries:
        if out and out[-1][2:] == (data, zero) and \
                out[-1][0] + out[-1][1] == start:
            out[-1] = (out[-1][0], out[-1][1] + length, data, zero)
        else:
            out.append((start, length, data, zero))
    return out


def test_dump_plugin():
    r = run(["nbdkit", PLUGIN, "--dump-plugin"])
    assert r.rc == 0, r
    assert "name=qimg" in r.out
    assert "thread_model=serialize_all_requests" in r.out


@pytest.mark.parametrize("opts", [(), ("-o", "cluster_size=4k"),
                                  ("-o", "compat=0.10"),
                                  ("-o", "extended_l2=on")],
                         ids=["default", "4k", "v2", "extl2"])
def test_reads_equal_qimg_convert(tmp, opts):
    img = image(tmp, opts)
    assert served(tmp, "file=" + str(img)) == export(tmp, img)
    assert served(tmp, "file=" + str(img), "snapshot=snap") == \
        export(tmp, img, "snap")
    assert served(tmp, "file=" + str(img), "snapshot=1") == \
        export(tmp, img, "snap")
    check_clean(img)


def test_extents_equal_qimg_map(tmp):
    base = tmp / "base.qcow2"
    run(create(base, "64M"), check=True)
    run(qio(base, "write -P 5 30M 2M"), check=True)
    img = tmp / "top.qcow2"
    run(create(img, None, backing="base.qcow2"), check=True, cwd=tmp)
    run(qio(img, "write -P 1 0 4M", "write -z 8M 1M", "write -P 6 31M 64k"),
        check=True)
    for path in (base, img):
        r = nbdkit("file=" + str(path),
                   run_cmd='nbdinfo --map --json "$uri"')
        assert r.rc == 0, r
        got = runs((e["offset"], e["length"], not e["type"] & 1,
                    bool(e["type"] & 2)) for e in json.loads(r.out))
        m = json.loads(qimg("map", "--output=json", path, check=True).out)
        want = runs((e["start"], e["length"], e["data"], e["zero"])
                    for e in m)
        assert got == want, (path, got, want)


def test_writes_through_nbd(tmp):
    img = image(tmp)
    before_snap = export(tmp, img, "snap")
    r = nbdkit("file=" + str(img), run_cmd=(
        'qemu-io -f raw -c "write -P 7 32M 1M" -c "write -f -P 8 33M 4k" '
        '-c "write -z 40M 64k" -c "write -z -u 0 64k" '
        '-c "discard 1M 64k" -c "flush" "$uri"'))
    assert r.rc == 0 and "failed" not in r.out, r
    check_clean(img)
    for cmd in ("read -P 7 32M 1M", "read -P 8 33M 4k", "read -P 0 40M 64k",
                "read -P 0 0 64k", "read -P 0 1M 64k", "read -P 1 64k 960k"):
        r = run(qio(img, cmd))
        assert r.rc == 0 and "Pattern verification failed" not in r.out, \
            (cmd, r)
    assert export(tmp, img, "snap") == before_snap


def test_snapshot_and_readonly_refuse_writes(tmp):
    img = image(tmp)
    before = img.read_bytes()
    for params in (["snapshot=snap"], ["readonly=true"]):
        r = nbdkit("file=" + str(img), *params,
                   run_cmd='qemu-io -f raw -c "write 0 512" "$uri"')
        assert "write failed" in r.out + r.err or r.rc != 0, r
        assert img.read_bytes() == before, params


def test_locked_while_served(tmp):
    img = image(tmp)
    r = nbdkit("file=" + str(img), run_cmd=(
        'qemu-io -c "write 0 512" %s; echo "rc=$?"; '
        'nbdkit -U - %s file=%s --run true; echo "second=$?"'
        % (img, PLUGIN, img)))
    assert 'Failed to get "write" lock' in r.err, r
    assert "rc=1" in r.out and "second=1" in r.out, r
    # Read-only and shared reads are allowed, as with QEMU.
    r = nbdkit("file=" + str(img), run_cmd='qemu-img info -U %s' % img)
    assert r.rc == 0, r


def test_bad_parameters():
    r = run(["nbdkit", "-U", "-", PLUGIN, "--run", "true"])
    assert r.rc != 0 and "file=<IMAGE>" in r.err, r
    r = run(["nbdkit", "-U", "-", PLUGIN, "file=/nonexistent.qcow2",
             "--run", "true"])
    assert r.rc != 0 and "nonexistent" in r.err, r
    r = run(["nbdkit", "-U", "-", PLUGIN, "file=/dev/null", "bogus=1",
             "--run", "true"])
    assert r.rc != 0 and "unknown parameter 'bogus'" in r.err, r


def wait_listening(sock):
    """Until a connection to the server's socket succeeds (the socket file
    appears before nbdkit listens on it)."""
    for _ in range(500):
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
            return
        except OSError:
            time.sleep(0.01)
    raise AssertionError("nbdkit never listened on %s" % sock)


def test_kill_during_writes_leaves_no_corruption(tmp):
    img = image(tmp)
    sock = tmp / "nbd.sock"
    for delay in (0.2, 0.5, 0.9):
        if sock.exists():
            sock.unlink()  # (left by the server killed before)
        srv = subprocess.Popen(["nbdkit", "-f", "-U", str(sock), PLUGIN,
                                "file=" + str(img)],
                               stderr=subprocess.DEVNULL)
        try:
            wait_listening(sock)
            cmds = []
            # (3 GiB over the same 60 MiB: far longer than the delays.)
            for i in range(12000):
                cmds += ["-c", "write -P %d %d 256k" % (i % 250 + 1,
                                                        (i * 7 % 240) << 18)]
            w = subprocess.Popen(["qemu-io", "-f", "raw"] + cmds +
                                 ["nbd+unix:///?socket=%s" % sock],
                                 stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            time.sleep(delay)
            cut = w.poll() is None  # the stream was still writing
            srv.send_signal(signal.SIGKILL)
            w.wait(timeout=60)
            assert cut, "the write stream ended before the kill"
        finally:
            srv.kill()
            srv.wait()
        r = qemu_img("check", img)
        # Leaks are allowed after a cut-off write stream; corruption not.
        assert r.rc in (0, 3), r
        assert "corruptions" not in r.out or "0 corruptions" in r.out, r
        run(["qemu-img", "check", "-r", "leaks", img], check=True)
        check_clean(img)

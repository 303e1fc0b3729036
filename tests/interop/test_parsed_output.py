"""Output other programs parse, read with patterns written from their
documented behaviour, on qimg's output next to qemu-img's:
  - progress lines of -p, "    (NN.NN/100%)" ended by a carriage return
    (vdsm, KubeVirt CDI, Proxmox read the percentage with a pattern like
    \\((\\d+\\.\\d+)/100%\\)), for every command with -p;
  - human `info` lines (CloudStack, Ganeti, cloud-utils, vagrant-libvirt):
    "virtual size: ... (N bytes)", "file format:", "backing file:",
    "backing file format:", "cluster_size:", "disk size:";
  - `info --output=json` keys (libvirt, OpenStack, KubeVirt CDI);
  - `check --output=json` on leaks: exit code 3 and the JSON still printed
    (vdsm);
  - snapshot errors matched as strings (CloudStack);
  - run under the name qemu-img (a link), whole error lines equal
    qemu-img's, prefix included."""
import json
import os
import re
import subprocess

import pytest

from conftest import QIMG, add_leak, create_argv as create, \
    qio_argv as qio, run

PROGRESS = re.compile(rb"    \((\d{1,3}\.\d{2})/100%\)\r")
PCT = re.compile(r"\((\d+\.\d+)/100%\)")


def raw_run(argv, cwd=None):
    cp = subprocess.run([str(a) for a in argv], capture_output=True,
                        cwd=cwd, env=dict(os.environ, LC_ALL="C"))
    return cp.returncode, cp.stdout, cp.stderr


def progress_values(out):
    """The percentages a parser reading lines split at \\r or \\n gets,
    and the same from the exact byte format."""
    loose = [float(m.group(1)) for part in re.split(r"[\r\n]", out.decode())
             for m in [PCT.search(part)] if m]
    exact = [float(v) for v in PROGRESS.findall(out)]
    return loose, exact


def pair(tmp):
    """Two identical chains (base <- top), one per tool."""
    out = {}
    for tool in ("qimg", "qemu"):
        d = tmp / tool
        d.mkdir()
        for s in [create(d / "base.qcow2", "64M"),
                  qio(d / "base.qcow2", "write -P 1 0 8M"),
                  create(d / "top.qcow2", None, backing="base.qcow2"),
                  qio(d / "top.qcow2", "write -P 2 4M 8M"),
                  create(d / "other.qcow2", "64M"),
                  qio(d / "other.qcow2", "write -P 1 0 8M")]:
            run(s, check=True, cwd=d)
        out[tool] = d
    return out


COMMANDS = {
    "convert": ["convert", "-p", "-O", "qcow2", "top.qcow2", "out.qcow2"],
    "commit": ["commit", "-p", "top.qcow2"],
    "rebase": ["rebase", "-p", "-b", "other.qcow2", "-F", "qcow2",
               "top.qcow2"],
    "compare": ["compare", "-p", "base.qcow2", "other.qcow2"],
    "amend": ["amend", "-p", "-o", "refcount_bits=32", "top.qcow2"],
}


@pytest.mark.parametrize("cmd", sorted(COMMANDS))
def test_progress_lines(tmp, cmd):
    dirs = pair(tmp)
    got = {}
    for tool, prog in (("qimg", QIMG), ("qemu", "qemu-img")):
        rc, out, err = raw_run([prog] + COMMANDS[cmd], cwd=dirs[tool])
        assert rc == 0, (tool, rc, err)
        loose, exact = progress_values(out)
        assert loose and loose == exact, (tool, out)
        assert loose[0] == 0.0 and loose[-1] == 100.0, (tool, loose)
        assert loose == sorted(loose), (tool, loose)
        got[tool] = loose
    assert got["qimg"] and got["qemu"]


def test_progress_of_compact(tmp):
    img = tmp / "a.qcow2"
    run(create(img, "64M"), check=True)
    for i in range(3):
        run(qio(img, "write -P %d 0 8M" % (i + 1)), check=True)
        run(["qemu-img", "snapshot", "-c", "s%d" % i, img], check=True)
    run(["qemu-img", "snapshot", "-d", "s0", img], check=True)
    rc, out, err = raw_run([QIMG, "compact", "-p", img])
    assert rc == 0, err
    loose, exact = progress_values(out)
    assert loose == exact and loose[0] == 0.0 and loose[-1] == 100.0, out


INFO_LINES = {
    "virtual size": re.compile(r"^virtual size: .* \((\d+) bytes\)$", re.M),
    "file format": re.compile(r"^file format: (\w+)$", re.M),
    "backing file": re.compile(
        r"^backing file: (\S+?)(?: \(actual path: (.*)\))?$", re.M),
    "backing file format": re.compile(r"^backing file format: (\w+)$",
                                      re.M),
    "cluster_size": re.compile(r"^cluster_size: (\d+)$", re.M),
    "disk size": re.compile(r"^disk size: (\S+ \S+)$", re.M),
}


def test_info_human_lines(tmp):
    dirs = pair(tmp)
    for name in ("base.qcow2", "top.qcow2"):
        got = {}
        for tool, prog in (("qimg", QIMG), ("qemu", "qemu-img")):
            r = run([prog, "info", name], cwd=dirs[tool])
            assert r.rc == 0, r
            got[tool] = {k: [m.groups() for m in p.finditer(r.out)]
                         for k, p in INFO_LINES.items()}
        for k in INFO_LINES:
            assert bool(got["qimg"][k]) == bool(got["qemu"][k]), (name, k)
            if k != "disk size":
                assert got["qimg"][k] == got["qemu"][k], (name, k, got)
        assert got["qimg"]["virtual size"] == [("67108864",)]


def test_info_json_keys(tmp):
    dirs = pair(tmp)
    keys = ["virtual-size", "format", "cluster-size", "backing-filename",
            "full-backing-filename", "backing-filename-format",
            "dirty-flag", "format-specific"]
    infos = {}
    for tool, prog in (("qimg", QIMG), ("qemu", "qemu-img")):
        r = run([prog, "info", "--output=json", "top.qcow2"],
                cwd=dirs[tool])
        infos[tool] = json.loads(r.out)
    for k in keys:
        a, b = infos["qimg"].get(k), infos["qemu"].get(k)
        if k == "full-backing-filename":
            a, b = os.path.basename(a), os.path.basename(b)
        assert a == b, k
    assert "actual-size" in infos["qimg"]


def leaky(path):
    run(create(path, "8M"), check=True)
    run(qio(path, "write -P 1 0 1M"), check=True)
    add_leak(path)


def test_check_json_on_leaks_exits_3(tmp):
    out = {}
    for tool, prog in (("qimg", QIMG), ("qemu", "qemu-img")):
        img = tmp / ("%s.qcow2" % tool)
        leaky(img)
        r = run([prog, "check", "--output=json", img])
        assert r.rc == 3, (tool, r)
        out[tool] = json.loads(r.out)
    for k in ("leaks", "corruptions", "check-errors", "image-end-offset",
              "total-clusters", "allocated-clusters", "format"):
        assert out["qimg"].get(k) == out["qemu"].get(k), k
    assert out["qimg"]["leaks"] == 1


def test_snapshot_error_strings(tmp):
    for tool, prog in (("qimg", QIMG), ("qemu", "qemu-img")):
        img = tmp / ("%s.qcow2" % tool)
        run(create(img, "8M"), check=True)
        r = run([prog, "snapshot", "-d", "missing", img])
        assert r.rc == 1 and re.search(
            r"Could not delete snapshot 'missing': snapshot not found",
            r.err), (tool, r)
        r = run([prog, "snapshot", "-a", "missing", img])
        assert r.rc == 1 and "Could not apply snapshot 'missing'" in r.err
        r = run([prog, "snapshot", "-c", "ok", img])
        assert r.rc == 0 and r.out == r.err == ""


def test_named_qemu_img_prints_qemu_img_lines(tmp):
    link = tmp / "bin" / "qemu-img"
    link.parent.mkdir()
    os.symlink(os.path.abspath(QIMG), link)
    img = tmp / "a.qcow2"
    run(create(img, "8M"), check=True)
    for args in (["snapshot", "-d", "missing", img],
                 ["snapshot", "-a", "missing", img],
                 ["info", tmp / "missing.qcow2"],
                 ["resize", img, "-1G"],
                 ["check", "-r", "bogus", img],
                 ["convert", "-O", "bogusfmt", img, tmp / "o.img"],
                 ["nosuchcommand"]):
        mine = run([link] + args)
        theirs = run(["qemu-img"] + args)
        assert (mine.rc, mine.err) == (theirs.rc, theirs.err), (args, mine,
                                                                theirs)
    # Under its own name it says qimg.
    r = run([QIMG, "snapshot", "-d", "missing", img])
    assert r.err.startswith("qimg: ")

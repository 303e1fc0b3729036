"""scripts/qimg.bash-completion (issue 18): bash completes qimg's commands,
each command's options, formats and, where a snapshot goes, the names of
the snapshots of the image on the line (read with qimg itself)."""
import os
import subprocess

import pytest

from conftest import QIMG, create_argv as create, run

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts",
                      "qimg.bash-completion")


def complete(cwd, words, cword):
    """COMPREPLY for the words (cword: the index being completed)."""
    quoted = " ".join("'%s'" % w for w in words)
    prog = ("source '%s'; COMP_WORDS=(%s); COMP_CWORD=%d; _qimg; "
            "printf '%%s\\n' \"${COMPREPLY[@]}\"" % (SCRIPT, quoted, cword))
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(os.path.abspath(QIMG)) + ":" + env["PATH"]
    r = subprocess.run(["bash", "-c", prog], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r
    return [l for l in r.stdout.split("\n") if l]


@pytest.fixture
def img(tmp):
    run(create("vm.qcow2", "16M"), check=True, cwd=tmp)
    for n in ("before upgrade", "after", "afterwards"):
        run(["qemu-img", "snapshot", "-c", n, "vm.qcow2"], check=True,
            cwd=tmp)
    return tmp


@pytest.mark.parametrize("words,cword,want", [
    (["qimg", "sn"], 1, ["snapshot"]),
    (["qimg", "c"], 1, ["check", "commit", "compact", "compare", "convert",
                         "create"]),
    (["qimg", "--no-locking", "bi"], 2, ["bitmap"]),
    (["qimg", "convert", "--bi"], 2, ["--bitmaps"]),
    (["qimg", "snapshot", "--re"], 2, ["--rename"]),
    (["qimg", "info", "-f", ""], 3, ["qcow2", "raw"]),
    (["qimg", "check", "-r", ""], 3, ["all", "leaks"]),
    (["qimg", "snapshot", "-a", "", "vm.qcow2"], 3,
     ["after", "afterwards", "before upgrade"]),
    (["qimg", "snapshot", "vm.qcow2", "-d", "af"], 4,
     ["after", "afterwards"]),
    (["qimg", "convert", "-l", "be", "vm.qcow2", "out"], 3,
     ["before upgrade"]),
    (["qimg", "diff", "vm.qcow2", "after", "afterw"], 4, ["afterwards"]),
    (["qimg", "info", "vm"], 2, ["vm.qcow2"]),
])
def test_completion(img, words, cword, want):
    assert sorted(complete(img, words, cword)) == sorted(want)


def test_no_image_no_snapshots(tmp):
    assert complete(tmp, ["qimg", "snapshot", "-a", ""], 3) == []

"""The man pages say what the code does: qimg(1) has an entry for every
command `qimg --help` lists, with every option of that command's syntax
line; libqimg(3) names every function include/qimg.h exports; both pages
are built (scdoc) and render with groff without a warning."""
import os
import re

import pytest

from conftest import qimg, run

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
BUILD = os.environ.get("QIMG_BUILD_DIR") or os.path.join(ROOT, "build")


def read(*path):
    with open(os.path.join(ROOT, *path)) as f:
        return f.read()


def help_syntax():
    """{command: its syntax line} from qimg --help."""
    out = qimg("--help", check=True).out
    block = out.split("Command syntax:\n")[1].split("\n\n")[0]
    return {l.split()[0]: l for l in block.splitlines() if l.strip()}


def man_entries():
    """{command: its entry in qimg.1.scd (synopsis and text)}."""
    text = read("docs", "man", "qimg.1.scd")
    cmds = text.split("# COMMANDS\n")[1].split("\n# ")[0]
    out = {}
    for entry in cmds.strip().split("\n\n"):
        m = re.match(r"\*([a-z]+)\* ", entry)
        if m:
            out[m.group(1)] = entry
    return out


def test_every_command_has_an_entry():
    assert sorted(man_entries()) == sorted(help_syntax())


@pytest.mark.parametrize("cmd", sorted(help_syntax()))
def test_entry_names_every_option(cmd):
    entry = man_entries()[cmd]
    for opt in re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_syntax()[cmd]):
        assert "*" + opt in entry, (cmd, opt)


def test_libqimg_names_every_function():
    page = read("docs", "man", "libqimg.3.scd")
    funcs = re.findall(r"QIMG_API [^;{]*?\b(qimg_\w+)\(", read("include",
                                                             "qimg.h"))
    assert len(funcs) > 30
    missing = [f for f in funcs if "*" + f + "*" not in page]
    assert not missing, missing


@pytest.mark.parametrize("page", ["qimg.1", "libqimg.3"])
def test_page_built_and_renders(page):
    path = os.path.join(BUILD, page)
    assert os.path.exists(path), "%s not built (scdoc missing?)" % path
    r = run(["groff", "-man", "-ww", "-z", path])
    assert r.rc == 0 and r.err == "", r
    r = run(["man", "-l", path], env={"MANWIDTH": "80", "PAGER": "cat"})
    assert r.rc == 0 and "NAME" in r.out, r

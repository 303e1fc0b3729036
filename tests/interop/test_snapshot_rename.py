"""qimg snapshot --rename OLD NEW FILE (qemu-img has no rename): on images
qemu-img made, with QEMU's snapshots. Afterwards qemu-img lists the new
name and everything else as before, reads every snapshot as before, finds
the image clean and applies the snapshot by its new name; a refusal
leaves the file byte for byte as it was."""
import json
import subprocess
import time

import pytest

from conftest import check_clean, create_argv as create, qemu_img, qimg, \
    qio_argv as qio, run


def image(tmp, compat="1.1", cs="64k"):
    for s in [create("a.img", "8M", "-o", "compat=%s,cluster_size=%s" %
                     (compat, cs)),
              qio("a.img", "write -P 1 0 1M"),
              ["qemu-img", "snapshot", "-c", "one", "a.img"],
              qio("a.img", "write -P 2 512k 1M"),
              ["qemu-img", "snapshot", "-c", "two", "a.img"],
              qio("a.img", "write -P 3 3M 64k"),
              ["qemu-img", "snapshot", "-c", "three", "a.img"]]:
        run(s, check=True, cwd=tmp)
    return tmp / "a.img"


def snapshots(path):
    return json.loads(qemu_img("info", "--output=json", "-U", path).out)[
        "snapshots"]


def exports(tmp, path, names):
    out = {}
    for n in names:
        raw = tmp / ("%s.raw" % n)
        run(["qemu-img", "convert", "-U", "-l", "snapshot.name=" + n, "-O",
             "raw", path, raw], check=True)
        out[n] = raw.read_bytes()
        raw.unlink()
    return out


@pytest.mark.parametrize("compat,cs", [("1.1", "64k"), ("0.10", "64k"),
                                       ("1.1", "512")])
@pytest.mark.parametrize("old", ["two", "2"])
def test_rename(tmp, compat, cs, old):
    img = image(tmp, compat, cs)
    before = snapshots(img)
    data = exports(tmp, img, ["one", "two", "three"])
    r = qimg("snapshot", "--rename", old, "middle", img)
    assert (r.rc, r.out, r.err) == (0, "", ""), r
    after = snapshots(img)
    assert [s["name"] for s in after] == ["one", "middle", "three"]
    for b, a in zip(before, after):
        b.pop("name"), a.pop("name")
        assert a == b
    check_clean(img)
    assert exports(tmp, img, ["one", "middle", "three"]) == {
        "one": data["one"], "middle": data["two"], "three": data["three"]}
    r = qemu_img("snapshot", "-a", "middle", img)
    assert r.rc == 0, r
    check_clean(img)


def test_long_name_cut(tmp):
    img = image(tmp)
    assert qimg("snapshot", "--rename", "one", "x" * 300, img).rc == 0
    assert snapshots(img)[0]["name"] == "x" * 255
    check_clean(img)


@pytest.mark.parametrize("args,msg", [
    (["--rename", "nope", "x"], "Could not rename snapshot 'nope': snapshot "
                                "not found"),
    (["--rename", "one"], "Expecting the new snapshot name and one image "
                          "file name"),
    (["-c", "x", "--rename", "one", "y"], "Cannot mix '-l', '-a', '-c', "
                                          "'-d', '--rename'"),
])
def test_refusals(tmp, args, msg):
    img = image(tmp)
    before = img.read_bytes()
    r = qimg("snapshot", *args, img)
    assert r.rc == 1 and r.err.startswith("qimg: " + msg), r
    assert img.read_bytes() == before


def test_locked(tmp):
    img = image(tmp)
    before = img.read_bytes()
    p = subprocess.Popen(["qemu-io", "-f", "qcow2", "-c", "sleep 100000",
                          str(img)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        r = qimg("snapshot", "--rename", "one", "x", img)
        assert r.rc == 1 and 'Failed to get "write" lock' in r.err, r
    finally:
        p.kill()
        p.wait()
    assert img.read_bytes() == before


def test_raw(tmp):
    run(create(tmp / "r.img", "1M", fmt="raw"), check=True)
    r = qimg("snapshot", "-f", "raw", "--rename", "a", "b", tmp / "r.img")
    assert r.rc == 1 and "does not support snapshots" in r.err, r

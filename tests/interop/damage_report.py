"""Group the failing cells of a damage-matrix run into a Markdown report,
or make one damaged image by hand.

    DAMAGE_MATRIX_LOG=/tmp/dm.jsonl python3 -m pytest test_damage_matrix.py
    python3 damage_report.py /tmp/dm.jsonl > report.md
    python3 damage_report.py make <kind> <v2|v3> <dir>

`make` runs qemu-img/qemu-io to build the pristine base in <dir> and
writes the damaged copy as <dir>/img.qcow2, so a cell's commands can be
replayed there (from <dir>, on copies: mutations change the file).

Cells are grouped by what went wrong (the first rule broken, which tool
refused) and by the message of the tool that refused, with numbers
masked, so one cause in qimg is one group. Each group lists its cells
and shows one of them in full: both command lines, exit codes, output
(cut short) and what happened to the file.

Not a test module.
"""
import collections
import json
import os
import re
import subprocess
import sys

NUM = re.compile(r"0x[0-9a-fA-F]+|(?<![A-Za-z])\d+")
READ_ONLY = {"info", "info-json", "snapshot-l", "check", "map-json",
             "read-dmg", "read-ok", "convert"}


def first_line(text):
    for line in text.split("\n"):
        if line.strip():
            return line.strip()
    return ""


def msg(o):
    """The line that says why a run failed, numbers masked."""
    err = [l for l in o["err"].split("\n") if l.strip()]
    out = [l for l in o["out"].split("\n") if "failed" in l]
    line = (err[-1] if err else out[-1] if out else "")
    line = re.sub(r"^(qemu-img|qemu-io|qimg): ", "", line)
    return NUM.sub("N", line)[:160]


def signature(r):
    p = r["problems"][0]
    q, m = r["qemu"], r["qimg"]
    if p.startswith("exit code"):
        if q["rc"] == 0 or (r["cmd"] in ("check", "check-r-all") and
                            q["rc"] in (2, 3) and m["rc"] not in (2, 3)):
            what = "qimg refuses where QEMU succeeds"
            why = msg(m)
        elif m["rc"] == 0 or m["rc"] in (2, 3) and r["cmd"].startswith(
                "check"):
            what = "qimg succeeds where QEMU refuses"
            why = msg(q)
        else:
            what = "different exit codes"
            why = "qemu rc %s / qimg rc %s: %s" % (q["rc"], m["rc"], msg(m))
        return (what, why)
    head = NUM.sub("N", p.split(":")[0])
    if "QEMU misbehaves" in p or "stale" in p:
        return ("QEMU_BAD list", head)
    if "left the image worse" in p:
        return ("qimg makes the image worse", NUM.sub("N", p))
    if "refused" in p and "changed the file" in p:
        return ("qimg refuses after writing", msg(m))
    return (head, msg(m) if m["rc"] else "")


def cut(s, n=400):
    s = s.strip("\n")
    if len(s) <= n:
        return s
    return s[:n // 2] + "\n[...]\n" + s[-n // 2:]


def show(r):
    out = ["`%s` × %s × %s (%s)" % (r["kind"], r["version"], r["cmd"],
                                    r["doc"]), ""]
    for p in r["problems"]:
        out.append("- " + p)
    out.append("")
    out.append("```")
    for t in ("qemu", "qimg"):
        o = r[t]
        out.append("$ " + o["argv"])
        out.append("rc=%s" % o["rc"])
        if o["out"].strip():
            out.append("stdout: " + cut(o["out"]))
        if o["err"].strip():
            out.append("stderr: " + cut(o["err"]))
        if o["diff"] or o["size"][0] != o["size"][1]:
            out.append("file: %s bytes changed (first %s), size %d -> %d"
                       % (o["ndiff"], o["diff"][:6], o["size"][0],
                          o["size"][1]))
        if o.get("counts") is not None:
            out.append("qemu-img check after: %s (before: %s)" % (
                o["counts"], r["before"]))
    out.append("```")
    return "\n".join(out)


def main(path):
    rows = [json.loads(l) for l in open(path)]
    bad = [r for r in rows if r["problems"]]
    groups = collections.defaultdict(list)
    for r in bad:
        groups[signature(r)].append(r)
    print("# Damage matrix: %d cells, %d failing, %d groups\n" % (
        len(rows), len(bad), len(groups)))
    for (what, why), rs in sorted(groups.items(),
                                  key=lambda kv: (kv[0][0], -len(kv[1]))):
        print("## %s (%d): %s\n" % (what, len(rs), why))
        cells = collections.defaultdict(set)
        for r in rs:
            cells[(r["kind"], r["version"])].add(r["cmd"])
        for (k, v), cmds in sorted(cells.items()):
            print("- %s %s: %s" % (k, v, ", ".join(sorted(cmds))))
        print()
        print(show(rs[0]))
        print()


def make(kind, version, d):
    import damage_kinds as dk
    os.makedirs(d, exist_ok=True)
    compat = {"v2": "0.10", "v3": "1.1"}[version]
    for args in dk.base_steps(compat, dk.KINDS[kind].geom):
        subprocess.run(args, cwd=d, check=True)
    with open(os.path.join(d, "base.qcow2"), "rb") as f:
        pristine = f.read()
    with open(os.path.join(d, "img.qcow2"), "wb") as f:
        f.write(dk.damage(kind, pristine))
    dmg, ok, length = dk.ranges(kind, pristine)
    print("%s/img.qcow2: %s (damaged range %d+%d, undamaged %d+%d)" % (
        d, dk.KINDS[kind].doc, dmg, length, ok, length))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(*sys.argv[2:5])
    else:
        main(sys.argv[1])

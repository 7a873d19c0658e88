#!/usr/bin/env python3
"""Layering checks over veil's sources (run by tests/check_style.sh).

1. Include circles: every `#include "x.h"` is resolved as the compiler does
   (the including file's folder first, then the -I folders of Makefile.am's
   AM_CPPFLAGS in their order); the graph of project headers must have no
   cycle.
2. Component layers: which folder may include which.  The library layers
   form a line, and nothing points back up:
       engine <- providers, protocol <- client, service <- gateway
   (protocol/ includes only engine headers; client/ and gateway/ never
   include each other; service/ never includes a gateway or client header).
   tools/, bench/, tests/ and fuzz/ sit on top and may include any layer.
3. Call circles inside client/ and gateway/ (when VEIL_BUILDDIR holds their
   objects): file A "uses" file B when A's object refers to a symbol that
   B's object defines; no two files of one component may use each other,
   directly or through others (the circle issue 13 removed from client/).

Prints one line per finding and "check_includes: N findings"; exit 1 when
there is one.  Usage: check_includes.py [SRCDIR] (default: this file's
parent folder).
"""
import os
import re
import subprocess
import sys

SRC = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else
                      os.path.join(os.path.dirname(__file__), ".."))
# The -I order of Makefile.am (AM_CPPFLAGS) after the file's own folder.
SEARCH = ["engine", "providers", "protocol", "client", "gateway", "service"]
LIB_LAYERS = {
    "engine": set(),
    "providers": {"engine"},
    "protocol": {"engine"},
    "client": {"engine", "protocol"},
    "service": {"engine", "protocol"},
    "gateway": {"engine", "protocol", "service"},
}
TOP = {"tools", "bench", "tests", "fuzz", "proxy"}
INC = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)

findings = []


def component(rel):
    return rel.split("/", 1)[0]


def sources():
    out = []
    for d in list(LIB_LAYERS) + sorted(TOP):
        root = os.path.join(SRC, d)
        for dirpath, _, names in os.walk(root):
            for n in names:
                if n.endswith((".c", ".h")):
                    out.append(os.path.relpath(os.path.join(dirpath, n), SRC))
    return sorted(out)


def resolve(rel, name):
    cands = [os.path.join(os.path.dirname(rel), name)]
    cands += [os.path.join(d, name) for d in SEARCH]
    for c in cands:
        c = os.path.normpath(c)
        if os.path.isfile(os.path.join(SRC, c)):
            return c
    return None  # config.h, generated or system header


def include_graph(files):
    g = {}
    for f in files:
        with open(os.path.join(SRC, f), encoding="utf-8",
                  errors="replace") as fh:
            text = fh.read()
        g[f] = [t for t in (resolve(f, n) for n in INC.findall(text)) if t]
    return g


def cycles(graph):
    """Every node of a cycle, reported once per strongly connected part
    (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1 or v in graph.get(v, ()):
                out.append(sorted(part))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def check_includes():
    files = sources()
    g = include_graph(files)
    for part in cycles(g):
        findings.append("include circle: " + " -> ".join(part))
    for f, targets in g.items():
        cf = component(f)
        if cf in TOP:
            continue
        for t in targets:
            ct = component(t)
            if ct != cf and ct not in LIB_LAYERS.get(cf, set()):
                findings.append("%s includes %s: %s/ may not include %s/" %
                                (f, t, cf, ct))


def objects_of(build, comp):
    """{source base name: object path} for one component's objects."""
    out = {}
    d = os.path.join(build, comp)
    for sub in (os.path.join(d, ".libs"), d):
        if not os.path.isdir(sub):
            continue
        for n in sorted(os.listdir(sub)):
            if not n.endswith(".o"):
                continue
            base = n[:-2].rsplit("-", 1)[-1]
            if not os.path.isfile(os.path.join(SRC, comp, base + ".c")):
                continue
            path = os.path.join(sub, n)
            # several programs compile the same file: the newest object
            # is the one of the current source
            if base not in out or (os.path.getmtime(path) >
                                   os.path.getmtime(out[base])):
                out[base] = path
    return out


def nm(path):
    r = subprocess.run(["nm", path], capture_output=True, text=True)
    defined, used = set(), set()
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "U":
            used.add(parts[1])
        elif len(parts) == 3 and parts[1] in "TDBRVW":
            defined.add(parts[2])
    return defined, used


def check_calls(build):
    for comp in ("client", "gateway"):
        objs = objects_of(build, comp)
        if not objs:
            continue
        syms = {b: nm(p) for b, p in objs.items()}
        g = {}
        for a, (_, used) in syms.items():
            g[a] = sorted(b for b, (defd, _) in syms.items()
                          if b != a and used & defd)
        for part in cycles(g):
            findings.append("call circle in %s/: %s" %
                            (comp, " <-> ".join(p + ".c" for p in part)))


def main():
    check_includes()
    build = os.environ.get("VEIL_BUILDDIR")
    if build and os.path.isdir(build):
        check_calls(build)
    for f in findings:
        print("check_includes: " + f)
    print("check_includes: %d findings" % len(findings))
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())

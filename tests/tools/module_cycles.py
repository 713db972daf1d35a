#!/usr/bin/env python3
"""Fails when the top-level modules of src/ import each other in a cycle.

A top-level module is a file `src/NAME.rs` or a folder `src/NAME/`. An edge
A -> B is any `crate::B` path written in A's files (in `use` lines and in
code; test modules count too, as they live in the same files). `main.rs` and
`lib.rs` are the roots and are left out. Prints every strongly connected
component with more than one module and the edges that close it.

Usage: module_cycles.py [SRC_DIR]   (default: src)
"""
import os
import re
import sys

CRATE_PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
# `use crate::{a, b::c}` groups name several modules at once.
CRATE_GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)


def modules(src):
    found = {}
    for entry in sorted(os.listdir(src)):
        path = os.path.join(src, entry)
        if entry in ("main.rs", "lib.rs"):
            continue
        if entry.endswith(".rs"):
            found[entry[:-3]] = [path]
        elif os.path.isdir(path):
            files = []
            for root, _, names in os.walk(path):
                files += [os.path.join(root, n) for n in names if n.endswith(".rs")]
            found[entry] = sorted(files)
    return found


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def edges(mods):
    graph = {m: {} for m in mods}
    for m, files in mods.items():
        for f in files:
            with open(f, encoding="utf-8") as fh:
                text = strip_comments(fh.read())
            targets = CRATE_PATH.findall(text)
            for group in CRATE_GROUP.findall(text):
                for part in group.split(","):
                    head = part.strip().split("::")[0].strip()
                    if head:
                        targets.append(head)
            for t in targets:
                if t in mods and t != m:
                    graph[m].setdefault(t, f)
    return graph


def sccs(graph):
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "src"
    mods = modules(src)
    graph = edges(mods)
    cycles = [c for c in sccs(graph) if len(c) > 1]
    if not cycles:
        print(f"module graph of {src}: {len(mods)} top-level modules, no cycle")
        return 0
    for comp in cycles:
        print("cycle between top-level modules: " + ", ".join(comp))
        for a in comp:
            for b, f in sorted(graph[a].items()):
                if b in comp:
                    print(f"  {a} -> {b}   (first in {f})")
    return 1


if __name__ == "__main__":
    sys.exit(main())

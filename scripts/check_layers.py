#!/usr/bin/env python3
"""check_layers.py -- no circle of calls between the library's source files.

Reads the symbol tables of the library's object files (nm): file A calls
file B when A uses a symbol that B defines.  Prints each file's callees and
fails (exit 1) when some files call each other in a circle (a strongly
connected component of more than one file), or when a file over the line
limit is found among the sources given with --sources.

usage: check_layers.py [--max-lines N --sources FILE...] OBJECT...
"""
import subprocess
import sys


def symbols(obj):
    out = subprocess.run(["nm", "--defined-only", "-g", obj], capture_output=True, text=True,
                         check=True).stdout
    defined = {l.split()[-1] for l in out.splitlines() if len(l.split()) >= 3}
    out = subprocess.run(["nm", "-u", obj], capture_output=True, text=True, check=True).stdout
    used = {l.split()[-1] for l in out.splitlines() if l.strip()}
    return defined, used


def source_name(obj):
    # CMake names objects <dir>/<source>.o under CMakeFiles/<target>.dir/
    base = obj.split(".dir/", 1)[-1]
    return base[:-2] if base.endswith(".o") else base


def components(graph):
    """Tarjan's strongly connected components."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

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
            comps.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return comps


def main(argv):
    max_lines, sources, objs, i = None, [], [], 0
    while i < len(argv):
        if argv[i] == "--max-lines":
            max_lines = int(argv[i + 1])
            i += 2
        elif argv[i] == "--sources":
            i += 1
            while i < len(argv) and not argv[i].startswith("--") and not argv[i].endswith(".o"):
                sources.append(argv[i])
                i += 1
        else:
            objs.append(argv[i])
            i += 1
    table = {source_name(o): symbols(o) for o in objs}
    owner = {}
    for name, (defined, _) in table.items():
        for s in defined:
            owner[s] = name
    graph = {name: sorted({owner[s] for s in used if s in owner and owner[s] != name})
             for name, (_, used) in table.items()}
    for name in sorted(graph):
        print(f"{name} -> {', '.join(graph[name]) or '(nothing of ours)'}")
    bad = [c for c in components(graph) if len(c) > 1]
    for c in bad:
        print("CIRCLE: " + " <-> ".join(c))
    long_files = []
    if max_lines:
        for s in sources:
            with open(s, errors="replace") as f:
                n = sum(1 for _ in f)
            if n > max_lines:
                long_files.append((s, n))
                print(f"TOO LONG: {s} has {n} lines (limit {max_lines})")
    print(f"{len(graph)} files, {len(bad)} circles" +
          (f", {len(long_files)} files over {max_lines} lines" if max_lines else ""))
    return 1 if bad or long_files else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

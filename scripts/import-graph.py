#!/usr/bin/env python3
"""Prints each crate's module import graph (who names `crate::X`) and fails
on a cycle among the modules of any crate, and on a crate that depends on a
crate to its right in core <- {sensors, store, mqtt} <- agent <- web <- bin.

    python3 scripts/import-graph.py          # from the repository root
"""
import pathlib
import re
import sys

ORDER = ["edgeseal-core", "edgeseal-sensors", "edgeseal-store", "edgeseal-mqtt", "edgeseal-agent", "edgeseal-web", "edgeseal"]
RANK = {"edgeseal-core": 0, "edgeseal-sensors": 1, "edgeseal-store": 1, "edgeseal-mqtt": 1,
        "edgeseal-agent": 2, "edgeseal-web": 3, "edgeseal": 4}


def modules(src: pathlib.Path):
    """Top-level module name -> source text (a directory module includes its files)."""
    mods = {}
    for f in sorted(src.rglob("*.rs")):
        rel = f.relative_to(src)
        top = rel.parts[0].removesuffix(".rs")
        if top in ("lib", "main"):
            continue
        mods[top] = mods.get(top, "") + f.read_text()
    return mods


def strip_tests(text: str) -> str:
    # Test modules may use anything, and comments (doc links) import nothing.
    code = re.split(r"#\[cfg\(test\)\]\s*mod tests", text)[0]
    return re.sub(r"//[^\n]*", "", code)


def cycles(graph):
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def main():
    root = pathlib.Path(__file__).resolve().parent.parent / "crates"
    bad = False
    for crate in ORDER:
        src = root / crate / "src"
        mods = modules(src)
        graph = {}
        for m, text in mods.items():
            used = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", strip_tests(text)))
            graph[m] = sorted(u for u in used if u in mods and u != m)
        print(f"{crate}:")
        for m in sorted(graph):
            print(f"  {m} -> {', '.join(graph[m]) or '-'}")
        for c in cycles(graph):
            bad = True
            print(f"  CYCLE: {' <-> '.join(c)}")
        manifest = (root / crate / "Cargo.toml").read_text().split("[dev-dependencies]")[0]
        for dep in re.findall(r"^(edgeseal[a-z-]*)", manifest, re.M):
            if dep in RANK and RANK[dep] >= RANK[crate] and dep != crate:
                bad = True
                print(f"  LAYERING: {crate} depends on {dep}")
    print("import cycles or layering violations found" if bad else "no import cycle in any crate; dependencies point one way")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

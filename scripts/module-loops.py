#!/usr/bin/env python3
"""Import loops between the top-level modules of src/ (issue 20, point 1).

A module is a top-level file or folder of src/ (`node`, `lease`, `util`...).
Module A depends on B when a non-test line of A names `crate::B` (directly,
or through a root re-export of lib.rs such as `crate::Node`, which is
`node`). Test modules (`#[cfg(test)] mod tests`) and comments are skipped.
Prints each dependency and every cycle; exits 1 when there is a cycle.
"""
import os, re, sys

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")

def modules():
    out = {}
    for name in os.listdir(SRC):
        path = os.path.join(SRC, name)
        if name.endswith(".rs") and name not in ("lib.rs",):
            out[name[:-3]] = [path]
        elif os.path.isdir(path):
            out[name] = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".rs")]
    return out

def code_lines(path):
    """Lines outside comments and outside `#[cfg(test)]` items."""
    lines = open(path, encoding="utf-8").read().split("\n")
    out, skip_depth, pending_test = [], None, False
    depth = 0
    for line in lines:
        stripped = line.strip()
        if skip_depth is None and stripped.startswith("#[cfg(test)]"):
            pending_test = True
            continue
        opens, closes = line.count("{"), line.count("}")
        if pending_test and skip_depth is None:
            if stripped.startswith("#["):
                continue
            pending_test = False
            if opens > closes:
                skip_depth = depth
                depth += opens - closes
                continue
            continue  # a one-line test item
        depth += opens - closes
        if skip_depth is not None:
            if depth <= skip_depth:
                skip_depth = None
            continue
        if stripped.startswith("//"):
            continue
        out.append(line.split("//")[0])
    return out

def root_reexports(mods):
    """Names lib.rs re-exports at the crate root, to their module."""
    text = "\n".join(code_lines(os.path.join(SRC, "lib.rs")))
    names = {}
    for m in re.finditer(r"pub use (?:crate::)?(\w+)::([^;]+);", text, re.S):
        module, rest = m.group(1), m.group(2)
        if module not in mods:
            continue
        for name in re.findall(r"\b([A-Z_a-z]\w*)\b", rest):
            names.setdefault(name, module)
    return names

def deps(mods):
    roots = root_reexports(mods)
    graph = {m: set() for m in mods}
    for m, files in mods.items():
        for f in files:
            text = "\n".join(code_lines(f))
            for used in re.findall(r"crate::(\w+)", text):
                target = used if used in mods else roots.get(used)
                if target and target != m:
                    graph[m].add(target)
            # `use crate::{a::X, B, ...}` groups
            for group in re.findall(r"crate::\{([^}]*)\}", text, re.S):
                for used in re.findall(r"(?:^|,)\s*(\w+)", group):
                    target = used if used in mods else roots.get(used)
                    if target and target != m:
                        graph[m].add(target)
    return graph

def cycles(graph):
    found, seen = [], set()
    def walk(node, path):
        for nxt in sorted(graph[node]):
            if nxt in path:
                cyc = path[path.index(nxt):]
                key = frozenset(cyc)
                if key not in seen:
                    seen.add(key)
                    found.append(cyc + [nxt])
            elif len(path) < 8:
                walk(nxt, path + [nxt])
    for start in sorted(graph):
        walk(start, [start])
    return found

if __name__ == "__main__":
    mods = modules()
    graph = deps(mods)
    for m in sorted(graph):
        print(f"{m:12} -> {', '.join(sorted(graph[m])) or '-'}")
    found = cycles(graph)
    for c in found:
        print("loop:", " -> ".join(c))
    print(f"{len(found)} loop(s) between the modules of src/")
    sys.exit(1 if found else 0)

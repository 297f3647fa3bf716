"""The house flows one way: each layer imports only the layers below it, and no modules import each
other in a circle. Read from the source (ast), lazy imports inside functions included."""
from __future__ import annotations

import ast
import os

import networkx as nx

SRC = os.path.join(os.path.dirname(__file__), "..", "src", "refold")

# layer -> the layers it may import (itself always allowed). `errors` is a leaf
# every layer may use.
ALLOWED = {
    "ir": set(),
    "frontends": {"ir"},
    "runtime": {"ir", "frontends", "codegen"},
    "passes": {"ir", "runtime"},
    "lowering": {"ir", "passes"},
    "codegen": {"lowering", "ir"},
    "inspect": {"ir"},
}
LEAVES = {"errors"}
TOP = {"api", "cli", "__init__", "__main__"}


def _modules() -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(SRC):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, SRC)[:-3].replace(os.sep, ".")
                rel = rel[: -len(".__init__")] if rel.endswith(".__init__") else rel
                out["refold" + ("" if rel == "__init__" else "." + rel)] = path
    return out


def _imports(path: str, module: str) -> list[tuple[str, int]]:
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("refold")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")[: -node.level] if not path.endswith("__init__.py") else \
                    module.split(".")[: len(module.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("refold"):
                found.append((name, node.lineno))
                # `from refold.x import y` may import the submodule refold.x.y
                found += [(f"{name}.{a.name}", node.lineno) for a in node.names]
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_runs_back_up():
    mods = _modules()
    bad = []
    for mod, path in sorted(mods.items()):
        layer = _layer(mod)
        if layer in TOP or layer in LEAVES:
            continue
        allowed = ALLOWED[layer] | {layer} | LEAVES
        for name, line in _imports(path, mod):
            if name == "refold" or (name not in mods and name.rsplit(".", 1)[0] in mods and name.count(".") > 1
                                    and _layer(name) == layer):
                continue
            target = _layer(name)
            if target == "__init__" and name == "refold":
                bad.append(f"{os.path.relpath(path, SRC)}:{line} imports the refold package (the top)")
            elif target not in allowed:
                bad.append(f"{os.path.relpath(path, SRC)}:{line} ({layer}) imports {name} ({target})")
    assert not bad, "imports that run back up:\n" + "\n".join(bad)


def test_no_circle_of_imports():
    mods = _modules()
    g = nx.DiGraph()
    for mod, path in mods.items():
        g.add_node(mod)
        for name, _ in _imports(path, mod):
            # a module importing its package (running its __init__), or a package's __init__
            # gathering its own submodules, is how packages work, not a circle of ideas
            if name in mods and name != mod and not mod.startswith(name + ".") \
                    and not name.startswith(mod + "."):
                g.add_edge(mod, name)
    top = {m for m in mods if _layer(m) in TOP}
    g.remove_nodes_from(top)
    cycles = [c for c in nx.simple_cycles(g)]
    assert not cycles, "circles of imports: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles[:5])


def test_the_layer_table_covers_every_folder():
    folders = {d for d in os.listdir(SRC) if os.path.isdir(os.path.join(SRC, d)) and not d.startswith(("_", "."))}
    folders -= {"examples", "refold.egg-info"}
    assert folders <= set(ALLOWED), f"folders without a place in the layering: {sorted(folders - set(ALLOWED))}"

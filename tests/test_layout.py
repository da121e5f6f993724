"""The layers stay layers: who may import whom, and no import cycles.

protocol imports only itself; host, hostmesh and view never import the view or each other
the wrong way (hostmesh may use host's helpers; the view is served
through ``view/_port``'s seam, and ``trio_logmesh/__init__`` wires the mesh's
``logging_option`` to the client); child imports nothing of the package at all (it loads
protocol modules by path); bench is imported by no one but ``logmesh bench``; notebook (in
the kernel, on top of host and view) by no one but the IPython extension's entry points, and
only when they are called.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import trio_logmesh

ROOT = Path(trio_logmesh.__file__).parent


def _graph() -> dict[str, set[str]]:
    mods: dict[str, Path] = {}
    for path in ROOT.rglob("*.py"):
        parts = ["trio_logmesh", *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t in mods and t != mod:
                    edges[mod].add(t)
    return edges


def _layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and not parts[1].startswith("_")) \
        else "top"


def test_layers_import_only_what_they_may():
    allowed = {
        "protocol": {"protocol"},
        "child": {"child"},
        "host": {"host", "protocol", "top"},
        # The driver's side of many hosts: it runs launchers' processes and links with the
        # host's helpers, and serves the view only through the view's seam.
        "hostmesh": {"hostmesh", "host", "protocol", "top"},
        "view": {"view", "protocol", "top"},
        "cli": {"cli", "host", "hostmesh", "view", "protocol", "top", "bench"},
        "bench": {"bench", "host", "hostmesh", "view", "protocol", "top"},
        "notebook": {"notebook", "host", "view", "protocol", "top"},
        "top": {"top", "host", "hostmesh", "view", "protocol", "notebook"},
    }
    bad = [
        (mod, target)
        for mod, targets in _graph().items()
        for target in targets
        if _layer(target) not in allowed[_layer(mod)]
        and not (_layer(mod) == "top" and target.startswith("trio_logmesh.cli"))
    ]
    assert bad == []


def test_no_import_cycles():
    edges = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(mod: str, stack: list[str]) -> None:
        state[mod] = 1
        stack.append(mod)
        for target in sorted(edges[mod]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target):], target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[mod] = 2

    for mod in sorted(edges):
        if mod not in state:
            visit(mod, [])
    # A package's __init__ importing its own modules is not a cycle of ours.
    cycles = [c for c in cycles if not any(c[0].startswith(m + ".") for m in c[:1])]
    assert cycles == []


def test_the_benchmarks_are_imported_only_by_the_bench_command():
    importers = {mod for mod, targets in _graph().items()
                 if any(t.startswith("trio_logmesh.bench") for t in targets)
                 and not mod.startswith("trio_logmesh.bench")}
    assert importers == {"trio_logmesh.cli._main"}


def test_the_notebook_is_imported_only_by_the_extension_entry_points_when_called():
    importers = {mod for mod, targets in _graph().items()
                 if any(t.startswith("trio_logmesh.notebook") for t in targets)
                 and not mod.startswith("trio_logmesh.notebook")}
    assert importers == {"trio_logmesh"}
    tree = ast.parse((ROOT / "__init__.py").read_text())
    at_import_time = [n for n in tree.body if isinstance(n, ast.ImportFrom)
                      and (n.module or "").startswith("notebook")]
    lazy = {f.name for f in tree.body if isinstance(f, ast.FunctionDef)
            for n in ast.walk(f) if isinstance(n, ast.ImportFrom)
            and (n.module or "").startswith("notebook")}
    assert at_import_time == []
    assert lazy == {"load_ipython_extension", "unload_ipython_extension"}


def test_importing_the_package_imports_neither_the_notebook_nor_ipython():
    code = ("import sys, trio_logmesh\n"
            "print(sorted(m for m in ('IPython', 'ipykernel', 'trio_logmesh.notebook')"
            " if m in sys.modules))\n"
            "import trio_logmesh.notebook\n"
            "print(sorted(m for m in ('IPython', 'ipykernel') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out == "[]\n[]\n"

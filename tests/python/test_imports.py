"""Import layers of the package (docs/architecture.md section 8, issue 14 section 4), checked on the source
with ``ast`` (as import-linter would): every import, including the lazy ones inside
functions, is a dependency.

- Library code never imports the CLI (only ``bitflow.__main__`` does).
- Layers follow the data flow: ``nn -> models -> train``; ``nn -> convert -> ir -> engine``;
  ``export`` on ``ir``; ``bench``, ``analysis`` and ``cli`` on top (:data:`ALLOWED`).
- No private name (``_x``) of another sub-package is imported; the shared private modules at the
  root (``bitflow._io``, ``_registry``, ``_native``, ``_bits``) exist to be shared.
- No import cycle, neither at module level nor through lazy imports (inside functions or
  ``TYPE_CHECKING`` blocks): a lazy cycle is a layering the package does not have. A sub-module
  reading names of its own parent package (the op-table registration idiom) is not a cycle of
  separate modules.
"""

from __future__ import annotations

import ast
import collections
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

import bitflow

ROOT = Path(bitflow.__file__).parent
SHARED = {"_io", "_registry", "_native", "_bits", "_checkpoint"}
_EVERYTHING = {
    "options",
    "nn",
    "models",
    "data",
    "train",
    "ir",
    "engine",
    "convert",
    "export",
    "bench",
    "analysis",
    "methods",
} | SHARED

# top-level part of bitflow -> the parts it may import (the root package, for __version__, always)
ALLOWED: dict[str, set[str]] = {
    "_io": set(),
    "_registry": set(),
    "_bits": set(),
    "options": set(),  # KEY=VALUE model options (the CLI and the benchmarks)
    "_checkpoint": {"_io"},
    # nn: the one-pass STE kernels of training (bitflow.nn.functional) are in the shared core
    "nn": {"_registry", "_bits", "_native"},
    "models": {"nn", "_registry"},
    "data": {"_io"},
    # the survey methods: a registry of model builders, training hooks and deploy rewrites over
    # nn / models (and checkpoint files, for rebuilding models and loading a teacher); below
    # train, which imports it at the top
    "methods": {"nn", "models", "convert", "_io", "_registry", "_checkpoint"},
    "train": {"nn", "models", "data", "methods", "_io", "_registry", "_checkpoint"},
    "ir": {"_io", "_bits"},
    "engine": {"ir", "_native", "_io"},
    "convert": {"nn", "ir", "_io"},
    "export": {"ir", "_io"},
    # bench builds its ONNX Runtime baselines with export and checks them with its agreement rule
    "bench": {"nn", "models", "data", "convert", "ir", "engine", "export", "_native", "_io"},
    "analysis": _EVERYTHING,
    "cli": _EVERYTHING,
    "__main__": {"cli"},
}


@dataclass(frozen=True)
class Imp:
    module: str  # the importing module, e.g. bitflow.ir.reference
    target: str  # the imported module or name, e.g. bitflow.ir._refkernels.pool
    line: int
    top_level: bool  # executed on import (not inside a function or a TYPE_CHECKING block)


def _modules(root: Path = ROOT) -> dict[str, tuple[Path, bool]]:
    out = {}
    for f in sorted(root.rglob("*.py")):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def _imports(module: str, path: Path, is_pkg: bool) -> list[Imp]:
    pkg = module.split(".") if is_pkg else module.split(".")[:-1]
    out: list[Imp] = []

    def targets(n: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(n, ast.Import):
            return [a.name for a in n.names]
        if n.level:
            base = ".".join(pkg[: len(pkg) - n.level + 1] + ([n.module] if n.module else []))
        else:
            base = n.module or ""
        return [base + "." + a.name for a in n.names]

    def visit(body: list[ast.stmt], top: bool) -> None:
        for n in body:
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                out.extend(Imp(module, t, n.lineno, top) for t in targets(n))
            elif (
                isinstance(n, ast.If)
                and isinstance(n.test, ast.Name)
                and n.test.id == "TYPE_CHECKING"
            ):
                visit(n.body, False)
                visit(n.orelse, top)
            elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(n.body, False)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    sub = getattr(n, field, None)
                    if isinstance(sub, list):
                        visit([s for s in sub if isinstance(s, ast.stmt)], top)
                for h in getattr(n, "handlers", []) or []:
                    visit(h.body, top)

    visit(ast.parse(path.read_text()).body, True)
    return [i for i in out if i.target == "bitflow" or i.target.startswith("bitflow.")]


def _all_imports(root: Path = ROOT) -> list[Imp]:
    return [i for m, (f, pkg) in _modules(root).items() for i in _imports(m, f, pkg)]


def _part(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def cli_imports(imps: list[Imp]) -> list[Imp]:
    return [
        i for i in imps if _part(i.target) == "cli" and _part(i.module) not in ("cli", "__main__")
    ]


def layer_violations(imps: list[Imp], mods: set[str]) -> list[str]:
    bad = []
    for i in imps:
        src, dst = _part(i.module), _part(i.target)
        if src == dst or dst == "" or (src == "" and i.module == "bitflow"):
            continue
        if dst not in _EVERYTHING | {"cli", "__main__"} and f"bitflow.{dst}" not in mods:
            continue  # a name of the root package (bitflow.__version__)
        if dst not in ALLOWED.get(src, set()):
            bad.append(
                f"{i.module}:{i.line} imports {i.target} ({src} may import only {sorted(ALLOWED.get(src, set()))})"
            )
    return bad


def private_imports(imps: list[Imp]) -> list[str]:
    bad = []
    for i in imps:
        src, dst = _part(i.module), _part(i.target)
        if src == dst or dst in SHARED:
            continue
        inner = i.target.split(".")[2:]
        if any(p.startswith("_") and not p.startswith("__") for p in inner):
            bad.append(f"{i.module}:{i.line} imports the private {i.target}")
    return bad


def cycles(imps: list[Imp], mods: set[str]) -> list[list[str]]:
    edges: dict[str, set[str]] = collections.defaultdict(set)
    for i in imps:
        if not i.top_level:
            continue
        t = i.target
        while t and t not in mods:
            t = t.rpartition(".")[0]
        if (
            t and t != i.module and not i.module.startswith(t + ".")
        ):  # not from its own parent package
            edges[i.module].add(t)
    found: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()

    def strong(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                strong(w)
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
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(mods):
        if v not in index:
            strong(v)
    return found


@pytest.fixture(scope="module")
def imps() -> list[Imp]:
    return _all_imports()


def test_the_walker_sees_the_package(imps: list[Imp]) -> None:
    mods = _modules()
    assert {"bitflow.cli", "bitflow.ir.reference", "bitflow.nn.mbbn", "bitflow.export.onnx"} <= set(
        mods
    )
    # relative, absolute and lazy (in-function) imports are all resolved
    seen = {(i.module, i.target, i.top_level) for i in imps}
    assert ("bitflow.ir.reference", "bitflow.ir.graph.Graph", True) in seen
    assert ("bitflow.__main__", "bitflow.cli.main", True) in seen
    assert any(
        m == "bitflow.cli" and t.startswith("bitflow.export") and not top for m, t, top in seen
    )
    assert set(ALLOWED) >= {_part(m) for m in mods} - {""}, (
        "a new top-level part needs its row in ALLOWED"
    )


def test_library_code_never_imports_the_cli(imps: list[Imp]) -> None:
    assert cli_imports(imps) == []


def test_import_layers_follow_the_data_flow(imps: list[Imp]) -> None:
    assert layer_violations(imps, set(_modules())) == []


def test_no_private_names_across_packages(imps: list[Imp]) -> None:
    assert private_imports(imps) == []


def test_no_import_cycles(imps: list[Imp]) -> None:
    assert cycles(imps, set(_modules())) == []


def lazy_cycles(root: Path = ROOT, part: str | None = None) -> list[list[str]]:
    """Import cycles among the modules of the package (of ``bitflow.<part>`` only, if given)
    counting every import, including the lazy ones inside functions and ``TYPE_CHECKING``
    blocks (a lazy cycle is a layering the package does not have)."""
    mods = {m for m in _modules(root) if part is None or _part(m) == part}
    every = [
        replace(i, top_level=True)
        for i in _all_imports(root)
        if part is None or (_part(i.module) == part and _part(i.target) == part)
    ]
    return cycles(every, mods)


def test_no_import_cycles_even_through_lazy_imports() -> None:
    # the layers inside the parts, e.g. ir: nodes -> ops -> container -> graph -> bfn ->
    # reference; data: specs -> bundle -> evaluation; _checkpoint -> methods -> train.checkpoint
    assert lazy_cycles() == []


def test_the_checks_catch_violations(tmp_path: Path) -> None:
    # a small fake package with one violation of every kind: each check must name it
    pkg = tmp_path / "bitflow"
    for sub, text in {
        "__init__.py": "",
        "cli.py": "def main(): pass\n",
        "ir/__init__.py": "",
        "ir/graph.py": "from .bfn import load\n",
        "ir/bfn.py": "from .graph import Graph\ndef load(): pass\n",
        "ir/_hidden.py": "def helper(): pass\n",
        "engine/__init__.py": "def f():\n    from ..cli import main\n",
        "export/__init__.py": "from ..ir._hidden import helper\nfrom ..engine import f\n",
    }.items():
        (pkg / sub).parent.mkdir(parents=True, exist_ok=True)
        (pkg / sub).write_text(text)
    imps = _all_imports(pkg)
    mods = set(_modules(pkg))
    assert [i.module for i in cli_imports(imps)] == ["bitflow.engine"]
    lv = layer_violations(imps, mods)
    assert any("bitflow.export" in v and "bitflow.engine.f" in v for v in lv)
    assert any("bitflow.engine" in v and "bitflow.cli" in v for v in lv)
    assert private_imports(imps) == [
        "bitflow.export:1 imports the private bitflow.ir._hidden.helper"
    ]
    assert cycles(imps, mods) == [["bitflow.ir.bfn", "bitflow.ir.graph"]]
    (pkg / "engine" / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "engine" / "b.py").write_text("from .a import f\ndef g(): pass\n")
    assert cycles(_all_imports(pkg), set(_modules(pkg))) == [["bitflow.ir.bfn", "bitflow.ir.graph"]]
    assert lazy_cycles(pkg, "engine") == [["bitflow.engine.a", "bitflow.engine.b"]]
    assert lazy_cycles(pkg) == [
        ["bitflow.engine.a", "bitflow.engine.b"],
        ["bitflow.ir.bfn", "bitflow.ir.graph"],
    ]

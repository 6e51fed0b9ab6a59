"""The package's import layering, read from the source with ``ast`` (nothing is imported).

Rules:

(a) environments stand alone: no module under ``turnrl/envs`` imports ``turnrl.agents``,
    ``turnrl.rollout`` or ``turnrl.trainer``, at module level or inside a function (an env
    package registers its baseline agents through :mod:`turnrl.agent_registry` by string);
(b) no import cycle among the imports that run at import time (imports under
    ``if TYPE_CHECKING:`` never run: they count for rule (a) only);
(c) an import of a turnrl module inside a function is a layering problem in disguise,
    except for the entries of :data:`LOCAL_IMPORTS_ALLOWED` (optional heavy backends
    loaded lazily, and CLI start-up), each with its reason.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).parents[1] / "turnrl"

#: Packages whose modules must not import the listed ones (rule a).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "turnrl.envs": ("turnrl.agents", "turnrl.rollout", "turnrl.trainer"),
}

#: Function-local imports of turnrl modules that are allowed (rule c):
#: (importing module, imported module or "*") -> why it must stay lazy.
LOCAL_IMPORTS_ALLOWED: dict[tuple[str, str], str] = {
    ("turnrl.cli", "*"): "CLI start-up: `turnrl envs` and `turnrl --help` must not pay for "
    "torch, the trainer or the evaluator",
    ("turnrl.envs.textworld", "turnrl.envs.textworld.env"): "the TextWorld engine loads only "
    "when the env class is first used (module __getattr__)",
    ("turnrl.envs.alfworld", "turnrl.envs.alfworld.env"): "the ALFWorld engine loads only "
    "when the env class is first used (module __getattr__)",
    ("turnrl.trainer", "turnrl.trainer.trainer"): "torch and transformers (the optional "
    "train extra) load on first use of Trainer, so configs and the algorithm table import "
    "without them (module __getattr__)",
}


@dataclass(frozen=True)
class Import:
    """One imported turnrl module, as written in the source.

    Attributes:
        importer: dotted name of the importing module.
        imported: dotted name of the module imported (``from pkg import sub`` names the
            submodule ``pkg.sub``; ``from pkg import name`` names ``pkg``).
        path: the importing file, relative to the package's parent directory.
        line: line number of the import statement.
        local: inside a function (runs when called, not at import time).
        typing_only: under ``if TYPE_CHECKING:`` (never runs).
    """

    importer: str
    imported: str
    path: str
    line: int
    local: bool
    typing_only: bool = False

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def module_names(package_dir: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package."""
    out = {}
    for file in sorted(package_dir.rglob("*.py")):
        parts = list(file.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = file
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _statements(node: ast.AST, local: bool = False, typing_only: bool = False
                ) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool, bool]]:
    """Import statements under ``node``, each with whether it sits inside a function and
    whether it sits in the body of ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, local, typing_only
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _statements(ast.Module(body=[stmt], type_ignores=[]), local, True)
            for stmt in child.orelse:
                yield from _statements(ast.Module(body=[stmt], type_ignores=[]), local, typing_only)
        else:
            inside = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            yield from _statements(child, inside, typing_only)


def package_imports(package_dir: Path) -> list[Import]:
    """Every import of one of the package's own modules, module-level and local."""
    modules = module_names(package_dir)
    root = package_dir.name
    out = []
    for name, file in modules.items():
        is_package = file.name == "__init__.py"
        rel = str(file.relative_to(package_dir.parent))
        for stmt, local, typing_only in _statements(ast.parse(file.read_text(), filename=rel)):
            targets: list[str] = []
            if isinstance(stmt, ast.Import):
                targets = [alias.name for alias in stmt.names]
            else:
                base = stmt.module or ""
                if stmt.level:  # relative: from the importer's own package upwards
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[:len(anchor) - (stmt.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in stmt.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in dict.fromkeys(targets):
                if target == root or target.startswith(root + "."):
                    out.append(Import(name, target, rel, stmt.lineno, local, typing_only))
    return out


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def forbidden_imports(imports: Sequence[Import],
                      forbidden: Mapping[str, Sequence[str]]) -> list[str]:
    """Rule (a): one message per import of a forbidden package."""
    problems = []
    for imp in imports:
        for layer, banned in forbidden.items():
            hit = next((b for b in banned if _within(imp.imported, b)), None)
            if _within(imp.importer, layer) and hit:
                problems.append(f"{imp.where()}: {imp.importer} imports {imp.imported} "
                                f"({layer} must not import {', '.join(banned)})")
    return problems


def import_graph(imports: Sequence[Import]) -> dict[str, set[str]]:
    """Module-level imports as edges. Importing ``a.b.c`` also runs the ``__init__`` of
    ``a.b`` (and ``a``), so those are edges too, except for the importer's own parent
    packages, which are already being imported when it runs."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.local or imp.typing_only:
            continue
        own = set(_ancestors(imp.importer))
        for target in [*_ancestors(imp.imported), imp.imported]:
            if target != imp.importer and target not in own:
                graph.setdefault(imp.importer, set()).add(target)
    return graph


def import_cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Rule (b): one cycle (``[a, b, ..., a]``) per strongly connected component of more
    than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(component)
    return [_cycle_through(sorted(c)[0], set(c), graph) for c in components]


def _cycle_through(start: str, members: set[str], graph: Mapping[str, set[str]]) -> list[str]:
    """The shortest path ``start -> ... -> start`` inside one component (breadth first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in parent:
                    parent[child] = node
                    nxt.append(child)
        frontier = nxt
    raise AssertionError(f"{start} is in a component but on no cycle")  # Tarjan guarantees one


def unallowed_local_imports(imports: Sequence[Import],
                            allowed: Mapping[tuple[str, str], str]) -> list[str]:
    """Rule (c): one message per function-local import of a turnrl module not allowed."""
    return [
        f"{imp.where()}: {imp.importer} imports {imp.imported} inside a function; import it "
        f"at module level (fix the layering if that makes a cycle), or, for an optional heavy "
        f"backend, add ({imp.importer!r}, {imp.imported!r}) with its reason to "
        f"LOCAL_IMPORTS_ALLOWED in tests/test_layering.py"
        for imp in imports
        if imp.local and not imp.typing_only and (imp.importer, imp.imported) not in allowed
        and (imp.importer, "*") not in allowed
    ]


def stale_allowances(imports: Sequence[Import], allowed: Mapping[tuple[str, str], str]) -> list[str]:
    """Allowlist entries that no function-local import uses any more."""
    local = [i for i in imports if i.local and not i.typing_only]
    used = {(i.importer, i.imported) for i in local} | {(i.importer, "*") for i in local}
    return [f"{key} no longer matches a function-local import; delete it from "
            f"LOCAL_IMPORTS_ALLOWED" for key in allowed if key not in used]


def check(package_dir: Path, *, forbidden: Mapping[str, Sequence[str]] = FORBIDDEN,
          allowed: Mapping[tuple[str, str], str] = LOCAL_IMPORTS_ALLOWED) -> list[str]:
    """Every layering problem of the package, one line each (empty: all rules hold)."""
    imports = package_imports(package_dir)
    problems = forbidden_imports(imports, forbidden)
    problems += ["import cycle: " + " -> ".join(c) for c in import_cycles(import_graph(imports))]
    problems += unallowed_local_imports(imports, allowed)
    problems += stale_allowances(imports, allowed)
    return problems


# ------------------------------------------------------------------------------ tests
def test_turnrl_layering():
    problems = check(PACKAGE_DIR)
    assert not problems, "layering problems:\n" + "\n".join(problems)


def test_the_walk_sees_the_package():
    imports = package_imports(PACKAGE_DIR)
    importers = {i.importer for i in imports}
    # a sample of known edges, so an empty or broken walk cannot pass the test above
    assert {"turnrl", "turnrl.envs", "turnrl.rollout", "turnrl.trainer"} <= importers
    runs = {(i.importer, i.imported) for i in imports if not i.local and not i.typing_only}
    assert ("turnrl.envs", "turnrl.agent_registry") in runs
    assert ("turnrl.evaluate", "turnrl.rollout") in runs
    # the TextWorld env class: typing-only at module level, imported in __getattr__
    tw = [i for i in imports if (i.importer, i.imported) == ("turnrl.envs.textworld",
                                                             "turnrl.envs.textworld.env")]
    assert sorted((i.local, i.typing_only) for i in tw) == [(False, True), (True, False)]


def test_every_allowance_has_a_reason():
    for key, reason in LOCAL_IMPORTS_ALLOWED.items():
        assert len(reason.split()) >= 4, key


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


@pytest.fixture
def synthetic(tmp_path) -> Path:
    """A package with one violation of each rule, and imports that break none."""
    return _write(tmp_path, {
        "pkg/__init__.py": "from pkg import envs\n",
        "pkg/errors.py": "",
        "pkg/agents/__init__.py": "from pkg.agents.base import Agent\n",
        "pkg/agents/base.py": "from pkg.errors import *\nclass Agent: ...\n",
        # (a): an env imports an agent module, lazily -- still forbidden
        "pkg/envs/__init__.py": "from pkg.envs import game\n",
        "pkg/envs/game.py": (
            "from typing import TYPE_CHECKING\n"
            "from . import util\n"              # relative, fine
            "if TYPE_CHECKING:\n"
            "    from pkg.rollout import collect\n"  # typing only: no cycle, still rule (a)
            "def play():\n"
            "    from pkg.agents.base import Agent\n"
            "    return Agent\n"
        ),
        "pkg/envs/util.py": "import pkg.errors\n",
        # (b): a -> b -> c -> a at module level
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "import pkg.c\n",
        "pkg/c.py": "from pkg.a import thing\n",
        # (c): a function-local import that is not allowed, and one that is
        "pkg/rollout.py": (
            "def collect():\n"
            "    from pkg.errors import Oops\n"
            "def heavy():\n"
            "    from pkg.agents import base\n"
        ),
    })


SYNTHETIC_FORBIDDEN = {"pkg.envs": ("pkg.agents", "pkg.rollout")}
SYNTHETIC_ALLOWED = {("pkg.rollout", "pkg.agents.base"): "heavy backend loaded lazily on purpose",
                     ("pkg.gone", "pkg.errors"): "an import that was removed long ago"}


def test_checker_reports_each_kind_of_violation(synthetic):
    problems = check(synthetic, forbidden=SYNTHETIC_FORBIDDEN, allowed=SYNTHETIC_ALLOWED)
    text = "\n".join(problems)
    # (a) module-level-in-TYPE_CHECKING and function-local imports of banned layers
    assert "pkg/envs/game.py:6: pkg.envs.game imports pkg.agents.base (pkg.envs must not" in text
    assert "pkg/envs/game.py:4: pkg.envs.game imports pkg.rollout (pkg.envs must not" in text
    # (b) the cycle, spelled out
    assert "import cycle: pkg.a -> pkg.b -> pkg.c -> pkg.a" in text
    # (c) the local import nobody allowed; the allowed one is not reported
    assert "pkg/rollout.py:2: pkg.rollout imports pkg.errors inside a function" in text
    assert "pkg/rollout.py:4" not in text
    # a stale allowance
    assert "('pkg.gone', 'pkg.errors') no longer matches" in text
    assert len(problems) == 6, text


def test_checker_passes_a_clean_package(synthetic):
    (synthetic / "c.py").write_text("")
    (synthetic / "envs" / "game.py").write_text("from . import util\n")
    (synthetic / "rollout.py").write_text("from pkg.errors import *\n")
    assert check(synthetic, forbidden=SYNTHETIC_FORBIDDEN, allowed={}) == []


def test_package_init_cycles_count(tmp_path):
    # pkg.agents/__init__ imports pkg.registry, which imports pkg.agents.base: importing
    # pkg.agents.base first runs pkg.agents/__init__, so this is a real cycle.
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/registry.py": "from pkg.agents.base import Agent\n",
        "pkg/agents/__init__.py": "from pkg.registry import make\n",
        "pkg/agents/base.py": "class Agent: ...\n",
        "pkg/agents/hf.py": "from pkg.agents.base import Agent\n",  # own package: no edge
    })
    cycles = import_cycles(import_graph(package_imports(pkg)))
    assert cycles == [["pkg.agents", "pkg.registry", "pkg.agents"]]

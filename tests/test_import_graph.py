"""Import rules of hyla's packages, checked on the source with `ast` (nothing of hyla beyond `hyla` is imported).

Layers, lowest first: the base (``hyla``: config.py, _hf_auto.py, ...) <- ``hyla.space`` <- ``hyla.proxy_train``
<- ``hyla.search`` <- ``hyla.analysis``. A module may import its own layer and the layers below it, never one
above, whether the import runs at module level or lazily inside a function (`EXCEPTIONS` lists the few allowed
ones, each with its reason). `hyla.cli` (the ``hyla`` command, in hyla/ but above every package) and
`hyla.__main__` may be imported by nothing but `hyla.__main__`.

Inside ``hyla.proxy_train`` the concept subpackages are layers too (`PROXY_TRAIN_LAYERS`: model <- tasks <- train
<- probe <- retrofit <- supernet <- proxy, then ``hyla.proxy_train.cli`` on top), and every module of it lies in one of them (only the
package's ``__init__`` and ``cli`` stand beside them).

No import cycle at all: neither module-level imports (including ``if TYPE_CHECKING:`` blocks and class bodies) nor
imports inside functions may close a loop. A lazy import that closes one only hides it; the shared code belongs in
the lower module.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

#: top-level packages, lowest layer first
LAYERS = ("hyla", "hyla.space", "hyla.proxy_train", "hyla.search", "hyla.analysis")
#: where the folders live (error messages show paths relative to it)
REPO = Path(importlib.util.find_spec("hyla").origin).parent.parent  # type: ignore[union-attr,arg-type]
#: modules above every layer: nothing below may import them
TOP = ("hyla.cli", "hyla.__main__")
#: the concept subpackages of hyla.proxy_train, lowest first (`hyla.proxy_train.cli` stands above them all)
PROXY_TRAIN_LAYERS = ("hyla.proxy_train.model", "hyla.proxy_train.tasks", "hyla.proxy_train.train",
                      "hyla.proxy_train.probe", "hyla.proxy_train.retrofit", "hyla.proxy_train.supernet",
                      "hyla.proxy_train.proxy")
#: the modules of hyla.proxy_train that are in none of its concept subpackages
PROXY_TRAIN_FACE = ("hyla.proxy_train", "hyla.proxy_train.cli")


@dataclass(frozen=True)
class Allowed:
    importer: str  # exact module name
    imported: str  # exact module name, or "*cli" for any package's CLI module (cli, or a NAME_cli)
    lazy_only: bool  # allowed only inside a function
    reason: str

    def allows(self, imp: Import) -> bool:
        if imp.importer != self.importer or (self.lazy_only and not imp.lazy):
            return False
        if self.imported == "*cli":
            last = imp.module.rsplit(".", 1)[-1]
            return last == "cli" or last.endswith("_cli")
        return imp.module == self.imported


#: upward imports that are allowed, each with its reason
EXCEPTIONS = (
    Allowed("hyla.cli", "*cli", True,
            "the `hyla` command dispatches to every package's cli module (hyla.<pkg>.cli, "
            "hyla.proxy_train.train.cli; by name through importlib) and hands analysis code to lower commands "
            "(search run's Pareto HTML): it sits above every package although it lives in hyla/, and imports "
            "lazily so that `hyla --help` stays fast"),
    Allowed("hyla._hf_auto", "hyla.proxy_train.model.hf_config", True,
            "`import hyla` registers model_type 'hyla' with transformers' Auto classes: the hook imports "
            "HylaConfig only when transformers' configuration_auto loads"),
    Allowed("hyla._hf_auto", "hyla.proxy_train.model.hf", True,
            "the model class follows the config: the hook's `HylaConfig.after_build` imports the model module "
            "(which registers HylaForCausalLM) when the first HylaConfig is built"),
)


@dataclass(frozen=True)
class Import:
    importer: str
    module: str  # the hyla module imported (a submodule when `from pkg import submodule`)
    path: Path
    line: int
    lazy: bool  # inside a function body
    type_checking: bool = False  # inside `if TYPE_CHECKING:` (module-level unless also lazy)

    def where(self) -> str:
        path = self.path.relative_to(REPO) if self.path.is_relative_to(REPO) else self.path
        kind = "lazy" if self.lazy else "module-level, TYPE_CHECKING" if self.type_checking else "module-level"
        return f"{self.importer} ({path}:{self.line}, {kind})"


def source_modules() -> dict[str, Path]:
    """Every module of the installed hyla packages -> its source file (located with importlib, not imported)."""
    modules: dict[str, Path] = {}
    for top in LAYERS:
        spec = importlib.util.find_spec(top)  # imports the parent `hyla` (light), not the package itself
        assert spec is not None and spec.submodule_search_locations, f"{top}: not installed"
        for root in map(Path, spec.submodule_search_locations):
            for path in sorted(root.rglob("*.py")):
                rel = path.relative_to(root)
                if any(not (root / Path(*rel.parts[:i]) / "__init__.py").is_file() for i in range(1, len(rel.parts))):
                    continue  # a folder that is not a subpackage (scripts, data)
                parts = list(rel.with_suffix("").parts)
                if parts[-1] == "__init__":
                    parts.pop()
                modules[".".join([top, *parts])] = path
    return modules


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known hyla module that ``name`` names or lies in (``hyla.space.layout.Layout`` -> layout)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


class _Collector(ast.NodeVisitor):
    def __init__(self, importer: str, path: Path, modules: dict[str, Path]) -> None:
        self.importer, self.path, self.modules = importer, path, modules
        self.is_package = path.name == "__init__.py"
        self.depth = 0
        self.type_checking = 0
        self.found: list[Import] = []

    def _add(self, name: str, line: int) -> None:
        if name == "hyla" or name.startswith("hyla."):
            target = _target(name, self.modules)
            assert target is not None, f"{self.path}:{line}: imports {name}, which is not a hyla module"
            self.found.append(Import(self.importer, target, self.path, line, self.depth > 0, self.type_checking > 0))

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
                (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            self.type_checking += 1
            for child in node.body:
                self.visit(child)
            self.type_checking -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = (_resolve_relative(self.importer, self.is_package, node.level, node.module) if node.level
                else node.module or "")
        # `from pkg import submodule` imports the submodule; `from mod import name, other`, mod (once)
        for name in dict.fromkeys(f"{base}.{a.name}" if f"{base}.{a.name}" in self.modules else base
                                  for a in node.names):
            self._add(name, node.lineno)

    def visit_Call(self, node: ast.Call) -> None:  # importlib.import_module("hyla.x") with a literal name
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if (name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            self._add(node.args[0].value, node.lineno)
        self.generic_visit(node)


def collect_imports(modules: dict[str, Path]) -> list[Import]:
    out: list[Import] = []
    for name, path in modules.items():
        collector = _Collector(name, path, modules)
        collector.visit(ast.parse(path.read_text(), filename=str(path)))
        out.extend(collector.found)
    return out


def layer(module: str) -> int:
    """Index in `LAYERS` of the package holding ``module`` (the base `hyla` is 0)."""
    return max(i for i, top in enumerate(LAYERS) if module == top or module.startswith(top + "."))


def proxy_train_layer(module: str) -> int | None:
    """Index of ``module``'s concept subpackage in `PROXY_TRAIN_LAYERS` (``hyla.proxy_train.cli`` above them all;
    None outside hyla.proxy_train, and for the package's own ``__init__``)."""
    if module == "hyla.proxy_train.cli":
        return len(PROXY_TRAIN_LAYERS)
    return next((i for i, top in enumerate(PROXY_TRAIN_LAYERS) if module == top or module.startswith(top + ".")),
                None)


def layer_violations(imports: list[Import]) -> list[str]:
    bad = []
    for imp in imports:
        if any(e.allows(imp) for e in EXCEPTIONS):
            continue
        inner = proxy_train_layer(imp.importer), proxy_train_layer(imp.module)
        if imp.module in TOP and imp.importer != "hyla.__main__":
            bad.append(f"{imp.where()} imports {imp.module}, the top-level CLI (only hyla.__main__ may)")
        elif layer(imp.module) > layer(imp.importer):
            bad.append(f"{imp.where()} imports {imp.module}: {LAYERS[layer(imp.importer)]} must not import "
                       f"{LAYERS[layer(imp.module)]} (allowed: {' <- '.join(LAYERS)}, lower from higher only)")
        elif None not in inner and inner[1] > inner[0]:
            names = (*PROXY_TRAIN_LAYERS, "hyla.proxy_train.cli")
            bad.append(f"{imp.where()} imports {imp.module}: {names[inner[0]]} must not import {names[inner[1]]} "
                       f"(allowed: {' <- '.join(names)}, lower from higher only)")
    return bad


def module_cycles(imports: list[Import]) -> list[list[str]]:
    """Strongly connected components (Tarjan) of the graph of ``imports`` with more than one module, or a module
    importing itself."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.importer, set()).add(imp.module)
        graph.setdefault(imp.module, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# -- the rules --------------------------------------------------------------------------------------------------

@functools.cache
def _graph() -> tuple[dict[str, Path], list[Import]]:
    modules = source_modules()
    return modules, collect_imports(modules)


def test_walker_sees_the_packages() -> None:
    """Guards the checks below against passing vacuously (a moved package, a broken walker)."""
    modules, imports = _graph()
    for name in ("hyla.config", "hyla.cli", "hyla.space.layout", "hyla.proxy_train.model.mixers.gla",
                 "hyla.proxy_train.tasks.mqar", "hyla.proxy_train.train.trainer", "hyla.proxy_train.probe.runner",
                 "hyla.proxy_train.proxy.run", "hyla.search.study", "hyla.analysis.plots"):
        assert name in modules, name
    edges = {(i.importer, i.module, i.lazy) for i in imports}
    assert ("hyla.search.study", "hyla.search.config", False) in edges
    assert ("hyla.search.prepare", "hyla.space.presets", True) in edges  # inside a function
    assert ("hyla._hf_auto", "hyla.proxy_train.model.hf_config", True) in edges
    assert ("hyla", "hyla._hf_auto", False) in edges  # `from hyla import _hf_auto` is the submodule


def test_no_upward_imports() -> None:
    bad = layer_violations(_graph()[1])
    assert not bad, "upward imports (see tests/test_import_graph.py EXCEPTIONS for the allowed ones):\n  " + \
        "\n  ".join(bad)


def test_exceptions_are_used() -> None:
    """An exception no import needs any more is removed, not kept as a loophole."""
    unused = [e for e in EXCEPTIONS if not any(e.allows(i) for i in _graph()[1])]
    assert not unused, f"unused import-rule exceptions: {unused}"


def test_proxy_train_modules_lie_in_a_concept_subpackage() -> None:
    """hyla.proxy_train holds its concept subpackages and, beside them, only its ``__init__`` and ``cli``: a new
    module goes where its concept lives (or a new subpackage joins `PROXY_TRAIN_LAYERS`)."""
    loose = [name for name in _graph()[0] if name.startswith("hyla.proxy_train") and name not in PROXY_TRAIN_FACE
             and proxy_train_layer(name) is None]
    assert not loose, f"modules of hyla.proxy_train outside {', '.join(PROXY_TRAIN_LAYERS)}: {loose}"


def test_no_import_cycles() -> None:
    imports = _graph()[1]
    cycles = module_cycles(imports)
    lines = []
    for comp in cycles:
        members = set(comp)
        edges = [f"{i.where()} -> {i.module}" for i in imports if i.importer in members and i.module in members]
        lines.append(" <-> ".join(comp) + ":\n    " + "\n    ".join(edges))
    assert not cycles, "import cycles (move the shared code into the lower module; an import inside a function " \
                       "does not break a cycle, it hides it):\n  " + "\n  ".join(lines)


def test_rules_catch_violations() -> None:
    """The checks themselves: an upward import, a module-level cycle, and a lazy import that is not one."""
    fake = Path("fake.py")
    up = Import("hyla.search.cli", "hyla.analysis.plots", fake, 1, True)
    top = Import("hyla.search.cli", "hyla.cli", fake, 2, True)
    ok = Import("hyla.analysis.report", "hyla.search.storage", fake, 3, False)
    bad = layer_violations([up, top, ok])
    assert len(bad) == 2 and "hyla.search.cli" in bad[0] and "hyla.analysis.plots" in bad[0] and "hyla.cli" in bad[1]
    assert layer_violations([Import("hyla._hf_auto", "hyla.proxy_train.model.hf_config", fake, 1, False)])  # lazy only
    assert not layer_violations([Import("hyla.cli", "hyla.analysis.cli", fake, 1, True)])
    assert layer_violations([Import("hyla.cli", "hyla.analysis.plots", fake, 1, True)])
    a, b, c = "hyla.proxy_train.a", "hyla.proxy_train.b", "hyla.proxy_train.c"
    loop = [Import(a, b, fake, 1, False), Import(b, c, fake, 1, False), Import(c, a, fake, 1, False)]
    assert module_cycles(loop) == [[a, b, c]]
    assert module_cycles(loop[:2] + [Import(c, a, fake, 1, True)]) == [[a, b, c]]  # a lazy import closes it too
    assert module_cycles(loop[:2]) == []
    # inside proxy_train: model <- tasks <- train <- probe <- proxy <- cli
    down = Import("hyla.proxy_train.probe.runner", "hyla.proxy_train.train.schedule", fake, 1, False)
    up = Import("hyla.proxy_train.model.hf", "hyla.proxy_train.train.trainer", fake, 1, True)
    top = Import("hyla.proxy_train.proxy.run", "hyla.proxy_train.cli", fake, 1, True)
    bad = layer_violations([down, up, top])
    assert len(bad) == 2 and "hyla.proxy_train.model must not import hyla.proxy_train.train" in bad[0]
    assert "hyla.proxy_train.cli" in bad[1]

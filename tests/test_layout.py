"""The package's shape: no import circle (module-level or deferred imports alike), data flowing one way through the
layers of ARCHITECTURE.md, commands whose --help loads nothing heavy, tests that mirror the packages, and
citations of the specification that resolve inside the repository."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "siammae"

# ARCHITECTURE.md, "Who owns what", as ranks: a module imports only modules of a lower rank or of its own unit.
# Units of one rank never import each other (train and export; tracking and evaluation).
LAYERS = {
    "siammae.errors": 0,
    "siammae.config_rules": 1,
    "siammae.io": 1,
    "siammae.device": 1,
    "siammae.allocator": 1,
    "siammae.torchrun": 1,
    "siammae.memory": 1,
    "siammae.background": 1,
    "siammae.kernels": 2,
    "siammae.data": 2,
    "siammae.output_folder": 2,
    "siammae.model": 3,
    "siammae.propagation": 4,
    "siammae.train": 5,
    "siammae.export": 5,
    "siammae.tracking": 6,  # runs exported encoders too (export.runtime)
    "siammae.evaluation": 6,  # runs exported encoders too (export.runtime)
    "siammae.attention": 7,
    "siammae.demo": 7,
    "siammae.cli": 8,
}
# The package root re-exports the public names lazily (PEP 562, siammae/_lazy.py): any module may use it.
FACADE = ("siammae", "siammae._lazy")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """Every siammae module ``path`` imports, at module level or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import submodule`
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


class _Tarjan:
    """Tarjan's strongly connected components of ``graph``; ``cycles`` keeps those of more than one module."""

    def __init__(self, graph: dict[str, set[str]]):
        self.graph = graph
        self.index: dict[str, int] = {}
        self.low: dict[str, int] = {}
        self.stack: list[str] = []
        self.on: set[str] = set()
        self.cycles: list[list[str]] = []

    def visit(self, v: str) -> None:
        self.index[v] = self.low[v] = len(self.index)
        self.stack.append(v)
        self.on.add(v)
        for w in self.graph[v]:
            if w not in self.index:
                self.visit(w)
                self.low[v] = min(self.low[v], self.low[w])
            elif w in self.on:
                self.low[v] = min(self.low[v], self.index[w])
        if self.low[v] == self.index[v]:
            comp = self._pop_component(v)
            if len(comp) > 1:
                self.cycles.append(sorted(comp))

    def _pop_component(self, v: str) -> list[str]:
        """The stack down to ``v``: the component whose root is ``v``."""
        comp = []
        while True:
            w = self.stack.pop()
            self.on.discard(w)
            comp.append(w)
            if w == v:
                return comp


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    tarjan = _Tarjan(graph)
    sys.setrecursionlimit(10_000)
    for v in graph:
        if v not in tarjan.index:
            tarjan.visit(v)
    return tarjan.cycles


def test_the_walk_sees_imports():
    graph = _graph()
    # a module-level import, a deferred one inside a function, and `from package import submodule`
    assert "siammae.model.siammae" in graph["siammae.model.checkpoint"]
    assert "siammae.tracking.job" in graph["siammae.cli.track"]
    assert "siammae.train.launch" in graph["siammae.train.loop"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle():
    assert _cycles(_graph()) == []


def _unit(module: str) -> str:
    """The layer unit of a module: its subpackage or top-level module (``siammae.model.encoder`` -> model)."""
    return ".".join(module.split(".")[:2])


def _layering_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in graph.items():
        if module in FACADE:
            continue
        unit = _unit(module)
        assert unit in LAYERS, f"{unit} has no layer: add it to LAYERS and to ARCHITECTURE.md"
        for dep in deps:
            if dep in FACADE or _unit(dep) == unit:
                continue
            if LAYERS[_unit(dep)] >= LAYERS[unit]:
                bad.append(f"{module} (rank {LAYERS[unit]}) imports {dep} (rank {LAYERS[_unit(dep)]})")
    return sorted(bad)


def test_data_flows_one_way():
    """Every import points down the layers: the model, data formats, kernels and propagation never import tracking,
    evaluation, export, training or the CLI; training and export never import each other, nor do tracking and
    evaluation."""
    assert _layering_violations(_graph()) == []


def test_the_layering_check_catches_an_upward_or_sideways_import():
    graph = {
        "siammae.model.encoder": {"siammae.kernels.dispatch", "siammae.errors", "siammae"},  # down, the facade
        "siammae.propagation.engine": {"siammae.tracking.tracker"},  # up
        "siammae.train.loop": {"siammae.export.onnx"},  # sideways, same rank
    }
    assert _layering_violations(graph) == [
        "siammae.propagation.engine (rank 4) imports siammae.tracking.tracker (rank 6)",
        "siammae.train.loop (rank 5) imports siammae.export.onnx (rank 5)",
    ]


@pytest.mark.parametrize("command", ["track", "eval", "export", "attn", "train", "demo", "prepare"])
def test_help_loads_nothing_heavy(command):
    """--help imports no third-party heavyweight and no other command's package (siammae-track --help loads
    neither training nor evaluation nor scipy); a command may load the light config of its own package."""
    own = {
        "train": "siammae.train",
        "prepare": "siammae.train",
        "export": "siammae.export",
        "eval": "siammae.evaluation",
    }
    own = own.get(command)
    heavy = ["torch", "scipy", "timm", "onnx", "onnxruntime", "av", "cv2"]
    heavy += [p for p in ("siammae.train", "siammae.evaluation", "siammae.export", "siammae.tracking") if p != own]
    code = (
        "import sys\n"
        f"from siammae.cli.{command} import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"heavy = {tuple(heavy)!r}\n"
        "print(sorted(m for m in sys.modules if m in heavy or m.startswith(tuple(h + '.' for h in heavy))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Usage" in out
    assert out.strip().splitlines()[-1] == "[]", out.strip().splitlines()[-1]


def test_package_names_resolve_lazily():
    code = (
        "import sys, siammae\n"
        "assert 'torch' not in sys.modules\n"
        "names = siammae.__all__\n"
        "assert all(getattr(siammae, n) is not None for n in names)\n"
        "print(len(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 30


def test_tests_mirror_the_packages_and_import_no_test_module():
    tests = Path(__file__).resolve().parent
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    folders.discard("fixtures")  # data, not tests (tests/fixtures/README.md)
    assert folders <= packages, f"test folders without a package: {folders - packages}"
    for path in tests.rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.startswith("test_") for n in names), f"{path.name} imports a test module"


def test_the_specification_is_cited_inside_the_repository():
    """Code, tests, benchmarks and the READMEs cite the specification in docs/ (a fresh clone has it), and every
    ``docs/NAME.md`` they cite exists."""
    sources = [*PACKAGE.rglob("*.py"), *(ROOT / "tests").rglob("*.py"), *(ROOT / "benchmarks").rglob("*.py")]
    sources += [ROOT / "README.md", ROOT / "ARCHITECTURE.md"]
    outside, missing = [], []
    for path in sources:
        if path == Path(__file__).resolve():
            continue  # this test names the old place
        text = path.read_text()
        if "shared/docs" in text:
            outside.append(str(path.relative_to(ROOT)))
        for name in re.findall(r"\bdocs/([\w-]+\.md)", text):
            if not (ROOT / "docs" / name).is_file():
                missing.append(f"{path.relative_to(ROOT)}: docs/{name}")
    assert not outside, f"cite docs/ instead of ../shared/docs: {outside}"
    assert not missing, missing

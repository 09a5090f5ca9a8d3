"""The package's import graph, read with ``ast`` (every import statement, at module level or
inside a function): no cycles, inference never imports training (the core's nor a study's), and
the core never imports a study."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ldpm"
#: inference and reporting read checkpoints through ldpm.checkpoints, never ldpm.train; the
#: baselines' modules, which inference reads too, leave the training loop to ldpm.train.baselines
NO_TRAIN_IMPORTS = ("ldpm.methods", "ldpm.metrics", "ldpm.report", "ldpm.baselines")
#: the studies (ldpm.studies): each registers itself with the core, which never imports one;
#: only the command line and the Snakefile import them
STUDIES = "ldpm.studies"
ENTRY_POINTS = ("ldpm.cli",)
#: a study's modules that train; its other modules (graph, networks, checkpoints, methods,
#: evaluation, tables) are what inference and reporting read, and never import these or
#: ldpm.train. The package itself (its declaration) names its trainer, inside a function.
STUDY_TRAINING = ("train",)


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for f in root.rglob("*.py"):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports (``from pkg import name`` of a submodule
    counts as importing that submodule)."""
    mods = _modules(root)
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target, *(f"{target}.{a.name}" for a in node.names)]
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != mod:
                    deps.add(name)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

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
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and "ldpm.methods.graph" in graph["ldpm.methods"]
    assert cycles(graph) == []


def test_inference_metrics_and_report_never_import_training():
    bad = {m: sorted(d for d in deps if d == "ldpm.train" or d.startswith("ldpm.train."))
           for m, deps in import_graph().items() if m.startswith(NO_TRAIN_IMPORTS)}
    assert {m: d for m, d in bad.items() if d} == {}


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(f"{package}.")


def test_the_core_never_imports_a_study():
    bad = {m: sorted(d for d in deps if _within(d, STUDIES)) for m, deps in import_graph().items()
           if not _within(m, STUDIES) and m not in ENTRY_POINTS}
    assert {m: d for m, d in bad.items() if d} == {}


def _code_words(tree: ast.AST) -> set[str]:
    """The names a module's code uses (identifiers, attributes, imported names, string
    constants), its docstrings and comments left out."""
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr)
                  and isinstance(n.body[0].value, ast.Constant)}
    words: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Name):
            words.add(n.id)
        elif isinstance(n, ast.Attribute):
            words.add(n.attr)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            words.add(n.name)
        elif isinstance(n, ast.alias):
            words.update([n.name, n.asname or ""])
        elif isinstance(n, ast.ImportFrom):
            words.add(n.module or "")
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings:
            words.add(n.value)
    return words


def test_the_core_names_no_study():
    """Outside ldpm.studies (and the command line, which has DiffCode's own commands), no code
    names a study, its stages or its methods: the core asks the registered studies."""
    import ldpm.studies  # noqa: F401
    from ldpm.methods.graph import studies

    names = {n for s in studies() for n in (s.name, *s.stages, *s.methods)}
    found = {}
    for mod, path in _modules().items():
        if _within(mod, STUDIES) or mod in ENTRY_POINTS:
            continue
        words = _code_words(ast.parse(path.read_text(), str(path)))
        hits = sorted(w for w in words if w in names or any(s.name in w.lower() for s in studies()))
        found.update({mod: hits} if hits else {})
    assert found == {}


def test_a_studys_inference_modules_never_import_training():
    """ldpm.studies.<study>.<module>: only its training modules import ldpm.train or them."""
    graph = import_graph()
    studies = {m.split(".")[2] for m in graph if _within(m, STUDIES) and m.count(".") >= 2}
    assert {"lora", "diffcode"} <= studies
    training = {f"{STUDIES}.{s}.{t}" for s in studies for t in STUDY_TRAINING}
    declarations = {f"{STUDIES}.{s}" for s in studies}
    bad = {m: sorted(d for d in deps if _within(d, "ldpm.train") or d in training)
           for m, deps in graph.items()
           if _within(m, STUDIES) and m not in training | declarations | {STUDIES}}
    assert {m: d for m, d in bad.items() if d} == {}


def test_the_studies_register_their_graph_without_torch():
    """The command line and the Snakefile import ldpm.studies before they read a config: the
    studies' declarations and the stages and methods they add cost no torch import."""
    code = ("import sys, ldpm.studies, ldpm.methods.graph as g; "
            "assert {s.name for s in g.studies()} == {'lora', 'diffcode'}; "
            "assert 'lora_r4' in g.all_stages() and g.method_stages('ldpm_lora_mix_s10', False); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr[-2000:]


def test_the_graph_the_schema_and_the_tables_learn_the_baselines_without_torch():
    """The DAG is built and the config checked without torch: the baselines' declarations
    (ldpm.baselines) import it only inside their functions."""
    code = ("import sys, ldpm.methods, ldpm.config, ldpm.report.tables; ldpm.config.load_schema(); "
            "assert ldpm.methods.BASELINES; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr[-2000:]


def test_the_checks_catch_a_cycle_and_a_training_import(tmp_path):
    """On a toy package: a -> b -> a is a cycle, and a function-level import counts."""
    pkg = tmp_path / "ldpm"
    (pkg / "methods").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    (pkg / "methods" / "__init__.py").write_text("def g():\n    from ..train.loop import t\n")
    (pkg / "train").mkdir()
    (pkg / "train" / "__init__.py").write_text("")
    (pkg / "train" / "loop.py").write_text("t = 1\n")
    graph = import_graph(pkg)
    assert cycles(graph) == [["ldpm.a", "ldpm.b"]]
    assert graph["ldpm.methods"] == {"ldpm.train.loop"}

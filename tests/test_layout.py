"""The package's shape: no import cycle, no function-local import of compressor modules (but the command line's and
the package's lazy ones), no module over 300 lines, one folder per algorithm. Read from the source (AST), so
nothing here depends on import order."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "compressor"
MAX_LINES = 300
# every algorithm package is found from its folder (a new stage is one folder plus its entry point)
ALGORITHMS = tuple(sorted(p.name for p in (PACKAGE / "algorithms").iterdir() if (p / "__init__.py").is_file()))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(node: ast.AST, known: dict[str, Path]) -> list[str]:
    """compressor modules named by an import statement (`from pkg import mod` names the module when it is one)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known]
        return subs or ([node.module] if node.module in known else [])
    return []


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text())
        graph[name] = {m for node in ast.walk(tree) for m in imported(node, known) if m != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_import_graph_is_acyclic():
    graph = import_graph()
    assert len(graph) > 30
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


# the command line imports each command's implementation when it runs, and the package its torch-backed public names
# when first asked for (PEP 562), so `compress --help` and `diff` start without torch; the floor check still sees them
LAZY_IMPORTERS = ("compressor", "compressor.cli")


def test_no_function_local_imports_of_compressor_modules():
    local = []
    for name, path in modules().items():
        if name in LAZY_IMPORTERS:
            continue
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                        if any(n == "compressor" or n.startswith("compressor.") for n in names):
                            local.append(f"{name}:{node.lineno}")
    assert not local, local


def test_no_module_over_300_lines():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_each_algorithm_in_its_own_folder():
    graph = import_graph()
    for algo in ALGORITHMS:
        folder = PACKAGE / "algorithms" / algo
        assert (folder / "__init__.py").is_file() and (folder / "stage.py").is_file(), algo
        # an algorithm never reaches into another algorithm's folder
        prefix = f"compressor.algorithms.{algo}"
        for mod, deps in graph.items():
            if mod.startswith(prefix):
                others = [d for d in deps if d.startswith("compressor.algorithms.") and not d.startswith(prefix)]
                assert not others, (mod, others)


# The floors of the house, lowest first (docs/DESIGN.md, "Layers"): a module imports only from its own floor or
# below. Judging (judge/) sits below the algorithms that search with it; measuring written artifacts (verify/) sits
# after export/.
FLOORS = (
    ("compressor.errors", "compressor.version", "compressor.defaults"),
    ("compressor.schema", "compressor.stage"),
    ("compressor.registry",),
    ("compressor.io",),
    ("compressor.runtime",),
    ("compressor.judge",),
    ("compressor.core",),
    ("compressor.algorithms",),
    ("compressor.export",),
    ("compressor.verify",),
    ("compressor.report",),
    ("compressor.run",),
    ("compressor.inspect_model", "compressor.cli_errors", "compressor.cli", "compressor.__main__", "compressor.api",
     "compressor"),
)


def floor_of(module: str) -> int:
    best = None
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if module == prefix or (prefix != "compressor" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[1]:
                    best = (level, len(prefix))
    assert best is not None, f"{module} is on no floor: add its package to FLOORS and docs/DESIGN.md"
    return best[0]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{mod} -> {dep}" for mod, deps in graph.items() for dep in deps if floor_of(dep) > floor_of(mod))


def test_every_import_points_down_the_floors():
    assert upward_imports(import_graph()) == []


def test_the_floor_check_sees_an_upward_import():
    assert upward_imports({"compressor.judge.budget": {"compressor.core.finetune"}}) == [
        "compressor.judge.budget -> compressor.core.finetune"]


CONTRACT_USERS = ("compressor.algorithms", "compressor.core")


def ctx_attributes(tree: ast.AST) -> set[str]:
    """The names read or set as `ctx.<name>` in a module."""
    return {n.attr for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "ctx"}


def test_stages_use_only_the_stage_contract():
    from compressor.core.contract import CONTRACT

    outside = {f"{name}: ctx.{attr}" for name, path in modules().items() if name.startswith(CONTRACT_USERS)
               for attr in ctx_attributes(ast.parse(path.read_text())) - CONTRACT}
    assert not outside, sorted(outside)


def test_the_contract_check_sees_an_attribute_outside_it():
    assert ctx_attributes(ast.parse("def f(ctx):\n    return ctx.heldout, ctx.model")) == {"heldout", "model"}


def test_the_run_context_implements_the_contract():
    from compressor.core.contract import CONTRACT
    from compressor.run.pipeline import RunContext

    fields = set(RunContext.__dataclass_fields__) | {n for n in dir(RunContext) if not n.startswith("_")}
    assert CONTRACT <= fields, sorted(CONTRACT - fields)


def test_each_algorithm_registers_through_its_entry_point():
    """One registration path: a built-in stage is an entry point of the `compressor.stages` group (pyproject.toml),
    never also a `register_stage` decorator."""
    import tomllib

    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    targets = project["entry-points"]["compressor.stages"].values()
    assert len(ALGORITHMS) >= 5
    for algo in ALGORITHMS:
        assert any(t.startswith(f"compressor.algorithms.{algo}:") for t in targets), algo
        for path in (PACKAGE / "algorithms" / algo).rglob("*.py"):
            assert "register_stage" not in path.read_text(), path
    from importlib.metadata import EntryPoint

    from compressor.stage import Stage

    for name, target in project["entry-points"]["compressor.stages"].items():
        cls = EntryPoint(name, target, "compressor.stages").load()
        assert issubclass(cls, Stage) and cls.name == name, (name, target)


MAX_RUN_FUNCTION_LINES = 40


def long_functions(prefix: str, limit: int) -> dict[str, int]:
    """Functions of the modules under `prefix` longer than `limit` lines (from `def` to the last line)."""
    long = {}
    for name, path in modules().items():
        if name.startswith(prefix):
            for fn in ast.walk(ast.parse(path.read_text())):
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    if (n := fn.end_lineno - fn.lineno + 1) > limit:
                        long[f"{name}.{fn.name}"] = n
    return long


def test_the_run_is_short_phases():
    """The run drives phases (run/runner.py); no function of run/ grows into a hub again."""
    assert long_functions("compressor.run", MAX_RUN_FUNCTION_LINES) == {}


def test_readme_fits_one_screen():
    """README.md says what compressor is, how to install and start, and links to docs/ for the rest."""
    readme = PACKAGE.parent / "README.md"
    assert len(readme.read_text().splitlines()) <= 120, "README.md over 120 lines: move the detail into docs/"


def test_no_work_log_history_in_code_tests_or_docs():
    """Code, tests and docs say what the code does and why; which session or issue changed it belongs in commit
    messages and bench/results (CONTRIBUTING.md)."""
    import re
    history = re.compile(r"\b(?:session|issue)s?\s*#?\d|\(#\d{1,3}\)", re.IGNORECASE)  # the pattern's own line
    root = PACKAGE.parent
    files = [p for folder in ("compressor", "tests", "docs") for p in sorted((root / folder).rglob("*"))
             if p.suffix in {".py", ".md", ".txt", ".yaml", ".toml"}]
    hits = [f"{p.relative_to(root)}:{n}: {line.strip()}" for p in files
            for n, line in enumerate(p.read_text().splitlines(), 1)
            if history.search(line) and "the pattern's own line" not in line]
    assert len(files) > 50 and not hits, "\n".join(hits)

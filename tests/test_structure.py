"""The package's shape: no import cycles (counting imports inside functions, which hide them), no function over
80 lines, the zoo's modules small."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "slimzoo"


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the slimzoo modules it imports anywhere in its body (``from .x import y`` counts as importing
    ``x.y`` when that is a module, else ``x``)."""
    edges = {}
    for name, path in mods.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        out = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here[:len(here) - (node.level - 1)] + ([node.module] if node.module else [])
                    target = ".".join(base)
                elif (node.module or "").startswith("slimzoo"):
                    target = node.module
                else:
                    continue
                out |= {f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target for a in node.names}
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names if a.name.startswith("slimzoo")}
        edges[name] = {m for m in out if m in mods and m != name}
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    edges = _imports(_modules())
    assert edges["slimzoo.report"] and "slimzoo.zoo.results" in edges["slimzoo.report"]  # the walk sees imports
    cycles = _cycles(edges)
    detail = [" ; ".join(f"{a} -> {sorted(edges[a] & set(c))}" for a in c) for c in cycles]
    assert not cycles, f"import cycles: {detail}"


def test_the_walk_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]


def test_no_function_over_80_lines():
    long = []
    for p in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{p.relative_to(PKG.parent)}:{node.lineno} {node.name} "
                            f"({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_zoo_modules_stay_small():
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (PKG / "zoo").glob("*.py")}
    assert sizes and all(n < 250 for n in sizes.values()), sizes


def test_rendering_imports_nothing_from_the_runner():
    edges = _imports(_modules())
    for renderer in ("slimzoo.report", "slimzoo.zoo.results"):
        assert not {"slimzoo.zoo.runner", "slimzoo.zoo.artifacts", "slimzoo.zoo.strategies"} & edges[renderer]


def test_the_tasks_implement_the_task_protocol(synth_cls):
    from slimzoo.tasks import Task, get_task
    from slimzoo.tasks.detection import DetectionTask
    from slimzoo.tasks.segmentation import SegmentationTask

    task = get_task("classification", data_root=synth_cls, image_size=32, batch_size=8, num_workers=0)
    assert isinstance(task, Task)
    members = [m for m in dir(Task) if not m.startswith("_")]
    for cls in (DetectionTask, SegmentationTask):
        missing = [m for m in members if not hasattr(cls, m) and m not in cls.__dataclass_fields__]
        assert not missing, (cls.__name__, missing)

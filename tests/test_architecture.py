"""The layout is the architecture: library packages import one way (no upward arrows, no cycles), the library never
imports an entry point, benchmarks and scripts import only the library, and no trainer or config names a variant."""
import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each library package and the packages below it that it may import (its own modules too). Same-level packages
# (runtime | data, rollout | scoring, training | serving) never import each other.
LAYERS = {
    "core": set(),
    "runtime": {"core"},
    "data": {"core"},
    "adapter": {"core", "runtime", "data"},
    "algo": {"core", "adapter"},
    "rollout": {"core", "runtime", "data", "adapter", "algo"},
    "scoring": {"core", "runtime", "data"},
    "evaluation": {"core", "runtime", "data", "adapter", "algo", "rollout", "scoring"},
    "training": {"core", "runtime", "data", "adapter", "algo", "rollout", "scoring", "evaluation"},
    "serving": {"core", "runtime", "data", "adapter", "algo", "rollout", "scoring", "evaluation"},
}
ENTRY_POINTS = {p.stem for p in (ROOT / "rlhf").glob("*.py") if p.stem != "__init__"}


def imports(path: Path) -> list[str]:
    """Every module a file imports, at any depth (function-level imports count)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names]
    return out


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "rlhf" and len(parts) > 1 and parts[1] in LAYERS else None


def library_files() -> list[Path]:
    return sorted(p for pkg in LAYERS for p in (ROOT / "rlhf" / pkg).glob("*.py"))


def test_library_packages_import_only_downward():
    wrong = []
    for path in library_files():
        own = path.parent.name
        for module in imports(path):
            pkg = package_of(module)
            if pkg is not None and pkg != own and pkg not in LAYERS[own]:
                wrong.append(f"{path.relative_to(ROOT)} imports {module} ({own} -> {pkg})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_library_modules():
    graph = {}
    for path in library_files():
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        graph[name] = {m for m in imports(path) if m in {".".join(p.relative_to(ROOT).with_suffix("").parts)
                                                         for p in library_files()}} - {name}
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            pytest.fail("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in seen:
            return
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()
        seen.add(node)

    for node in sorted(graph):
        visit(node)


def test_library_never_imports_an_entry_point_or_the_tests():
    wrong = []
    for path in library_files() + sorted((ROOT / "hhbench").glob("*.py")):
        for module in imports(path):
            parts = module.split(".")
            if (parts[0] == "rlhf" and len(parts) > 1 and parts[1] in ENTRY_POINTS) or parts[0] in (
                    "reward_models", "tests"):
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_benchmarks_and_scripts_import_only_the_library():
    wrong = [f"{p.relative_to(ROOT)} imports {m}" for d in ("benchmarks", "scripts") for p in (ROOT / d).glob("*.py")
             for m in imports(p) if m.split(".")[0] == "tests"]
    assert not wrong, "\n".join(wrong)


def test_no_trainer_config_or_benchmark_tests_a_variant_by_name():
    """Variants are told apart by their registry entries' capabilities, never by string compares elsewhere (the issue's
    grep, plus the preference and aggregation names); only a file that registers entries may read its own fields."""
    pattern = re.compile(r'== "group"|== "gae"|== "hf"|estimator ==|backend ==|mode == "fixed"|per == "sample"|'
                         r'name == "(ls|tche|stche|dirichlet|fixed|model)"')
    registries = {p for p in (ROOT / "rlhf").rglob("*.py") if ".register(" in p.read_text()}
    assert registries, "no registry found"
    hits = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
            for d in ("rlhf", "benchmarks") for p in sorted((ROOT / d).rglob("*.py")) if p not in registries
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "\n".join(hits)


@pytest.mark.parametrize("module", sorted(ENTRY_POINTS) + ["reward_models.train", "reward_models.score",
                                                           "reward_models.convert_safe_rlhf", "hhbench"])
def test_every_entry_point_runs_as_a_module(module):
    name = module if "." in module or module == "hhbench" else f"rlhf.{module}"
    out = subprocess.run([sys.executable, "-m", name, "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(out.stdout.splitlines()) >= 3, out.stdout  # its usage and options

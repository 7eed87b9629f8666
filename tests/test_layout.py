"""The two planes keep their shape: stages/ (data plane) imports from pipeline/ (control plane) only the row contract,
io, models, the toy and linear worlds and the plotting helper; pipeline's ground floor never imports its sweep or
theory floor; no import cycles; Ray is started in one function; the runner never tests a stage's name; no module grows
past 700 lines."""

from __future__ import annotations

import ast
import graphlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "stages", "verifiers")
# What the data plane may take from the control plane.
STAGES_MAY_IMPORT = {"pipeline.columns", "pipeline.io", "pipeline.models", "pipeline.toyworld", "pipeline.linearworld",
                     "pipeline.plots"}
UPPER_FLOOR = ("pipeline.sweep", "pipeline.theory")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    """Every project module that ``module`` imports, at the top or inside functions."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            resolved = _resolve(target)
            if resolved and resolved != module:
                found.add(resolved)
    return found


def test_stages_import_only_the_row_contract_io_models_and_the_worlds_from_pipeline():
    bad = {m: sorted(i for i in _imports(m) if i.startswith("pipeline.") and i not in STAGES_MAY_IMPORT)
           for m in MODULES if m.startswith("stages")}
    assert not {m: i for m, i in bad.items() if i}


def test_pipeline_ground_floor_does_not_import_the_sweep_or_theory_floor():
    ground = [m for m in MODULES if m.count(".") == 1 and m.startswith("pipeline.")
              and not m.startswith(UPPER_FLOOR) and m != "pipeline.cli"]  # the CLI wires every command
    bad = {m: sorted(i for i in _imports(m) if i.startswith(UPPER_FLOOR)) for m in ground}
    assert not {m: i for m, i in bad.items() if i}


def test_no_import_cycles():
    sorter = graphlib.TopologicalSorter({m: _imports(m) for m in MODULES})
    sorter.prepare()  # raises CycleError naming the cycle


def test_ray_is_started_in_one_function():
    starters = sorted(str(p.relative_to(ROOT)) for p in MODULES.values() if re.search(r"\bray\.init\(", p.read_text()))
    assert starters == ["pipeline/cluster.py"]


def test_the_runner_tests_no_stage_name():
    text = (ROOT / "pipeline" / "runner.py").read_text()
    assert not re.search(r"\.name\s*(==|!=|in\b)", text)
    from pipeline.registry import STAGES

    kinds = {"source", "map", "sink"}  # a stage kind may share a word with a stage name
    assert not [name for name in STAGES if name not in kinds and re.search(rf"[\"']{name}[\"']", text)]


def test_no_module_past_700_lines_but_the_theory_model():
    big = {str(p.relative_to(ROOT)): n for p in MODULES.values()
           if (n := len(p.read_text().splitlines())) > 700 and p.parts[-2:] != ("theory", "model.py")}
    assert not big

"""The shared pool: one runner run per generator (source -> sample -> verify -> difficulty), reading it back, the
nested pool subsets of the grid, and the reference evaluation of the untouched student and the generators."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline import io
from pipeline.sweep.config import SweepConfig, code_version, trial_config_json
from pipeline.sweep.layout import MANIFEST_FILE, POOL_DIR, REFERENCE_DIR


def pool_source(cfg: SweepConfig, generator: str):
    """The source block of one generator's pool: ``pool.source``, with the linear world's oracle of that generator
    (its own ``oracle``, else the source's) measured against it."""
    source = cfg.pool.source
    spec = cfg.pool.generators[generator]
    oracle = spec.oracle or source.oracle
    if source.kind != "linear" or oracle is None:
        return source
    return source.model_copy(update={"oracle": oracle.model_copy(update={"generator": spec.model})})


def pool_geometry(cfg: SweepConfig, generator: str):
    """The ``pipeline.linearworld.Geometry`` of a linear generator's pool (its rho, its oracle's rho* and rho_g);
    None outside the linear world."""
    from pipeline.linearworld import Geometry, parse_spec

    source = pool_source(cfg, generator)
    if source.kind != "linear":
        return None
    rho = parse_spec(cfg.pool.generators[generator].model).rho
    return source.oracle.geometry() if source.oracle is not None else Geometry(rho=rho, rho_star=1.0)


def pool_run_config(cfg: SweepConfig, generator: str):
    """The runner config that builds one generator's pool: source -> sample -> verify -> difficulty."""
    from pipeline.config import RunConfig

    spec = cfg.pool.generators[generator]
    sample = cfg.pool.sample.model_copy(update={"model": spec.model, "gguf_file": spec.gguf_file})
    return RunConfig.model_validate({
        "name": generator, "output_root": str(cfg.resolved_run_dir), "run_dir": f"{POOL_DIR}/{generator}",
        "seed": cfg.seed, "ray": cfg.ray,
        "stages": (("source", pool_source(cfg, generator)), ("sample", sample), ("verify", cfg.pool.verify),
                   ("difficulty", cfg.pool.difficulty)),
    })


def build_pools(cfg: SweepConfig, console=None) -> dict[str, Any]:
    """Run the runner once per generator (skipped when up to date) and write ``pool/manifest.json``.

    The manifest holds, per generator, the difficulty stage's directory and fingerprint, the model, and the pool's
    trace accuracy overall and per level (the generator-quality proxy of the theory); in a linear world also
    ``linear``: the set geometry (``dim``, ``rho``, ``rho_star``, ``rho_g``, ``sigma``).
    """
    from pipeline.linearworld import parse_spec

    import numpy as np

    from pipeline import columns as C
    from pipeline.runner import run

    manifest: dict[str, Any] = {"generators": {}}
    for name, spec in cfg.pool.generators.items():
        result = run(pool_run_config(cfg, name), console=console)
        by_stage = {s.name: s for s in result.stages}
        table = io.read_columns(by_stage["difficulty"].directory,
                                [C.PROBLEM_ID, C.LEVEL, C.CORRECT, C.PASS_RATE]).to_pandas()
        per_level = {}
        if table[C.LEVEL].notna().any():
            per_level = {str(int(k)): float(v) for k, v in table.groupby(C.LEVEL)[C.CORRECT].mean().items()}
        problems = table.drop_duplicates(C.PROBLEM_ID)
        manifest["generators"][name] = {
            "model": spec.model,
            "directory": by_stage["difficulty"].directory,
            "source_directory": by_stage["source"].directory,
            "fingerprint": by_stage["difficulty"].fingerprint,
            "problems": int(len(problems)),
            "samples": int(len(table)),
            "trace_accuracy": float(table[C.CORRECT].mean()) if len(table) else float("nan"),
            "trace_accuracy_by_level": per_level,
            "pass_rate_histogram": {f"{k:.3g}": int(v) for k, v in
                                    problems[C.PASS_RATE].round(3).value_counts().sort_index().items()},
            "solved_any": float(np.mean(problems[C.PASS_RATE] > 0)) if len(problems) else float("nan"),
            "seconds": round(sum(s.seconds for s in result.stages), 1),
        }
        geometry = pool_geometry(cfg, name)
        if geometry is not None:
            manifest["generators"][name]["linear"] = {
                "dim": cfg.pool.source.dim, "rho": geometry.rho, "rho_star": geometry.rho_star,
                "rho_g": geometry.resolved_rho_g, "sigma": parse_spec(spec.model).sigma}
    path = cfg.resolved_run_dir / POOL_DIR / MANIFEST_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The pool manifest that ``build_pools`` wrote."""
    return json.loads((Path(run_dir) / POOL_DIR / MANIFEST_FILE).read_text())


def pool_samples(manifest: dict[str, Any], generator: str):
    """One generator's pool as a pandas table: one row per sample, with pass rates (completion text included).

    Rows are sorted by problem and sample: part files are named at random per run, and the row order decides a
    trial's training order, so without the sort two fresh runs of one sweep would train on differently ordered data.
    """
    from pipeline import columns as C

    table = io.read_table(manifest["generators"][generator]["directory"]).to_pandas()
    return table.sort_values([C.PROBLEM_ID, C.SAMPLE_IDX], kind="stable").reset_index(drop=True)


def pool_problems(manifest: dict[str, Any]):
    """The pool's problem rows (ids and texts), which held-out problems must not share."""
    from pipeline import columns as C

    first = next(iter(manifest["generators"].values()))
    return io.read_columns(first["source_directory"], [C.PROBLEM_ID, C.PROBLEM, C.LEVEL]).to_pandas()


def nested_subset(problem_ids, n: int, seed: int) -> list[str]:
    """The first ``n`` problems of a seeded random order: nested in n for one seed, the same for every generator."""
    import numpy as np

    from stages.rules import unit_hash

    ids = sorted(set(map(str, problem_ids)))
    order = np.argsort(unit_hash(seed, "pool_subset", ids), kind="stable")
    return [ids[i] for i in order[:n]]


def read_scores(eval_dir: str | os.PathLike, model: str = "finetuned"):
    """Per held-out problem of an evaluation directory: ``problem_id``, ``level`` and ``correct`` (the greedy
    completion's verdict; without greedy decoding, the mean over the sampled completions)."""
    import pandas as pd

    from pipeline import columns as C

    eval_dir = Path(eval_dir)
    greedy = eval_dir / "samples" / f"{model}_greedy.parquet"
    sampled = eval_dir / "samples" / f"{model}_sampled.parquet"
    path = greedy if greedy.is_file() else sampled
    rows = pd.read_parquet(path, columns=[C.PROBLEM_ID, C.LEVEL, C.SAMPLE_IDX, C.CORRECT])
    if path is greedy:
        rows = rows.sort_values(C.SAMPLE_IDX).drop_duplicates(C.PROBLEM_ID)
    out = rows.groupby(C.PROBLEM_ID, sort=True).agg(level=(C.LEVEL, "first"), correct=(C.CORRECT, "mean"))
    return out.reset_index()


# -- reference evaluation (student before training, generators) ----------------------------------------------------


UNTRAINED_LINEAR_STUDENT = "linear:rho=0"  # no information about w*: a direction orthogonal to it, error 1/2


def untrained_student(cfg: SweepConfig) -> str:
    """The model the reference evaluates as the student before training: ``finetune.student`` (TRL), or for the
    linear student a direction orthogonal to w* (what ridge knows with no data: nothing)."""
    return UNTRAINED_LINEAR_STUDENT if cfg.student.kind == "linear" else cfg.finetune.student


def reference_evaluation(cfg: SweepConfig, manifest: dict[str, Any], console=None) -> dict[str, Any]:
    """Evaluate the untouched student and every generator once on the held-out problems (cached)."""
    from pipeline import evaluate as ev
    from pipeline.models import model_fingerprint, resolve_model

    out = cfg.resolved_run_dir / REFERENCE_DIR
    student = untrained_student(cfg)
    models = {"student": (student, resolve_model(student))}
    gguf = {"student": cfg.finetune.gguf_file}
    for name, spec in cfg.pool.generators.items():
        models[f"generator:{name}"] = (spec.model, resolve_model(spec.model))
        gguf[f"generator:{name}"] = spec.gguf_file
    problems = pool_problems(manifest)
    fp = io.digest({k: model_fingerprint(p) for k, (_, p) in models.items()}, trial_config_json(cfg), code_version(),
                   sorted(problems["problem_id"]))
    if io.marker_matches(out, fp):
        return json.loads((out / "metrics.json").read_text())
    if console is not None:
        console.print(f"[bold cyan]reference[/]: evaluating {', '.join(models)} on the held-out problems")
    ecfg = cfg.evaluate.model_copy(update={"compare_base": False})
    metrics = ev.evaluate(ecfg, models, out, run_seed=cfg.seed, sample_cfg=cfg.pool.sample,
                          verify_cfg=cfg.pool.verify, exclude_ids=set(problems["problem_id"]),
                          exclude_texts=set(problems["problem"]), model_gguf=gguf, pairs=[])
    io.write_marker(out, fp)
    return metrics


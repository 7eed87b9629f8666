"""The shared pool: one runner run per generator (source -> sample -> verify -> difficulty), reading it back, the
nested pool subsets of the grid, and the reference evaluation of the untouched student and the generators."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline import io
from pipeline.sweep.config import ORACLE_POOL, SweepConfig, code_version, trial_config_json
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
    """The runner config that builds one generator's pool (source -> sample -> verify -> difficulty); with
    ``generator`` = ``ORACLE_POOL``, the samples of ``pool.oracle`` on the same problems."""
    from pipeline.config import RunConfig

    if generator == ORACLE_POOL and cfg.pool.oracle is not None:
        oracle = cfg.pool.oracle
        update = {"model": oracle.model, "gguf_file": None, "k": oracle.k, "rounds": None}
        if oracle.temperature is not None:
            update["temperature"] = oracle.temperature
        sample, source = cfg.pool.sample.model_copy(update=update), cfg.pool.source
    else:
        spec = cfg.pool.generators[generator]
        sample = cfg.pool.sample.model_copy(update={"model": spec.model, "gguf_file": spec.gguf_file})
        source = pool_source(cfg, generator)
    return RunConfig.model_validate({
        "name": generator, "output_root": str(cfg.resolved_run_dir), "run_dir": f"{POOL_DIR}/{generator}",
        "seed": cfg.seed, "ray": cfg.ray,
        "stages": (("source", source), ("sample", sample), ("verify", cfg.pool.verify),
                   ("difficulty", cfg.pool.difficulty)),
    })


def build_oracle(cfg: SweepConfig, console=None) -> dict[str, Any] | None:
    """Sample ``pool.oracle`` on the pool's problems (skipped when up to date) and measure it against its reference
    difficulty on the audit subset (cached); the manifest's ``oracle`` entry. None without ``pool.oracle``."""
    import numpy as np

    from pipeline import columns as C
    from pipeline.runner import run

    oracle = cfg.pool.oracle
    if oracle is None:
        return None
    result = run(pool_run_config(cfg, ORACLE_POOL), console=console)
    by_stage = {s.name: s for s in result.stages}
    directory, fingerprint = by_stage["difficulty"].directory, by_stage["difficulty"].fingerprint
    table = io.read_columns(directory, [C.PROBLEM_ID, C.PASS_RATE]).to_pandas().drop_duplicates(C.PROBLEM_ID)
    audit = oracle_audit(cfg, by_stage["source"].directory, fingerprint, console)
    return {"model": oracle.model, "k": oracle.k, "directory": directory, "fingerprint": fingerprint,
            "problems": int(len(table)), "mean_pass_rate": float(table[C.PASS_RATE].mean()),
            "solved_any": float(np.mean(table[C.PASS_RATE] > 0)), "audit": audit,
            "seconds": round(sum(s.seconds for s in result.stages), 1)}


AUDIT_FILE = "audit.parquet"
AUDIT_SEED_OFFSET = 7_777_777  # the reference samples' seeds: none of them is a seed of the oracle's own samples


def oracle_audit(cfg: SweepConfig, source_dir: str, oracle_fingerprint: str, console=None) -> dict[str, Any]:
    """The reference difficulty: ``pool.oracle``'s pass rate over ``audit_k`` fresh samples (other seeds) of
    ``audit_problems`` pool problems, written to ``pool/oracle/audit.parquet`` (problem_id, level,
    reference_pass_rate); cached by the oracle pool's fingerprint and the audit settings."""
    import pandas as pd

    from pipeline import columns as C
    from pipeline.evaluate import generate_and_verify
    from pipeline.models import resolve_model
    from stages.verify import VerifyStage

    oracle = cfg.pool.oracle
    out = cfg.resolved_run_dir / POOL_DIR / ORACLE_POOL / "audit"
    fp = io.digest(oracle_fingerprint, oracle.audit_problems, oracle.audit_k, code_version())
    summary = {"path": str(out / AUDIT_FILE), "k": oracle.audit_k}
    if io.marker_matches(out, fp):
        return {**summary, "problems": int(len(pd.read_parquet(out / AUDIT_FILE)))}
    problems = io.read_table(source_dir).to_pandas()
    if C.REJECT_REASON in problems:  # quarantined input is no pool problem
        problems = problems[problems[C.REJECT_REASON].isna()]
    chosen = set(nested_subset(problems[C.PROBLEM_ID], oracle.audit_problems, cfg.seed))
    rows = problems[problems[C.PROBLEM_ID].isin(chosen)].sort_values(C.PROBLEM_ID)
    rows = rows.drop(columns=[c for c in rows.columns if c == C.REJECT_REASON]).to_dict("records")
    if console is not None:
        console.print(f"[bold cyan]oracle audit[/]: {oracle.model} x {oracle.audit_k} samples on {len(rows)} problems")
    update = {"k": oracle.audit_k, "rounds": None, "cache_dir": None, "seed": cfg.seed + AUDIT_SEED_OFFSET}
    if oracle.temperature is not None:
        update["temperature"] = oracle.temperature
    sample_cfg = cfg.pool.sample.model_copy(update=update)
    verified = pd.DataFrame(generate_and_verify(oracle.model, resolve_model(oracle.model), rows, sample_cfg,
                                                VerifyStage(cfg.pool.verify), cfg.evaluate.batch_size,
                                                cfg.seed + AUDIT_SEED_OFFSET))
    usable = verified[verified[C.FINISH_REASON] != "error"]
    reference = usable.groupby(C.PROBLEM_ID).agg(level=(C.LEVEL, "first"), reference_pass_rate=(C.CORRECT, "mean"))
    out.mkdir(parents=True, exist_ok=True)
    reference.reset_index().to_parquet(out / AUDIT_FILE, index=False)
    io.write_marker(out, fp)
    return {**summary, "problems": int(len(reference))}



def build_pools(cfg: SweepConfig, console=None) -> dict[str, Any]:
    """Run the runner once per generator (skipped when up to date) and write ``pool/manifest.json``.

    The manifest holds, per generator, the difficulty stage's directory and fingerprint, the model, and the pool's
    trace accuracy overall and per level (the generator-quality proxy of the theory); in a linear world also
    ``linear``: the set geometry (``dim``, ``rho``, ``rho_star``, ``rho_g``, ``sigma``). With ``pool.oracle``, an
    ``oracle`` entry (``build_oracle``): its difficulty directory, fingerprint and audit.
    """
    from pipeline.linearworld import parse_spec

    import numpy as np

    from pipeline import columns as C
    from pipeline.runner import run

    manifest: dict[str, Any] = {"generators": {}}
    oracle = build_oracle(cfg, console)
    if oracle is not None:
        manifest["oracle"] = oracle
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
            # A trial's data depends on the oracle's scores too.
            "fingerprint": (by_stage["difficulty"].fingerprint if oracle is None
                            else io.digest(by_stage["difficulty"].fingerprint, oracle["fingerprint"])),
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
    """One generator's pool as a pandas table: one row per sample, with pass rates (completion text included); with
    an oracle in the manifest, its pass rate (and interval, tier, model) is the difficulty.

    Rows are sorted by problem and sample: part files are named at random per run, and the row order decides a
    trial's training order, so without the sort two fresh runs of one sweep would train on differently ordered data.
    """
    from pipeline import columns as C

    table = io.read_table(manifest["generators"][generator]["directory"]).to_pandas()
    oracle = manifest.get("oracle")
    if oracle is not None:  # the oracle's pass rate is the difficulty; n_samples / n_correct stay the generator's
        scored = (C.PASS_RATE, C.CI_LOW, C.CI_HIGH, C.TIER)
        scores = io.read_columns(oracle["directory"], [C.PROBLEM_ID, *scored]).to_pandas()
        scores = scores.drop_duplicates(C.PROBLEM_ID).set_index(C.PROBLEM_ID)
        for col in scored:
            table[col] = table[C.PROBLEM_ID].map(scores[col]).to_numpy()
        table[C.DIFFICULTY_MODEL] = oracle["model"]
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


"""The trials: one cell curated from the pool, trained and evaluated (``run_trial``), the collapse-loop chains, Ray
Tune running them (``run_trials``), and the results table.

What a trial's result holds (``result.json``; ``flat_metrics`` puts the scalars in the results table):

- ``spec`` (the cell: generator, pool_size, rule, keep_fraction, oracle_noise, generator_noise, seed), ``curation``
  (what the rule kept, and ``theory_keep_fraction``, see ``theory_keep_fraction``), the evaluation ``metrics``
  (metric -> group -> value and interval), ``seconds``, ``fingerprint``; per held-out problem, ``scores.parquet``;
- for the linear student, also what the theory needs to predict the cell (pipeline.theory's names): ``d``,
  ``rho`` (cos(w_g, w*) of the generator that labelled the data), ``rho_star`` (cos(w_o, w*)), ``rho_g``
  (cos(w_o, w_g)), ``lam``, ``n`` (the pool size, which the ridge loss averages over), ``p`` (the theory's keep
  fraction) and ``exact_error`` (arccos(cos(w, w*))/pi of the trained student), with ``learned_rho`` /
  ``learned_rho_g`` (the student's own cosines with w* and w_o); a loop chain has them per round.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pipeline import io
from pipeline.sweep.config import (LABEL_AGNOSTIC_FORM, RULE_SPECS, SweepConfig, code_version, parse_sweep_config,
                                   trial_config_json)
from pipeline.sweep.layout import (CONFIG_FILE, MANIFEST_FILE, POOL_DIR, RESULT_FILE, SCORES_FILE, TRIALS_DIR, TUNE_DIR,
                                   round_dirname)
from pipeline.sweep.pool import nested_subset, pool_geometry, pool_problems, pool_samples, pool_source, read_manifest
from pipeline.sweep.student import MODEL_SUBDIR, train_and_evaluate

# -- one trial -----------------------------------------------------------------------------------------------------


def curate_config(rule: str, keep_fraction: float, oracle_noise: float, generator_noise: float, seed: int):
    """The curate stage config of one cell (no curation report: trials write their own summary)."""
    from stages.curate import CurateConfig

    return CurateConfig(**RULE_SPECS[rule], p=keep_fraction, oracle_noise=oracle_noise,
                        generator_noise=generator_noise, seed=seed, report=False)


def curate_rows(samples, rule: str, keep_fraction: float, oracle_noise: float, generator_noise: float, seed: int):
    """Curate a sample table for one cell; returns (training rows DataFrame, summary dict)."""
    from pipeline import columns as C
    from stages.curate import plan, training_rows

    ccfg = curate_config(rule, keep_fraction, oracle_noise, generator_noise, seed)
    decisions = plan(samples, ccfg, seed)
    rows = training_rows(samples, decisions)
    dropped = decisions.loc[~decisions[C.KEPT].to_numpy(), C.DROP_REASON].value_counts()
    summary = {
        "rule_label": ccfg.rule_label,
        "pool_problems": int(samples[C.PROBLEM_ID].nunique()),
        "kept_rows": int(len(rows)),
        "kept_problems": int(rows[C.PROBLEM_ID].nunique()) if len(rows) else 0,
        "theory_keep_fraction": theory_keep_fraction(samples, rows, rule, oracle_noise, seed),
        "kept_trace_accuracy": float(rows[C.CORRECT].mean()) if len(rows) else float("nan"),
        "kept_mean_pass_rate": float(rows[C.PASS_RATE].mean()) if len(rows) and C.PASS_RATE in rows else float("nan"),
        "kept_by_level": ({str(int(k)): int(v) for k, v in rows[C.LEVEL].value_counts().sort_index().items()}
                          if len(rows) and C.LEVEL in rows and rows[C.LEVEL].notna().any() else {}),
        "dropped": {str(k): int(v) for k, v in dropped.items()},
        "generator_noise_rows": int(rows[C.GENERATOR_NOISE].notna().sum()) if len(rows) else 0,
        "oracle_noise_problems": int(rows.loc[rows[C.ORACLE_NOISE].astype(bool), C.PROBLEM_ID].nunique())
        if len(rows) else 0,
    }
    return rows, summary


def theory_keep_fraction(samples, rows, rule: str, oracle_noise: float, seed: int) -> float:
    """The keep fraction p of the theory (``pipeline.theory``) that a cell's curation realised.

    The pipeline's ``keep_fraction`` of a label-aware rule counts problems *after* the correctness filter (the
    budget takes p n of the problems with a correct trace); the theory's p is the fraction the difficulty rule keeps
    *before* it. So p is the share of the pool's n problems that the rule's label-agnostic order (the same scores
    and tie-breaks, no filter) places at or before the last kept problem: for keep_hard_correct, the pool's
    problems with an oracle margin at most the largest kept one. For a label-agnostic rule that is the kept share
    itself, and for ``correct_only`` (no difficulty rule) it is 1."""
    from pipeline import columns as C
    from stages.curate import plan

    n = samples[C.PROBLEM_ID].nunique()
    kept = set(rows[C.PROBLEM_ID]) if len(rows) else set()
    agnostic = LABEL_AGNOSTIC_FORM.get(rule)
    if agnostic is None or not kept or n == 0:
        return len(kept) / n if n else 0.0
    if agnostic == "all":
        return 1.0
    ranks = plan(samples, curate_config(agnostic, 1.0, oracle_noise, 0.0, seed), seed)["rank"]
    kept_ranks = ranks[samples[C.PROBLEM_ID].isin(kept).to_numpy()]
    return float((kept_ranks.max() + 1) / n)


_POOL_CACHE: dict[tuple[str, str], Any] = {}
_CONTEXTS: dict[str, tuple[str, "TrialContext"]] = {}


class TrialContext:
    """What a trial needs from the driver, read from ``run_dir`` (the config, pool manifest, held-out exclusions)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = parse_sweep_config(json.loads((self.run_dir / CONFIG_FILE).read_text()))
        self.manifest = read_manifest(self.run_dir)
        problems = pool_problems(self.manifest)
        self.exclude_ids = set(problems["problem_id"])
        self.exclude_texts = set(problems["problem"])
        self._shared_fingerprint: str | None = None
        self._linear_heldout: dict[str, Any] | None = None

    @classmethod
    def of(cls, run_dir: str | os.PathLike) -> "TrialContext":
        """The context of ``run_dir``, kept per worker process while its config and pool manifest are unchanged:
        a trial of the linear world takes milliseconds, so reading them (and the pool's problems) per trial would
        dominate."""
        run_dir = Path(run_dir)
        state = (run_dir / CONFIG_FILE).read_text() + (run_dir / POOL_DIR / MANIFEST_FILE).read_text()
        key = str(run_dir.resolve())
        cached = _CONTEXTS.get(key)
        if cached is None or cached[0] != state:
            _CONTEXTS[key] = (state, cls(run_dir))
        return _CONTEXTS[key][1]

    def geometry(self, generator: str):
        """The linear world's geometry of a generator's pool (None outside the linear world)."""
        return pool_geometry(self.cfg, generator)

    def linear_heldout(self) -> dict[str, Any]:
        """The held-out problems the linear student is scored on (the reference evaluation's): ``problem_id``,
        ``level``, ``features`` and ``labels`` (the truth's, +1 / -1); drawn once per context."""
        if self._linear_heldout is None:
            import numpy as np

            from pipeline import columns as C
            from pipeline.evaluate import heldout_problems
            from pipeline.linearworld import features

            held = heldout_problems(self.cfg.evaluate, self.cfg.seed, self.exclude_ids, self.exclude_texts).rows
            self._linear_heldout = {
                "problem_id": [r[C.PROBLEM_ID] for r in held], "level": [r[C.LEVEL] for r in held],
                "features": features([r[C.PROBLEM] for r in held]),
                "labels": np.array([float(r[C.ANSWER]) for r in held]),
            }
        return self._linear_heldout

    def samples(self, generator: str):
        """The generator's pool table (cached per worker process: consecutive trials reuse it)."""
        entry = self.manifest["generators"][generator]
        key = (entry["directory"], entry["fingerprint"])
        if key not in _POOL_CACHE:
            if len(_POOL_CACHE) >= 4:
                _POOL_CACHE.clear()
            _POOL_CACHE[key] = pool_samples(self.manifest, generator)
        return _POOL_CACHE[key]

    def threads(self, configured: int | None) -> int:
        """Torch threads of a trial: the configured number, else its reserved CPUs."""
        return configured or max(1, int(self.cfg.tune.cpus_per_trial))

    def fingerprint(self, spec: dict[str, Any]) -> str:
        """Everything a trial's result depends on: the cell, the pool, the configs, the student and the code."""
        from pipeline.models import model_fingerprint, resolve_model

        if spec.get("fingerprint"):  # computed by the driver: the trial and the results table agree on it
            return spec["fingerprint"]
        if self._shared_fingerprint is None:  # the same for every trial: computed once, not once per trial
            student = (model_fingerprint(resolve_model(self.cfg.finetune.student))
                       if self.cfg.student.kind == "trl" else "ridge")  # ridge: its lam is in trial_config_json
            self._shared_fingerprint = io.digest(trial_config_json(self.cfg), student, code_version())
        pool_fp = self.manifest["generators"][spec["generator"]]["fingerprint"]
        cell = {k: v for k, v in spec.items() if k not in ("trial_id", "block", "fingerprint")}
        return io.digest(cell, pool_fp, self._shared_fingerprint)


def _finished(directory: Path, fingerprint: str) -> dict[str, Any] | None:
    """The result of a trial (or loop round) that finished in ``directory`` under ``fingerprint``, else None."""
    path = directory / RESULT_FILE
    if io.marker_matches(directory, fingerprint) and path.is_file():
        return json.loads(path.read_text())
    return None


def _save(directory: Path, fingerprint: str, result: dict[str, Any]) -> None:
    """Mark ``directory`` finished (its scores are written), then write its result file atomically.

    The result file comes last: the results table counts a trial as done by it, so a kill between the two leaves a
    trial that runs again, never one that counts as done but would be computed again."""
    io.write_marker(directory, fingerprint)
    tmp = directory / f".{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=float) + "\n")
    os.replace(tmp, directory / RESULT_FILE)


def run_trial(spec: dict[str, Any], run_dir: str | os.PathLike, report=None) -> dict[str, Any]:
    """Run one trial (``kind`` grid or loop) or read its cached result; returns its result dict.

    ``report(metrics)`` is called with flat metrics after each evaluation (Tune's ``tune.report`` under Tune).
    """
    ctx = TrialContext.of(run_dir)
    out_dir = ctx.run_dir / TRIALS_DIR / spec["trial_id"]
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = ctx.fingerprint(spec)
    cached = _finished(out_dir, fingerprint)
    if cached is None:
        started = time.perf_counter()
        if spec["kind"] == "loop":
            result = _run_loop(ctx, spec, out_dir, fingerprint, report)
        else:
            result = _run_grid_trial(ctx, spec, out_dir)
        result.update(fingerprint=fingerprint, seconds=round(time.perf_counter() - started, 1),
                      computed_at=time.time(), pid=os.getpid(), load_average=os.getloadavg()[0])
        _save(out_dir, fingerprint, result)
    else:
        result = cached
        result["from_cache"] = True
    if report is not None:  # from_cache: the sweep's progress line says so, and leaves it out of its ETA
        report({**flat_metrics(result), "from_cache": bool(result.get("from_cache"))})
    return result


def _run_grid_trial(ctx: TrialContext, spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    from pipeline import columns as C

    samples = ctx.samples(spec["generator"])
    subset = set(nested_subset(samples[C.PROBLEM_ID], spec["pool_size"], spec["seed"]))
    pool = samples[samples[C.PROBLEM_ID].isin(subset)].reset_index(drop=True)
    rows, curation = curate_rows(pool, spec["rule"], spec["keep_fraction"], spec["oracle_noise"],
                                 spec["generator_noise"], spec["seed"])
    summary, scores = train_and_evaluate(ctx, rows, out_dir, spec["seed"], pool_size=len(subset),
                                         generator=spec["generator"])
    scores.to_parquet(out_dir / SCORES_FILE, index=False)
    return {"spec": spec, "curation": curation, **summary,
            **_linear_cell(ctx.geometry(spec["generator"]), curation)}


def _linear_cell(geometry, curation: dict[str, Any], rho: float | None = None,
                 rho_g: float | None = None) -> dict[str, Any]:
    """The theory's coordinates of a linear-world cell (see the module docstring); empty outside the linear world.
    ``rho`` and ``rho_g`` override the pool generator's (a loop round's generator is the previous student)."""
    if geometry is None:
        return {}
    return {"rho": geometry.rho if rho is None else rho, "rho_star": geometry.rho_star,
            "rho_g": geometry.resolved_rho_g if rho_g is None else rho_g, "p": curation["theory_keep_fraction"]}


def _run_loop(ctx: TrialContext, spec: dict[str, Any], out_dir: Path, fingerprint: str, report) -> dict[str, Any]:
    """One collapse-loop chain: round 1 curates the pool, round t > 1 curates the round t-1 model's samples."""
    import pandas as pd

    from pipeline import columns as C

    cfg, loop = ctx.cfg, ctx.cfg.loop
    geometry = ctx.geometry(spec["generator"])
    rounds: list[dict[str, Any]] = []
    pool_model = cfg.pool.generators[spec["generator"]].model
    # The generator of the next round: (model reference, its directory or spec, text for data_source).
    generator: tuple[str, str, str] | None = None  # None: round 1 curates the pool itself
    bar = _untouched_accuracy(ctx) if loop.only_if_better else None
    for t in range(1, spec["rounds"] + 1):
        round_dir = out_dir / round_dirname(t)
        round_fp = io.digest(fingerprint, t)
        cached = _finished(round_dir, round_fp)
        model_dir = round_dir.joinpath(*MODEL_SUBDIR)
        if cached is not None and (t == spec["rounds"] or model_dir.is_dir()):
            rounds.append(cached)
            generator = _next_generator(cached, model_dir, t, generator, pool_model, bar)
            continue
        round_dir.mkdir(parents=True, exist_ok=True)
        seed = loop.seed * 1000 + t
        if generator is None:
            samples = ctx.samples(spec["generator"])
            subset = set(nested_subset(samples[C.PROBLEM_ID], loop.pool_size, loop.seed))
            data = samples[samples[C.PROBLEM_ID].isin(subset)].reset_index(drop=True)
            data_source = f"pool:{spec['generator']}"
        else:
            data = _student_samples(ctx, generator[1], t, seed, spec["generator"], model_ref=generator[0])
            data_source = generator[2]
        data.drop(columns=[c for c in data.columns if c.startswith("_")]).to_parquet(round_dir / "data.parquet")
        rows, curation = curate_rows(data, spec["rule"], spec["keep_fraction"], 0.0, 0.0, seed)
        # The next round samples with this round's model.
        summary, scores = train_and_evaluate(ctx, rows, round_dir, seed, pool_size=int(data[C.PROBLEM_ID].nunique()),
                                             generator=spec["generator"], keep_model=t < spec["rounds"])
        scores.to_parquet(round_dir / SCORES_FILE, index=False)
        # round t's data came from round t - 1's student (or, gated, from an earlier one or the pool's generator)
        previous = rounds[-1] if generator is not None and generator[2] == f"round {t - 1} model" else {}
        entry = {"round": t, "data_source": data_source, "data_trace_accuracy": float(data[C.CORRECT].mean()),
                 "curation": curation, **summary, "fingerprint": round_fp,
                 **_linear_cell(geometry, curation, previous.get("learned_rho"), previous.get("learned_rho_g"))}
        _save(round_dir, round_fp, entry)
        rounds.append(entry)
        generator = _next_generator(entry, model_dir, t, generator, pool_model, bar)
        if report is not None and t < spec["rounds"]:
            report(flat_metrics({"spec": spec, **entry}))
    # The chain's rounds, plus the scores of its last round as the trial's scores.
    last = out_dir / round_dirname(spec["rounds"]) / SCORES_FILE
    pd.read_parquet(last).to_parquet(out_dir / SCORES_FILE, index=False)
    if not cfg.tune.keep_models:
        for t in range(1, spec["rounds"] + 1):
            shutil.rmtree(out_dir.joinpath(round_dirname(t), *MODEL_SUBDIR), ignore_errors=True)
    return {"spec": spec, "rounds": rounds, **{k: v for k, v in rounds[-1].items() if k not in ("round",)}}


def _untouched_accuracy(ctx: TrialContext) -> float:
    """The untouched student's held-out accuracy (the reference evaluation's): the bar a loop round must beat."""
    from pipeline.sweep.layout import REFERENCE_DIR

    metrics = json.loads((ctx.run_dir / REFERENCE_DIR / "metrics.json").read_text())["models"]["student"]["metrics"]
    metric = "greedy_accuracy" if "greedy_accuracy" in metrics else next(iter(metrics))
    return float(metrics[metric]["overall"]["value"])


def _round_accuracy(entry: dict[str, Any]) -> float:
    metrics = entry["metrics"]
    metric = "greedy_accuracy" if "greedy_accuracy" in metrics else next(iter(metrics))
    return float(metrics[metric]["overall"]["value"])


def _next_generator(entry: dict[str, Any], model_dir: Path, t: int, current, pool_model: str, bar: float | None):
    """The generator of round t + 1: round t's model, unless ``bar`` is set and the model does not beat it (then
    the generator round t used: the pool's generator model for round 1)."""
    if bar is None or _round_accuracy(entry) > bar:
        return (str(model_dir), str(model_dir), f"round {t} model")
    if current is not None:
        return current
    from pipeline.models import resolve_model

    return (pool_model, resolve_model(pool_model), f"pool generator {pool_model} (round {t} model did not beat the "
            "untouched student)")


def _student_samples(ctx: TrialContext, model_dir, round_index: int, seed: int, generator: str,
                     model_ref: str | None = None):
    """Fresh problems (none of them held out) sampled k times by ``model_dir`` (``model_ref``: its reference, when
    not the directory itself), verified and scored (with the pool's difficulty settings: a linear world's oracle
    margin, else the samples' pass rate)."""
    import pandas as pd

    from pipeline import columns as C
    from pipeline.evaluate import HELDOUT_SEED_OFFSET, generate_and_verify, heldout_problems
    from stages.difficulty import problem_stats
    from stages.source import SourceStage
    from stages.verify import VerifyStage

    cfg, loop = ctx.cfg, ctx.cfg.loop
    if model_ref is None and (model_dir is None or not Path(model_dir).is_dir()):
        raise RuntimeError(f"loop round {round_index}: the previous round's model is missing; rerun the sweep")
    held = heldout_problems(cfg.evaluate, cfg.seed, ctx.exclude_ids, ctx.exclude_texts)
    held_ids = {r[C.PROBLEM_ID] for r in held.rows}
    source_seed = cfg.seed + HELDOUT_SEED_OFFSET * 2 + 7919 * round_index
    want = loop.pool_size
    # The loop generator's source: in a linear world its oracle answers and scores every round's problems.
    source_cfg = pool_source(cfg, generator).model_copy(update={"seed": source_seed,
                                                                "split": f"loop_round_{round_index}"})
    if source_cfg.n is not None:
        source_cfg = source_cfg.model_copy(update={"n": max(source_cfg.n, want + len(held_ids))})
    problems = []
    for batch in SourceStage(source_cfg, seed=source_seed).read():
        for i in range(len(batch[C.PROBLEM_ID])):
            row = {k: v[i] for k, v in batch.items()}
            if row.pop(C.REJECT_REASON) is None and row[C.PROBLEM_ID] not in held_ids:
                problems.append(row)
    problems = problems[:want]
    sample_cfg = cfg.pool.sample.model_copy(update={
        "k": loop.k, "seed": seed, "threads": ctx.threads(cfg.pool.sample.threads), "rounds": None, "cache_dir": None,
    })
    rows = generate_and_verify(model_ref or str(model_dir), str(model_dir), problems, sample_cfg,
                               VerifyStage(cfg.pool.verify), cfg.evaluate.batch_size, seed)
    frame = pd.DataFrame(rows)
    stats = problem_stats(frame[C.PROBLEM_ID], frame[C.MODEL_ID], frame[C.CORRECT], frame[C.FINISH_REASON],
                          cfg.pool.difficulty, metadata=frame[C.METADATA])
    for col in (C.PASS_RATE, C.N_SAMPLES, C.N_CORRECT, C.CI_LOW, C.CI_HIGH):
        frame[col] = [stats[(p, m)][col] for p, m in zip(frame[C.PROBLEM_ID], frame[C.MODEL_ID])]
    return frame


# -- flat metrics (Tune's table) -------------------------------------------------------------------------------------


def flat_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics of a trial result, as Tune's result table and ``report/results.csv`` hold them:
    ``accuracy_<group>`` (with ``_low`` / ``_high``), the curation figures (``kept_rows``, ``kept_problems``,
    ``kept_trace_accuracy``, ``theory_keep_fraction``), ``train_loss``, ``epochs_seen``, ``seconds``, ``round``,
    and for the linear world ``LINEAR_FIELDS``: ``d``, ``rho``, ``rho_star``, ``rho_g``, ``lam``, ``n``, ``p``,
    ``exact_error``, ``learned_rho``, ``learned_rho_g`` (a loop chain: its last round's)."""
    out: dict[str, Any] = {}
    metrics = result.get("metrics") or {}
    headline = "greedy_accuracy" if "greedy_accuracy" in metrics else next(iter(metrics), None)
    if headline:
        for group, entry in metrics[headline].items():
            key = "overall" if group == "overall" else f"L{group}"
            out[f"accuracy_{key}"] = entry["value"]
            out[f"accuracy_{key}_low"] = entry["ci_low"]
            out[f"accuracy_{key}_high"] = entry["ci_high"]
    curation = result.get("curation") or {}
    for key in ("kept_rows", "kept_problems", "kept_trace_accuracy", "theory_keep_fraction"):
        if key in curation:
            out[key] = curation[key]
    for key in ("train_loss", "epochs_seen", "seconds", "round", *LINEAR_FIELDS):
        if result.get(key) is not None:
            out[key] = result[key]
    return out


LINEAR_FIELDS = ("d", "rho", "rho_star", "rho_g", "lam", "n", "p", "exact_error", "learned_rho", "learned_rho_g")
"""A linear-world trial's coordinates in the theory and its exact error (see the module docstring); the results
table has a column for each."""


# -- Tune ------------------------------------------------------------------------------------------------------------


def tune_trainable(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable: one trial, reported through ``tune.report``."""
    from ray import tune

    run_trial(config["trial"], config["run_dir"], report=tune.report)


def _trial_dirname(trial) -> str:
    return trial.config["trial"]["trial_id"]


def run_trials(cfg: SweepConfig, specs: list[dict[str, Any]], console=None, trackers: list | None = None):
    """Run the trials under Ray Tune, resuming the experiment when it exists; returns Tune's ResultGrid.
    ``trackers``: the logger callbacks of ``tune.callbacks`` when already built (else built here)."""
    from ray import tune

    from pipeline.cluster import connect
    from pipeline.sweep.callbacks import TrialReporter, tracker_callbacks

    connect(cfg.ray, console)
    run_dir = cfg.resolved_run_dir
    storage = run_dir / TUNE_DIR
    name = f"trials-{io.digest([s['trial_id'] for s in specs], [s.get('fingerprint') for s in specs], length=12)}"
    resources = {"cpu": cfg.tune.cpus_per_trial}
    if cfg.tune.gpus_per_trial:
        resources["gpu"] = cfg.tune.gpus_per_trial
    trainable = tune.with_resources(tune_trainable, resources)
    # Tune's own table (verbose) is off: a line per finished trial and a summary instead, plus the trackers.
    if trackers is None:
        trackers = tracker_callbacks(cfg.tune.callbacks, cfg.name, run_dir)
    callbacks = [TrialReporter(len(specs), console), *trackers]
    path = storage / name
    if tune.Tuner.can_restore(str(path)):
        if console is not None:
            console.print(f"[bold]tune[/]: resuming {path} (finished trials are read back)")
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
        # A restored Tuner brings back the callbacks it was started with; this run's config decides them (a tracker
        # added since, a console that is not pickled). Tune's restore API takes no RunConfig, hence the attribute.
        local = getattr(tuner, "_local_tuner", None)  # None under Ray Client, which keeps the old ones
        if local is not None:
            local.get_run_config().callbacks = callbacks
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(specs), "run_dir": str(run_dir)},
            tune_config=tune.TuneConfig(max_concurrent_trials=cfg.tune.max_concurrent_trials,
                                        reuse_actors=cfg.tune.reuse_actors, trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0, callbacks=callbacks,
                                      failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures)),
        )
    return tuner.fit()


def results_table(specs: list[dict[str, Any]], grid, run_dir: str | os.PathLike,
                  errors: dict[str, str] | None = None):
    """One row per trial: its cell, status (ok / error / missing), the error text, and its flat metrics.

    ``grid`` is Tune's ResultGrid (or any iterable of objects with ``config``, ``metrics`` and ``error``; None when
    nothing ran). A trial is ``ok`` when its result file exists under the current fingerprint; trials Tune reports as
    errored keep their error, and ``errors`` (trial id -> text) adds errors known from an earlier run.
    """
    import pandas as pd

    run_dir = Path(run_dir)
    errors = dict(errors or {})
    for result in grid or ():
        config = getattr(result, "config", None) or {}
        tid = (config.get("trial") or {}).get("trial_id")
        if tid and getattr(result, "error", None) is not None:
            errors[tid] = f"{type(result.error).__name__}: {str(result.error).strip().splitlines()[-1][:400]}"
    rows = []
    for spec in specs:
        row = {k: spec.get(k) for k in ("trial_id", "kind", "block", "generator", "pool_size", "rule",
                                        "keep_fraction", "oracle_noise", "generator_noise", "seed")}
        path = run_dir / TRIALS_DIR / spec["trial_id"] / RESULT_FILE
        result = json.loads(path.read_text()) if path.is_file() else None
        if result is not None and result.get("fingerprint") == spec.get("fingerprint"):
            row.update(status="ok", error=None, **flat_metrics(result))
        else:
            row.update(status="error" if spec["trial_id"] in errors else "missing",
                       error=errors.get(spec["trial_id"], "no result: the trial did not finish"))
        rows.append(row)
    return pd.DataFrame(rows)


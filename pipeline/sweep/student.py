"""The trial's train -> evaluate step, whatever the student is (``student.kind`` of the sweep config).

- ``trl``: fine-tune ``finetune.student`` on the kept prompt/completion rows with TRL, then evaluate it on the
  held-out problems with the ``evaluate`` block (the same sample and verify stages that built the pool);
- ``linear``: ridge regression on the kept ``(x, y)`` of the linear world (``pipeline.linearworld``), with the loss
  averaged over the whole pool of n problems as in ``pipeline.theory.simulate_error``; scored per held-out problem
  (``sign(x . w) == sign(x . w*)``, the problems of ``evaluate.heldout``) and by its exact test error.

Both return ``(summary, scores)``: the summary's ``metrics`` has the evaluation's shape (metric -> group ->
value and interval) and ``scores`` one row per held-out problem (``problem_id``, ``level``, ``correct``), which the
report bootstraps. Both save the trained model as ``out_dir/finetune/model`` when asked (the collapse loop samples
the next round with it): a TRL checkpoint, or a linear model directory the linear backend loads like a spec.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

MODEL_SUBDIR = ("finetune", "model")


def train_and_evaluate(ctx, rows, out_dir: Path, seed: int, *, pool_size: int, generator: str,
                       keep_model: bool = False) -> tuple[dict[str, Any], Any]:
    """Train the sweep's student on the kept ``rows`` of a pool of ``pool_size`` problems and evaluate it.

    ``ctx`` is the trial's context (``pipeline.sweep.trials.TrialContext``); ``generator`` names the pool whose
    oracle curated the rows. The model is deleted afterwards unless ``keep_model`` or ``tune.keep_models``."""
    if len(rows) == 0:
        raise RuntimeError("the rule kept no training rows in this cell; it cannot be trained "
                           "(raise the pool size or keep fraction, or drop the cell from the grid)")
    keep = keep_model or ctx.cfg.tune.keep_models
    if ctx.cfg.student.kind == "linear":
        return _linear(ctx, rows, out_dir, pool_size, ctx.geometry(generator), keep)
    return _trl(ctx, rows, out_dir, seed, keep)


def _trl(ctx, rows, out_dir: Path, seed: int, keep: bool) -> tuple[dict[str, Any], Any]:
    from pipeline import columns as C
    from pipeline import evaluate as ev
    from pipeline.finetune import finetune, read_train_stats
    from pipeline.sweep.pool import read_scores

    cfg = ctx.cfg
    fcfg = cfg.finetune.model_copy(update={"threads": ctx.threads(cfg.finetune.threads)})
    train = [{"prompt": p, "completion": c} for p, c in zip(rows[C.PROBLEM], rows[C.COMPLETION])]
    model_dir = finetune(fcfg, train, out_dir / "finetune", seed=seed, prompt_cfg=cfg.pool.sample)
    stats = read_train_stats(out_dir / "finetune")
    ecfg = cfg.evaluate.model_copy(update={"compare_base": False, "threads": ctx.threads(cfg.evaluate.threads)})
    metrics = ev.evaluate(ecfg, {"finetuned": (str(model_dir), str(model_dir))}, out_dir / "evaluate",
                          run_seed=cfg.seed, sample_cfg=cfg.pool.sample, verify_cfg=cfg.pool.verify,
                          exclude_ids=ctx.exclude_ids, exclude_texts=ctx.exclude_texts)
    scores = read_scores(out_dir / "evaluate")
    summary = {
        "train_loss": stats.get("train_loss"), "optimizer_steps": stats.get("optimizer_steps"),
        "epochs_seen": stats.get("epochs_seen"), "train_seconds": stats.get("wall_seconds"),
        "eval_seconds": metrics.get("seconds"), "heldout_problems": metrics["heldout"]["problems"],
        "metrics": metrics["models"]["finetuned"]["metrics"],
    }
    if not keep:
        shutil.rmtree(model_dir, ignore_errors=True)
    return summary, scores


def _linear(ctx, rows, out_dir: Path, pool_size: int, geometry, keep: bool) -> tuple[dict[str, Any], Any]:
    """Ridge on the kept rows (one row per kept trace), its exact error, and its verdict per held-out problem.

    The summary also has ``learned_rho`` and ``learned_rho_g``, the learned direction's cosines with w* and with the
    pool's oracle: the rho and rho_g of the next round's generator in the collapse loop."""
    import numpy as np
    import pandas as pd

    from pipeline import columns as C
    from pipeline import linearworld as lw
    from pipeline.evaluate import ProblemScores, summarize

    cfg = ctx.cfg
    started = time.perf_counter()
    matrix = lw.features(rows[C.PROBLEM].tolist())
    labels = lw.completion_labels(rows[C.COMPLETION].tolist())
    weights = lw.ridge_fit(matrix, labels, pool_size, cfg.student.lam)
    trained = time.perf_counter()
    test = ctx.linear_heldout()
    correct = (np.where(test["features"] @ weights >= 0.0, 1, -1) == test["labels"]).astype(float)
    scores = pd.DataFrame({"problem_id": test["problem_id"], "level": test["level"], "correct": correct})
    dim = matrix.shape[1]
    summary = {
        "d": dim, "lam": cfg.student.lam, "n": int(pool_size), "kept_examples": int(len(rows)),
        "exact_error": lw.exact_error(weights), "weight_norm": float(np.linalg.norm(weights)),
        "learned_rho": lw.cosine(weights, lw.basis(dim)[0]),
        "learned_rho_g": lw.cosine(weights, geometry.oracle(dim)),
        "train_seconds": round(trained - started, 4), "eval_seconds": round(time.perf_counter() - trained, 4),
        "heldout_problems": int(len(correct)),
        "metrics": summarize(ProblemScores(list(test["problem_id"]), list(test["level"]),
                                           {"greedy_accuracy": correct}), cfg.evaluate, cfg.seed),
    }
    if keep:
        lw.save_model(out_dir.joinpath(*MODEL_SUBDIR), weights, lam=cfg.student.lam, pool_size=int(pool_size))
    return summary, scores

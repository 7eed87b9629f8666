"""The sweep report on synthetic sweeps: intervals, concordance, and verdicts that follow the measurements."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.sweep.calibrate import binary_accuracy, level_concordance
from pipeline.sweep.config import parse_sweep_config, trial_id
from pipeline.sweep.layout import RESULT_FILE, SCORES_FILE, TRIALS_DIR
from pipeline.sweep.measure import OVERALL, Cell, Measurements, bootstrap_mean
from pipeline.sweep.report import write_report
from pipeline.sweep.verdicts import CONFIRMED, INCONCLUSIVE, REFUTED

LEVELS = (1, 2, 3, 4, 5, 6)
PER_LEVEL = 100
SIZES = (100, 1000, 3000)


def _problems():
    ids = [f"h{level}-{i}" for level in LEVELS for i in range(PER_LEVEL)]
    levels = [level for level in LEVELS for _ in range(PER_LEVEL)]
    return ids, np.array(levels)


def _theory_world(gen, n, rule, p, eta, level):
    """Less is more only for keep-hard with the strong generator at large n (and only on the seen levels)."""
    acc = (0.55 if level <= 3 else 0.25) + 0.05 * math.log10(n / 100) + (0.1 if gen == "strong" else 0.0)
    if p < 1:
        if gen == "strong" and rule == "keep_hard" and n >= 1000 and eta == 0:
            acc += 0.2 if level <= 3 else -0.08
        elif gen == "weak" and rule == "keep_easy":
            acc -= 0.05
        else:
            acc -= 0.15
    return acc


def _reversed_world(gen, n, rule, p, eta, level):
    """Keep-hard with the strong generator at large n is much worse; keep-easy wins there, keep-hard for weak."""
    acc = 0.5
    if p < 1:
        if gen == "strong":
            acc += -0.25 if rule == "keep_hard" else -0.05
        else:
            acc += -0.05 if rule == "keep_hard" else -0.25
    return acc


def _null_world(gen, n, rule, p, eta, level):
    return 0.5


def _fake_sweep(tmp_path: Path, world, loop_curves=None, same_draws: bool = False):
    """A run directory with trial scores drawn from ``world``; returns (cfg, table, manifest, reference)."""
    ids, levels = _problems()
    cfg = parse_sweep_config({
        "name": "fake", "output_root": str(tmp_path),
        "pool": {"source": {"kind": "toyworld", "n": 3000},
                 "generators": {"weak": {"model": "toy:weak"}, "strong": {"model": "toy:strong"}}},
        "grid": {"seeds": [0, 1, 2], "blocks": [{"pool_sizes": list(SIZES), "keep_fractions": [0.1, 1.0],
                                                 "rules": ["keep_hard", "keep_easy"]}]},
        "report": {"bootstrap": 300},
    })
    run_dir = cfg.resolved_run_dir
    cells = [(g, n, r, p, 0.0) for g in ("weak", "strong") for n in SIZES
             for r, p in (("all", 1.0), ("keep_hard", 0.1), ("keep_easy", 0.1))]
    cells.append(("strong", 3000, "keep_hard", 0.1, 0.5))
    rows = []
    for g, n, r, p, eta in cells:
        for seed in (0, 1, 2):
            spec = {"kind": "grid", "generator": g, "pool_size": n, "rule": r, "keep_fraction": p,
                    "oracle_noise": eta, "generator_noise": 0.0, "seed": seed, "block": "grid"}
            tid = trial_id(spec)
            probs = np.array([world(g, n, r, p, eta, lv) for lv in levels])
            rng = np.random.default_rng(seed if same_draws else zlib.crc32(tid.encode()))
            correct = (rng.random(len(ids)) < probs).astype(float)
            d = run_dir / TRIALS_DIR / tid
            d.mkdir(parents=True)
            pd.DataFrame({"problem_id": ids, "level": levels, "correct": correct}).to_parquet(d / SCORES_FILE)
            kept = int(round(n * p))
            (d / RESULT_FILE).write_text(json.dumps({"fingerprint": "f"}))
            rows.append({**spec, "trial_id": tid, "status": "ok", "error": None, "kept_rows": kept,
                         "kept_problems": kept, "kept_trace_accuracy": 0.6})
    for rule, curve in (loop_curves or {}).items():
        spec = {"kind": "loop", "rule": rule, "generator": "strong", "pool_size": 500, "keep_fraction": 0.3,
                "oracle_noise": 0.0, "generator_noise": 0.0, "seed": 0, "block": "loop"}
        tid = trial_id(spec)
        d = run_dir / TRIALS_DIR / tid
        rounds = []
        for t, acc in enumerate(curve, 1):
            (d / f"round_{t}").mkdir(parents=True)
            rng = np.random.default_rng(100 + t) if not same_draws else np.random.default_rng(7)
            correct = (rng.random(len(ids)) < acc).astype(float)
            pd.DataFrame({"problem_id": ids, "level": levels, "correct": correct}).to_parquet(
                d / f"round_{t}" / SCORES_FILE)
            rounds.append({"round": t, "data_source": "pool" if t == 1 else f"round {t - 1} model",
                           "data_trace_accuracy": acc, "curation": {"kept_rows": 100, "kept_trace_accuracy": 1.0}})
        (d / RESULT_FILE).write_text(json.dumps({"rounds": rounds}))
        rows.append({**spec, "trial_id": tid, "status": "ok", "error": None})
    rows.append({"trial_id": "weak-n100-random-p0.5-eta0-eps0-s0", "kind": "grid", "generator": "weak",
                 "pool_size": 100, "rule": "random", "keep_fraction": 0.5, "oracle_noise": 0.0,
                 "generator_noise": 0.0, "seed": 0, "status": "error",
                 "error": "RuntimeError: the rule kept no training rows"})
    table = pd.DataFrame(rows)
    # Reference: the student's greedy verdicts; the pool: pass rates that fall with the level (a decent oracle).
    ref = run_dir / "reference" / "samples"
    ref.mkdir(parents=True)
    pd.DataFrame({"problem_id": ids, "level": levels, "sample_idx": 0,
                  "correct": np.random.default_rng(1).random(len(ids)) < 0.3}).to_parquet(ref / "student_greedy.parquet")
    rng = np.random.default_rng(3)
    pool_ids = [f"p{i}" for i in range(600)]
    pool_levels = np.repeat(LEVELS, 100)
    pass_rate = np.clip(1.0 - pool_levels / 7 + rng.normal(0, 0.15, 600), 0, 1).round(3)
    manifest = {"generators": {}}
    for gen, acc in (("weak", 0.3), ("strong", 0.6)):
        pool = run_dir / "pool" / gen
        pool.mkdir(parents=True)
        pd.DataFrame({"problem_id": pool_ids, "sample_idx": 0, "level": pool_levels, "pass_rate": pass_rate,
                      "correct": rng.random(600) < pass_rate, "finish_reason": "stop",
                      "completion": "x"}).to_parquet(pool / "part-0.parquet")
        manifest["generators"][gen] = {
            "model": f"toy:{gen}", "directory": str(pool), "source_directory": str(pool), "fingerprint": gen,
            "problems": 600, "samples": 600, "trace_accuracy": acc, "trace_accuracy_by_level": {"1": acc},
            "pass_rate_histogram": {}, "solved_any": 0.9, "seconds": 1.0}
    reference = {"models": {"student": {"metrics": {"greedy_accuracy": {"overall": {
        "value": 0.3, "ci_low": 0.27, "ci_high": 0.33, "problems": 600}}}}}}
    return cfg, table, manifest, reference


def _verdicts(tmp_path, world, figures=False, **kw):
    cfg, table, manifest, reference = _fake_sweep(tmp_path, world, **kw)
    path = write_report(cfg.resolved_run_dir, cfg, table, manifest, reference, figures=figures)
    return path, {v["id"]: v for v in json.loads((path.parent / "verdicts.json").read_text())}


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_data():
    rng = np.random.default_rng(0)
    small = (rng.random((3, 100)) < 0.4).astype(float)
    large = (rng.random((3, 3000)) < 0.4).astype(float)
    m_s, lo_s, hi_s = bootstrap_mean(small, 500, 0.95, np.random.default_rng(1))
    m_l, lo_l, hi_l = bootstrap_mean(large, 500, 0.95, np.random.default_rng(1))
    assert lo_s < m_s < hi_s and lo_l < m_l < hi_l
    assert (hi_l - lo_l) < 0.5 * (hi_s - lo_s)
    assert lo_l < 0.4 < hi_l
    # Seed-to-seed spread widens the interval: the same problems, one seed far off.
    spread = large.copy()
    spread[0] = (rng.random(3000) < 0.1).astype(float)
    _, lo_w, hi_w = bootstrap_mean(spread, 500, 0.95, np.random.default_rng(1))
    assert (hi_w - lo_w) > 2 * (hi_l - lo_l)


def test_level_concordance_measures_how_well_a_score_orders_levels():
    levels = np.repeat([1, 2, 3], 50)
    assert level_concordance(-levels, levels) == 1.0  # pass rate falls with the level: a perfect oracle
    assert level_concordance(levels, levels) == 0.0
    assert level_concordance(np.ones(150), levels) == 0.5  # all ties
    noisy = level_concordance(-levels + np.random.default_rng(0).normal(0, 1.5, 150), levels)
    assert 0.6 < noisy < 0.95


def test_binary_accuracy_maps_open_ended_accuracy_onto_the_theorys_label():
    assert binary_accuracy(0.0) == 0.5 and binary_accuracy(1.0) == 1.0 and binary_accuracy(0.4) == 0.7


def test_a_theory_like_world_confirms_every_prediction(tmp_path):
    path, verdicts = _verdicts(tmp_path, _theory_world, figures=True,
                               loop_curves={"all": [0.5, 0.42, 0.33], "keep_hard_correct": [0.5, 0.5, 0.52]})
    assert {k: v["verdict"] for k, v in verdicts.items()} == {k: CONFIRMED for k in ("(i)", "(ii)", "(iii)",
                                                                                        "(iv)", "(v)")}
    assert "n = 3000" in verdicts["(i)"]["evidence"] and "keep_hard p=0.1" in verdicts["(i)"]["evidence"]
    text = path.read_text()
    for pid in ("(i)", "(ii)", "(iii)", "(iv)", "(v)"):
        assert f"| {pid} |" in text
    for name in ("error_vs_p.png", "error_vs_p_hard.png", "phase_diagram.png", "rule_winner.png",
                 "theory_overlay.png", "learning_curve.png", "oracle_noise.png", "collapse_loop.png",
                 "results.csv", "cells.csv"):
        assert (path.parent / name).stat().st_size > 0, name
    # The failed trial is reported with its error, not dropped.
    assert "weak-n100-random-p0.5-eta0-eps0-s0" in text and "kept no training rows" in text
    cells = pd.read_csv(path.parent / "cells.csv")
    kh = cells[(cells.generator == "strong") & (cells.pool_size == 3000) & (cells.rule == "keep_hard")
               & (cells.oracle_noise == 0)].iloc[0]
    assert kh.minus_p1_high < 0 and kh.error_overall_low < kh.error_overall < kh.error_overall_high
    assert kh.error_hard > kh.error_seen  # the tiers are reported separately


def test_a_reversed_world_refutes_the_predictions_it_contradicts(tmp_path):
    _, verdicts = _verdicts(tmp_path, _reversed_world,
                            loop_curves={"all": [0.4, 0.5, 0.6], "keep_hard_correct": [0.5, 0.4, 0.3]})
    assert verdicts["(i)"]["verdict"] == REFUTED
    assert verdicts["(iii)"]["verdict"] == REFUTED
    assert verdicts["(v)"]["verdict"] == REFUTED


def test_a_world_without_differences_is_inconclusive_everywhere(tmp_path):
    path, verdicts = _verdicts(tmp_path, _null_world, loop_curves={"all": [0.5, 0.5], "keep_hard_correct": [0.5, 0.5]},
                               same_draws=True)
    assert all(v["verdict"] == INCONCLUSIVE for v in verdicts.values())
    assert "did not separate" in path.read_text()


def test_missing_predictions_are_inconclusive_with_a_reason(tmp_path):
    cfg, table, manifest, reference = _fake_sweep(tmp_path, _theory_world)
    grid_only = table[(table.rule != "keep_easy") & (table.oracle_noise == 0)]
    path = write_report(cfg.resolved_run_dir, cfg, grid_only, manifest, reference, figures=False)
    verdicts = {v["id"]: v for v in json.loads((path.parent / "verdicts.json").read_text())}
    assert verdicts["(iii)"]["verdict"] == INCONCLUSIVE and "not measured" in verdicts["(iii)"]["evidence"]
    assert verdicts["(iv)"]["verdict"] == INCONCLUSIVE and "eta > 0" in verdicts["(iv)"]["evidence"]
    assert verdicts["(v)"]["verdict"] == INCONCLUSIVE and "loop" in verdicts["(v)"]["evidence"]


@pytest.mark.parametrize("seed", [0, 1])
def test_paired_differences_are_tighter_than_the_cells_own_intervals(tmp_path, seed):
    ids, levels = _problems()
    rng = np.random.default_rng(seed)
    base = (rng.random((3, len(ids))) < 0.5).astype(float)
    better = base.copy()
    flip = rng.random(base.shape) < 0.05
    better[flip] = 1.0  # the same problems, a few more right
    groups = {OVERALL: np.ones(len(ids), bool)}
    meas = Measurements.__new__(Measurements)
    meas.groups, meas.resamples, meas.confidence, meas._stats = groups, 500, 0.95, {}
    a, b = ("g", 0.0, 100, "keep_hard", 0.1, 0.0), ("g", 0.0, 100, "all", 1.0, 0.0)
    meas.cells = {a: Cell(a, [0, 1, 2], better), b: Cell(b, [0, 1, 2], base)}
    d = meas.difference(a, b)
    ea, eb = meas.error(a), meas.error(b)
    assert d[2] < 0  # significantly lower error
    assert (d[2] - d[1]) < 0.5 * (ea[2] - ea[1])
    assert ea[0] - eb[0] == pytest.approx(d[0])

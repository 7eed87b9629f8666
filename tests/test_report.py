"""The sweep report on synthetic toy-world sweeps (held-out verdicts per problem, an untouched student, pools whose
difficulty is the generator's own pass rate): intervals, concordance, the accuracy maps, the regime gate, the
phase_tiny-shaped sweep whose verdicts must all be untestable, the machine-readable files, and the label-aware
prediction pinned to instrument.md's numbers."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.sweep.calibrate import binary_accuracy, feasible_rho_star, level_concordance, rho_from_accuracy
from pipeline.sweep.config import parse_sweep_config, trial_id
from pipeline.sweep.layout import RESULT_FILE, SCORES_FILE, TRIALS_DIR
from pipeline.sweep.measure import OVERALL, Cell, Measurements, bootstrap_mean
from pipeline.sweep.predict import verified_error
from pipeline.sweep.report import write_report
from pipeline.sweep.verdicts import CONSISTENT, UNTESTABLE
from pipeline.theory import model as theory

LEVELS = (1, 2, 3, 4, 5, 6)
PER_LEVEL = 150  # phase_tiny's 900 held-out problems

# phase_tiny's grid (configs/phase_tiny.yaml): (generator, n, rule, p, eta, seeds)
PHASE_TINY = (
    [(g, 3000, r, p, 0.0, (0, 1, 2)) for g in ("weak", "strong") for r, p in
     (("all", 1.0), ("keep_hard", 0.1), ("keep_easy", 0.1))]
    + [("strong", 3000, "keep_hard", 0.3, 0.0, (0,)), ("strong", 300, "keep_hard", 0.1, 0.0, (0,)),
       ("strong", 300, "all", 1.0, 0.0, (0,)), ("strong", 3000, "keep_hard_correct", 0.1, 0.0, (0,)),
       ("strong", 3000, "correct_only", 1.0, 0.0, (0,)), ("strong", 3000, "keep_hard", 0.1, 0.5, (0,))])


def _problems():
    ids = [f"h{level}-{i}" for level in LEVELS for i in range(PER_LEVEL)]
    return ids, np.array([level for level in LEVELS for _ in range(PER_LEVEL)])


def phase_tiny_world(gen, n, rule, p, eta, level):
    """Accuracy shaped like phase_tiny's measurements: every cell below the untouched student (0.39), keep-hard at
    p = 0.1 about 0.2 worse than p = 1, keep-easy better than keep-hard with the strong generator."""
    acc = (0.50 if level <= 3 else 0.12) + (0.02 if gen == "strong" else 0.0)
    if p < 1:
        acc -= {"keep_hard": 0.22, "keep_easy": 0.15, "keep_hard_correct": 0.20, "random": 0.05}[rule]
        acc += 0.1 * eta
    return acc


def helpful_world(gen, n, rule, p, eta, level):
    """Training helps (every cell beats the untouched student) and keep-hard at p = 0.3 looks like less is more."""
    acc = 0.6 + 0.04 * math.log10(n / 300)
    if p < 1:
        acc += 0.1 if (rule == "keep_hard" and p == 0.3) else -0.05
    return acc


def _cfg(tmp_path, loop_rules=("all", "correct_only"), rounds=2):
    return parse_sweep_config({
        "name": "fake", "output_root": str(tmp_path),
        "pool": {"source": {"kind": "toyworld", "n": 3000},
                 "generators": {"weak": {"model": "toy:weak"}, "strong": {"model": "toy:strong"}}},
        "grid": {"seeds": [0], "blocks": [{"pool_sizes": [300, 3000]}]},
        "loop": {"rounds": rounds, "pool_size": 1000, "rules": list(loop_rules)},
        "report": {"bootstrap": 300},
    })


def toy_sweep(tmp_path: Path, world, cells=PHASE_TINY, student_accuracy=0.39, loop_curves=None,
              trace_accuracy=(("weak", 0.55), ("strong", 0.61))):
    """A toy-world run directory: per-problem verdicts drawn from ``world``, an untouched student, pools whose
    difficulty is the generator's pass rate. Returns (cfg, table, manifest, reference)."""
    ids, levels = _problems()
    cfg = _cfg(tmp_path, rounds=len(next(iter((loop_curves or {"x": [0, 0]}).values()))))
    run_dir = cfg.resolved_run_dir
    rows = []
    for g, n, r, p, eta, seeds in cells:
        for seed in seeds:
            spec = {"kind": "grid", "generator": g, "pool_size": n, "rule": r, "keep_fraction": p,
                    "oracle_noise": eta, "generator_noise": 0.0, "seed": seed, "block": "grid"}
            tid = trial_id(spec)
            probs = np.clip([world(g, n, r, p, eta, lv) for lv in levels], 0, 1)
            correct = (np.random.default_rng(zlib.crc32(tid.encode())).random(len(ids)) < probs).astype(float)
            d = run_dir / TRIALS_DIR / tid
            d.mkdir(parents=True)
            pd.DataFrame({"problem_id": ids, "level": levels, "correct": correct}).to_parquet(d / SCORES_FILE)
            (d / RESULT_FILE).write_text(json.dumps({"fingerprint": "f"}))
            kept = int(round(n * p))
            rows.append({**spec, "trial_id": tid, "status": "ok", "error": None, "kept_rows": kept,
                         "kept_problems": kept, "kept_trace_accuracy": 0.6, "accuracy_overall": correct.mean()})
    for rule, curve in (loop_curves or {}).items():
        spec = {"kind": "loop", "rule": rule, "generator": "strong", "pool_size": 1000, "keep_fraction": 0.3,
                "oracle_noise": 0.0, "generator_noise": 0.0, "seed": 0, "block": "loop"}
        d = run_dir / TRIALS_DIR / trial_id(spec)
        rounds = []
        for t, acc in enumerate(curve, 1):
            (d / f"round_{t}").mkdir(parents=True)
            correct = (np.random.default_rng(100 + t).random(len(ids)) < acc).astype(float)
            pd.DataFrame({"problem_id": ids, "level": levels, "correct": correct}).to_parquet(
                d / f"round_{t}" / SCORES_FILE)
            rounds.append({"round": t, "data_source": "pool" if t == 1 else f"round {t - 1} model",
                           "data_trace_accuracy": acc, "curation": {"kept_rows": 100, "kept_trace_accuracy": 1.0}})
        (d / RESULT_FILE).write_text(json.dumps({"rounds": rounds}))
        rows.append({**spec, "trial_id": trial_id(spec), "status": "ok", "error": None})
    rows.append({"trial_id": "weak-n300-random-p0.5-eta0-eps0-s0", "kind": "grid", "generator": "weak",
                 "pool_size": 300, "rule": "random", "keep_fraction": 0.5, "oracle_noise": 0.0,
                 "generator_noise": 0.0, "seed": 0, "status": "error",
                 "error": "RuntimeError: the rule kept no training rows"})
    table = pd.DataFrame(rows)
    ref = run_dir / "reference" / "samples"
    ref.mkdir(parents=True)
    student = np.random.default_rng(1).random(len(ids)) < student_accuracy
    pd.DataFrame({"problem_id": ids, "level": levels, "sample_idx": 0, "correct": student}).to_parquet(
        ref / "student_greedy.parquet")
    rng = np.random.default_rng(3)
    pool_ids = [f"p{i}" for i in range(600)]
    pool_levels = np.repeat(LEVELS, 100)
    pass_rate = np.clip(1.0 - pool_levels / 7 + rng.normal(0, 0.15, 600), 0, 1).round(3)
    manifest = {"generators": {}}
    for gen, acc in trace_accuracy:
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
        "value": student_accuracy, "ci_low": student_accuracy - 0.03, "ci_high": student_accuracy + 0.03,
        "problems": len(ids)}}}}}}
    return cfg, table, manifest, reference


def _report(tmp_path, built, figures=False):
    cfg, table, manifest, reference = built
    path = write_report(cfg.resolved_run_dir, cfg, table, manifest, reference, figures=figures)
    read = lambda name: json.loads((path.parent / name).read_text())  # noqa: E731
    return path, read("verdicts.json"), read("calibration.json")


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_data():
    rng = np.random.default_rng(0)
    small = (rng.random((3, 100)) < 0.4).astype(float)
    large = (rng.random((3, 3000)) < 0.4).astype(float)
    m_s, lo_s, hi_s = bootstrap_mean(small, 500, 0.95, np.random.default_rng(1))
    m_l, lo_l, hi_l = bootstrap_mean(large, 500, 0.95, np.random.default_rng(1))
    assert lo_s < m_s < hi_s and lo_l < m_l < hi_l
    assert (hi_l - lo_l) < 0.5 * (hi_s - lo_s)
    assert lo_l < 0.4 < hi_l
    spread = large.copy()  # seed-to-seed spread widens the interval: the same problems, one seed far off
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


def test_the_accuracy_maps_and_the_oracle_geometry():
    assert binary_accuracy(0.0) == 0.5 and binary_accuracy(1.0) == 1.0 and binary_accuracy(0.4) == 0.7
    # instrument.md §1.1 C1: trace accuracy 0.61 is rho 0.82 under the halving map, 0.34 under the plain one
    assert rho_from_accuracy(0.61, "open_ended") == pytest.approx(0.82, abs=0.005)
    assert rho_from_accuracy(0.61, "binary") == pytest.approx(0.34, abs=0.005)
    assert rho_from_accuracy(0.3, "binary") == pytest.approx(0.0)  # below chance on a binary task: no negative cosines
    # an oracle that is the generator has rho* = rho whatever was measured; otherwise rho* is clipped to geometry
    assert feasible_rho_star(0.82, 1.0, 0.99) == pytest.approx(0.82)
    assert feasible_rho_star(1.0, 0.9, 0.99) == pytest.approx(0.9)
    assert feasible_rho_star(0.9, 0.9 * 0.99, 0.99) == pytest.approx(0.99)


def test_label_aware_prediction_matches_the_theory_and_instrument_md():
    # With the theory's own filter (the oracle) and its p semantics, the §2.3 integral is the theory's label-aware
    # error; without a filter it is the label-agnostic one.
    for rule in ("keep_hard", "keep_easy"):
        for p, nd in ((0.3, 10), (0.5, 100)):
            aware = theory.asymptotic_error(1 / nd, 0.9, 0.95, 0.9 * 0.95, rule, p, 1e-3, True)
            assert verified_error([1 / nd], 0.9, 0.95, 0.9 * 0.95, rule, p, 1e-3, "oracle", "before")[0][0] == \
                pytest.approx(aware, abs=0.003)
            agnostic = theory.asymptotic_error(1 / nd, 0.9, 0.95, 0.9 * 0.95, rule, p, 1e-3)
            assert verified_error([1 / nd], 0.9, 0.95, 0.9 * 0.95, rule, p, 1e-3, None, "before")[0][0] == \
                pytest.approx(agnostic, abs=0.003)
    # instrument.md §2, the pipeline's label-aware cell (difficulty = the generator's margin, a perfect verifier,
    # p counted after the filter): KH-and-correct at p = 0.1 over correct-only.
    def ratio(rho, nd, p):
        base = verified_error([1 / nd], rho, rho, 1.0, "all", 1.0, 1e-3)[0][0]
        return verified_error([1 / nd], rho, rho, 1.0, "keep_hard", p, 1e-3)[0][0] / base
    assert 1.10 < ratio(0.82, 30, 0.1) < 1.16 and 1.24 < ratio(0.82, 100, 0.1) < 1.30
    assert ratio(0.95, 100, 0.1) == pytest.approx(0.89, abs=0.02)
    assert ratio(0.99, 100, 0.1) == pytest.approx(0.58, abs=0.02)
    assert ratio(1.0, 100, 0.3) == pytest.approx(0.33, abs=0.02)


def test_phase_tiny_shaped_sweep_gives_no_verdict_the_calibrated_theory_contradicts(tmp_path):
    # Trace accuracy 0.61, oracle = generator, every trained cell below the untouched student, 2 loop rounds:
    # today's "refuted" (i), (iv), (v) and "confirmed" (ii) become untestable, each with its reason.
    built = toy_sweep(tmp_path, phase_tiny_world, loop_curves={"all": [0.35, 0.3], "correct_only": [0.36, 0.34]})
    path, verdicts, cal = _report(tmp_path, built, figures=True)
    assert {k: v["verdict"] for k, v in verdicts.items()} == {k: UNTESTABLE for k in ("i", "ii", "iii", "iv", "v")}
    strong = cal["generators"]["strong"]
    assert strong["gate"]["outcome"] == "not in regime" and strong["gate"]["reference"] == "untouched student"
    assert strong["rho_g"] == 1.0 and strong["rho_star"] == pytest.approx(strong["rho"])
    assert strong["rho_by_map"]["open_ended"] == pytest.approx(0.82, abs=0.005) and strong["d_eff"] is None
    assert "not in regime" in verdicts["i"]["evidence"] and "needs 4 or more" in verdicts["v"]["evidence"]
    text = path.read_text()
    assert "weak-n300-random-p0.5-eta0-eps0-s0" in text and "kept no training rows" in text
    for name in ("error_vs_p.png", "error_vs_p_hard.png", "phase_diagram.png", "rule_winner.png", "oracle_noise.png",
                 "collapse_loop.png", "results.csv", "cells.csv", "calibration.json", "verdicts.json"):
        assert (path.parent / name).stat().st_size > 0, name


def test_in_regime_but_oracle_is_the_generator_the_theory_predicts_nothing_resolvable(tmp_path):
    # Training helps, keep-hard at p = 0.3 beats p = 1 and random by 0.1 — but with the oracle the generator and
    # trace accuracy 0.61 the theory predicts at most a few thousandths at any n/d: (i) untestable, never consistent.
    # Three training-set sizes (300, 900, 3000): too few to fit d_eff, so the check runs over every n/d.
    cells = [(g, n, r, p, 0.0, (0,)) for g in ("weak", "strong") for n, r, p in
             ((300, "all", 1.0), (3000, "all", 1.0), (3000, "keep_hard", 0.3), (3000, "random", 0.3))]
    _, verdicts, cal = _report(tmp_path, toy_sweep(tmp_path, helpful_world, cells, student_accuracy=0.3))
    strong = cal["generators"]["strong"]
    assert strong["gate"]["outcome"] == "in regime" and strong["d_eff"] is None
    assert verdicts["i"]["verdict"] == UNTESTABLE
    assert "the theory predicts no less-is-more here" in verdicts["i"]["evidence"]
    assert not any(v["verdict"] == CONSISTENT for v in verdicts.values())


def test_iv_needs_a_less_is_more_region_before_judging_its_shrinking(tmp_path):
    # Oracle noise "helps" (phase_tiny_world adds 0.1 at eta = 0.5) where there is no region: untestable, not refuted.
    _, verdicts, _ = _report(tmp_path, toy_sweep(tmp_path, phase_tiny_world, student_accuracy=0.1))
    assert verdicts["iv"]["verdict"] == UNTESTABLE
    assert "random` control is missing" in verdicts["iv"]["evidence"] or "region" in verdicts["iv"]["evidence"]


def test_the_machine_readable_files_have_the_required_columns_and_keys(tmp_path):
    cells = [(g, n, r, p, 0.0, (0,)) for g in ("weak", "strong") for n in (300, 3000)
             for r, p in (("all", 1.0), ("keep_hard_correct", 0.3), ("correct_only", 1.0), ("random", 0.3))]
    path, verdicts, cal = _report(tmp_path, toy_sweep(tmp_path, helpful_world, cells, student_accuracy=0.3))
    results = pd.read_csv(path.parent / "results.csv")
    for column in ("rule", "p", "n", "seed", "error", "predicted_error", "d", "rho", "rho_star", "rho_g", "lam",
                   "status", "failure"):
        assert column in results.columns, column
    ok = results[results.status == "ok"]
    assert ok["error"].between(0, 1).all() and (ok["n"] == ok["pool_size"]).all()
    label_aware = ok[ok.rule == "keep_hard_correct"]
    assert (label_aware["p"] > 0.3).all()  # before the correctness filter: more than the 0.3 kept after it
    assert results.loc[results.status == "error", "failure"].str.contains("kept no training rows").all()
    assert set(verdicts) == {"i", "ii", "iii", "iv", "v"}
    assert all(set(v) >= {"verdict", "evidence"} and v["verdict"] in ("consistent", "inconsistent", "untestable")
               for v in verdicts.values())
    for gen in ("weak", "strong"):
        g = cal["generators"][gen]
        for key in ("rho", "rho_star", "rho_g", "d_eff", "lam", "rho_map", "gate"):
            assert key in g, key
        for key in ("outcome", "reference_error", "p1_error", "difference"):
            assert key in g["gate"], key
        assert len(g["gate"]["reference_error"]) == 3 and len(g["gate"]["p1_error"]) == 3  # with intervals
    cells_csv = pd.read_csv(path.parent / "cells.csv")
    assert {"predicted_error", "p_theory", "error_overall"} <= set(cells_csv.columns)


@pytest.mark.parametrize("seed", [0, 1])
def test_paired_differences_are_tighter_than_the_cells_own_intervals(seed):
    ids, _ = _problems()
    rng = np.random.default_rng(seed)
    base = (rng.random((3, len(ids))) < 0.5).astype(float)
    better = base.copy()
    better[rng.random(base.shape) < 0.05] = 1.0  # the same problems, a few more right
    meas = Measurements.__new__(Measurements)
    meas.groups, meas.resamples, meas.confidence, meas._stats = {OVERALL: np.ones(len(ids), bool)}, 500, 0.95, {}
    a, b = ("g", 0.0, 100, "keep_hard", 0.1, 0.0), ("g", 0.0, 100, "all", 1.0, 0.0)
    meas.cells = {a: Cell(a, [0, 1, 2], better), b: Cell(b, [0, 1, 2], base)}
    d = meas.difference(a, b)
    ea, eb = meas.error(a), meas.error(b)
    assert d[2] < 0  # significantly lower error
    assert (d[2] - d[1]) < 0.5 * (ea[2] - ea[1])
    assert ea[0] - eb[0] == pytest.approx(d[0])

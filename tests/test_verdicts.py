"""Verdicts conditioned on the calibrated theory, on synthetic measurement tables: a corner where the theory predicts
less is more, negative controls that must never come out `consistent` (oracle = generator, a damaged student, the
p <= 0.1 criterion at rho* = 0.99), a phase_tiny-shaped toy world, missing controls, and the report's files."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.sweep.config import parse_sweep_config, trial_id
from pipeline.sweep.layout import RESULT_FILE, TRIALS_DIR
from pipeline.sweep.predict import verified_error
from pipeline.sweep.report import write_report
from pipeline.sweep.verdicts import CONSISTENT, INCONSISTENT, UNTESTABLE
from pipeline.theory import model as theory

D, LAM = 100, 1e-3
# A linear world's problems are answered by its oracle: the correctness filter agrees with the oracle.
LABEL_AWARE = {"correct_only": "all", "keep_hard_correct": "keep_hard", "keep_easy_correct": "keep_easy"}


def _cfg(tmp_path: Path, generators, loop=None, **report):
    """A sweep config for a synthetic run directory (the report reads only its report and loop blocks)."""
    return parse_sweep_config({
        "name": "synthetic", "output_root": str(tmp_path),
        "pool": {"source": {"kind": "toyworld", "n": 50000},
                 "generators": {g: {"model": "toy:strong"} for g in generators}},
        "grid": {"seeds": [0], "blocks": [{"pool_sizes": [100]}]},
        "loop": loop or {}, "report": {"bootstrap": 200, **report},
    })


def linear_cell(n, rho, rho_star, rho_g, rule, p):
    """(exact error, theory's p) of a linear-world cell: the theory's deterministic equivalent at d = D, lambda = LAM,
    with the pipeline's budget (p n problems after the correctness filter) for label-aware rules."""
    if rule in LABEL_AWARE:
        base = LABEL_AWARE[rule]
        errors, p_theory = verified_error([D / n], rho, rho_star, rho_g, base, 1.0 if base == "all" else p, LAM,
                                          "oracle")
        return float(errors[0]), p_theory
    return theory.asymptotic_error(D / n, rho, rho_star, rho_g, rule, 1.0 if rule == "all" else p, LAM), p


def linear_error(n, rho, rho_star, rho_g, rule, p):
    """The exact error of a linear-world cell (see ``linear_cell``)."""
    return linear_cell(n, rho, rho_star, rho_g, rule, p)[0]


def _row(spec, **extra):
    return {**spec, "trial_id": trial_id(spec), "status": "ok", "error": None, **extra}


def linear_sweep(tmp_path, generators, cells, offset=0.0, noise=0.0, loop=None, loop_errors=None, **report):
    """A linear-world run directory: trial results carry exact_error and the world's fields, no scores, no
    untouched student. ``generators``: name -> (rho, rho_star, rho_g); ``cells``: (generator, n, rule, p);
    ``loop_errors``: rule -> exact error per round of a collapse loop."""
    cfg = _cfg(tmp_path, generators, loop, **report)
    run_dir = cfg.resolved_run_dir
    rows = []
    for gen, n, rule, p in cells:
        rho, rho_star, rho_g = generators[gen]
        spec = {"kind": "grid", "generator": gen, "pool_size": n, "rule": rule, "keep_fraction": p,
                "oracle_noise": 0.0, "generator_noise": 0.0, "seed": 0, "block": "grid"}
        tid = trial_id(spec)
        jitter = noise * np.random.default_rng(zlib.crc32(tid.encode())).standard_normal()
        error, p_theory = linear_cell(n, rho, rho_star, rho_g, rule, p)
        error = min(0.5, error + offset + jitter)
        result = {"fingerprint": "f", "exact_error": error, "d": D, "rho": rho, "rho_star": rho_star, "rho_g": rho_g,
                  "lam": LAM, "n": n, "p": p_theory, "curation": {"kept_problems": int(round(n * p))}}
        (run_dir / TRIALS_DIR / tid).mkdir(parents=True)
        (run_dir / TRIALS_DIR / tid / RESULT_FILE).write_text(json.dumps(result))
        rows.append(_row(spec, kept_rows=int(round(n * p)), kept_problems=int(round(n * p))))
    for rule, errors in (loop_errors or {}).items():
        spec = {"kind": "loop", "rule": rule, "generator": cfg.loop_generator, "pool_size": cfg.loop.pool_size,
                "keep_fraction": cfg.loop.keep_fraction, "oracle_noise": 0.0, "generator_noise": 0.0, "seed": 0,
                "block": "loop"}
        rounds = [{"round": t, "exact_error": e, "data_source": "pool", "curation": {"kept_rows": 100,
                                                                                    "kept_trace_accuracy": 1.0}}
                  for t, e in enumerate(errors, 1)]
        (run_dir / TRIALS_DIR / trial_id(spec)).mkdir(parents=True)
        (run_dir / TRIALS_DIR / trial_id(spec) / RESULT_FILE).write_text(json.dumps({"rounds": rounds}))
        rows.append(_row(spec))
    manifest = {"generators": {g: {"model": "linear", "trace_accuracy": 1 - math.acos(r[0]) / math.pi}
                               for g, r in generators.items()}}
    return cfg, pd.DataFrame(rows), manifest, {"models": {}}


def report(tmp_path, built, figures=False):
    cfg, table, manifest, reference = built
    path = write_report(cfg.resolved_run_dir, cfg, table, manifest, reference, figures=figures)
    verdicts = json.loads((path.parent / "verdicts.json").read_text())
    return path, verdicts, json.loads((path.parent / "calibration.json").read_text())


def _grid(gens, sizes, rules, ps):
    cells = [(g, n, "all", 1.0) for g in gens for n in sizes]
    cells += [(g, n, r, p) for g in gens for n in sizes for r in rules for p in ps if p < 1]
    return cells


CURVE_PS = (0.05, 0.1, 0.2, 0.3, 0.5)


@pytest.mark.parametrize("resolution, judged", [(0.005, {1000, 3000, 10000}), (None, {1000})])
def test_the_theorys_corner_is_consistent_for_i_and_the_calibration_recovers_the_world(tmp_path, resolution, judged):
    # The table is the theory itself, so any resolution may be claimed; the default (0.15 / sqrt(d) = 0.015 at
    # d = 100, one pool draw's spread) resolves the predicted gain only at n/d = 10 (0.046; 0.029 at n/d = 30).
    gens = {"perfect": (1.0, 0.9999, 0.9999)}
    built = linear_sweep(tmp_path, gens, _grid(gens, (1000, 3000, 10000), ("keep_hard", "random"), CURVE_PS),
                         exact_resolution=resolution)
    path, verdicts, cal = report(tmp_path, built, figures=resolution is None)
    assert verdicts["i"]["verdict"] == CONSISTENT, verdicts["i"]["evidence"]
    assert {c["n"] for c in verdicts["i"]["cells"]} == judged
    g = cal["generators"]["perfect"]
    assert abs(g["d_eff"] - D) / D < 0.15 and g["rho"] == 1.0 and g["rho_g"] == 0.9999
    assert g["gate"]["outcome"] == "in regime" and g["gate"]["reference"] == "chance"
    assert g["rho_source"].startswith("the trial results")
    assert all(v["verdict"] != INCONSISTENT for v in verdicts.values())
    text = path.read_text()
    assert "| (i) |" in text and "compares `all` at the largest pool with chance (error 0.5)" in text
    if resolution is None:
        assert "at least +-0.015 over exact errors" in text
        for name in ("theory_overlay.png", "learning_curve.png", "phase_diagram.png"):
            assert (path.parent / name).stat().st_size > 0, name


def test_a_world_that_contradicts_the_corner_is_inconsistent(tmp_path):
    gens = {"perfect": (1.0, 0.9999, 0.9999)}
    cells = _grid(gens, (1000, 3000, 10000), ("keep_hard", "random"), CURVE_PS)
    cfg, table, manifest, reference = linear_sweep(tmp_path, gens, cells)
    for tid in table[table.rule == "keep_hard"].trial_id:  # keep-hard no better than p = 1: the theory is wrong
        path = cfg.resolved_run_dir / TRIALS_DIR / tid / RESULT_FILE
        result = json.loads(path.read_text())
        n = result["n"]
        result["exact_error"] = linear_error(n, 1.0, 0.9999, 0.9999, "all", 1.0) + 0.02
        path.write_text(json.dumps(result))
    _, verdicts, _ = report(tmp_path, (cfg, table, manifest, reference))
    assert verdicts["i"]["verdict"] == INCONSISTENT


def test_p_at_most_0_1_at_rho_star_0_99_is_never_consistent(tmp_path):
    # The old criterion: keep-hard at p <= 0.1 against p = 1. At rho* = 0.99 the calibrated theory predicts p = 0.1
    # loses (the best p is 0.2-0.4), so on a {0.1, 1} grid (i) is untestable, and the secondary line reports it.
    gens = {"perfect": (1.0, 0.99, 0.99)}
    cells = _grid(gens, (1000, 3000, 10000), ("keep_hard",), (0.1,))
    cells += [(g, n, "random", p) for g in gens for n in (1000, 3000, 10000) for p in CURVE_PS]
    _, verdicts, _ = report(tmp_path, linear_sweep(tmp_path, gens, cells))
    assert verdicts["i"]["verdict"] == UNTESTABLE, verdicts["i"]["evidence"]
    assert "no resolvable less-is-more" in verdicts["i"]["evidence"]
    assert "Secondary (LIMO/s1-style, p <= 0.1" in verdicts["i"]["evidence"]
    assert not any(v["verdict"] == CONSISTENT for v in verdicts.values())


def test_oracle_equal_to_the_generator_predicts_no_less_is_more(tmp_path):
    # rho_g = 1: the difficulty oracle is the generator. A measured table that *looks* like less is more (drawn from
    # an independent oracle) must not confirm (i): the calibrated theory, with the oracle actually used, has no
    # resolvable effect to test at n/d >= 30 (at n/d = 10 it predicts a 5% gain at p = 0.3, which exact errors
    # resolve: that cell would be judged, and rightly).
    gens = {"weakish": (0.82, 0.82, 1.0)}
    cells = _grid(gens, (3000, 10000), ("keep_hard", "random"), CURVE_PS)
    cfg, table, manifest, reference = linear_sweep(tmp_path, gens, cells)
    for tid in table[table.rule == "keep_hard"].trial_id:
        path = cfg.resolved_run_dir / TRIALS_DIR / tid / RESULT_FILE
        result = json.loads(path.read_text())
        result["exact_error"] = linear_error(result["n"], 1.0, 0.9999, 0.9999, "keep_hard", result["p"]) + 0.1
        path.write_text(json.dumps(result))
    _, verdicts, cal = report(tmp_path, (cfg, table, manifest, reference))
    assert cal["generators"]["weakish"]["rho_g"] == 1.0
    assert verdicts["i"]["verdict"] == UNTESTABLE, verdicts["i"]["evidence"]
    assert not any(v["verdict"] == CONSISTENT for v in verdicts.values())


def test_a_damaged_student_is_caught_by_the_calibration(tmp_path):
    # Every error offset by a constant: the theory's learning curve cannot fit the random curve, so nothing rests on it.
    gens = {"perfect": (1.0, 0.9999, 0.9999)}
    built = linear_sweep(tmp_path, gens, _grid(gens, (1000, 3000, 10000), ("keep_hard", "random"), CURVE_PS),
                         offset=0.15)
    _, verdicts, cal = report(tmp_path, built)
    g = cal["generators"]["perfect"]
    assert g["learning_curve"]["fit_ok"] is False and g["usable"] is False
    assert all(v["verdict"] == UNTESTABLE for v in verdicts.values())
    assert "not the theory's learner" in verdicts["i"]["evidence"]


def test_a_missing_random_control_makes_the_verdict_untestable(tmp_path):
    gens = {"perfect": (1.0, 0.9999, 0.9999)}
    cells = _grid(gens, (1000, 3000, 10000), ("keep_hard",), (0.2, 0.3, 0.5))
    cells += [(g, n, "random", 0.05) for g in gens for n in (1000, 3000, 10000)]
    _, verdicts, _ = report(tmp_path, linear_sweep(tmp_path, gens, cells))
    assert verdicts["i"]["verdict"] == UNTESTABLE
    assert "the `random` control is missing at p = 0.2, 0.3, 0.5" in verdicts["i"]["evidence"]


def test_ii_judges_only_small_n_over_d_and_monotone_predictions(tmp_path):
    gens = {"weakish": (0.9, 0.99, 0.9 * 0.99)}
    sizes = (50, 100, 200, 1000)
    cells = _grid(gens, sizes, ("keep_hard", "random"), (0.3, 0.5, 0.7))
    _, verdicts, _ = report(tmp_path, linear_sweep(tmp_path, gens, cells))
    judged = verdicts["ii"]["cells"]
    assert judged and all(c["n"] <= 200 for c in judged)
    assert verdicts["ii"]["verdict"] == CONSISTENT, verdicts["ii"]["evidence"]


def test_iii_flips_where_the_theory_predicts_a_flip(tmp_path):
    # theory.md §3a acceptance: the winner flips between rho = 1 (hard) and rho = 0.95 (easy) at rho* = 0.9999.
    gens = {"strong": (1.0, 0.9999, 0.9999), "weak": (0.95, 0.9999, 0.95 * 0.9999)}
    cells = _grid(gens, (3000, 10000), ("keep_hard", "keep_easy", "random"), CURVE_PS)
    _, verdicts, _ = report(tmp_path, linear_sweep(tmp_path, gens, cells))
    assert verdicts["iii"]["verdict"] in (CONSISTENT, UNTESTABLE), verdicts["iii"]["evidence"]
    if verdicts["iii"]["verdict"] == UNTESTABLE:
        pytest.skip("no resolvable flip on this grid: " + verdicts["iii"]["evidence"][:300])


@pytest.mark.parametrize("rounds, flip, expected", [(6, False, CONSISTENT), (6, True, INCONSISTENT),
                                                    (2, False, UNTESTABLE)])
def test_v_needs_four_rounds_and_follows_the_theorys_loop(tmp_path, rounds, flip, expected):
    # theory.md §3a: rho = 0.95, a near-perfect verifier, n/d = 10: all-data collapses, keep-hard-and-valid improves.
    gens = {"g": (0.95, 0.99, 0.95 * 0.99)}
    loop = theory.collapse_loop(0.95, 0.9999, 10.0, LAM, 0.3, rounds, rules=[("all", False), ("keep_hard", True)])
    errors = {"all": loop.errors["all"][1:], "keep_hard_correct": loop.errors["keep_hard+correct"][1:]}
    if flip:  # a world where all-data improves over the rounds: the theory's loop is contradicted
        errors["all"] = errors["all"][::-1]
    built = linear_sweep(tmp_path, gens, [("g", n, "all", 1.0) for n in (300, 1000)],
                         loop={"rounds": rounds, "pool_size": 1000, "rules": ["all", "keep_hard_correct"],
                               "keep_fraction": 0.3}, loop_errors={k: list(v) for k, v in errors.items()})
    _, verdicts, _ = report(tmp_path, built)
    assert verdicts["v"]["verdict"] == expected, verdicts["v"]["evidence"]
    if rounds < 4:
        assert "needs 4 or more" in verdicts["v"]["evidence"]


def test_label_aware_cells_are_predicted_with_the_pipelines_filter_and_budget(tmp_path):
    # instrument.md §2: with a near-perfect verifier, keep-hard-and-correct beats the correctness filter for a
    # weaker generator too (rho = 0.9, rho* = 0.9999, n/d = 10-100). results.csv carries the theory's p (before the
    # filter), larger than the pipeline's keep fraction (after it).
    gens = {"g": (0.9, 0.9999, 0.9 * 0.9999)}
    cells = [("g", n, "correct_only", 1.0) for n in (1000, 3000, 10000)]
    cells += [("g", n, r, p) for n in (1000, 3000, 10000) for r in ("keep_hard_correct", "random") for p in CURVE_PS]
    cells += [("g", n, "all", 1.0) for n in (1000, 3000, 10000)]
    path, verdicts, cal = report(tmp_path, linear_sweep(tmp_path, gens, cells))
    assert cal["generators"]["g"]["verifier"].startswith("the oracle")
    assert verdicts["i"]["verdict"] == CONSISTENT, verdicts["i"]["evidence"]
    assert {c["rule"] for c in verdicts["i"]["cells"]} == {"keep_hard_correct"}
    results = pd.read_csv(path.parent / "results.csv")
    aware = results[results.rule == "keep_hard_correct"]
    assert (aware["p"] > aware["keep_fraction"]).all()
    cells_csv = pd.read_csv(path.parent / "cells.csv")
    assert (cells_csv["predicted_error"] - cells_csv["error_overall"]).abs().max() < 0.01


def test_iv_judges_noise_only_where_a_region_exists(tmp_path):
    # Oracle noise replaces a fraction eta of the difficulty scores by random ones (the curate stage's model). At
    # rho = 1, rho* = 0.9999, keep-hard at p = 0.3 is a less-is-more region at n/d = 10 and half the scores random
    # costs it; at p = 0.5, n/d = 30, no resolvable cost is predicted.
    from pipeline.sweep.predict import verified_error as integral

    gens = {"perfect": (1.0, 0.9999, 0.9999)}
    cells = _grid(gens, (1000, 3000), ("keep_hard", "random"), CURVE_PS)
    cfg, table, manifest, reference = linear_sweep(tmp_path, gens, cells)
    rows = []
    for n, p in ((1000, 0.3), (3000, 0.5)):
        spec = {"kind": "grid", "generator": "perfect", "pool_size": n, "rule": "keep_hard", "keep_fraction": p,
                "oracle_noise": 0.5, "generator_noise": 0.0, "seed": 0, "block": "grid"}
        error = float(integral([D / n], 1.0, 0.9999, 0.9999, "keep_hard", p, LAM, None, "before", 0.5)[0][0])
        (cfg.resolved_run_dir / TRIALS_DIR / trial_id(spec)).mkdir(parents=True)
        (cfg.resolved_run_dir / TRIALS_DIR / trial_id(spec) / RESULT_FILE).write_text(json.dumps(
            {"exact_error": error, "d": D, "rho": 1.0, "rho_star": 0.9999, "rho_g": 0.9999, "lam": LAM, "n": n,
             "p": p}))
        rows.append(_row(spec))
    table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    _, verdicts, _ = report(tmp_path, (cfg, table, manifest, reference))
    assert verdicts["iv"]["verdict"] == CONSISTENT, verdicts["iv"]["evidence"]
    assert [c["n"] for c in verdicts["iv"]["cells"]] == [1000]


def test_the_dimension_fit_ignores_where_the_formula_has_no_value():
    """At extreme d/n the asymptotic formula returns NaN; the fit must still find the world's d (rho = 1 exactly)."""
    import numpy as np

    from pipeline.sweep.calibrate import fit_dimension
    from pipeline.theory import model as theory

    ns = np.array([50, 100, 200, 500, 1000, 2000, 5000, 10000] * 7, dtype=float)
    ps = np.repeat([0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0], 8)
    errors = theory.asymptotic_error_array(100 / ns, 1.0, 0.0, 0.0, "random", ps, 1e-3)
    dim, _ = fit_dimension(ns, ps, errors, 1.0, 1e-3)
    assert abs(dim - 100) < 1

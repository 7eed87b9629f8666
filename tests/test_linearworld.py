"""The linear teacher-student world (pipeline/linearworld.py, instrument.md §3a): its geometry is exact, its sampling
backend keeps the sample row contract, its difficulty is the oracle margin, its ridge student measured through the
pipeline agrees with pipeline.theory, its configs say what to change, and its smoke sweep runs end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import columns as C
from pipeline import linearworld as lw
from pipeline.config import ConfigError
from pipeline.sweep.config import load_sweep_config, parse_sweep_config
from stages.base import rows_of

ROOT = Path(__file__).resolve().parents[1]


# -- geometry ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rho, rho_star, rho_g", [
    (1.0, 0.99, None), (0.9, 0.99, None), (0.82, 0.9999, None), (0.95, 0.99, 0.97), (0.9, 0.9, 1.0), (0.0, 0.5, None),
])
def test_the_three_cosines_are_exactly_the_ones_set(rho, rho_star, rho_g):
    geometry = lw.Geometry(rho, rho_star, rho_g)
    target, generator, oracle = geometry.target(50), geometry.generator(50), geometry.oracle(50)
    for vector in (target, generator, oracle):
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-12)
    assert target @ generator == pytest.approx(rho, abs=1e-12)
    assert target @ oracle == pytest.approx(rho_star, abs=1e-12)
    assert oracle @ generator == pytest.approx(rho * rho_star if rho_g is None else rho_g, abs=1e-12)
    assert np.allclose(lw.basis(50) @ lw.basis(50).T, np.eye(3), atol=1e-12)


def test_impossible_geometries_say_what_to_change():
    with pytest.raises(lw.LinearWorldError, match=r"set rho_g within \[0\.62, 1\]"):
        lw.Geometry(0.9, 0.9, 0.1)
    with pytest.raises(lw.LinearWorldError, match="set rho_g within"):
        lw.Geometry(1.0, 0.9, 0.95)  # w_g = w*: the oracle's cosine with it is rho_star
    with pytest.raises(lw.LinearWorldError, match=r"must lie in \[0, 1\]"):
        lw.Geometry(1.2, 0.9)
    data = _smoke_config()
    data["pool"]["generators"]["noisy"]["oracle"] = {"rho_star": 0.99, "rho_g": 0.3}
    with pytest.raises(ConfigError, match="pool.generators.noisy.oracle.*set rho_g within"):
        parse_sweep_config(data)


@pytest.mark.parametrize("ref, message", [
    ("linear:", "write linear:rho=R"), ("linear:sigma=1", "rho .* is required"), ("linear:rho=2", "rho must lie"),
    ("linear:rho=0.9,temp=1", "'temp=1' is not one of rho, sigma"), ("linear:rho=x", "rho = 'x' is not a number"),
])
def test_bad_generator_specs_say_what_to_change(ref, message):
    with pytest.raises(lw.LinearWorldError, match=message):
        lw.parse_spec(ref)


def test_problems_are_named_by_their_text():
    texts, matrix = lw.problem_features(3000, 20, seed=4)
    assert texts[17] == "x17 ~ N(0, I_20) from seed 4" and lw.parse_problem(texts[17]) == (17, 20, 4)
    assert np.array_equal(lw.features([texts[2500], texts[3]]), matrix[[2500, 3]])  # whatever the batch
    assert abs(matrix.mean()) < 0.01 and abs(matrix.std() - 1) < 0.01
    assert not np.allclose(lw.problem_features(5, 20, seed=5)[1], matrix[:5])
    with pytest.raises(lw.LinearWorldError, match="kind: linear"):
        lw.features(["Compute 1+2."])


# -- models and sampling ---------------------------------------------------------------------------------------------


def _problem_batch(n: int, dim: int = 20, seed: int = 0, oracle=None) -> dict[str, list]:
    from stages.source import SourceConfig, SourceStage

    cfg = SourceConfig(kind="linear", n=n, dim=dim, oracle=oracle)
    rows = [r for b in SourceStage(cfg, seed=seed).read() for r in rows_of(b)]
    assert all(r.pop(C.REJECT_REASON) is None for r in rows)
    return {c: [r[c] for r in rows] for c in rows[0]}


def test_the_source_answers_with_the_oracle_and_writes_its_margin():
    batch = _problem_batch(500, oracle={"rho_star": 0.9})
    truth = _problem_batch(500)  # no oracle: the ground truth answers (held-out problems)
    assert batch[C.PROBLEM] == truth[C.PROBLEM] and batch[C.PROBLEM_ID] == truth[C.PROBLEM_ID]
    matrix = lw.features(batch[C.PROBLEM])
    oracle = lw.Geometry(1.0, 0.9).oracle(20)
    assert batch[C.ANSWER] == [lw.label_text(m) for m in matrix @ oracle]
    assert truth[C.ANSWER] == [lw.label_text(m) for m in matrix @ lw.basis(20)[0]]
    margins = [json.loads(m)["oracle_margin"] for m in batch[C.METADATA]]
    assert np.allclose(margins, np.abs(matrix @ oracle))
    agreement = np.mean(np.array(batch[C.ANSWER]) == np.array(truth[C.ANSWER]))
    assert agreement == pytest.approx(1 - math.acos(0.9) / math.pi, abs=0.04)
    assert sorted(set(batch[C.LEVEL])) == [1, 2, 3, 4, 5]  # quintiles of the true margin, level 5 the smallest
    true_margin = np.abs(matrix @ lw.basis(20)[0])
    assert true_margin[np.array(batch[C.LEVEL]) == 5].max() < true_margin[np.array(batch[C.LEVEL]) == 1].min()


def test_linear_backend_obeys_the_sample_row_contract():
    from test_sample import check_sample_rows

    from stages.sample import SampleConfig, SampleStage

    batch = _problem_batch(40)
    stage = SampleStage(SampleConfig(model="linear:rho=0.9,sigma=0.5", backend="linear", k=4, temperature=1.0),
                        seed=5)
    out = stage(batch)
    check_sample_rows(out, batch, k=4, seed=5, model_id="linear:rho=0.9,sigma=0.5")
    assert set(out[C.COMPLETION]) == {"\\boxed{1}", "\\boxed{-1}"} and set(out[C.FINISH_REASON]) == {"stop"}
    # Each row's noise comes from its own seed: the same completions whether a problem is sampled alone or not.
    alone = stage({c: v[7:8] for c, v in batch.items()})
    together = [t for p, t in zip(out[C.PROBLEM_ID], out[C.COMPLETION]) if p == batch[C.PROBLEM_ID][7]]
    assert alone[C.COMPLETION] == together
    # sigma > 0 gives pass rates strictly between 0 and 1 on near-boundary problems; greedy drops the noise.
    labels = lw.completion_labels(out[C.COMPLETION]).reshape(40, 4)
    assert ((labels == 1).any(axis=1) & (labels == -1).any(axis=1)).any()
    greedy = SampleStage(SampleConfig(model="linear:rho=0.9,sigma=0.5", backend="linear", k=1, temperature=0.0))
    expected = lw.LinearModel(rho=0.9).labels(lw.features(batch[C.PROBLEM]), [], noisy=False)
    assert np.array_equal(lw.completion_labels(greedy(batch)[C.COMPLETION]), expected)


def test_a_saved_student_samples_like_a_spec_and_resolves_without_a_hub(tmp_path):
    from pipeline.models import model_fingerprint, resolve_model
    from stages.sample import SampleConfig, SampleStage

    assert resolve_model("linear:rho=0.9") == "linear:rho=0.9"
    assert model_fingerprint("linear:rho=0.9") == model_fingerprint("linear:rho=0.90,sigma=0")
    assert model_fingerprint("linear:rho=0.9") != model_fingerprint("linear:rho=0.9,sigma=0.1")
    weights = lw.Geometry(0.8, 1.0).generator(20) * 3.0
    directory = lw.save_model(tmp_path / "student", weights)
    assert resolve_model(str(directory)) == str(directory.resolve()) and lw.is_linear_model(str(directory))
    fingerprint = model_fingerprint(str(directory))
    batch = _problem_batch(30)
    stage = SampleStage(SampleConfig(backend="linear", k=1, temperature=0.0).model_copy(update={"model": str(directory)}))
    spec = SampleStage(SampleConfig(model="linear:rho=0.8", backend="linear", k=1, temperature=0.0))
    assert stage(batch)[C.COMPLETION] == spec(batch)[C.COMPLETION]
    lw.save_model(directory, -weights)
    assert model_fingerprint(str(directory)) != fingerprint  # new weights, new fingerprint
    with pytest.raises(Exception, match="backend: linear"):
        SampleConfig(model="linear:rho=0.9", backend="hf")


def test_difficulty_is_the_oracle_margin_not_the_pass_rate():
    from stages.difficulty import DifficultyConfig, DifficultyStage
    from stages.sample import SampleConfig, SampleStage
    from stages.verify import VerifySettings, VerifyStage

    batch = _problem_batch(200, oracle={"rho_star": 0.99})
    sampled = SampleStage(SampleConfig(model="linear:rho=1,sigma=1", backend="linear", k=4, temperature=1.0))(batch)
    verified = VerifyStage(VerifySettings(verifier="exact"))(sampled)
    out = DifficultyStage(DifficultyConfig(score="oracle_margin"))(verified)
    margins = np.array([json.loads(m)["oracle_margin"] for m in out[C.METADATA]])
    assert np.allclose(out[C.PASS_RATE], [math.erf(m / math.sqrt(2)) for m in margins])
    assert set(out[C.DIFFICULTY_MODEL]) == {"oracle_margin"} and out[C.CI_LOW] == out[C.PASS_RATE]
    counted = DifficultyStage(DifficultyConfig())(verified)
    assert out[C.N_CORRECT] == counted[C.N_CORRECT]  # the generator's attempts are still counted
    with pytest.raises(ValueError, match="kind: linear"):
        DifficultyStage(DifficultyConfig(score="oracle_margin"))({**verified, C.METADATA: [None] * len(margins)})


# -- the student against the theory --------------------------------------------------------------------------------


def _pool_table(n: int, dim: int, rho: float, rho_star: float, seed: int) -> pd.DataFrame:
    """A pool built by the stages themselves, in process: source -> sample -> verify -> difficulty."""
    from stages.difficulty import DifficultyConfig, DifficultyStage
    from stages.sample import SampleConfig, SampleStage
    from stages.verify import VerifySettings, VerifyStage

    batch = _problem_batch(n, dim, seed, oracle={"rho_star": rho_star})
    batch = SampleStage(SampleConfig(model=f"linear:rho={rho}", backend="linear", k=1), seed=seed)(batch)
    batch = VerifyStage(VerifySettings(verifier="exact"))(batch)
    return pd.DataFrame(DifficultyStage(DifficultyConfig(score="oracle_margin"))(batch))


THEORY_RULE = {"keep_hard_correct": ("keep_hard", True), "random_correct": ("random", True),
               "correct_only": ("all", True), "all": ("all", False)}


@pytest.mark.parametrize("n, rho, rho_star, rule, keep_fraction, lam", [
    (1000, 1.0, 0.99, "keep_hard", 0.3, 1e-3),
    (2000, 0.9, 0.99, "keep_easy", 0.2, 1e-3),
    (1000, 0.95, 0.9999, "keep_hard_correct", 0.3, 1e-3),
    (500, 0.99, 0.99, "random", 0.5, 0.1),
    (1000, 0.82, 0.9999, "random_correct", 0.5, 1e-2),
])
def test_the_student_measured_through_the_pipeline_agrees_with_the_theory(n, rho, rho_star, rule, keep_fraction,
                                                                          lam):
    """Curated by curate.plan, fitted by the sweep's ridge, scored exactly: within Monte-Carlo error (about 0.02 at
    d = 100; four pools) of pipeline.theory's simulator and its deterministic equivalent, at the theory's p."""
    from pipeline.sweep.trials import curate_rows
    from pipeline.theory import asymptotic_error, simulate_error

    dim, errors, keep = 100, [], []
    for seed in range(4):
        samples = _pool_table(n, dim, rho, rho_star, seed)
        rows, curation = curate_rows(samples, rule, keep_fraction, 0.0, 0.0, seed)
        weights = lw.ridge_fit(lw.features(rows[C.PROBLEM].tolist()),
                               lw.completion_labels(rows[C.COMPLETION].tolist()), n, lam)
        errors.append(lw.exact_error(weights))
        keep.append(curation["theory_keep_fraction"])
    theory_rule, aware = THEORY_RULE.get(rule, (rule, False))
    p = float(np.mean(keep))
    if not aware:
        assert p == pytest.approx(keep_fraction)
    else:  # the filter drops disagreeing problems first, so the rule's own fraction is larger than the budget
        assert p > keep_fraction
    rho_g = rho * rho_star
    simulated = np.mean([simulate_error(n, dim, rho, rho_star, rho_g, theory_rule, p, lam, aware, seed=s)
                         for s in range(8)])
    predicted = asymptotic_error(dim / n, rho, rho_star, rho_g, theory_rule, p, lam, aware)
    assert np.mean(errors) == pytest.approx(simulated, abs=0.02)
    assert np.mean(errors) == pytest.approx(predicted, abs=0.02)


def test_the_theory_keep_fraction_of_a_label_aware_rule_counts_before_the_filter():
    from pipeline.sweep.trials import curate_rows

    samples = _pool_table(1000, 20, 0.8, 0.99, seed=1)
    rows, curation = curate_rows(samples, "keep_hard_correct", 0.2, 0.0, 0.0, seed=1)
    assert curation["kept_problems"] == 200 and rows[C.CORRECT].all()
    # The pool's problems at most as far from the oracle's boundary as the farthest kept one, correct or not.
    margin = samples[C.PASS_RATE].to_numpy()
    assert curation["theory_keep_fraction"] == np.mean(margin <= rows[C.PASS_RATE].max())
    _, agnostic = curate_rows(samples, "keep_hard", 0.2, 0.0, 0.0, seed=1)
    assert agnostic["theory_keep_fraction"] == 0.2
    _, everything = curate_rows(samples, "correct_only", 1.0, 0.0, 0.0, seed=1)
    assert everything["theory_keep_fraction"] == 1.0


def test_generator_noise_flips_a_linear_label():
    from stages.curate import corrupt_answer

    assert corrupt_answer("\\boxed{1}", "1", "k") == "\\boxed{-1}"
    assert corrupt_answer("\\boxed{-1}", "-1", "k") == "\\boxed{1}"


# -- configs -------------------------------------------------------------------------------------------------------


def _smoke_config() -> dict:
    return yaml.safe_load((ROOT / "configs" / "phase_linear_smoke.yaml").read_text())


@pytest.mark.parametrize("change, message", [
    (lambda d: d["pool"]["generators"]["exact"].update(model="toy:strong"), "generators.exact.model: a linear world"),
    (lambda d: d.update(finetune={"steps": 10}), "finetune: the linear student"),
    (lambda d: d["evaluate"]["heldout"].update(dim=30), "evaluate.heldout: the linear student is tested on"),
    (lambda d: d["evaluate"]["heldout"].update(oracle={"rho_star": 0.9}), "labelled by the truth"),
    (lambda d: d.update(student={"kind": "trl"}), "student.kind: linear goes with pool.source.kind: linear"),
    (lambda d: d.update(student={"kind": "trl", "lam": 0.1}), "student.lam is the linear student's"),
    (lambda d: d["pool"]["source"].pop("dim"), "dim .* is required when kind is 'linear'"),
    (lambda d: d["pool"]["sample"].update(backend="hf"), "backend: linear"),
])
def test_linear_sweep_configs_say_what_to_change(change, message):
    data = _smoke_config()
    change(data)
    with pytest.raises(ConfigError, match=message):
        parse_sweep_config(data)


def test_an_oracle_needs_the_linear_world():
    data = yaml.safe_load((ROOT / "configs" / "phase_smoke.yaml").read_text())
    data["pool"]["generators"]["test"]["oracle"] = {"rho_star": 0.9}
    with pytest.raises(ConfigError, match="generators.test.oracle: only a linear world has an oracle"):
        parse_sweep_config(data)


def test_phase_linear_spans_the_grid_where_the_theory_is_exact():
    from pipeline.sweep.config import expand_grid

    cfg = load_sweep_config(ROOT / "configs" / "phase_linear.yaml")
    assert cfg.pool.source.dim == 100 and cfg.student.kind == "linear"
    grid = [s for s in expand_grid(cfg) if s["kind"] == "grid"]
    ratios = sorted({s["pool_size"] / 100 for s in grid})
    assert ratios[0] == 0.5 and ratios[-1] == 100 and len(ratios) >= 6
    assert {s["keep_fraction"] for s in grid} >= {0.05, 0.1, 0.3, 1.0}
    assert {s["rule"] for s in grid} == {"random", "keep_hard", "keep_easy", "random_correct", "keep_hard_correct",
                                         "keep_easy_correct", "all", "correct_only"}
    cosines = {(lw.parse_spec(cfg.pool.generators[s["generator"]].model).rho,
                cfg.pool.generators[s["generator"]].oracle.rho_star) for s in grid}
    assert {rho for rho, _ in cosines} >= {1.0, 0.99, 0.9, 0.82}  # plus the loop generator's own curve
    assert {star for rho, star in cosines if rho == 1.0} == {0.9999, 0.99, 0.9}
    assert cfg.loop.rounds == 6


# -- the smoke sweep, end to end -------------------------------------------------------------------------------------


def test_linear_smoke_sweep_runs_end_to_end_and_writes_its_report(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "sweep", str(ROOT / "configs" / "phase_linear_smoke.yaml"),
         "--set", f"output_root={tmp_path}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    run_dir = tmp_path / "phase_linear_smoke"
    assert (run_dir / "report" / "report.md").stat().st_size > 0
    results = pd.read_csv(run_dir / "report" / "results.csv")
    assert len(results) == 18 and (results["status"] == "ok").all()
    grid = results[results["kind"] == "grid"]
    for column in ("d", "rho", "rho_star", "rho_g", "lam", "n", "p", "exact_error"):
        assert grid[column].notna().all(), column
    assert (grid["n"] == grid["pool_size"]).all() and set(grid["d"]) == {20}
    exact = grid[grid["generator"] == "exact"]
    assert set(exact["rho"]) == {1.0} and set(exact["rho_star"]) == {0.99} and set(exact["rho_g"]) == {0.99}
    # The exact error and the 0/1 scores on the 300 held-out problems tell the same story.
    assert np.corrcoef(grid["exact_error"], 1 - grid["accuracy_overall"])[0, 1] > 0.9
    chain = json.loads((run_dir / "trials" / "loop-keep_hard_correct" / "result.json").read_text())
    first, second = chain["rounds"]
    assert second["data_source"] == "round 1 model"
    assert second["rho"] == pytest.approx(first["learned_rho"]) and second["rho_star"] == 0.99
    scores = pd.read_parquet(run_dir / "trials" / "loop-keep_hard_correct" / "scores.parquet")
    assert list(scores.columns) == ["problem_id", "level", "correct"] and len(scores) == 300


def test_calibration_measures_the_cosines_on_the_pool_not_from_the_config():
    """The report's calibration recovers a linear world's rho, rho* and rho_g from the pool's labels alone."""
    from pipeline import linearworld as lw
    from pipeline.sweep.calibrate import measured_geometry

    dim, n = 50, 20000
    geometry = lw.Geometry(rho=0.85, rho_star=0.97)
    rows = lw.make_problems(n, dim, 3, geometry)
    matrix = lw.features([r["problem"] for r in rows])
    labels = np.where(matrix @ geometry.generator(dim) >= 0, 1, -1)
    samples = pd.DataFrame({"problem_id": [f"p{i}" for i in range(n)], "problem": [r["problem"] for r in rows],
                            "answer": [r["answer"] for r in rows],
                            "completion": [lw.completion_text(int(v)) for v in labels]})
    got = measured_geometry(samples)
    assert got["rho"] == pytest.approx(0.85, abs=0.01)
    assert got["rho_star"] == pytest.approx(0.97, abs=0.01)
    assert got["rho_g"] == pytest.approx(geometry.resolved_rho_g, abs=0.01)
    assert measured_geometry(samples.assign(problem="Compute 1+2.")) is None  # not a linear world

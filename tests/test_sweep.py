"""The sweep: config checks, the grid, nested pools, curation per cell, the results table, and the smoke sweep end to
end under Ray Tune, killed midway and resumed without recomputing finished trials."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import columns as C
from pipeline.config import ConfigError
from pipeline.sweep.config import canonical_cell, expand_grid, load_sweep_config, parse_sweep_config
from pipeline.sweep.layout import RESULT_FILE, TRIALS_DIR
from pipeline.sweep.pool import nested_subset
from pipeline.sweep.trials import curate_rows, results_table

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("phase_smoke.yaml", "phase_tiny.yaml", "phase_toy.yaml", "phase_gpu.yaml")


def _config(**changes) -> dict:
    data = yaml.safe_load((ROOT / "configs" / "phase_smoke.yaml").read_text())
    for key, value in changes.items():
        node = data
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return data


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_validate(name):
    cfg = load_sweep_config(ROOT / "configs" / name)
    specs = expand_grid(cfg)
    assert specs and len({s["trial_id"] for s in specs}) == len(specs)
    most_seeds = max(len(block.seeds or cfg.grid.seeds) for block in cfg.grid.blocks)
    assert most_seeds >= {"phase_smoke.yaml": 1, "phase_gpu.yaml": 3}.get(name, 2)


def test_phase_tiny_is_the_gold_corner_within_the_trial_budget():
    cfg = load_sweep_config(ROOT / "configs" / "phase_tiny.yaml")
    grid = [s for s in expand_grid(cfg) if s["kind"] == "grid"]
    # bench/trial_cost.py: a 300 x 16 trial (900 held-out problems) costs ~85 s of one core beside a second trial
    # on an idle machine, and the pools (oracle k = 16 on 3,000 problems, its k = 64 audit) ~4 min, so about 25
    # trials fit in 30 minutes on 2 cores.
    assert cfg.finetune.steps * cfg.finetune.batch_size <= 300 * 16 and len(grid) <= 26 and not cfg.loop.rounds
    assert [g.model for g in cfg.pool.generators.values()] == ["toy:gold"]
    assert cfg.pool.oracle.model == cfg.finetune.student == "toy:student_all_levels"  # an oracle, not the generator
    assert {s["pool_size"] for s in grid} == {3000} and {s["keep_fraction"] for s in grid} >= {0.1, 0.3, 1.0}
    assert {s["rule"] for s in grid} >= {"random", "keep_hard_stratified", "keep_easy_stratified",
                                         "keep_hard_stratified_correct", "keep_easy_stratified_correct"}
    corner = [s for s in grid if s["block"] == "corner"]
    assert {s["seed"] for s in corner} == {0, 1}
    assert {s["keep_fraction"] for s in grid if s["rule"] == "random"} >= {0.1, 0.3, 0.5}  # random at every p < 1


def test_phase_toy_covers_the_diagram():
    cfg = load_sweep_config(ROOT / "configs" / "phase_toy.yaml")
    grid = [s for s in expand_grid(cfg) if s["kind"] == "grid"]
    sizes = sorted({s["pool_size"] for s in grid})
    assert sizes[0] <= 300 and sizes[-1] >= 10000 and len(sizes) >= 4
    assert {s["keep_fraction"] for s in grid} >= {0.1, 0.2, 0.3, 0.5, 1.0}
    assert {g.model for g in cfg.pool.generators.values()} >= {"toy:gold", "toy:gold,eps=0.1", "toy:gold,eps=0.3"}
    assert any(s["oracle_noise"] > 0 for s in grid) and {s["seed"] for s in grid} == {0, 1}
    assert cfg.loop.rounds >= 4 and cfg.loop.only_if_better


@pytest.mark.parametrize("change, message", [
    ({"grid.blocks": [{"pool_sizes": [20], "rules": ["keep_medium"]}]}, "unknown rule"),
    ({"grid.blocks": [{"pool_sizes": [20], "generators": ["huge"]}]}, "not in pool.generators"),
    ({"grid.blocks": [{"pool_sizes": [500]}]}, "exceeds the pool's 40 problems"),
    ({"grid.blocks": [{"pool_sizes": [20], "keep_fractions": [0.0]}]}, "keep_fractions must lie in (0, 1]"),
    ({"grid.seeds": [1, 1]}, "distinct"),
    ({"tune.max_failures": -1}, "tune.max_failures"),
    ({"report.hard_tier": "hardest"}, "report.hard_tier"),
    ({"loop.rules": ["all", "nope"]}, "unknown rule"),
])
def test_bad_configs_say_what_to_change(change, message):
    with pytest.raises(ConfigError) as err:
        parse_sweep_config(_config(**change))
    assert message in str(err.value)


def test_unknown_keys_are_errors():
    data = _config()
    data["grid"]["blocks"][0]["pool_size"] = [20]
    with pytest.raises(ConfigError, match="grid.blocks.0.pool_size: unknown key"):
        parse_sweep_config(data)


def test_grid_shares_p1_cells_and_ignores_oracle_noise_where_no_score_is_used():
    assert canonical_cell("keep_hard", 1.0, 0.5) == ("all", 1.0, 0.0)
    assert canonical_cell("keep_easy_correct", 1.0, 0.0) == ("correct_only", 1.0, 0.0)
    assert canonical_cell("random", 0.3, 0.5) == ("random", 0.3, 0.0)
    assert canonical_cell("all", 0.3, 0.0) == ("random", 0.3, 0.0)
    assert canonical_cell("keep_hard", 0.1, 0.25) == ("keep_hard", 0.1, 0.25)
    cfg = parse_sweep_config(_config(**{
        "grid.seeds": [0, 1],
        "grid.blocks": [{"pool_sizes": [20, 40], "keep_fractions": [0.5, 1.0],
                         "rules": ["random", "keep_hard", "keep_easy", "keep_hard_correct"],
                         "oracle_noise": [0.0, 0.5]}],
    }))
    specs = expand_grid(cfg)
    grid = [s for s in specs if s["kind"] == "grid"]
    # per (n, seed): all + correct_only at p = 1, random at 0.5 (eta folded), keep_hard/easy/hard_correct x 2 etas
    assert len(grid) == 2 * 2 * (2 + 1 + 3 * 2)
    assert [s["kind"] for s in specs[:2]] == ["loop", "loop"]  # the long chains start first
    assert {s["rule"] for s in grid if s["keep_fraction"] == 1.0} == {"all", "correct_only"}


def test_blocks_can_name_their_own_seeds():
    cfg = parse_sweep_config(_config(**{
        "grid.seeds": [0],
        "grid.blocks": [{"name": "corners", "pool_sizes": [40], "keep_fractions": [0.5, 1.0],
                         "rules": ["keep_hard"], "seeds": [0, 1, 2]},
                        {"name": "rest", "pool_sizes": [20], "keep_fractions": [0.5], "rules": ["keep_hard"]}],
    }))
    grid = [s for s in expand_grid(cfg) if s["kind"] == "grid"]
    assert sorted((s["pool_size"], s["keep_fraction"], s["seed"]) for s in grid) == [
        (20, 0.5, 0), (40, 0.5, 0), (40, 0.5, 1), (40, 0.5, 2), (40, 1.0, 0), (40, 1.0, 1), (40, 1.0, 2)]
    with pytest.raises(ConfigError, match="distinct"):
        parse_sweep_config(_config(**{"grid.blocks": [{"pool_sizes": [20], "seeds": [1, 1]}]}))


def test_pool_rows_come_in_the_same_order_whatever_the_part_file_names(tmp_path):
    from pipeline.sweep.pool import pool_samples

    def rows(pid):
        return pd.DataFrame({C.PROBLEM_ID: [pid, pid], C.SAMPLE_IDX: [1, 0], C.COMPLETION: ["b", "a"]})

    orders = []
    for names in (("part-0", "part-1"), ("part-1", "part-0")):  # random names: either problem's part comes first
        d = tmp_path / "-".join(names)
        d.mkdir()
        rows("p1").to_parquet(d / f"{names[0]}.parquet")
        rows("p2").to_parquet(d / f"{names[1]}.parquet")
        table = pool_samples({"generators": {"g": {"directory": str(d)}}}, "g")
        orders.append(list(zip(table[C.PROBLEM_ID], table[C.SAMPLE_IDX])))
    assert orders[0] == orders[1] == [("p1", 0), ("p1", 1), ("p2", 0), ("p2", 1)]


def test_a_separate_oracle_scores_difficulty_and_is_measured_against_its_reference(tmp_path):
    # The gold generator solves everything (its own pass rate is 1 everywhere: no difficulty signal); the oracle's
    # pass rate (the untouched student's) becomes the score every rule ranks by, and its concordance with a reference
    # difficulty (the same model at a larger k) gives rho*.
    from pipeline.sweep.calibrate import oracle_reference
    from pipeline.sweep.pool import pool_samples

    rng = np.random.default_rng(0)
    n, k = 200, 4
    ids = [f"p{i:03d}" for i in range(n)]
    truth = rng.random(n)  # the oracle model's true pass probability per problem
    gen_dir, oracle_dir = tmp_path / "gen", tmp_path / "oracle"
    gen_dir.mkdir(), oracle_dir.mkdir()
    pd.DataFrame({C.PROBLEM_ID: np.repeat(ids, k), C.SAMPLE_IDX: np.tile(np.arange(k), n), C.LEVEL: 1,
                  C.CORRECT: True, C.FINISH_REASON: "stop", C.PASS_RATE: 1.0, C.CI_LOW: 0.5, C.CI_HIGH: 1.0,
                  C.TIER: "solved", C.N_SAMPLES: k, C.N_CORRECT: k, C.DIFFICULTY_MODEL: "toy:gold"}
                 ).to_parquet(gen_dir / "part-0.parquet")
    score = rng.binomial(16, truth) / 16  # the oracle at k = 16
    pd.DataFrame({C.PROBLEM_ID: ids, C.PASS_RATE: score, C.CI_LOW: score - 0.1, C.CI_HIGH: score + 0.1,
                  C.TIER: "medium"}).to_parquet(oracle_dir / "part-0.parquet")
    audit = tmp_path / "audit.parquet"
    pd.DataFrame({"problem_id": ids[:100], "level": 1, "reference_pass_rate": rng.binomial(64, truth[:100]) / 64}
                 ).to_parquet(audit)
    manifest = {"generators": {"gold": {"directory": str(gen_dir)}},
                "oracle": {"model": "toy:student", "k": 16, "directory": str(oracle_dir),
                           "audit": {"path": str(audit), "k": 64, "problems": 100}}}
    table = pool_samples(manifest, "gold")
    assert (table[C.DIFFICULTY_MODEL] == "toy:student").all() and (table[C.N_CORRECT] == k).all()
    by_problem = table.drop_duplicates(C.PROBLEM_ID).set_index(C.PROBLEM_ID)[C.PASS_RATE]
    assert np.allclose(by_problem.loc[ids].to_numpy(), score)
    rows, _ = curate_rows(table, "keep_hard", 0.2, 0.0, 0.0, seed=0)
    kept = set(rows[C.PROBLEM_ID])
    assert len(kept) == 40 and max(by_problem[list(kept)]) <= np.sort(score)[40]  # the oracle's hardest
    concordance, text = oracle_reference(manifest, lambda g: table, (0.0, 1.0), seed=0)
    assert concordance[0.0] > 0.85 and abs(concordance[1.0] - 0.5) < 0.1  # eta = 1: random scores
    assert "k = 16" in text and "k = 64" in text and "100 audit problems" in text
    assert oracle_reference({"generators": {}}, lambda g: table, (0.0,), 0) == ({}, None)


def test_pool_oracle_config_checks():
    cfg = parse_sweep_config(_config(**{"pool.oracle": {"model": "toy:test", "k": 8, "audit_problems": 20}}))
    assert cfg.pool.oracle.k == 8 and cfg.pool.oracle.audit_k == 64
    with pytest.raises(ConfigError, match="oracle"):
        parse_sweep_config(_config(**{"pool.oracle": {"model": "toy:test"}, "pool.generators": {
            "oracle": {"model": "toy:test"}}}))


def test_pool_sizes_are_nested_random_subsets_per_seed():
    ids = [f"p{i}" for i in range(500)]
    small, large = nested_subset(ids, 50, seed=0), nested_subset(ids, 200, seed=0)
    assert set(small) < set(large) and len(large) == 200
    assert nested_subset(list(reversed(ids)), 50, seed=0) == small  # order of the pool does not matter
    assert set(nested_subset(ids, 50, seed=1)) != set(small)
    assert len(set(small) & {f"p{i}" for i in range(50)}) < 25  # random, not the first rows


def _samples(n_problems: int = 60, k: int = 4, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_problems):
        level = 1 + i % 6
        p_correct = 1.0 - level / 7
        for j in range(k):
            correct = bool(rng.random() < p_correct)
            rows.append({C.PROBLEM_ID: f"q{i}", C.SAMPLE_IDX: j, C.PROBLEM: f"Compute {i}+1.\n", C.ANSWER: str(i + 1),
                         C.LEVEL: level, C.CORRECT: correct, C.FINISH_REASON: "stop",
                         C.COMPLETION: f"{i}+1={i + 1 if correct else i}. Answer: \\boxed{{{i + 1 if correct else i}}}"})
    frame = pd.DataFrame(rows)
    stats = frame.groupby(C.PROBLEM_ID)[C.CORRECT].agg(["mean", "sum", "count"])
    frame[C.PASS_RATE] = frame[C.PROBLEM_ID].map(stats["mean"])
    frame[C.N_CORRECT] = frame[C.PROBLEM_ID].map(stats["sum"]).astype(int)
    frame[C.N_SAMPLES] = frame[C.PROBLEM_ID].map(stats["count"]).astype(int)
    return frame


def test_p1_cells_are_the_same_rows_for_every_rule_of_a_family():
    samples = _samples()
    key = lambda rows: sorted(zip(rows[C.PROBLEM_ID], rows[C.SAMPLE_IDX]))  # noqa: E731
    agnostic = [key(curate_rows(samples, r, 1.0, 0.0, 0.0, 3)[0]) for r in ("all", "random", "keep_hard", "keep_easy")]
    assert all(a == agnostic[0] for a in agnostic) and len(agnostic[0]) == 60  # one completion per problem
    aware = [key(curate_rows(samples, r, 1.0, 0.0, 0.0, 3)[0])
             for r in ("correct_only", "keep_hard_correct", "keep_easy_correct")]
    assert all(a == aware[0] for a in aware)
    assert key(curate_rows(samples, "all", 0.5, 0.0, 0.0, 3)[0]) == key(curate_rows(samples, "random", 0.5, 0.0, 0.0, 3)[0])


def test_cell_curation_follows_the_rule():
    samples = _samples()
    hard, hs = curate_rows(samples, "keep_hard", 0.25, 0.0, 0.0, 0)
    easy, es = curate_rows(samples, "keep_easy", 0.25, 0.0, 0.0, 0)
    verified, vs = curate_rows(samples, "keep_hard_correct", 0.25, 0.0, 0.0, 0)
    assert hs["kept_problems"] == es["kept_problems"] == 15
    assert hard[C.PASS_RATE].max() <= easy[C.PASS_RATE].min()
    assert hard[C.LEVEL].mean() > easy[C.LEVEL].mean()
    assert verified[C.CORRECT].all() and vs["kept_trace_accuracy"] == 1.0
    assert hs["kept_trace_accuracy"] < 1.0  # label-agnostic: the generator's completion, right or wrong
    noisy, ns = curate_rows(samples, "correct_only", 1.0, 0.0, 0.5, 0)
    assert 0 < ns["generator_noise_rows"] < len(noisy) and ns["kept_trace_accuracy"] < 1.0
    _, os_ = curate_rows(samples, "keep_hard", 0.25, 1.0, 0.0, 0)
    assert os_["oracle_noise_problems"] == 15  # every kept problem was ranked by a random score


def test_results_table_reports_failed_and_missing_trials(tmp_path):
    specs = [{"trial_id": t, "kind": "grid", "generator": "g", "pool_size": 10, "rule": "all", "keep_fraction": 1.0,
              "oracle_noise": 0.0, "generator_noise": 0.0, "seed": s, "fingerprint": "fp"}
             for t, s in (("done", 0), ("crashed", 1), ("never", 2))]
    done = tmp_path / TRIALS_DIR / "done"
    done.mkdir(parents=True)
    metrics = {"greedy_accuracy": {"overall": {"value": 0.4, "ci_low": 0.3, "ci_high": 0.5}}}
    (done / RESULT_FILE).write_text(json.dumps({"fingerprint": "fp", "metrics": metrics,
                                                "curation": {"kept_rows": 7}}))
    grid = [SimpleNamespace(config={"trial": specs[0]}, error=None, metrics={}),
            SimpleNamespace(config={"trial": specs[1]}, error=RuntimeError("boom\nout of memory"), metrics={})]
    table = results_table(specs, grid, tmp_path).set_index("trial_id")
    assert table.loc["done", "status"] == "ok" and table.loc["done", "accuracy_overall"] == 0.4
    assert table.loc["done", "kept_rows"] == 7
    assert table.loc["crashed", "status"] == "error" and "out of memory" in table.loc["crashed", "error"]
    assert table.loc["never", "status"] == "missing"
    # A result under another fingerprint (changed config or code) does not count as done.
    specs[0]["fingerprint"] = "changed"
    assert results_table(specs, grid, tmp_path).set_index("trial_id").loc["done", "status"] == "missing"


def test_cli_registers_sweep_and_validates(capsys):
    from pipeline.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["sweep", str(ROOT / "configs" / "phase_tiny.yaml"), "--validate",
                              "--set", "grid.seeds=[0,1,2]"])
    assert args.func(args) == 0
    assert "grid trials" in capsys.readouterr().out
    bad = parser.parse_args(["sweep", str(ROOT / "configs" / "phase_tiny.yaml"), "--set", "grid.seeds=[]"])
    assert bad.func(bad) == 2


# -- the smoke sweep, end to end --------------------------------------------------------------------------------


def _sweep_process(output_root: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "sweep", str(ROOT / "configs" / "phase_smoke.yaml"),
         "--set", f"output_root={output_root}"],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def test_smoke_sweep_resumes_after_a_kill_and_writes_the_report(tmp_path, toy_test_model):
    run_dir = tmp_path / "phase_smoke"
    first = _sweep_process(tmp_path, tmp_path / "first.log")
    deadline = time.monotonic() + 600  # generous: the 2 cores may be shared
    finished: list[Path] = []
    try:
        while time.monotonic() < deadline and first.poll() is None:
            finished = sorted((run_dir / TRIALS_DIR).glob(f"*/{RESULT_FILE}"))
            grid_done = [p for p in finished if not p.parent.name.startswith("loop-")]
            if grid_done:
                break
            time.sleep(0.5)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)  # the sweep and the Ray processes it started
        first.wait()
    log_first = (tmp_path / "first.log").read_text()
    assert finished, "no trial finished before the kill:\n" + log_first[-3000:]
    before = {p.parent.name: p.read_bytes() for p in sorted((run_dir / TRIALS_DIR).glob(f"*/{RESULT_FILE}"))}

    second = _sweep_process(tmp_path, tmp_path / "second.log")
    code = second.wait(timeout=600)
    log = (tmp_path / "second.log").read_text()
    assert code == 0, log[-4000:]
    assert "resuming" in log and "up to date, skipped" in log  # Tune restored; the pool was not sampled again
    # A line per trial that finished in this run (cell, error with its interval, trials left), and a summary.
    finished_here = re.findall(r"^trial (\S+): error \d\.\d+ \[\d\.\d+, \d\.\d+\] .*; (\d+) left", log, re.M)
    assert finished_here and finished_here[-1][1] == "0", log[-4000:]
    assert "trials: 6 ok, 0 failed of 6; " in log
    # None of Ray's known noise (pipeline.cluster) in either run's output.
    for noise in ("max_restarts > 0", "A new progress UI is available", "number of concurrent", "null_placement"):
        assert noise not in log_first + log, noise
    for name, content in before.items():  # finished trials were read back, not computed again
        assert (run_dir / TRIALS_DIR / name / RESULT_FILE).read_bytes() == content, name

    report = run_dir / "report"
    text = (report / "report.md").read_text()
    for pid in ("(i)", "(ii)", "(iii)", "(iv)", "(v)"):
        assert f"| {pid} |" in text
    verdicts = json.loads((report / "verdicts.json").read_text())
    assert set(verdicts) == {"i", "ii", "iii", "iv", "v"}
    assert all(v["verdict"] in ("consistent", "inconsistent", "untestable") for v in verdicts.values())
    calibration = json.loads((report / "calibration.json").read_text())
    assert all("gate" in g and "rho_g" in g for g in calibration["generators"].values())
    for png in ("error_vs_p.png", "phase_diagram.png", "collapse_loop.png", "learning_curve.png"):
        assert (report / png).stat().st_size > 1000, png
    results = pd.read_csv(report / "results.csv")
    assert len(results) == 6 and (results["status"] == "ok").all()
    assert {"rule", "p", "n", "seed", "error"} <= set(results.columns) and results["error"].between(0, 1).all()
    assert set(results["rule"]) == {"all", "keep_hard"}
    loop = json.loads((run_dir / TRIALS_DIR / "loop-all" / RESULT_FILE).read_text())
    assert [r["round"] for r in loop["rounds"]] == [1, 2]
    assert loop["rounds"][1]["data_source"] == "round 1 model"

    # The report alone, from the trials on disk, with other report settings: nothing runs again.
    from pipeline.sweep.run import rewrite_report

    cfg = load_sweep_config(ROOT / "configs" / "phase_smoke.yaml",
                            [f"output_root={tmp_path}", "report.confidence=0.5"])
    summary = rewrite_report(cfg)
    assert summary["ok"] == 6 and "50% bootstrap" in (report / "report.md").read_text()
    for name, content in before.items():
        assert (run_dir / TRIALS_DIR / name / RESULT_FILE).read_bytes() == content, name


def test_report_only_needs_a_sweep_that_reached_its_trials(tmp_path):
    from pipeline.sweep.run import rewrite_report

    cfg = parse_sweep_config(_config(output_root=str(tmp_path)))
    with pytest.raises(ConfigError, match="run `lessmore sweep CONFIG` first"):
        rewrite_report(cfg)


def test_loop_passes_a_round_model_on_only_if_it_beats_the_untouched_student(tmp_path):
    from pipeline.sweep.trials import _next_generator

    def entry(acc):
        return {"metrics": {"greedy_accuracy": {"overall": {"value": acc}}}}

    model = tmp_path / "round_1" / "model"
    # The plain loop: every round's model generates the next round.
    assert _next_generator(entry(0.1), model, 1, None, "toy:gold", None)[0] == str(model)
    # Gated: a model that beats the bar passes on; one that does not leaves the previous generator in place.
    assert _next_generator(entry(0.6), model, 1, None, "toy:gold", 0.5)[2] == "round 1 model"
    ref, path, text = _next_generator(entry(0.4), model, 1, None, "toy:gold,eps=0.1", 0.5)
    assert ref == path == "toy:gold,eps=0.1" and "did not beat" in text
    earlier = ("/x/round_1/model", "/x/round_1/model", "round 1 model")
    assert _next_generator(entry(0.4), tmp_path / "round_2" / "model", 2, earlier, "toy:gold", 0.5) == earlier

"""Held-out evaluation: estimators, bootstrap intervals, decontamination, and metrics.json from real stages."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from pipeline import columns as C
from pipeline.evaluate import (
    EvaluateConfig,
    bootstrap_ci,
    heldout_problems,
    majority_correct,
    pass_at_k,
    score_problems,
)
from stages.source import SourceConfig


def brute_force_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of the k-subsets of n samples (c of them correct) that hold at least one correct sample."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_pass_at_k_matches_brute_force_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_closed_form_for_large_n_and_bad_arguments():
    assert pass_at_k(200, 10, 1) == pytest.approx(10 / 200)
    assert pass_at_k(200, 10, 50) == pytest.approx(1 - math.comb(190, 50) / math.comb(200, 50))
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="c <= n"):
        pass_at_k(4, 5, 1)


def test_majority_vote_rules():
    # The most frequent answer wins, right or wrong.
    assert majority_correct(["3", "3", "5"], [True, True, False]) is True
    assert majority_correct(["5", "3", "5"], [False, True, False]) is False
    # Completions without an answer do not vote: one correct answer against two blanks wins.
    assert majority_correct([None, "7", ""], [False, True, False]) is True
    # Ties go to the answer seen first.
    assert majority_correct(["4", "9", "9", "4"], [False, True, True, False]) is False
    assert majority_correct(["9", "4", "4", "9"], [True, False, False, True]) is True
    # Whitespace does not split a vote.
    assert majority_correct([" 9", "9 ", "4"], [True, True, False]) is True
    assert majority_correct([None, None], [False, False]) is False


def test_bootstrap_ci_sanity():
    rng = np.random.default_rng(0)
    low, high = bootstrap_ci(np.full(50, 0.4), 500, 0.95, rng)
    assert low == pytest.approx(0.4) and high == pytest.approx(0.4)

    values = (np.random.default_rng(1).random(2000) < 0.3).astype(float)
    low, high = bootstrap_ci(values, 2000, 0.95, np.random.default_rng(2))
    mean = values.mean()
    assert low < mean < high
    normal_width = 2 * 1.96 * math.sqrt(mean * (1 - mean) / values.size)
    assert (high - low) == pytest.approx(normal_width, rel=0.15)
    # Seeded: the same rng seed gives the same interval; a higher confidence gives a wider one.
    assert bootstrap_ci(values, 2000, 0.95, np.random.default_rng(2)) == (low, high)
    low99, high99 = bootstrap_ci(values, 2000, 0.99, np.random.default_rng(2))
    assert low99 < low and high99 > high


def test_coverage_of_bootstrap_interval_is_near_nominal():
    rng = np.random.default_rng(3)
    hits = 0
    trials = 200
    for t in range(trials):
        values = (rng.random(200) < 0.6).astype(float)
        low, high = bootstrap_ci(values, 400, 0.9, np.random.default_rng(t))
        hits += low <= 0.6 <= high
    assert 0.8 <= hits / trials <= 0.97


def _rows(pid, level, verdicts):
    return [{C.PROBLEM_ID: pid, C.LEVEL: level, C.SAMPLE_IDX: i, C.CORRECT: ok, C.EXTRACTED: ans}
            for i, (ok, ans) in enumerate(verdicts)]


def test_score_problems_computes_every_metric_per_problem():
    problems = [{C.PROBLEM_ID: "a", C.LEVEL: 1}, {C.PROBLEM_ID: "b", C.LEVEL: 2}]
    greedy = _rows("a", 1, [(True, "1")]) + _rows("b", 2, [(False, "2")])
    sampled = (_rows("a", 1, [(True, "1"), (False, "2"), (True, "1"), (False, "3")])
               + _rows("b", 2, [(False, "5"), (False, "5"), (True, "4"), (False, None)]))
    scores = score_problems(problems, greedy, sampled, ks=(2, 4, 8))
    m = scores.per_metric
    assert m["greedy_accuracy"].tolist() == [1.0, 0.0]
    assert m["mean_accuracy"].tolist() == [0.5, 0.25]
    assert m["pass@2"].tolist() == pytest.approx([pass_at_k(4, 2, 2), pass_at_k(4, 1, 2)])
    assert m["pass@4"].tolist() == [1.0, 1.0]
    assert m["maj@4"].tolist() == [1.0, 0.0]  # "1" wins a; "5" wins b
    assert "pass@8" not in m  # k above the number of samples is skipped


def test_heldout_is_decontaminated_and_overlaps_counted():
    cfg = EvaluateConfig(heldout=SourceConfig(kind="toyworld", n=30, levels=(1, 2, 3)))
    clean = heldout_problems(cfg, run_seed=0)
    assert len(clean.rows) == 30 and clean.dropped == {}
    same_id = [r[C.PROBLEM_ID] for r in clean.rows[:4]]
    same_text = ["  " + clean.rows[5][C.PROBLEM].upper() + " "]
    held = heldout_problems(cfg, run_seed=0, exclude_ids=same_id, exclude_texts=same_text)
    assert len(held.rows) == 25
    assert sum(held.dropped.values()) == 5
    assert held.dropped["overlap: same problem_id as the pool or training set"] == 4
    assert held.dropped["overlap: same text as the pool or training set"] == 1
    # Off by default: generated held-out problems never use the pool's seed.
    pool_seed = SourceConfig(kind="toyworld", n=30, levels=(1, 2, 3), seed=0)
    from stages.source import SourceStage

    pool_ids = {pid for b in SourceStage(pool_seed).read() for pid in b[C.PROBLEM_ID]}
    assert held.seed != 0 and len(pool_ids & {r[C.PROBLEM_ID] for r in clean.rows}) < 30


def test_heldout_equal_to_pool_is_an_error():
    from pipeline.evaluate import EvaluateError

    cfg = EvaluateConfig(heldout=SourceConfig(kind="toyworld", n=10, levels=(1,), seed=5))
    ids = [r[C.PROBLEM_ID] for r in heldout_problems(cfg, run_seed=0).rows]
    with pytest.raises(EvaluateError, match="another seed"):
        heldout_problems(cfg, run_seed=0, exclude_ids=ids)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 1-layer Llama on the toy tokenizer: fast to load and to sample from."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.toyworld import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    path = tmp_path_factory.mktemp("tiny_model")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_evaluate_writes_metrics_with_levels_and_a_paired_difference(tiny_model, tmp_path):
    from pipeline.evaluate import evaluate, metrics_table
    from stages.sample import SampleConfig
    from stages.verify import VerifyConfig

    cfg = EvaluateConfig(heldout=SourceConfig(kind="toyworld", n=12, levels=(1, 2, 3)), greedy=True, n=2, ks=(2,),
                         bootstrap=200, threads=1)
    excluded = [heldout_problems(cfg, run_seed=0).rows[0][C.PROBLEM_ID]]
    metrics = evaluate(
        cfg, {"base": (tiny_model, tiny_model), "finetuned": (tiny_model, tiny_model)}, tmp_path, run_seed=0,
        sample_cfg=SampleConfig(max_tokens=12), verify_cfg=VerifyConfig(verifier="math"), exclude_ids=excluded,
    )
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["heldout"]["problems"] == 11 and sum(on_disk["heldout"]["dropped"].values()) == 1
    for name in ("base", "finetuned"):
        model_metrics = on_disk["models"][name]["metrics"]
        assert set(model_metrics) == {"greedy_accuracy", "mean_accuracy", "pass@2", "maj@2"}
        for by_group in model_metrics.values():
            assert set(by_group) == {"overall", "1", "2", "3"}
            assert sum(by_group[g]["problems"] for g in ("1", "2", "3")) == by_group["overall"]["problems"] == 11
            for entry in by_group.values():
                assert 0 <= entry["ci_low"] <= entry["value"] <= entry["ci_high"] <= 1
    # The same model under two names: every paired difference is exactly zero.
    diff = on_disk["difference"]["finetuned - base"]["greedy_accuracy"]["overall"]
    assert (diff["value"], diff["ci_low"], diff["ci_high"], diff["significant"]) == (0.0, 0.0, 0.0, False)
    assert (tmp_path / "samples" / "base_greedy.parquet").is_file()
    import pyarrow.parquet as pq

    sampled = pq.read_table(tmp_path / "samples" / "finetuned_sampled.parquet")
    assert sampled.num_rows == 22 and {C.CORRECT, C.EXTRACTED, C.COMPLETION} <= set(sampled.column_names)
    assert metrics_table(metrics).row_count == 2 * 4 + 4


def test_run_with_finetune_and_evaluate_blocks_leaves_dataset_model_and_metrics(
    ray_local, toy_test_model, tmp_path, capsys
):
    from io import StringIO

    from rich.console import Console

    from pipeline.config import parse_config
    from pipeline.session import run_all

    cfg = parse_config({
        "name": "e2e", "output_root": str(tmp_path), "seed": 0, "ray": {"num_cpus": 2, "progress_bars": False},
        "stages": {
            "source": {"kind": "toyworld", "n": 24, "levels": [1, 2]},
            "sample": {"model": toy_test_model, "k": 2, "max_tokens": 48, "threads": 2},
            "verify": {"verifier": "math"},
            "difficulty": {},
            # Label-agnostic, so the weak test model's rows (mostly wrong) still make a training set.
            "curate": {"rule": "random", "label_aware": False, "n": 10, "p": None, "trace": "any"},
            "export": {},
        },
        "finetune": {"student": toy_test_model, "steps": 4, "batch_size": 8, "micro_batch_size": 8, "threads": 2},
        "evaluate": {"heldout": {"kind": "toyworld", "n": 20, "levels": [1, 2]}, "bootstrap": 200, "threads": 2},
    })
    log = StringIO()
    assert run_all(cfg, console=Console(file=log, width=200)) == 0
    printed = capsys.readouterr().out
    run_dir = tmp_path / "e2e"
    assert (run_dir / "finetune" / "model" / "config.json").is_file()
    assert any(run_dir.glob("*_export/dataset/dataset_dict.json"))
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"base", "finetuned"}
    assert set(metrics["models"]["finetuned"]["metrics"]["greedy_accuracy"]) == {"overall", "1", "2"}
    assert "finetuned - base" in metrics["difference"]
    assert "base greedy_accuracy:" in printed and "finetuned - base greedy_accuracy:" in printed
    assert f"metrics: {run_dir / 'evaluate' / 'metrics.json'}" in printed
    assert "held-out evaluation" in log.getvalue()
    # A second run finds everything up to date.
    log = StringIO()
    run_all(cfg, console=Console(file=log, width=200))
    assert "finetune: up to date, skipped" in log.getvalue() and "evaluate: up to date, skipped" in log.getvalue()

"""The sample stage's output contract (the same for every backend), failures as rows, backend choice, and the
generation cache in the stage and through the runner. Runs the hf backend on the toy test model."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import columns as C
from stages.sample import SampleConfig, SampleStage
from stages.sample.backend import choose_backend, row_seed

FINISH_REASONS = {"stop", "length", "error"}


def toy_batch(n: int, seed: int = 0) -> dict[str, list]:
    """n toy problems as a problem batch."""
    from pipeline.toyworld import make_problems

    problems = make_problems(n, levels=(1, 2), seed=seed)
    return {
        C.PROBLEM_ID: [f"p{seed}-{i}" for i in range(n)],
        C.PROBLEM: [p["problem"] for p in problems],
        C.ANSWER: [p["answer"] for p in problems],
        C.SOURCE: ["toyworld"] * n,
    }


def check_sample_rows(out: dict[str, list], batch: dict[str, list], k: int, seed: int, model_id: str) -> None:
    """The sample contract: one row per (problem, sample_idx), typed token counts, per-row seeds, errors as rows."""
    n_rows = len(out[C.PROBLEM_ID])
    assert n_rows == k * len(batch[C.PROBLEM_ID])
    for column in (*batch, *C.SAMPLE_COLUMNS):
        assert column in out and len(out[column]) == n_rows, column
    pairs = sorted(zip(out[C.PROBLEM_ID], out[C.SAMPLE_IDX]))
    assert pairs == sorted((p, j) for p in batch[C.PROBLEM_ID] for j in range(k))
    problem_of = dict(zip(batch[C.PROBLEM_ID], batch[C.PROBLEM]))
    assert len(set(out[C.SAMPLING_FINGERPRINT])) == 1
    for r in range(n_rows):
        pid = out[C.PROBLEM_ID][r]
        assert out[C.PROBLEM][r] == problem_of[pid]  # problem columns carried through
        assert out[C.FINISH_REASON][r] in FINISH_REASONS
        assert isinstance(out[C.COMPLETION][r], str)
        assert isinstance(out[C.NUM_PROMPT_TOKENS][r], int) and out[C.NUM_PROMPT_TOKENS][r] > 0
        assert isinstance(out[C.NUM_COMPLETION_TOKENS][r], int) and out[C.NUM_COMPLETION_TOKENS][r] >= 0
        assert out[C.MODEL_ID][r] == model_id
        assert out[C.SEED][r] == row_seed(seed, pid, out[C.SAMPLE_IDX][r])
        assert (out[C.ERROR][r] is not None) == (out[C.FINISH_REASON][r] == "error")
        if out[C.FINISH_REASON][r] == "length":
            assert out[C.NUM_COMPLETION_TOKENS][r] >= 1


def _stage(model: str, **fields) -> SampleStage:
    # One thread: on a machine with more busy threads than cores, a second OpenMP thread spin-waits (10x slower).
    cfg = SampleConfig(model=model, backend="hf", threads=1, **{"max_tokens": 40, "k": 3, **fields})
    return SampleStage(cfg, seed=5, model_path=model)


def test_contract_and_batch_independence(toy_test_model: str):
    stage = _stage(toy_test_model)
    batch = toy_batch(6)
    out = stage(batch)
    check_sample_rows(out, batch, k=3, seed=5, model_id=stage.model_id)
    assert out[C.FINISH_REASON].count("error") == 0
    assert sum(out[C.NUM_COMPLETION_TOKENS]) > 0
    # The same rows whether a problem is sampled with others or alone: each row has its own seed.
    alone = stage({c: v[2:3] for c, v in batch.items()})
    together = {j: t for p, j, t in zip(out[C.PROBLEM_ID], out[C.SAMPLE_IDX], out[C.COMPLETION]) if p == "p0-2"}
    assert {j: t for j, t in zip(alone[C.SAMPLE_IDX], alone[C.COMPLETION])} == together
    # Different samples of one problem differ (8-ish tokens from a sampled model: identical triples are unlikely).
    assert len(set(together.values())) > 1


def test_failures_are_rows_not_crashes(toy_test_model: str):
    from transformers import AutoConfig

    context = AutoConfig.from_pretrained(toy_test_model).max_position_embeddings
    stage = _stage(toy_test_model, max_tokens=context)  # prompt + max_tokens cannot fit
    batch = toy_batch(2)
    out = stage(batch)
    check_sample_rows(out, batch, k=3, seed=5, model_id=stage.model_id)
    assert set(out[C.FINISH_REASON]) == {"error"}
    assert all("max_tokens" in e for e in out[C.ERROR])


def test_auto_backend_choice(monkeypatch):
    import importlib.util

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_backend(SampleConfig(backend="auto")) == "hf"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec

    def vllm_present(present: bool):
        return lambda name, *a: (object() if present else None) if name == "vllm" else real_find_spec(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", vllm_present(True))
    assert choose_backend(SampleConfig(backend="auto")) == "vllm"
    monkeypatch.setattr(importlib.util, "find_spec", vllm_present(False))
    assert choose_backend(SampleConfig(backend="auto")) == "hf"
    assert choose_backend(SampleConfig(backend="vllm")) == "vllm"


def test_vllm_backend_without_vllm_says_what_to_do(toy_test_model: str):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here; tests/test_vllm.py covers the backend")
    with pytest.raises(ImportError, match="backend: hf"):
        SampleStage(SampleConfig(model=toy_test_model, backend="vllm"), model_path=toy_test_model)


def test_stage_cache_k4_to_k8_and_temperature(toy_test_model: str, tmp_path: Path):
    batch = toy_batch(5, seed=1)
    first = _stage(toy_test_model, k=4, cache_dir=str(tmp_path))
    out4 = first(batch)
    assert first.cache.hits == 0 and first.cache.misses == 20

    second = _stage(toy_test_model, k=8, cache_dir=str(tmp_path))
    out8 = second(batch)
    assert second.cache.hits == 20 and second.cache.misses == 20  # only indices 4-7 were generated
    check_sample_rows(out8, batch, k=8, seed=5, model_id=second.model_id)
    by_key8 = {(p, j): t for p, j, t in zip(out8[C.PROBLEM_ID], out8[C.SAMPLE_IDX], out8[C.COMPLETION])}
    by_key4 = {(p, j): t for p, j, t in zip(out4[C.PROBLEM_ID], out4[C.SAMPLE_IDX], out4[C.COMPLETION])}
    assert {key: by_key8[key] for key in by_key4} == by_key4
    # The cached indices equal what generating them again gives (cache hits are faithful).
    uncached = _stage(toy_test_model, k=8)(batch)
    regenerated = zip(uncached[C.PROBLEM_ID], uncached[C.SAMPLE_IDX], uncached[C.COMPLETION])
    assert {(p, j): t for p, j, t in regenerated} == by_key8

    hotter = _stage(toy_test_model, k=4, temperature=1.3, cache_dir=str(tmp_path))
    hotter(batch)
    assert hotter.cache.hits == 0 and hotter.cache.misses == 20


def test_runner_with_cache_resamples_only_new_indices(toy_test_model: str, tmp_path: Path, ray_local):
    from pipeline import io
    from pipeline.config import parse_config
    from stages.sample.cache import GenerationCache, run_costs
    from pipeline.runner import run

    def config(k: int, run_name: str):
        return parse_config({
            "name": run_name, "seed": 3, "output_root": str(tmp_path), "ray": {"progress_bars": False},
            "stages": {
                "source": {"kind": "toyworld", "n": 6, "levels": [1, 2]},
                "sample": {"model": toy_test_model, "backend": "hf", "k": k, "max_tokens": 32, "threads": 1,
                           "cache_dir": str(tmp_path / "cache"),
                           "resources": {"num_cpus": 1, "concurrency": 1, "batch_size": 3}},
            },
        })

    small = run(config(2, "k2"))
    big = run(config(4, "k4"))
    assert len(GenerationCache(tmp_path / "cache")) == 6 * 4
    rows2 = io.read_table(small.stages[1].directory).to_pylist()
    rows4 = io.read_table(big.stages[1].directory).to_pylist()
    by_key = {(r[C.PROBLEM_ID], r[C.SAMPLE_IDX]): r[C.COMPLETION] for r in rows4}
    assert all(by_key[(r[C.PROBLEM_ID], r[C.SAMPLE_IDX])] == r[C.COMPLETION] for r in rows2)
    costs = run_costs(big.stages, {"sample": config(4, "k4").stage("sample")})
    sample_costs = costs["stages"]["sample"]
    assert sample_costs["rows"] == 24
    assert sample_costs["total_tokens"] == sum(r[C.NUM_PROMPT_TOKENS] + r[C.NUM_COMPLETION_TOKENS] for r in rows4)
    assert sample_costs["gpu_seconds"] == 0.0 and costs["total"]["wall_seconds"] > 0

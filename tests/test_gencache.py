"""The generation cache: content addressing, k=4 -> k=8 reuse, fresh samples on a changed temperature, and
several processes writing one database at once."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from stages.sample.cache import GenerationCache, SamplingCache, generation_key, sampling_namespace, sampling_costs
from stages.sample.backend import Generation, row_seed


def _namespace(**overrides) -> str:
    args = dict(backend="hf", model_fingerprint="m1", temperature=0.8, top_p=1.0, max_tokens=32, stop=(),
                dtype="float32")
    args.update(overrides)
    return sampling_namespace(**args)


class CountingBackend:
    """Completions as a pure function of (prompt, seed), counting what it was asked to generate."""

    def __init__(self, temperature: float = 0.8) -> None:
        self.temperature = temperature
        self.generated: list[tuple[str, int]] = []

    def generate(self, prompts, seeds):
        out = []
        for p, row in zip(prompts, seeds):
            gens = []
            for s in row:
                self.generated.append((p, s))
                gens.append(Generation(f"{p}|{s % 1000}|t={self.temperature}", "stop", len(p), 3))
            out.append(gens)
        return out


def _sample(cache: SamplingCache, backend: CountingBackend, problems: list[str], k: int):
    seeds = [[row_seed(0, p, j) for j in range(k)] for p in problems]
    ids = [list(range(k)) for _ in problems]
    return cache.generate(backend, problems, seeds, ids)


def test_key_changes_with_each_input():
    ns = _namespace()
    base = generation_key(ns, "p", 7, 0)
    assert base == generation_key(ns, "p", 7, 0)
    others = {
        generation_key(ns, "q", 7, 0), generation_key(ns, "p", 8, 0), generation_key(ns, "p", 7, 1),
        generation_key(_namespace(temperature=0.7), "p", 7, 0), generation_key(_namespace(top_p=0.9), "p", 7, 0),
        generation_key(_namespace(max_tokens=33), "p", 7, 0), generation_key(_namespace(stop=("\n",)), "p", 7, 0),
        generation_key(_namespace(model_fingerprint="m2"), "p", 7, 0),
        generation_key(_namespace(backend="vllm"), "p", 7, 0), generation_key(_namespace(dtype="bfloat16"), "p", 7, 0),
    }
    assert base not in others and len(others) == 10


def test_roundtrip_first_writer_wins_and_errors_are_not_stored(tmp_path: Path):
    cache = GenerationCache(tmp_path)
    ok = Generation("x", "length", 3, 4)
    cache.put_many([("a", ok), ("b", Generation("", "error", 3, 0, "boom"))])
    cache.put_many([("a", Generation("other", "stop", 1, 1))])
    found = cache.get_many(["a", "b", "c"])
    assert found == {"a": ok}
    assert len(GenerationCache(tmp_path)) == 1  # a second handle sees the same database


def test_raising_k_generates_only_the_new_indices(tmp_path: Path):
    problems = [f"problem {i}" for i in range(5)]
    backend = CountingBackend()
    cache = SamplingCache(GenerationCache(tmp_path), _namespace())
    first = _sample(cache, backend, problems, k=4)
    assert len(backend.generated) == 20 and cache.hits == 0

    backend.generated.clear()
    second = _sample(cache, backend, problems, k=8)
    assert len(backend.generated) == 20  # indices 4-7 only
    assert {s for _, s in backend.generated} == {row_seed(0, p, j) for p in problems for j in range(4, 8)}
    assert cache.hits == 20
    assert [row[:4] for row in second] == first


def test_a_changed_temperature_samples_afresh(tmp_path: Path):
    problems = ["a", "b"]
    _sample(SamplingCache(GenerationCache(tmp_path), _namespace()), CountingBackend(), problems, k=4)
    hotter = CountingBackend(temperature=1.2)
    cache = SamplingCache(GenerationCache(tmp_path), _namespace(temperature=1.2))
    out = _sample(cache, hotter, problems, k=4)
    assert len(hotter.generated) == 8 and cache.hits == 0
    assert all(g.text.endswith("t=1.2") for row in out for g in row)


def test_error_generations_are_retried_next_time(tmp_path: Path):
    class Flaky(CountingBackend):
        def generate(self, prompts, seeds):
            out = super().generate(prompts, seeds)
            out[0][0] = Generation("", "error", 1, 0, "transient")
            return out

    cache = SamplingCache(GenerationCache(tmp_path), _namespace())
    first = _sample(cache, Flaky(), ["p"], k=2)
    assert first[0][0].finish_reason == "error"
    backend = CountingBackend()
    second = _sample(cache, backend, ["p"], k=2)
    assert len(backend.generated) == 1 and second[0][0].finish_reason == "stop"


def _writer(directory: str, worker: int, n: int) -> int:
    cache = GenerationCache(directory, busy_timeout_s=0.05)  # short: exercise the retry path, not sqlite's wait
    for start in range(0, n, 10):
        # Overlapping keys across workers: every worker writes the shared keys s0..s(n-1) and its own.
        items = [(f"s{i}", Generation(f"shared {i}", "stop", 1, 1)) for i in range(start, start + 10)]
        items += [(f"w{worker}-{i}", Generation(f"own {i}", "stop", 1, 1)) for i in range(start, start + 10)]
        cache.put_many(items)
        assert len(cache.get_many([k for k, _ in items])) == 20
    return n


def test_several_processes_write_one_database(tmp_path: Path):
    workers, n = 4, 100
    ctx = mp.get_context("fork")  # separate processes, as Ray workers are; no connection is open yet
    with ctx.Pool(workers) as pool:
        done = pool.starmap(_writer, [(str(tmp_path), w, n) for w in range(workers)])
    assert done == [n] * workers
    cache = GenerationCache(tmp_path)
    assert len(cache) == n + workers * n
    assert cache.get_many(["s42"])["s42"].text == "shared 42"


def test_sampling_costs_from_sample_columns(tmp_path: Path):
    from pipeline import io

    io.write_part(io.to_arrow({"num_prompt_tokens": [10, 10, 12], "num_completion_tokens": [5, 7, 0],
                               "finish_reason": ["stop", "length", "error"]}), tmp_path)
    costs = sampling_costs(tmp_path, seconds=2.0, num_gpus=1.0, workers=2, kept_rows=2)
    assert costs["total_tokens"] == 44 and costs["completion_tokens"] == 12 and costs["error_rows"] == 1
    assert costs["gpu_seconds"] == pytest.approx(4.0)
    assert costs["completion_tokens_per_second"] == pytest.approx(6.0)
    assert costs["per_kept_row"]["total_tokens"] == pytest.approx(22.0)
    assert sampling_costs(tmp_path, seconds=2.0)["gpu_seconds"] == 0.0


def test_cache_keys_are_the_ones_earlier_versions_wrote():
    """Completions cached by earlier versions stay reachable: the key of a fixed setup is pinned."""
    namespace = sampling_namespace(backend="hf", model_fingerprint="abc", temperature=0.8, top_p=1.0, max_tokens=96,
                                   stop=(), dtype="float32", extra={"gguf_file": None})
    assert namespace == "3327a373d46535b066d167e39b533d2299c28c827430ac296a358c156b2c1660"
    assert generation_key(namespace, "Compute 1+2.", 42, 3) == (
        "84196adab7591c770007316a0503f174c2e353761ded3a2c948cd4bad9c213d2")

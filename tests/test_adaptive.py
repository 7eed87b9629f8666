"""Adaptive k: decisions between rounds, and round-by-round sampling that draws exactly the fixed-k samples."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import columns as C
from stages.sample.adaptive import DecideConfig, agreement_probability, check_rounds, classes, decided
from stages.base import batch_len
from stages.difficulty import TIERS


def test_rounds_must_increase_and_end_at_k():
    from stages.sample import SampleConfig

    assert SampleConfig(k=32, rounds=(4, 8, 16, 32)).rounds == (4, 8, 16, 32)
    with pytest.raises(ValueError, match="set k: 32"):
        SampleConfig(k=8, rounds=(4, 8, 16, 32))
    with pytest.raises(ValueError, match="strictly increasing"):
        check_rounds((4, 4, 8), 8)
    assert SampleConfig(k=8).rounds is None


def test_predictive_decides_clear_cases_and_waits_on_boundaries():
    decide = DecideConfig()
    # 16/16 and 0/16 with 16 more to draw: a single success (failure) would change the tier -> not decided.
    assert not decided([16], [16], 32, decide)[0] and not decided([0], [16], 32, decide)[0]
    # 8/16 sits well inside 'medium' [1/3, 2/3): decided; 10/16 sits next to the 'easy' cut: not decided.
    assert decided([8], [16], 32, decide)[0] and not decided([10], [16], 32, decide)[0]
    # At the full budget everything is decided.
    assert decided([3, 0, 32], [32, 32, 32], 32, decide).all()
    p = agreement_probability([0, 8], [8, 16], 32, decide)
    assert 0 < p[0] < p[1] < 1


def test_predictive_probability_matches_simulation():
    rng = np.random.default_rng(0)
    decide = DecideConfig(prior=(1.0, 1.0))
    k, n, budget = 5, 12, 32
    # Draw pass rates from the posterior Beta(1 + k, 1 + n - k), then the remaining samples: same tier as now?
    rates = rng.beta(1 + k, 1 + n - k, 200_000)
    final = k + rng.binomial(budget - n, rates)
    same = (classes(final, np.full(final.shape, budget), decide) == classes([k], [n], decide)[0]).mean()
    assert agreement_probability([k], [n], budget, decide)[0] == pytest.approx(same, abs=0.005)


def test_interval_method_and_band_decisions():
    by_interval = DecideConfig(method="interval")
    # unsolved and solved are points: an interval never fits inside them.
    assert not decided([0, 16], [16, 16], 32, by_interval).any()
    # medium: Wilson of 50/100 is [0.40, 0.60], inside [1/3, 2/3); of 5/10 it is [0.24, 0.76], not inside.
    assert decided([50], [100], 200, by_interval)[0] and not decided([5], [10], 200, by_interval)[0]
    three = DecideConfig(method="interval", exact_ends=False)
    assert decided([0], [16], 32, three)[0] and list(classes([0, 8, 16], [16, 16, 16], three)) == [1, 2, 3]
    assert decided([0], [16], 32, DecideConfig(exact_ends=False))[0]  # predictive: 0/16 is surely 'hard' at 32
    band = DecideConfig(by="band", band=(0.2, 0.8), method="interval")
    assert decided([0], [16], 32, band)[0]  # Wilson high of 0/16 is 0.19 < 0.2: below the band
    assert not decided([4], [16], 32, band)[0]
    assert list(classes([0, 4, 16], [16, 16, 16], band)) == [0, 1, 2]


# -- sampling in rounds, with a fake backend (the real code path of SampleStage, no model) ----------------------------


class _FakeBackend:
    """Correct with probability p (written in the prompt) decided by the row seed: deterministic per (problem, j)."""

    calls: list[int] = []

    def __init__(self, cfg, path):
        self.cfg = cfg

    def prompt_text(self, problem):
        return problem

    def prompt_messages(self, problem):
        return None

    def generate(self, prompts, seeds):
        from stages.sample.backend import Generation

        _FakeBackend.calls.append(sum(len(s) for s in seeds))
        out = []
        for prompt, row_seeds in zip(prompts, seeds):
            p = float(prompt.split("p=")[1])
            gens = []
            for s in row_seeds:
                ok = (s % 10_000) / 10_000 < p
                gens.append(Generation(f"... \\boxed{{{7 if ok else 8}}} #{s}", "stop", 3, 5))
            out.append(gens)
        return out


@pytest.fixture
def fake_sampler(fake_sample_backend):
    import stages.sample as sample_module

    model_dir = fake_sample_backend(_FakeBackend)
    _FakeBackend.calls = []

    def make(**overrides):
        cfg = sample_module.SampleConfig(model=model_dir, **overrides)
        return sample_module.SampleStage(cfg, seed=3, model_path=model_dir)

    return make


def _problems(rates):
    return {C.PROBLEM_ID: [f"q{i}" for i in range(len(rates))], C.PROBLEM: [f"p={r}" for r in rates],
            C.ANSWER: ["7"] * len(rates), C.LEVEL: [1] * len(rates)}


def _by_problem(out):
    rows: dict[str, list[tuple]] = {}
    for i in range(batch_len(out)):
        rows.setdefault(out[C.PROBLEM_ID][i], []).append(
            (out[C.SAMPLE_IDX][i], out[C.SEED][i], out[C.COMPLETION][i]))
    return rows


def test_rounds_draw_a_prefix_of_the_fixed_k_samples_and_stop_early(fake_sampler):
    rates = [0.0, 1.0, 0.5, 0.5, 0.45, 0.9, 0.1, 0.55] * 3
    decide = DecideConfig(verifier="exact")
    fixed = fake_sampler(k=32)(_problems(rates))
    adaptive_stage = fake_sampler(k=32, rounds=(4, 8, 16, 32), decide=decide)
    assert adaptive_stage.rows_per_input(adaptive_stage.cfg) is None
    _FakeBackend.calls = []
    adaptive = adaptive_stage(_problems(rates))
    assert len(_FakeBackend.calls) >= 2  # more than one round ran
    assert set(adaptive) == set(fixed)  # the same columns as a fixed-k call
    fixed_rows, adaptive_rows = _by_problem(fixed), _by_problem(adaptive)
    assert set(adaptive_rows) == set(fixed_rows)  # every problem sampled: counts reconcile per problem
    lengths = []
    for pid, rows in adaptive_rows.items():
        assert rows == fixed_rows[pid][: len(rows)]  # identical seeds and completions, sample_idx continues
        assert len(rows) in (4, 8, 16, 32)
        lengths.append(len(rows))
    assert min(lengths) < 32 and max(lengths) == 32
    assert batch_len(adaptive) < batch_len(fixed)


def test_rounds_tiers_agree_with_fixed_k_on_stopped_problems(fake_sampler):
    rng = np.random.default_rng(1)
    rates = [round(float(r), 3) for r in rng.beta(0.8, 0.7, 120)]
    fixed = fake_sampler(k=32)(_problems(rates))
    adaptive = fake_sampler(k=32, rounds=(4, 8, 12, 16, 24, 32), decide=DecideConfig(verifier="exact"))(_problems(rates))

    def tiers(out):
        rows = _by_problem(out)
        return {pid: TIERS[classes([sum("\\boxed{7}" in c for _, _, c in r)], [len(r)], DecideConfig())[0]]
                for pid, r in rows.items()}

    fixed_tiers, adaptive_tiers = tiers(fixed), tiers(adaptive)
    agreement = np.mean([fixed_tiers[p] == adaptive_tiers[p] for p in fixed_tiers])
    assert agreement >= 0.9
    assert batch_len(adaptive) < 0.9 * batch_len(fixed)


def test_explicit_sample_indices_bypass_rounds(fake_sampler):
    stage = fake_sampler(k=8, rounds=(4, 8), decide=DecideConfig(verifier="exact"))
    batch = _problems([0.5])
    batch[C.SAMPLE_IDX] = [[5, 6]]
    out = stage(batch)
    assert out[C.SAMPLE_IDX] == [5, 6]

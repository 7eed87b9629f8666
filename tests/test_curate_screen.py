"""The screen stage (LIMO's cheaper model) on a plain dict batch, with a fake backend instead of a model."""

from __future__ import annotations

import pytest

from pipeline import columns as C
from stages.sample import SampleConfig
from stages.sample.backend import Generation
from stages.screen import ScreenConfig, ScreenStage
from stages.verify import VerifyConfig


class _Solver:
    """Answers right when the problem text says 'easy', wrong otherwise."""

    def __init__(self, cfg, path):
        self.cfg = cfg

    def prompt_text(self, problem):
        return problem

    def prompt_messages(self, problem):
        return None

    def generate(self, prompts, seeds):
        return [[Generation(f"\\boxed{{{1 if 'easy' in p else 2}}}", "stop", 2, 3) for _ in s] for p, s in zip(prompts, seeds)]


@pytest.fixture
def screen(fake_sample_backend):
    model_dir = fake_sample_backend(_Solver, name="cheap")

    def make(**overrides):
        cfg = ScreenConfig(sample=SampleConfig(model=model_dir, k=3), verify=VerifyConfig(verifier="exact"),
                           **overrides)
        return ScreenStage(cfg, seed=0, model_path=model_dir)

    return make


def test_screen_adds_the_cheap_models_pass_rate(screen):
    batch = {C.PROBLEM_ID: ["a", "b"], C.PROBLEM: ["easy one", "hard one"], C.ANSWER: ["1", "1"], C.LEVEL: [1, 5]}
    out = screen()(batch)
    assert out[C.PROBLEM_ID] == ["a", "b"] and out[C.LEVEL] == [1, 5]  # one row out per problem in
    assert out[C.SCREEN_N_SAMPLES] == [3, 3] and out[C.SCREEN_N_CORRECT] == [3, 0]
    assert out[C.SCREEN_PASS_RATE] == [1.0, 0.0] and C.REJECT_REASON not in out
    rejecting = screen(reject_solved=True)(batch)
    assert rejecting[C.REJECT_REASON][0].startswith("solved_by_screen_model") and rejecting[C.REJECT_REASON][1] is None

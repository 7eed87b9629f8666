"""screen: a cheaper model's attempts at each problem, before the generator samples (LIMO's first difficulty tier).

For every problem row the screen model samples ``sample.k`` completions (the sample stage's code, in-process), the
configured verifier judges them, and the row gains ``screen_model``, ``screen_n_samples``, ``screen_n_correct`` and
``screen_pass_rate``. The curate rules ``screen_unsolved`` and ``limo`` drop problems the screen model solved.
With ``reject_solved: true`` those problems are quarantined here instead, so the generator never samples them
(they are counted in run_dir/rejects/NN_screen/ with reason ``solved_by_screen_model``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipeline import columns as C
from stages.base import Batch, OnRay, Stage, StageConfig, batch_len
from stages.sample import SampleSettings
from stages.verify import VerifySettings


class ScreenConfig(StageConfig, OnRay):
    """The screening model, its sampling, and the verifier."""

    sample: SampleSettings = Field(
        default_factory=lambda: SampleSettings(model="toy:weak", k=1, temperature=0.0),
        description="Sampling settings of the screen model (a sample-stage block; default: toy:weak, one greedy try).",
    )
    verify: VerifySettings = Field(default_factory=VerifySettings, description="Verifier of the screen's completions.")
    reject_solved: bool = Field(
        False, description="Quarantine problems the screen model solved (pass rate > max_pass_rate) right here."
    )
    max_pass_rate: float = Field(0.0, ge=0, le=1, description="reject_solved: the pass rate above which a problem "
                                 "counts as solved by the screen model.")


class ScreenStage(Stage):
    """Adds the screen model's pass rate to each problem row (one row out per row in)."""

    name = "screen"
    kind = "map"
    config_model = ScreenConfig
    requires = (C.PROBLEM_ID, C.PROBLEM, C.ANSWER)
    adds = C.SCREEN_COLUMNS
    input_key = (C.PROBLEM_ID,)
    output_key = (C.PROBLEM_ID,)

    def __init__(self, cfg: ScreenConfig, seed: int = 0, model_path: str | None = None, threads: int = 1,
                 model_fp: str | None = None) -> None:
        from stages.sample import SampleStage
        from stages.verify import VerifyStage

        self.cfg = cfg
        self.sampler = SampleStage(cfg.sample, seed=seed, model_path=model_path, threads=threads, model_fp=model_fp)
        self.verifier = VerifyStage(cfg.verify)

    @classmethod
    def prepare(cls, cfg: ScreenConfig, upstream_dir: str, context) -> dict[str, Any]:
        from stages.sample import locate_model, model_identity

        path = locate_model(cfg.sample, check=True, where="stages.screen.sample")
        return {"seed": cfg.sample.seed if cfg.sample.seed is not None else context.seed, "model_path": path,
                "model_fp": model_identity(cfg.sample, path), "threads": max(1, int(context.num_cpus))}

    @classmethod
    def fingerprint_extra(cls, cfg: ScreenConfig) -> str:
        """The screen model's content, as for the sample stage."""
        from stages.sample import SampleStage

        return SampleStage.fingerprint_extra(cfg.sample)

    @classmethod
    def code_sources(cls) -> tuple[Any, ...]:
        import sys

        import stages.sample
        import stages.verify

        return (sys.modules[__name__], *stages.sample.SampleStage.code_sources(), *stages.verify.VerifyStage.code_sources())

    def __call__(self, batch: Batch) -> Batch:
        n = batch_len(batch)
        problems = {c: v for c, v in batch.items() if c != C.SAMPLE_IDX}
        judged = self.verifier(self.sampler(problems))
        position = {pid: i for i, pid in enumerate(batch[C.PROBLEM_ID])}
        attempts, hits = [0] * n, [0] * n
        for pid, ok, fr in zip(judged[C.PROBLEM_ID], judged[C.CORRECT], judged[C.FINISH_REASON]):
            i = position[pid]
            if fr != "error":
                attempts[i] += 1
                hits[i] += bool(ok)
        out = dict(batch)
        out[C.SCREEN_MODEL] = [self.sampler.model_id] * n
        out[C.SCREEN_N_SAMPLES] = attempts
        out[C.SCREEN_N_CORRECT] = hits
        out[C.SCREEN_PASS_RATE] = [h / a if a else 0.0 for h, a in zip(hits, attempts)]
        if self.cfg.reject_solved:
            out[C.REJECT_REASON] = [
                f"solved_by_screen_model: {self.sampler.model_id} solved {h} of {a}" if a and h / a > self.cfg.max_pass_rate
                else None for h, a in zip(hits, attempts)
            ]
        return out

"""The linear sampling backend: a ``linear:rho=R[,sigma=S]`` generator, or a directory saved by the ridge student,
answers each linear-world problem with ``\\boxed{1}`` or ``\\boxed{-1}`` (see ``pipeline.linearworld``).

The label is ``sign(x . w + sigma xi)``; xi is a standard normal drawn from the row's seed, so a completion never
depends on its batch and k samples give a pass rate. Temperature 0 (greedy, as in evaluation) drops the noise."""

from __future__ import annotations

from typing import Any

from stages.sample.backend import Generation


class LinearBackend:
    """Labels linear-world problems with a linear model: one completion per seed, no tokens, no torch."""

    def __init__(self, cfg: Any, model_path: str) -> None:
        """``cfg``: the sample settings (temperature); ``model_path``: a ``linear:`` spec or a saved student."""
        from pipeline.linearworld import load_model

        self.model = load_model(model_path)
        self.noisy = cfg.temperature > 0

    def prompt_text(self, problem: str) -> str:
        """The problem text itself: it names the feature vector."""
        return problem

    def prompt_messages(self, problem: str) -> None:
        """No chat: the model reads the problem text itself."""
        return None

    def generate(self, prompts: list[str], seeds: list[list[int]]) -> list[list[Generation]]:
        """One labelled completion per seed of each prompt."""
        import numpy as np

        from pipeline.linearworld import completion_text, features

        if not prompts:
            return []
        matrix = features(prompts)
        counts = [len(s) for s in seeds]
        rows = np.repeat(matrix, counts, axis=0)
        labels = iter(self.model.labels(rows, [s for row in seeds for s in row], noisy=self.noisy))
        dim = matrix.shape[1]
        return [[Generation(completion_text(next(labels)), "stop", dim, 1) for _ in row] for row in seeds]

"""The gold sampling backend: ``toy:gold[,eps=E]`` answers each toy-world problem with its programmatic worked
solution (``pipeline.toyworld.gold_solution``), no model and no torch.

Its errors are systematic, not sampled: the fraction eps of problems that ``gold_errs`` picks by hash get the same
coherent wrong trace on every sample, so k samples agree and eps moves the generator's quality (the theory's rho),
where random per-sample flips would average out (instrument.md §3b)."""

from __future__ import annotations

import re
from typing import Any

from stages.sample.backend import Generation

_TOKEN = re.compile(r"Compute |Answer: |\\boxed\{|\n|.")  # the toy tokenizer's split: one token per match


def _tokens(text: str) -> int:
    return len(_TOKEN.findall(text))


class GoldBackend:
    """The toy world's own solver as a generator: every seed of a prompt gets the same completion."""

    def __init__(self, cfg: Any, model_path: str) -> None:
        """``cfg``: the sample settings (its prompt template); ``model_path``: the ``toy:gold[,eps=E]`` reference."""
        from pipeline.toyworld import parse_gold

        self.cfg = cfg
        self.eps = parse_gold(model_path)

    def prompt_text(self, problem: str) -> str:
        """The prompt as the template renders it (the toy tokenizer has no chat template)."""
        return self.cfg.prompt_template.format(problem=problem)

    def prompt_messages(self, problem: str) -> None:
        """No chat template: the prompt is the template's text."""
        return None

    def generate(self, prompts: list[str], seeds: list[list[int]]) -> list[list[Generation]]:
        """The worked solution once per seed; a prompt with no arithmetic chain gets an ``error`` generation."""
        from pipeline.toyworld import gold_solution

        out = []
        for prompt, row in zip(prompts, seeds):
            text = gold_solution(prompt, self.eps)
            if text is None:
                gen = Generation("", "error", _tokens(prompt), 0,
                                 error="toy:gold answers toy-world problems ('Compute 72+10-75.') only")
            else:
                gen = Generation(text, "stop", _tokens(prompt), _tokens(text) + 1)  # + the eos token
            out.append([gen for _ in row])
        return out

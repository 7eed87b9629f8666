"""The hf sampling backend: transformers ``generate`` with left padding, length-sorted micro-batches and row-seeded
sampling (a completion never depends on the batch it ran in)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from stages.sample.backend import Generation, eos_ids, prompt_messages, render_prompt

log = logging.getLogger(__name__)

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _uniform(seeds: np.ndarray, step: int) -> np.ndarray:
    """Counter-based uniforms in [0, 1): splitmix64(seed, step). Same row, same step -> same number."""
    with np.errstate(over="ignore"):
        z = (seeds.astype(np.uint64) + np.uint64(step + 1) * np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


class RowSeededSampler:
    """A logits processor that samples each row with its own seed, so a completion does not depend on its batch.

    It returns scores with every token but the drawn one masked, and generation runs greedy on top of it.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float) -> None:
        self.seeds = np.asarray(seeds, dtype=np.uint64)
        self.temperature = temperature
        self.top_p = top_p
        self.step = 0

    def __call__(self, input_ids, scores):
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            outside = sorted_p.cumsum(-1) - sorted_p > self.top_p  # keeps at least the top token
            sorted_p = sorted_p.masked_fill(outside, 0.0)
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        cdf = probs.cumsum(-1)
        u = torch.from_numpy(_uniform(self.seeds, self.step)).to(cdf.dtype).unsqueeze(-1) * cdf[:, -1:]
        chosen = torch.searchsorted(cdf, u).clamp_(max=scores.shape[-1] - 1)
        self.step += 1
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, chosen, 0.0)


class HFBackend:
    """transformers ``generate`` with left padding, length-sorted micro-batches and row-seeded sampling."""

    def __init__(self, cfg: Any, model_path: str, threads: int = 1) -> None:
        """``cfg``: the sample settings; ``threads``: torch threads of this worker (its CPUs, from the runner)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pipeline.models import load_args

        if cfg.trust_remote_code:
            log.warning("trust_remote_code is on: code shipped with %s will run", model_path)
        torch.set_num_threads(threads)
        name, revision = load_args(model_path)  # a hub id comes pinned to the commit the driver resolved
        extra = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
        self.tokenizer = AutoTokenizer.from_pretrained(
            name, revision=revision, trust_remote_code=cfg.trust_remote_code, **extra
        )
        self.tokenizer.padding_side = "left"
        dtype = getattr(torch, cfg.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(
            name, revision=revision, dtype=dtype, trust_remote_code=cfg.trust_remote_code, **extra
        ).eval()
        tok = self.tokenizer
        self.eos_ids = eos_ids(tok, self.model)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_ids[0]
        self.max_len = getattr(self.model.config, "max_position_embeddings", None) or 10**9
        self.cfg = cfg

    def prompt_text(self, problem: str) -> str:
        """The prompt for one problem (template, system prompt, chat template)."""
        return render_prompt(self.cfg, self.tokenizer, problem)

    def prompt_messages(self, problem: str) -> list[dict[str, str]] | None:
        """The chat messages behind ``prompt_text`` (None without the chat template)."""
        return prompt_messages(self.cfg, self.tokenizer, problem)

    def generate(self, prompts: list[str], seeds: list[list[int]]) -> list[list[Generation]]:
        """``seeds[i]`` holds one seed per wanted completion of ``prompts[i]``."""
        cfg = self.cfg
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        jobs = [(i, j) for i, s in enumerate(seeds) for j in range(len(s))]
        results: list[list[Generation | None]] = [[None] * len(s) for s in seeds]
        runnable = []
        for i, j in jobs:
            if len(encoded[i]) + cfg.max_tokens > self.max_len:
                results[i][j] = Generation("", "error", len(encoded[i]), 0,
                                           f"prompt of {len(encoded[i])} tokens + max_tokens exceeds the "
                                           f"model context of {self.max_len}")
            else:
                runnable.append((i, j))
        runnable.sort(key=lambda ij: len(encoded[ij[0]]))  # a batch runs until its longest sequence ends
        step = cfg.generate_batch_size
        for start in range(0, len(runnable), step):
            chunk = runnable[start:start + step]
            try:
                outs = self._generate_chunk([encoded[i] for i, _ in chunk], [seeds[i][j] for i, j in chunk])
            except Exception as exc:  # noqa: BLE001 - one bad chunk must not end the job; retry rows alone
                outs = []
                for i, j in chunk:
                    try:
                        outs.extend(self._generate_chunk([encoded[i]], [seeds[i][j]]))
                    except Exception as row_exc:  # noqa: BLE001
                        outs.append(Generation("", "error", len(encoded[i]), 0, f"{type(row_exc).__name__}: {row_exc}"))
                log.warning("generate failed on a batch of %d (%s); retried row by row", len(chunk), exc)
            for (i, j), g in zip(chunk, outs):
                results[i][j] = g
        return results  # type: ignore[return-value]

    def _generate_chunk(self, prompt_ids: list[list[int]], seeds: list[int]) -> list[Generation]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        cfg = self.cfg
        width = max(len(p) for p in prompt_ids)
        input_ids = torch.full((len(prompt_ids), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for r, ids in enumerate(prompt_ids):
            if ids:
                input_ids[r, width - len(ids):] = torch.tensor(ids)
                attention[r, width - len(ids):] = 1
        gen_cfg = GenerationConfig(
            do_sample=False, max_new_tokens=cfg.max_tokens, pad_token_id=self.pad_id, eos_token_id=self.eos_ids,
            num_beams=1,
        )
        processors = LogitsProcessorList()
        if cfg.temperature > 0:
            processors.append(RowSeededSampler(seeds, cfg.temperature, cfg.top_p))
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention, generation_config=gen_cfg, logits_processor=processors
            )
        new = out[:, width:].tolist()
        gens = []
        for r, ids in enumerate(new):
            finish = "length"
            n = len(ids)
            for t, tok in enumerate(ids):
                if tok in self.eos_ids:
                    finish, n = "stop", t + 1
                    break
            text = self.tokenizer.decode(ids[: n - 1 if finish == "stop" else n], skip_special_tokens=True)
            for s in cfg.stop:
                cut = text.find(s)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
            gens.append(Generation(text, finish, len(prompt_ids[r]), n))
        return gens


"""sample: k completions per problem, with per-row seeds, on the transformers (hf), vLLM, linear-world or openai
(a running OpenAI-compatible server) backend.

The package: ``config`` (the YAML block), ``backend`` (Generation, row seeds, the backend protocol, prompt
rendering), ``hf`` and ``vllm`` (the engines), ``linear`` (the linear world's labeller), ``gold`` (the toy world's
solver as a generator), ``openai`` (a server's client), ``cache`` (the generation cache), ``adaptive`` (adaptive
k)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pipeline import columns as C
from stages.base import Batch, Stage, batch_len
from stages.sample.backend import choose_backend, row_seed
from stages.sample.config import SampleConfig, SampleSettings

log = logging.getLogger(__name__)

__all__ = ["SampleConfig", "SampleSettings", "SampleStage", "locate_model"]


def locate_model(cfg: SampleSettings, check: bool = False, where: str = "stages.sample") -> str:
    """What the backend loads: the resolved local model or hub id, or for backend openai the served model's name
    (``check``: ask the server first that it answers, takes the key and serves the model; raises ValueError)."""
    if choose_backend(cfg) == "openai":
        if check:
            from stages.sample.openai import check_server

            check_server(cfg, where)
        return cfg.model
    from pipeline.models import resolve_model

    return resolve_model(cfg.model)


def model_identity(cfg: SampleSettings, path: str) -> str:
    """The fingerprint of what generates: a local model's content, or a served model's server and name."""
    if choose_backend(cfg) == "openai":
        from stages.sample.openai import server_fingerprint

        return server_fingerprint(cfg)
    from pipeline.models import model_fingerprint

    return model_fingerprint(path)


class SampleStage(Stage):
    """k completions per problem row; each output row is one (problem, sample_idx)."""

    name = "sample"
    kind = "map"
    config_model = SampleConfig
    requires = (C.PROBLEM_ID, C.PROBLEM, C.ANSWER)
    adds = C.SAMPLE_COLUMNS
    input_key = (C.PROBLEM_ID,)
    output_key = (C.PROBLEM_ID, C.SAMPLE_IDX)
    tallies = (C.CACHED,)

    def __init__(self, cfg: SampleSettings, seed: int = 0, model_path: str | None = None, threads: int = 1,
                 model_fp: str | None = None) -> None:
        """``threads``: torch threads of this worker when ``cfg.threads`` is unset (the runner passes its CPUs);
        ``model_path`` and ``model_fp``: the model as the driver located and fingerprinted it (default: here)."""
        from pipeline.models import fingerprint, model_id_of

        self.cfg = cfg
        self.seed = cfg.seed if cfg.seed is not None else seed
        self.model_id = model_id_of(cfg.model)
        backend = choose_backend(cfg)
        path = model_path or locate_model(cfg)
        model_fp = model_fp or model_identity(cfg, path)
        if backend == "openai":
            from stages.sample.openai import OpenAIBackend

            self.backend = OpenAIBackend(cfg)
        elif backend == "vllm":
            from stages.sample.vllm import VLLMBackend

            self.backend = VLLMBackend(cfg, path)
        elif backend == "gold":
            from stages.sample.gold import GoldBackend

            self.backend = GoldBackend(cfg, path)
        elif backend == "linear":
            from stages.sample.linear import LinearBackend

            self.backend = LinearBackend(cfg, path)
        else:
            from stages.sample.hf import HFBackend

            self.backend = HFBackend(cfg, path, threads=cfg.threads or threads)
        from stages.sample.cache import open_sampling_cache

        self.cache = open_sampling_cache(cfg, backend, path, model_fp)  # None unless cfg.cache_dir is set
        self.sampling_fingerprint = fingerprint(
            model_fp, cfg.temperature, cfg.top_p, cfg.max_tokens, cfg.stop, cfg.prompt_template,
            cfg.system_prompt, cfg.chat_template,
        )

    @classmethod
    def prepare(cls, cfg: SampleConfig, upstream_dir: str, context) -> dict[str, Any]:
        if cfg.trust_remote_code:  # said on the driver too: worker logs are not shown by default
            log.warning("stages.sample.trust_remote_code is on: code shipped with model %s will run on every "
                        "sampling worker", cfg.model)
        if choose_backend(cfg) == "vllm":
            from stages.sample.vllm import check_gpus

            check_gpus(cfg, context.num_gpus)
        # Build or locate the model once on the driver, so workers never race to build it, all load the same hub
        # commit, and none re-reads the weights to fingerprint them.
        path = locate_model(cfg, check=True)
        return {"seed": cfg.seed if cfg.seed is not None else context.seed, "model_path": path,
                "model_fp": model_identity(cfg, path), "threads": max(1, int(context.num_cpus))}

    @classmethod
    def rows_per_input(cls, cfg: SampleConfig) -> int | None:
        return None if cfg.rounds else cfg.k  # adaptive k: each problem yields as many rows as it needed

    @classmethod
    def fingerprint_extra(cls, cfg: SampleConfig) -> str:
        """The model's content: new weights under the same name re-sample (a served model: its server and name)."""
        return model_identity(cfg, locate_model(cfg))

    def __call__(self, batch: Batch) -> Batch:
        if self.cfg.rounds and C.SAMPLE_IDX not in batch:
            from stages.sample.adaptive import sample_in_rounds

            return sample_in_rounds(self, batch)  # calls back here once per round, with explicit sample indices
        n = batch_len(batch)
        t0 = time.perf_counter()
        prompts = [self.backend.prompt_text(p) for p in batch[C.PROBLEM]]
        messages = [self.backend.prompt_messages(p) for p in batch[C.PROBLEM]]
        # Kept in the rows so the export publishes what the model saw, character for character.
        messages = [None if m is None else json.dumps(m, ensure_ascii=False) for m in messages]
        sample_ids = batch.get(C.SAMPLE_IDX)  # present when a round asks for specific indices
        wanted = [
            list(sample_ids[i]) if sample_ids is not None else list(range(self.cfg.k)) for i in range(n)
        ]
        seeds = [[row_seed(self.seed, batch[C.PROBLEM_ID][i], j) for j in wanted[i]] for i in range(n)]
        if self.cache is not None:
            gens = self.cache.generate(self.backend, prompts, seeds, wanted)
        else:
            gens = self.backend.generate(prompts, seeds)
        out: dict[str, list[Any]] = {c: [] for c in batch if c != C.SAMPLE_IDX}
        for c in C.SAMPLE_COLUMNS:
            out[c] = []
        for i in range(n):
            for j, seed, g in zip(wanted[i], seeds[i], gens[i]):
                for c in batch:
                    if c != C.SAMPLE_IDX:
                        out[c].append(batch[c][i])
                out[C.SAMPLE_IDX].append(j)
                out[C.COMPLETION].append(g.text)
                out[C.FINISH_REASON].append(g.finish_reason)
                out[C.NUM_PROMPT_TOKENS].append(g.num_prompt_tokens)
                out[C.NUM_COMPLETION_TOKENS].append(g.num_completion_tokens)
                out[C.MODEL_ID].append(self.model_id)
                out[C.SAMPLING_FINGERPRINT].append(self.sampling_fingerprint)
                out[C.SEED].append(seed)
                out[C.ERROR].append(g.error)
                out[C.CACHED].append(g.cached)
                out[C.PROMPT_TEXT].append(prompts[i])
                out[C.PROMPT_MESSAGES].append(messages[i])
        log.debug("sampled %d rows in %.2fs", len(out[C.SAMPLE_IDX]), time.perf_counter() - t0)
        return out

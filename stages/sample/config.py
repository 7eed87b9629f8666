"""The sample stage's config: what to sample (``SampleSettings``, also the shape of nested sampling blocks such as
``screen.sample``) and, for the stage itself, where its workers run (``SampleConfig`` adds ``resources``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from stages.base import OnRay, Resources, StageConfig
from stages.sample.adaptive import DecideConfig, check_rounds


class SampleSettings(StageConfig):
    """Sampling settings. The same settings drive every backend."""

    model: str = Field(
        "toy:strong",
        description="toy:NAME (the project's tiny model, built on first use), a local model directory, a hub id, or "
        "linear:rho=R[,sigma=S] (a generator of the linear world: cosine R with w*, label noise S), or "
        "toy:gold[,eps=E] (the toy world's worked solution, with one coherent wrong trace on a fixed fraction E of "
        "problems; no model, whatever `backend` says).",
    )
    backend: Literal["hf", "vllm", "auto", "linear"] = Field(
        "hf", description="hf: transformers generate; vllm: vllm.LLM; linear: the linear world's labeller "
        "(`linear:rho=R[,sigma=S]` or a directory saved by the linear student; sigma applies at temperature > 0); "
        "auto: linear for a linear model, else vllm when a GPU and vllm are present."
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
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vllm: extra keyword arguments for vllm.LLM, e.g. "
        "{max_model_len: 4096, gpu_memory_utilization: 0.9}; they win over ours."
    )
    threads: int | None = Field(
        None, ge=1, description="torch threads per worker (default: the CPUs each sampling worker reserves, "
        "resources.num_cpus). On a laptop, 1 Ray CPU with 2 threads leaves a CPU for Ray's own read and write tasks."
    )

    @model_validator(mode="after")
    def _rounds_end_at_k(self) -> "SampleSettings":
        check_rounds(self.rounds, self.k)
        from pipeline.linearworld import PREFIX

        if self.model.startswith(PREFIX) and self.backend not in ("linear", "auto"):
            raise ValueError(f"model {self.model} is a linear-world generator: set backend: linear")
        return self


class SampleConfig(SampleSettings, OnRay):
    """The sample stage: sampling settings, and the Ray resources of its workers."""

    resources: Resources = Field(
        default_factory=lambda: Resources(batch_size=128), description=OnRay.model_fields["resources"].description
    )


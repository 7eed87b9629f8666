"""The sample stage's config: what to sample (``SampleSettings``, also the shape of nested sampling blocks such as
``screen.sample``) and, for the stage itself, where its workers run (``SampleConfig`` adds ``resources``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pipeline.models import MODEL_FIELD
from stages.base import Frozen, OnRay, Resources, StageConfig
from stages.sample.adaptive import DecideConfig, check_rounds


def check_template(template: str) -> None:
    """A prompt template is rendered with ``str.format(problem=...)``: it must hold ``{problem}`` and no other
    field, and literal braces are written doubled. Raises ValueError with the fix."""
    import string

    escape = "write literal braces doubled, e.g. \\boxed{{}}"
    try:
        fields = [(name, conv, spec) for _, name, spec, conv in string.Formatter().parse(template) if name is not None]
    except ValueError as e:
        raise ValueError(f"{e} (str.format cannot render it); {escape}") from None
    for name, conv, spec in fields:
        if name != "problem" or conv or spec:
            text = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"{text} is not a template field (only {{problem}} is); {escape}")
    if not fields:
        raise ValueError("no {problem} field: every prompt would be the same text; add {problem} where the "
                         "problem goes")


class OpenAISettings(Frozen):
    """The server behind ``backend: openai``: any OpenAI-compatible endpoint (``vllm serve``, SGLang, a hosted API).
    The API key is read from the environment only, never from the config, and is never written anywhere."""

    base_url: str = Field(
        description="The server's OpenAI-compatible root, e.g. http://localhost:8000/v1 (vllm serve), "
        "http://localhost:30000/v1 (SGLang) or https://api.openai.com/v1. `sample.model` is the served model name."
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY", min_length=1, description="Name of the environment variable that holds the API key (set "
        "it on every Ray node; a local run inherits the driver's). Unset: a placeholder key is sent, as a local "
        "server started without --api-key expects."
    )
    max_concurrent_requests: int = Field(
        8, ge=1, description="Requests in flight per sampling worker; the server sees up to "
        "resources.concurrency times this many."
    )
    max_retries: int = Field(
        4, ge=0, description="Retries of a request after a 408/409/429/5xx answer or a connection error, with "
        "exponential backoff (0.5 s doubling to 8 s, or the server's Retry-After). A request that still fails "
        "becomes an error row with its reason."
    )
    timeout_s: float = Field(600.0, gt=0, description="Seconds one request may take before it is retried.")
    send_seed: bool = Field(
        True, description="Send each completion's row seed as `seed` (vLLM, SGLang and OpenAI accept it). Off for "
        "a server that rejects it; completions are then not reproducible."
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="Extra JSON fields of every request, for server-specific options, e.g. "
        "{top_k: 20} or vLLM's {add_special_tokens: false}."
    )

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL ending at the API root, e.g. http://localhost:8000/v1")
        return url.rstrip("/")

    @model_validator(mode="before")
    @classmethod
    def _no_key_in_config(cls, data: Any) -> Any:
        # The value is never echoed: this check runs on the whole block, whose values errors do not print.
        if isinstance(data, dict) and "api_key" in data:
            raise ValueError("api_key is never read from the config; remove it and export the key in the "
                             f"environment variable named by api_key_env ({data.get('api_key_env', 'OPENAI_API_KEY')})")
        return data


class SampleSettings(StageConfig):
    """Sampling settings. The same settings drive every backend."""

    model: str = Field(
        "toy:strong",
        description="toy:NAME (the project's tiny model, built on first use), a local model directory, a hub id "
        "(org/name or org/name@revision; pinned to its commit before the run starts), "
        "linear:rho=R[,sigma=S] (a generator of the linear world: cosine R with w*, label noise S), or "
        "toy:gold[,eps=E] (the toy world's worked solution, with one coherent wrong trace on a fixed fraction E of "
        "problems; no model, whatever `backend` says). backend openai: the name the server serves the model under.",
        json_schema_extra=MODEL_FIELD,
    )
    backend: Literal["hf", "vllm", "auto", "linear", "openai"] = Field(
        "hf", description="hf: transformers generate; vllm: vllm.LLM; linear: the linear world's labeller "
        "(`linear:rho=R[,sigma=S]` or a directory saved by the linear student; sigma applies at temperature > 0); "
        "openai: a running OpenAI-compatible server (see `openai`); "
        "auto: openai when an `openai` block is given, linear for a linear model, else vllm when a GPU and vllm "
        "are present, else hf."
    )
    openai: OpenAISettings | None = Field(
        None, description="backend openai: the server (base URL, the environment variable with the key, "
        "requests in flight, retries)."
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
    prompt_template: str = Field(
        "{problem}", description="Prompt text; {problem} is replaced by the problem (rendered by str.format: write "
        "other braces doubled, e.g. \\boxed{{}})."
    )
    system_prompt: str | None = Field(None, description="System message, when the chat template is used.")
    chat_template: bool | None = Field(
        None, description="Apply the tokenizer's chat template (None: if it has one). backend openai: the chat "
        "endpoint, where the server applies the model's template, unless false (the prompt text to /v1/completions)."
    )
    generate_batch_size: int = Field(256, ge=1, description="Sequences per generate call (hf backend).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Model weights dtype.")
    gguf_file: str | None = Field(None, description="GGUF file name inside the model directory, if it ships GGUF.")
    trust_remote_code: bool = Field(False, description="Run code shipped with the model. Off unless you trust it.")
    seed: int | None = Field(None, description="Sampling seed (default: the run seed).")
    cache_dir: str | None = Field(
        None, description="Generation cache directory (e.g. ~/.cache/lessmore/generations); None: no cache. "
        "Completions are looked up by (backend and its engine settings, model content or hub commit, prompt, "
        "sampling params, seed, sample_idx) before generating; rows served from it have `cached` true."
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

    @field_validator("prompt_template")
    @classmethod
    def _one_field(cls, template: str) -> str:
        check_template(template)
        return template

    @model_validator(mode="after")
    def _rounds_end_at_k(self) -> "SampleSettings":
        check_rounds(self.rounds, self.k)
        from pipeline.linearworld import PREFIX

        if self.model.startswith(PREFIX) and self.backend not in ("linear", "auto"):
            raise ValueError(f"model {self.model} is a linear-world generator: set backend: linear")
        if self.backend == "openai" and self.openai is None:
            raise ValueError("backend openai needs the server: add openai: {base_url: http://HOST:PORT/v1}")
        if self.openai is not None and self.backend not in ("openai", "auto"):
            raise ValueError(f"an openai block is given but backend is {self.backend}; set backend: openai or "
                             "remove the openai block")
        return self


class SampleConfig(SampleSettings, OnRay):
    """The sample stage: sampling settings, and the Ray resources of its workers."""

    resources: Resources = Field(
        default_factory=lambda: Resources(batch_size=128), description=OnRay.model_fields["resources"].description
    )


"""What every sampling backend shares: the ``Generation`` it returns, per-row seeds, the backend protocol, prompt
rendering, and the choice of backend."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Generation:
    """One completion as every backend returns it."""

    text: str
    finish_reason: str  # stop | length | error
    num_prompt_tokens: int
    num_completion_tokens: int
    error: str | None = None
    cached: bool = field(default=False, compare=False)  # served from the generation cache; the same completion


def row_seed(seed: int, problem_id: str, sample_idx: int) -> int:
    """The seed of one (problem, sample) pair: independent of batching, workers and backends."""
    digest = hashlib.sha256(f"{seed}:{problem_id}:{sample_idx}".encode()).digest()
    return int.from_bytes(digest[:7], "little")  # < 2**56: fits int64 and every backend's seed type



class Backend(Protocol):
    """A sampling engine: the hf, vllm, linear and openai backends, and anything a test puts in their place."""

    def prompt_text(self, problem: str) -> str:
        """The exact prompt text the model is given for one problem."""

    def prompt_messages(self, problem: str) -> list[dict[str, str]] | None:
        """The chat messages rendered into ``prompt_text`` (None when no chat template is applied)."""

    def generate(self, prompts: list[str], seeds: list[list[int]]) -> list[list[Generation]]:
        """One Generation per seed: ``seeds[i]`` holds one seed per wanted completion of ``prompts[i]``."""


def prompt_messages(cfg: Any, tokenizer: Any, problem: str) -> list[dict[str, str]] | None:
    """The chat messages of one problem's prompt (the system prompt, then the template filled with the problem), or
    None when the chat template is not used (it is when ``cfg.chat_template`` says so, or, unset, when the tokenizer
    has one)."""
    use_chat = cfg.chat_template if cfg.chat_template is not None else bool(getattr(tokenizer, "chat_template", None))
    if not use_chat:
        return None
    return ([{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []) + [
        {"role": "user", "content": cfg.prompt_template.format(problem=problem)}
    ]


def render_prompt(cfg: Any, tokenizer: Any, problem: str) -> str:
    """The prompt for one problem: the template, then the chat template with the system prompt when one is used.
    Every backend renders prompts through this function, so prompts agree across backends."""
    messages = prompt_messages(cfg, tokenizer, problem)
    if messages is None:
        return cfg.prompt_template.format(problem=problem)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def eos_ids(tokenizer, model) -> list[int]:
    """The token ids that end a completion: the generation config's and the tokenizer's."""
    ids = []
    for source in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if source is None:
            continue
        ids.extend(source if isinstance(source, list) else [source])
    if not ids:
        raise ValueError("the tokenizer has no eos token; set one so completions can end")
    return sorted(set(ids))

def choose_backend(cfg: Any) -> str:
    """The backend of ``cfg.model``: ``gold`` for the toy world's gold generator whatever ``cfg.backend`` says (no
    engine runs it; a pool's generators share one sample block), else ``cfg.backend``, with ``auto`` resolved to
    openai when the config names a server, linear for a linear-world model, else vllm when a GPU and vllm are
    present, else hf."""
    from pipeline.toyworld import is_gold_model

    if is_gold_model(cfg.model):
        return "gold"
    if cfg.backend != "auto":
        return cfg.backend
    if getattr(cfg, "openai", None) is not None:
        return "openai"
    import importlib.util

    from pipeline.linearworld import is_linear_model

    if is_linear_model(cfg.model):
        return "linear"

    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        has_gpu = False
    return "vllm" if has_gpu and importlib.util.find_spec("vllm") else "hf"


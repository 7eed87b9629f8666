"""The openai sampling backend: a running OpenAI-compatible server (``vllm serve``, SGLang, a hosted API) through the
``openai`` client.

Seeds. As with the vllm backend, every completion is its own request (``n=1``) carrying its row seed as ``seed``, so
sample j never depends on k, on adaptive rounds or on the generation cache.

Endpoint. ``/v1/chat/completions`` (the server applies the model's chat template; the system prompt goes first)
unless ``chat_template`` is false, which sends the rendered prompt text to ``/v1/completions``.

Failures. The client retries 408/409/429/5xx answers and connection errors with bounded exponential backoff (and
honours Retry-After); a request that still fails, or ends for another reason than stop/length, becomes an error row
with its reason, never a crash.

The key. Read from the environment variable named by ``openai.api_key_env`` when a worker starts, and held only by
the client, which sends it in the Authorization header: it is in no config, row, log or file.
"""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.models import ModelError
from stages.sample.backend import Generation

log = logging.getLogger(__name__)

# What a local server started without --api-key expects (the client refuses to start without some key).
PLACEHOLDER_KEY = "EMPTY"
# The server's finish reasons -> the row contract's (anything else, e.g. content_filter, is an error row).
_FINISH = {"stop": "stop", "length": "length"}
_MAX_ERROR_CHARS = 300


def uses_chat(cfg: Any) -> bool:
    """The chat endpoint unless the config turns the chat template off."""
    return cfg.chat_template is not False


def server_fingerprint(cfg: Any) -> str:
    """What the model fingerprint is for a served model: the server, the model name, and the request options that
    change completions (the weights behind a name are the server's to keep)."""
    from pipeline.models import fingerprint

    o = cfg.openai
    return fingerprint("openai", o.base_url, cfg.model, o.send_seed, o.extra_body, uses_chat(cfg))


def make_client(settings: Any, max_retries: int | None = None, timeout_s: float | None = None) -> Any:
    """An ``openai.OpenAI`` client for the server, its key from the environment."""
    try:
        from openai import OpenAI
    except ImportError as exc:
        raise ImportError(
            "sample.backend is 'openai' but the openai package is not installed: pip install -e '.[openai]'"
        ) from exc
    return OpenAI(
        base_url=settings.base_url,
        api_key=os.environ.get(settings.api_key_env) or PLACEHOLDER_KEY,
        max_retries=settings.max_retries if max_retries is None else max_retries,
        timeout=settings.timeout_s if timeout_s is None else timeout_s,
    )


def check_server(cfg: Any, where: str = "stages.sample") -> None:
    """On the driver, before any worker starts: the server answers, takes the key and serves ``cfg.model``.
    Raises ModelError with one line naming the field to change. A server without a /models route is not checked
    (a warning says so)."""
    import openai

    settings = cfg.openai
    client = make_client(settings, max_retries=1, timeout_s=min(settings.timeout_s, 30.0))
    try:
        served = [m.id for m in client.models.list()]
    except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
        raise ModelError(f"{where}.openai.api_key_env: {settings.base_url} refused the key (HTTP {e.status_code}); "
                         f"export the key in ${settings.api_key_env}") from None
    except openai.NotFoundError:
        log.warning("%s has no /models route, so %s is not checked; if every request fails with HTTP 404, make "
                    "%s.openai.base_url the API root (it usually ends in /v1)", settings.base_url, cfg.model, where)
        return
    except openai.APIConnectionError as e:
        raise ModelError(f"{where}.openai.base_url: cannot reach {settings.base_url} ({e}); start the server or "
                         "fix the URL") from None
    except openai.APIStatusError as e:
        raise ModelError(f"{where}.openai.base_url: {settings.base_url}/models answered HTTP {e.status_code}; "
                         "check that the URL is the API root (it usually ends in /v1)") from None
    finally:
        client.close()
    if served and cfg.model not in served:
        raise ModelError(f"{where}.model: {settings.base_url} does not serve {cfg.model!r}; it serves "
                         f"{', '.join(repr(m) for m in served[:10])}")


def request_arguments(cfg: Any, prompt: str, seed: int) -> dict[str, Any]:
    """Keyword arguments of one completion request (n=1, its own seed); ``prompt`` is what ``prompt_text`` gave."""
    o = cfg.openai
    kwargs: dict[str, Any] = {
        "model": cfg.model,
        "n": 1,
        "temperature": float(cfg.temperature),
        "top_p": float(cfg.top_p),
    }
    if uses_chat(cfg):
        kwargs["messages"] = json.loads(prompt)
        kwargs["max_completion_tokens"] = int(cfg.max_tokens)  # chat's name; max_tokens is deprecated there
    else:
        kwargs["prompt"] = prompt
        kwargs["max_tokens"] = int(cfg.max_tokens)
    if cfg.stop:
        kwargs["stop"] = list(cfg.stop)
    if o.send_seed:
        kwargs["seed"] = int(seed)
    if o.extra_body:
        kwargs["extra_body"] = dict(o.extra_body)
    return kwargs


class OpenAIBackend:
    """An OpenAI-compatible server: one seeded request per (problem, sample), ``max_concurrent_requests`` in flight;
    failures become error rows. The same interface as the hf and vllm backends."""

    def __init__(self, cfg: Any) -> None:
        """``cfg``: the sample settings with their ``openai`` block."""
        self.cfg = cfg
        self.chat = uses_chat(cfg)
        self.client = make_client(cfg.openai)
        self.pool = ThreadPoolExecutor(cfg.openai.max_concurrent_requests, thread_name_prefix="openai-request")

    def prompt_text(self, problem: str) -> str:
        """The prompt text (completions), or the chat messages as JSON (chat): exactly what the server is sent, so
        the generation cache tells system prompts apart."""
        messages = self.prompt_messages(problem)
        if messages is None:
            return self.cfg.prompt_template.format(problem=problem)
        return json.dumps(messages, ensure_ascii=False)

    def prompt_messages(self, problem: str) -> list[dict[str, str]] | None:
        """The chat messages sent (the server applies its model's chat template), or None on the completions
        endpoint."""
        if not self.chat:
            return None
        system = [{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else []
        return system + [{"role": "user", "content": self.cfg.prompt_template.format(problem=problem)}]

    def generate(self, prompts: list[str], seeds: list[list[int]]) -> list[list[Generation]]:
        """``seeds[i]`` holds one seed per wanted completion of ``prompts[i]``; one request per completion."""
        futures = [[self.pool.submit(self._request, p, s) for s in row] for p, row in zip(prompts, seeds)]
        results = [[f.result() for f in row] for row in futures]
        failed = sum(g.finish_reason == "error" for row in results for g in row)
        if failed:
            first = next(g.error for row in results for g in row if g.finish_reason == "error")
            log.warning("%d of %d requests to %s failed (first: %s)", failed, sum(map(len, results)),
                        self.cfg.openai.base_url, first)
        return results

    def _request(self, prompt: str, seed: int) -> Generation:
        import openai

        try:
            if self.chat:
                response = self.client.chat.completions.create(**request_arguments(self.cfg, prompt, seed))
            else:
                response = self.client.completions.create(**request_arguments(self.cfg, prompt, seed))
        except openai.APIStatusError as e:
            retried = e.status_code in (408, 409, 429) or e.status_code >= 500
            after = f" after {self.cfg.openai.max_retries} retries" if retried else ""
            return _error(f"HTTP {e.status_code}{after}: {_first_line(e.message)}{self._hint(e)}")
        except Exception as e:  # noqa: BLE001 - connection errors, timeouts, bad JSON: one row, never the job
            return _error(f"{type(e).__name__}: {_first_line(str(e)) or 'no message'}")
        return generation_of(response, self.chat, self.cfg.stop)

    def _hint(self, e: Any) -> str:
        if self.chat and e.status_code == 400 and "template" in str(e.message).lower():
            return "; the model has no chat template: set sample.chat_template: false to use /v1/completions"
        return ""

    def close(self) -> None:
        """Stop the request threads and the client's connections."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()


def generation_of(response: Any, chat: bool, stop: tuple[str, ...] = ()) -> Generation:
    """One completion response (n=1) as a ``Generation``: its text, finish reason and token counts (0 where the
    server reports no usage)."""
    usage = getattr(response, "usage", None)
    n_prompt = int(getattr(usage, "prompt_tokens", 0) or 0)
    n_completion = int(getattr(usage, "completion_tokens", 0) or 0)
    if not response.choices:
        return _error("the server returned no choices", n_prompt)
    choice = response.choices[0]
    text = (choice.message.content if chat else choice.text) or ""
    finish = _FINISH.get(choice.finish_reason)
    if finish is None:
        return Generation(text, "error", n_prompt, n_completion, f"finish_reason={choice.finish_reason!r}")
    for s in stop:  # servers cut before a stop string already; this keeps the contract for one that does not
        cut = text.find(s)
        if cut >= 0:
            text, finish = text[:cut], "stop"
    return Generation(text, finish, n_prompt, n_completion)


def _error(reason: str, n_prompt: int = 0) -> Generation:
    return Generation("", "error", n_prompt, 0, reason)


def _first_line(text: str) -> str:
    line = (str(text).strip().splitlines() or [""])[0]
    return line if len(line) <= _MAX_ERROR_CHARS else line[:_MAX_ERROR_CHARS] + "..."

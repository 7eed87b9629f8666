"""The rows an export publishes: the curated training rows, the whole judged pool and the held-out problems, in
TRL's standard or conversational prompt-completion format, each with the exact prompt the model was given
(``prompt_text``), the source's own id and a ``lineage`` hash of how the row was made."""

from __future__ import annotations

import json
from typing import Any, Callable

from pipeline import columns as C
from pipeline import io

# Columns every published completion row carries after prompt, completion and prompt_text.
TRAIN_COLUMNS = (
    C.PROBLEM, C.ANSWER, C.PROBLEM_ID, C.SOURCE, C.SOURCE_ID, C.LEVEL, C.SAMPLE_IDX, C.MODEL_ID, C.SEED,
    C.EXTRACTED, C.CORRECT, C.VERIFIER, C.PASS_RATE, C.CI_LOW, C.CI_HIGH, C.N_SAMPLES, C.TIER, C.RULE,
    C.KEEP_REASON, C.FINISH_REASON, C.NUM_COMPLETION_TOKENS, C.CACHED,
)
# The pool adds the curation decision and what RL users filter on.
POOL_COLUMNS = (*TRAIN_COLUMNS, C.KEPT, C.DROP_REASON, C.VERDICT_REASON, C.N_CORRECT, C.NUM_PROMPT_TOKENS)
FORMATS = ("standard", "conversational")

Renderer = Callable[[str], tuple[str, "list[dict[str, str]] | None"]]


def choose_format(requested: str | None, messages: list[str | None]) -> str:
    """``requested``, or conversational when the prompts went through a chat template (their messages were
    recorded by the sample stage), standard otherwise."""
    if requested is not None:
        return requested
    return "conversational" if any(m is not None for m in messages) else "standard"


def prompt_value(fmt: str, prompt_text: str, messages: list[dict[str, str]] | None) -> Any:
    """The ``prompt`` column: the exact text (standard), or the chat messages (conversational). Without a chat
    template the one user message is the rendered template, which is the exact text."""
    if fmt == "standard":
        return prompt_text
    return messages if messages is not None else [{"role": "user", "content": prompt_text}]


def completion_value(fmt: str, completion: str | None) -> Any:
    """The ``completion`` column: the text (standard), or one assistant message (conversational); None for a
    held-out problem, which has none."""
    if completion is None or fmt == "standard":
        return completion
    return [{"role": "assistant", "content": completion}]


def lineage(row: dict[str, Any], verifier_version: str, rule: Any) -> str:
    """How a row was made: problem, model and sampling settings (``sampling_fingerprint`` covers the model's
    content, the sampling parameters and the prompt settings), seed, sample index, verifier and its version, and the
    curation rule. A change to any of them changes the hash of the rows it touches."""
    return io.digest(row.get(C.PROBLEM_ID), row.get(C.PROBLEM), row.get(C.SAMPLING_FINGERPRINT), row.get(C.SEED),
                     row.get(C.SAMPLE_IDX), row.get(C.VERIFIER), verifier_version, rule)


def completion_rows(rows: list[dict[str, Any]], fmt: str, columns: tuple[str, ...], verifier_version: str | None,
                    rule: Any):
    """Rows (sorted by problem and sample) as a ``datasets.Dataset`` in format ``fmt``: prompt, completion,
    prompt_text, then ``columns`` (null where a row lacks one, so every split of a config has one schema), then
    lineage (null without a ``verifier_version``: a held-out problem was not made by sampling)."""
    rows = sorted(rows, key=lambda r: (r[C.PROBLEM_ID], r.get(C.SAMPLE_IDX) or 0))
    batch: dict[str, list[Any]] = {"prompt": [], "completion": [], C.PROMPT_TEXT: []}
    for row in rows:
        messages = json.loads(row[C.PROMPT_MESSAGES]) if row.get(C.PROMPT_MESSAGES) else None
        batch["prompt"].append(prompt_value(fmt, row[C.PROMPT_TEXT], messages))
        batch["completion"].append(completion_value(fmt, row.get(C.COMPLETION)))
        batch[C.PROMPT_TEXT].append(row[C.PROMPT_TEXT])
    for c in columns:
        batch[c] = [r.get(c) for r in rows]
    batch[C.LINEAGE] = [None if verifier_version is None else lineage(r, verifier_version, rule) for r in rows]
    return _dataset(batch, fmt)


def problem_rows(rows: list[dict[str, Any]], fmt: str, render: Renderer, columns: tuple[str, ...]):
    """Held-out problem rows as a ``datasets.Dataset`` with the schema of the training rows: the prompt as the
    sample stage would render it, no completion (they are for evaluation)."""
    rendered = []
    for row in rows:
        text, messages = render(row[C.PROBLEM])
        rendered.append({**row, C.PROMPT_TEXT: text,
                         C.PROMPT_MESSAGES: None if messages is None else json.dumps(messages, ensure_ascii=False)})
    return completion_rows(rendered, fmt, columns, None, None)


def _dataset(batch: dict[str, list[Any]], fmt: str):
    """A Dataset with the row contract's column types (so splits of one config share a schema even when a column is
    all null in one of them)."""
    import datasets
    import pyarrow as pa

    message = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    chat = {"prompt": message, "completion": message} if fmt == "conversational" else {}
    types = {**C.arrow_types(), C.LINEAGE: pa.string(), "prompt": pa.string(), "completion": pa.string(), **chat}
    table = pa.table({name: pa.array(values, type=types.get(name)) for name, values in batch.items()})
    return datasets.Dataset(table)

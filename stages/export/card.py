"""The dataset card: ``huggingface_hub``'s DatasetCard with its metadata (configs, dataset_info, size, name,
license, tasks, tags), how to load it, how it was made, every stage's counts, its columns and the run's config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from pipeline import io

# The Hub's size buckets: (upper bound, label).
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"))


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` label for ``n`` rows."""
    return next((label for bound, label in _SIZES if n < bound), "n>1T" if n >= 10**12 else "1B<n<10B")


def stage_counts(stage_dirs: tuple[str, ...], export_row: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stage of the run, in order, from each stage's completion marker; the export's own row last."""
    rows = []
    for directory in stage_dirs:
        marker = io.read_marker(directory) or {}
        r = marker.get("result") or {"name": Path(directory).name.split("_", 1)[-1]}
        rows.append({k: r.get(k) for k in ("name", "rows_in", "rows_out", "rejected", "kept", "dropped")})
    return [*rows, export_row]


def _cell(value: Any) -> str:
    if value is None or value == {}:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")


def _provenance(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, value) lines that say how the rows were made; settings the run did not set are left out."""
    stages = config.get("stages", {})
    source, sample = stages.get("source") or {}, stages.get("sample") or {}
    verify, curate = stages.get("verify") or {}, stages.get("curate") or {}

    def settings(block: dict[str, Any], keys: tuple[str, ...]) -> str:
        return ", ".join(f"{k}={json.dumps(block[k]) if isinstance(block[k], (dict, list)) else block[k]}"
                         for k in keys if block.get(k) is not None)

    lines = [
        ("source", " ".join(str(v) for v in (source.get("kind"), source.get("path") or source.get("task")) if v)),
        ("model", settings(sample, ("model", "backend"))),
        ("sampling", settings({**sample, "seed": config.get("seed")},
                              ("k", "temperature", "top_p", "max_tokens", "seed"))),
        ("prompt", settings(sample, ("prompt_template", "system_prompt", "chat_template"))),
        ("verifier", settings(verify, ("verifier", "options"))),
        ("rule", settings(curate, ("rule", "label_aware", "n", "p", "trace"))),
    ]
    return [(k, v) for k, v in lines if v]


def build_card(*, name: str, license: str, fmt: str, config: dict[str, Any], counts: list[dict[str, Any]],
               splits: dict[str, int], pool_rows: int, metadata: tuple[Any, Any], repo_id: str | None,
               id_field: str | None):
    """The card as a ``huggingface_hub.DatasetCard``; ``metadata`` is (configs, dataset_info) from the layout."""
    from huggingface_hub import DatasetCard, DatasetCardData

    configs, infos = metadata
    data = DatasetCardData(
        license=license, pretty_name=name, task_categories=["text-generation"],
        tags=["math", "reasoning", "sft", "lessmore"], size_categories=[size_category(splits["train"])],
    )
    configs.to_dataset_card_data(data)
    infos.to_dataset_card_data(data)
    where = repo_id or "path/to/this/directory"
    split_line = ", ".join(f"`{s}` ({n} rows)" for s, n in splits.items())
    provenance = "\n".join(f"| {k} | {_cell(v)} |" for k, v in _provenance(config))
    table = "\n".join(f"| {_cell(r['name'])} | {_cell(r['rows_in'])} | {_cell(r['rows_out'])} | "
                      f"{_cell(r['rejected'])} | {_cell(r['kept'])} | {_cell(r['dropped'])} |" for r in counts)
    prompt_doc = (
        "`prompt` is the list of chat messages (system, then user with the filled template) and `completion` one "
        "assistant message: TRL's conversational prompt-completion format. Applying the model's chat template to "
        "`prompt` with `add_generation_prompt=True` gives `prompt_text`."
        if fmt == "conversational" else
        "`prompt` is the exact text the model was given and `completion` the text it wrote: TRL's standard "
        "prompt-completion format."
    )
    test_doc = (" The `test` split holds the held-out problems the run evaluates on (none of them in the pool), "
                "with no completion." if "test" in splits else "")
    id_doc = f"the source's `{id_field}` field" if id_field else "the record's id or position in the source"
    body = f"""
# {name}

Curated reasoning-SFT data: problems, solutions sampled from a model, a verifier's verdict on each, and a curation
rule that chose the training rows. Built with lessmore.

```python
from datasets import load_dataset

train = load_dataset("{where}", split="train")   # the curated rows
pool = load_dataset("{where}", "pool", split="train")  # every judged completion with its curation decision
```

Config `default`: {split_line}. Config `pool`: {pool_rows} rows, one per judged completion.

| | |
|---|---|
{provenance}

## Format

{prompt_doc} `prompt_text` is the exact prompt the model was given when it sampled the completion (template,
system prompt and chat template applied), character for character.

## Counts per stage

| stage | rows in | rows out | rejected | kept | dropped by reason |
|---|---|---|---|---|---|
{table}

## Columns

`prompt`, `completion`, `prompt_text` (see Format); `problem` (the problem as the source gave it), `answer` (the
reference); `problem_id` (a hash of source and text), `source`, `source_id` ({id_doc}: join rows back to the source
on it); `extracted` and `correct` (the verifier's verdict), `pass_rate` with its interval `ci_low`..`ci_high` over
`n_samples` samples of `model_id`; `rule` and `keep_reason`; `lineage` (a hash of problem, model and sampling
settings, seed, sample index, verifier and its version, and rule: a change to any of them shows row by row). The
`pool` config adds `kept`, `drop_reason`, `verdict_reason` and `n_correct`.{test_doc}

## Resolved config

```yaml
{yaml.safe_dump(config, sort_keys=False).strip()}
```
"""
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}")

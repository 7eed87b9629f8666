"""export: the kept rows as a Hugging Face DatasetDict (save_to_disk and parquet) with a dataset card."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from pipeline import columns as C
from stages.base import RunContext, Stage, StageConfig

log = logging.getLogger(__name__)

EXPORT_COLUMNS = (
    C.PROBLEM_ID, C.PROBLEM, C.COMPLETION, C.ANSWER, C.EXTRACTED, C.CORRECT, C.SOURCE, C.LEVEL, C.SPLIT,
    C.SAMPLE_IDX, C.MODEL_ID, C.SEED, C.PASS_RATE, C.CI_LOW, C.CI_HIGH, C.N_SAMPLES, C.TIER, C.RULE, C.KEEP_REASON,
    C.VERIFIER, C.FINISH_REASON, C.NUM_COMPLETION_TOKENS, C.CACHED,
)


class ExportConfig(StageConfig):
    """Where and how the curated dataset is published."""

    dataset_name: str | None = Field(None, description="Name in the card's title (default: the run name).")
    repo_id: str | None = Field(None, description="Hub repo to push to (needs HF_TOKEN in the environment).")
    private: bool = Field(True, description="Push as a private dataset.")
    license: str = Field("apache-2.0", description="License named in the card.")
    path: str | None = Field(
        None, description="Publish the dataset (dataset/, parquet/, README.md) into this directory, relative to "
        "output_root (it cannot leave it), instead of the stage directory. An existing directory is never "
        "replaced unless `overwrite` is set."
    )
    overwrite: bool = Field(
        False, description="Replace an existing `path` (`lessmore run --overwrite` sets it). Changes no output, so "
        "it is not part of the stage fingerprint."
    )


class ExportExists(FileExistsError):
    """export.path already holds something and overwriting was not asked for."""


class ExportStage(Stage):
    """Writes dataset/ (save_to_disk), parquet/ and README.md (the card) into the stage directory."""

    name = "export"
    kind = "sink"
    config_model = ExportConfig
    requires = (C.KEPT, C.PROBLEM, C.COMPLETION)

    def __init__(self, cfg: ExportConfig, output_root: str | None = None, **prepared: Any) -> None:
        super().__init__(cfg, **prepared)
        self.output_root = output_root

    def target_dir(self, out_dir: str) -> Path:
        """Where the dataset goes: ``output_root/path`` when ``path`` is set (checked), else the stage directory."""
        if not self.cfg.path:
            return Path(out_dir)
        from pipeline.io import inside

        if self.output_root is None:
            raise ValueError("export.path needs the run's output_root; run the stage through the runner")
        return inside(self.output_root, self.cfg.path, field="stages.export.path")

    def write(self, upstream_dir: str, out_dir: str, context: RunContext) -> dict[str, Any]:
        import datasets

        from pipeline import io

        target = self.target_dir(out_dir)
        if self.cfg.path and target.exists() and any(target.iterdir()) and not self.cfg.overwrite:
            raise ExportExists(
                f"export: {target} already exists; refusing to overwrite it. Run again with `lessmore run --overwrite` "
                f"(or set stages.export.overwrite: true), or choose another stages.export.path"
            )
        datasets.disable_progress_bars()
        files = [str(p) for p in io.part_files(upstream_dir)]
        if not files:
            raise RuntimeError(f"export: {upstream_dir} holds no rows; the curate stage kept nothing to export")
        full = datasets.load_dataset("parquet", data_files=files, split="train")
        kept = full.filter(lambda kept: kept, input_columns=[C.KEPT])
        keep_cols = [c for c in EXPORT_COLUMNS if c in kept.column_names]
        kept = kept.select_columns(keep_cols).rename_column(C.PROBLEM, "prompt")
        kept = kept.sort(C.PROBLEM_ID) if len(kept) else kept
        dd = datasets.DatasetDict({"train": kept})
        # With export.path, build next to the target and swap it in whole: a killed export leaves either the old
        # dataset or the new one, never a mix.
        out = target.parent / f".{target.name}.tmp-{os.getpid()}" if self.cfg.path else Path(out_dir)
        if self.cfg.path and out.exists():
            shutil.rmtree(out)
        dataset_dir = out / "dataset"
        dd.save_to_disk(str(dataset_dir))
        parquet_dir = out / "parquet"
        parquet_dir.mkdir(parents=True, exist_ok=True)
        kept.to_parquet(str(parquet_dir / "train.parquet"))
        card = self.card(context, kept, len(full))
        (dataset_dir / "README.md").write_text(card)
        (out / "README.md").write_text(card)
        if self.cfg.repo_id:
            token = os.environ.get("HF_TOKEN")  # read from the environment only; never written anywhere
            dd.push_to_hub(self.cfg.repo_id, private=self.cfg.private, token=token)
            from huggingface_hub import HfApi

            HfApi(token=token).upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md",
                                           repo_id=self.cfg.repo_id, repo_type="dataset")
        if self.cfg.path:
            _replace_dir(out, target)
            (Path(out_dir) / "README.md").write_text(card)
            dataset_dir, parquet_dir = target / "dataset", target / "parquet"
        log.info("dataset written to %s", dataset_dir)
        return {"outputs": {"dataset": str(dataset_dir), "parquet": str(parquet_dir / "train.parquet")},
                "rows": len(kept)}

    def card(self, context: RunContext, kept, n_candidates: int) -> str:
        """The dataset card: provenance, counts per stage, and the resolved config."""
        run_dir = Path(context.run_dir)
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
        stages = config.get("stages", {})
        counts = []
        for marker in sorted(run_dir.glob("*/_SUCCESS")):
            r = json.loads(marker.read_text())["result"]
            dropped = ", ".join(f"{k}: {v}" for k, v in r.get("dropped", {}).items()) or "-"
            counts.append(f"| {r['name']} | {r['rows_in']} | {r['rows_out']} | {r['rejected']} | "
                          f"{r.get('kept') if r.get('kept') is not None else '-'} | {dropped} |")
        sample = stages.get("sample", {})
        verify = stages.get("verify", {})
        curate = stages.get("curate", {})
        source = stages.get("source", {})
        name = self.cfg.dataset_name or config.get("name", "lessmore-dataset")
        levels = {}
        for lv in kept[C.LEVEL] if C.LEVEL in kept.column_names else []:
            levels[lv] = levels.get(lv, 0) + 1
        level_line = ", ".join(f"L{k}: {v}" for k, v in sorted(levels.items(), key=lambda kv: (kv[0] is None, kv[0])))
        return f"""---
license: {self.cfg.license}
task_categories: [text-generation]
tags: [math, reasoning, sft, lessmore]
---
# {name}

Curated reasoning-SFT data: problems, sampled solutions that a verifier judged, and a curation rule.
Built with lessmore.

| | |
|---|---|
| source | {source.get('kind')} {source.get('path') or source.get('task') or ''} |
| model | {sample.get('model')} (backend {sample.get('backend')}) |
| sampling | k={sample.get('k')}, temperature={sample.get('temperature')}, top_p={sample.get('top_p')}, max_tokens={sample.get('max_tokens')}, seed={config.get('seed')} |
| verifier | {verify.get('verifier')} {json.dumps(verify.get('options') or {})} |
| rule | {curate.get('rule')} (label_aware={curate.get('label_aware')}, n={curate.get('n')}, p={curate.get('p')}, trace={curate.get('trace')}) |
| rows | {len(kept)} kept of {n_candidates} candidate completions |
| levels | {level_line or '-'} |

## Counts per stage

| stage | rows in | rows out | rejected | kept | dropped by reason |
|---|---|---|---|---|---|
{chr(10).join(counts)}

## Columns

`prompt` (the problem), `completion` (the sampled solution), `answer` (reference), `extracted` and `correct`
(the verifier's verdict), `pass_rate` with its interval `ci_low`..`ci_high` over `n_samples` samples of `model_id`,
`rule` and `keep_reason`.

## Resolved config

```yaml
{yaml.safe_dump(config, sort_keys=False).strip()}
```
"""


def _replace_dir(built: Path, target: Path) -> None:
    """Move ``built`` to ``target``, replacing what was there; the old copy is removed only once the new is in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        os.replace(target, old)
    os.replace(built, target)
    if old.exists():
        shutil.rmtree(old)

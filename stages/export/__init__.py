"""export: publish the curated rows the way the Hub and TRL expect them.

Config ``default`` has split ``train`` (the curated rows) and, when the run evaluates, ``test`` (its held-out
problems); config ``pool`` has every judged completion with its curation decision. Rows are in TRL's standard or
conversational prompt-completion format and keep the exact prompt the model saw, the source's own id and a lineage
hash. The card is a ``huggingface_hub`` DatasetCard whose metadata declares the configs. A stamp (run directory,
fingerprint, file digests) marks the published directory as this run's, so a rerun can tell whether it still is.

The package: ``rows`` (formats, lineage), ``card`` (the card), ``publish`` (layout, stamp, push)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field

from pipeline import columns as C
from pipeline import io
from stages.base import RunContext, Stage, StageConfig
from stages.export import card, publish
from stages.export.rows import POOL_COLUMNS, TRAIN_COLUMNS, choose_format, completion_rows, problem_rows
from stages.source import SourceConfig

log = logging.getLogger(__name__)


class ExportConfig(StageConfig):
    """Where and how the curated dataset is published."""

    dataset_name: str | None = Field(None, description="The card's title and pretty_name (default: the run name).")
    format: Literal["standard", "conversational"] | None = Field(
        None, description="standard: `prompt` is the exact prompt text and `completion` the text; conversational: "
        "chat messages (TRL's conversational prompt-completion format). None: conversational when the sample stage "
        "used a chat template (and with it any system prompt), standard otherwise. Both keep the exact prompt text "
        "in `prompt_text`."
    )
    test: SourceConfig | None = Field(
        None, description="Held-out problems exported as the `test` split, decontaminated against the pool. When the "
        "run has an evaluate block this is its `heldout` block (set by the loader), so the split holds the problems "
        "the run evaluates on. None: no test split."
    )
    repo_id: str | None = Field(None, description="Hub repo to push to (needs HF_TOKEN in the environment).")
    private: bool = Field(True, description="Push as a private dataset.")
    license: str = Field("apache-2.0", description="License named in the card.")
    path: str | None = Field(
        None, description="Publish the dataset into this directory, relative to output_root (it cannot leave it), "
        "instead of the stage directory. An existing directory is never replaced unless `overwrite` is set, and "
        "then only if it holds a lessmore export (its stamp)."
    )
    overwrite: bool = Field(
        False, description="Replace an existing `path` that holds a lessmore export (`lessmore run --overwrite` "
        "sets it). Changes no output, so it is not part of the stage fingerprint."
    )


class ExportExists(FileExistsError):
    """export.path already holds something that this export may not replace."""


class ExportStage(Stage):
    """Writes the Hub layout (README.md, data/, pool/), dataset/ (save_to_disk) and a stamp, then pushes if asked."""

    name = "export"
    kind = "sink"
    config_model = ExportConfig
    requires = (C.KEPT, C.PROBLEM, C.COMPLETION, C.PROMPT_TEXT)

    def __init__(self, cfg: ExportConfig, output_root: str | None = None, **prepared: Any) -> None:
        super().__init__(cfg, **prepared)
        self.output_root = output_root

    def target_dir(self, out_dir: str) -> Path:
        """Where the dataset goes: ``output_root/path`` when ``path`` is set (checked), else the stage directory."""
        return _target(self.cfg, out_dir, self.output_root)

    @classmethod
    def outputs_stand(cls, cfg: ExportConfig, out_dir: str, output_root: str) -> str | None:
        """The published directory must still hold this run's export of this fingerprint, unchanged: one deleted,
        replaced by another run's or edited is published again (or refused, if it is not ours to replace)."""
        marker = io.read_marker(out_dir) or {}
        return publish.stamp_problem(_target(cfg, out_dir, output_root), str(Path(out_dir).parent),
                                     marker.get("fingerprint"))

    def write(self, upstream_dir: str, out_dir: str, context: RunContext) -> dict[str, Any]:
        import datasets

        target = self.target_dir(out_dir)
        if self.cfg.path:
            self._check_replaceable(target)
        datasets.disable_progress_bars()
        files = io.part_files(upstream_dir)
        if not files:
            raise RuntimeError(f"export: {upstream_dir} holds no rows; the curate stage kept no rows to export")
        judged = io.read_table(upstream_dir).to_pylist()
        run_dir = Path(context.run_dir)
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
        stages = config.get("stages") or {}
        fmt = choose_format(self.cfg.format, [r.get(C.PROMPT_MESSAGES) for r in judged])
        version, rule = _verifier_version(stages.get("verify")), _settings(stages.get("curate"))
        kept = [r for r in judged if r[C.KEPT]]
        default = {"train": completion_rows(kept, fmt, TRAIN_COLUMNS, version, rule)}
        if self.cfg.test is not None:
            default["test"] = self._test_split(context, kept, fmt, stages.get("sample"))
        pool = completion_rows(judged, fmt, POOL_COLUMNS, version, rule)

        # With export.path, build next to the target and swap it in whole: a killed export leaves either the old
        # dataset or the new one, never a mix.
        out = target.parent / f".{target.name}.tmp-{os.getpid()}" if self.cfg.path else Path(out_dir)
        if self.cfg.path and out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        metadata = publish.write_layout(out, default, pool)
        export_row = {"name": self.name, "rows_in": len(judged), "rows_out": len(default["train"]), "rejected": 0,
                      "kept": None, "dropped": {"not kept": len(judged) - len(kept)} if len(judged) > len(kept) else None}
        dataset_card = card.build_card(
            name=self.cfg.dataset_name or config.get("name") or "lessmore-dataset", license=self.cfg.license, fmt=fmt,
            config=config, counts=card.stage_counts(context.stage_dirs, export_row),
            splits={s: len(d) for s, d in default.items()}, pool_rows=len(pool), metadata=metadata,
            repo_id=self.cfg.repo_id, id_field=(stages.get("source") or {}).get("id_field"),
        )
        dataset_card.save(str(out / "README.md"))
        dataset_card.save(str(out / "dataset" / "README.md"))
        publish.write_stamp(out, context.run_dir, context.fingerprint)
        if self.cfg.repo_id:
            publish.push(out, self.cfg.repo_id, self.cfg.private, os.environ.get("HF_TOKEN"))  # never written anywhere
        if self.cfg.path:
            publish.replace_dir(out, target)
            dataset_card.save(str(Path(out_dir) / "README.md"))
        log.info("dataset written to %s", target)
        return {"outputs": {"dataset": str(target / "dataset"), "export": str(target)}, "rows": len(default["train"]),
                "format": fmt, "splits": {s: len(d) for s, d in default.items()}, "pool": len(pool)}

    def _check_replaceable(self, target: Path) -> None:
        """An existing, non-empty ``path`` is replaced only with ``overwrite``, and only when it holds a lessmore
        export: a user's folder or another run's directory is never deleted."""
        if not target.exists() or (target.is_dir() and not any(target.iterdir())):
            return
        stamp = publish.read_stamp(target)
        if stamp is None:
            raise ExportExists(
                f"export: {target} exists and is not a lessmore export (it has no {publish.STAMP}); refusing to "
                f"replace it, even with --overwrite. Choose another stages.export.path, or move it away yourself"
            )
        if not self.cfg.overwrite:
            raise ExportExists(
                f"export: {target} already holds an export (of run {stamp.get('run_dir')}); refusing to overwrite "
                f"it. Run again with `lessmore run --overwrite` (or set stages.export.overwrite: true), or choose "
                f"another stages.export.path"
            )

    def _test_split(self, context: RunContext, kept: list[dict[str, Any]], fmt: str, sample: dict | None):
        """The held-out problems, decontaminated against the pool (the first stage's problems) and the training
        rows, with prompts rendered as the sample stage renders them."""
        from stages.source import heldout_rows

        pool = io.read_columns(context.stage_dirs[0], [C.PROBLEM_ID, C.PROBLEM]) if context.stage_dirs else None
        ids = set(pool[C.PROBLEM_ID].to_pylist()) if pool is not None else set()
        texts = set(pool[C.PROBLEM].to_pylist()) if pool is not None else set()
        ids |= {r[C.PROBLEM_ID] for r in kept}
        texts |= {r[C.PROBLEM] for r in kept}
        rows, dropped, seed = heldout_rows(self.cfg.test, context.seed, ids, texts)
        if dropped:
            log.info("export: test split drew %d held-out problems (seed %d), dropped %s", len(rows), seed, dropped)
        return problem_rows(rows, fmt, _renderer(sample), TRAIN_COLUMNS)


def _target(cfg: ExportConfig, out_dir: str, output_root: str | None) -> Path:
    if not cfg.path:
        return Path(out_dir)
    from pipeline.io import inside

    if output_root is None:
        raise ValueError("export.path needs the run's output_root; run the stage through the runner")
    return inside(output_root, cfg.path, field="stages.export.path")


def _settings(block: dict[str, Any] | None) -> dict[str, Any] | None:
    """A stage block without where it ran (resources change no output)."""
    return None if block is None else {k: v for k, v in block.items() if k != "resources"}


def _verifier_version(verify: dict[str, Any] | None) -> str:
    """The verifier's version: the code of the verifiers package and the verify stage's settings."""
    import verifiers

    return io.digest(io.code_hash(verifiers), _settings(verify))


def _renderer(sample: dict[str, Any] | None):
    """problem -> (prompt text, chat messages or None), exactly as the sample stage renders prompts."""
    if not sample:
        return lambda problem: (problem, None)
    from stages.sample.backend import choose_backend, prompt_messages, render_prompt
    from stages.sample.config import SampleConfig

    settings = SampleConfig.model_validate(sample)
    if choose_backend(settings) == "linear":  # the linear world's model reads the problem text itself
        return lambda problem: (problem, None)
    from transformers import AutoTokenizer

    from pipeline.models import resolve_model

    extra = {"gguf_file": settings.gguf_file} if settings.gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(settings.model),
                                              trust_remote_code=settings.trust_remote_code, **extra)
    return lambda problem: (render_prompt(settings, tokenizer, problem), prompt_messages(settings, tokenizer, problem))


__all__ = ["ExportConfig", "ExportExists", "ExportStage"]

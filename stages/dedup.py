"""dedup: exact and near-duplicate problems, and problems that overlap the evaluation set, quarantined with a reason.

Runs on problem rows (after source, before sample, so no compute is spent on them). Nothing is silently removed:
a duplicate or contaminated problem gets ``reject_reason`` and the runner moves it to ``run_dir/rejects/NN_dedup/``,
so rows in = rows out + rejected, and the rejects hold the reason per row:

- ``eval_overlap: ...``: the problem shares a word n-gram (n = ``ngram``, default 8 as in s1 and open-r1) with an
  evaluation problem; texts shorter than n words count as one n-gram, so short exact copies are caught too;
- ``exact_duplicate: of <problem_id>``: the same text after case folding and whitespace collapsing;
- ``near_duplicate: of <problem_id> (Jaccard ~x)``: MinHash-LSH (datasketch) over word shingles finds a kept
  problem with estimated Jaccard similarity >= ``threshold``.

Within a group of duplicates the problem with the smallest id is kept, so the outcome does not depend on row order.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator

from pipeline import columns as C
from stages.base import Batch, OnRay, Stage, StageConfig
from stages.source import SourceConfig, refuse_keys


class DedupConfig(StageConfig, OnRay):
    """Which duplicates and which evaluation overlaps are quarantined."""

    exact: bool = Field(True, description="Quarantine exact duplicates (after case folding and whitespace collapsing).")
    near: bool = Field(True, description="Quarantine near duplicates found by MinHash-LSH.")
    threshold: float = Field(0.8, gt=0, le=0.95, description="Estimated Jaccard similarity that makes a near duplicate "
                             "(at most 0.95: MinHash-LSH needs at least two bands).")
    shingle: int = Field(3, ge=1, description="Words per shingle for MinHash (shorter texts: one shingle).")
    num_perm: int = Field(128, ge=64, description="MinHash permutations (more: a sharper similarity estimate).")
    evaluation: tuple[SourceConfig, ...] = Field(
        (), description="Evaluation problems to decontaminate against: source blocks (jsonl/parquet files of a "
        "benchmark, a hub dataset, or a generator with its held-out seed, e.g. {kind: toyworld, n: 600, "
        "seed: 1000003} for the toy world's default held-out set at run seed 0)."
    )
    ngram: int = Field(8, ge=1, description="Word n-gram length of the evaluation-overlap check (s1, open-r1: 8).")

    @field_validator("evaluation")
    @classmethod
    def _only_problem_texts(cls, sources: tuple[SourceConfig, ...]) -> tuple[SourceConfig, ...]:
        for source in sources:
            refuse_keys(source, ("split",), "only the evaluation problems' texts are read here, their split is unused")
        return sources

    def describe(self) -> str:
        """One line for logs."""
        return f"exact={self.exact} near={self.near}@{self.threshold} eval_sources={len(self.evaluation)} ngram={self.ngram}"


def normalize(text: str) -> str:
    """Case-folded text with whitespace collapsed (what 'the same text' means here)."""
    return " ".join(str(text).split()).casefold()


_WORD = re.compile(r"\S+")


def word_ngrams(text: str, n: int) -> set[str]:
    """The word n-grams of a normalized text; a text of fewer than n words is one n-gram."""
    words = _WORD.findall(normalize(text))
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def evaluation_ngrams(sources: tuple[SourceConfig, ...], n: int, run_seed: int = 0) -> set[str]:
    """Every word n-gram of the evaluation problems the sources produce (rejected rows are skipped)."""
    from stages.source import SourceStage

    grams: set[str] = set()
    for source_cfg in sources:
        stage = SourceStage(source_cfg, seed=source_cfg.seed if source_cfg.seed is not None else run_seed)
        for batch in stage.read():
            for text, reason in zip(batch[C.PROBLEM], batch[C.REJECT_REASON]):
                if reason is None and text:
                    grams |= word_ngrams(text, n)
    return grams


def find_duplicates(problem_ids: list[str], texts: list[str], cfg: DedupConfig,
                    eval_grams: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
    """problem_id -> reject reason for every problem to quarantine (others are absent)."""
    from datasketch import MinHash, MinHashLSH

    reasons: dict[str, str] = {}
    order = sorted(range(len(problem_ids)), key=lambda i: problem_ids[i])
    if eval_grams:
        for i in order:
            hit = next((g for g in word_ngrams(texts[i], cfg.ngram) if g in eval_grams), None)
            if hit is not None:
                reasons[problem_ids[i]] = f"eval_overlap: shares the {cfg.ngram}-gram {hit[:60]!r} with an evaluation problem"
    if cfg.exact:
        first_of: dict[str, str] = {}
        for i in order:
            pid = problem_ids[i]
            if pid in reasons:
                continue
            key = normalize(texts[i])
            if key in first_of:
                reasons[pid] = f"exact_duplicate: of {first_of[key]}"
            else:
                first_of[key] = pid
    if cfg.near:
        lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
        kept_hashes: dict[str, Any] = {}
        candidates = [i for i in order if problem_ids[i] not in reasons]
        shingles = [word_ngrams(texts[i], cfg.shingle) for i in candidates]
        hashes = MinHash.bulk([[s.encode() for s in sh] for sh in shingles], num_perm=cfg.num_perm)
        for i, mh in zip(candidates, hashes):
            pid = problem_ids[i]
            matches = lsh.query(mh)
            best = max(((mh.jaccard(kept_hashes[m]), m) for m in matches), default=None)
            if best is not None and best[0] >= cfg.threshold:
                reasons[pid] = f"near_duplicate: of {best[1]} (Jaccard ~{best[0]:.2f})"
            else:
                lsh.insert(pid, mh)
                kept_hashes[pid] = mh
    return reasons


class DedupStage(Stage):
    """Marks duplicate and contaminated problems with ``reject_reason`` (the runner quarantines them)."""

    name = "dedup"
    kind = "map"
    config_model = DedupConfig
    requires = (C.PROBLEM_ID, C.PROBLEM)
    adds = ()
    input_key = (C.PROBLEM_ID,)
    output_key = (C.PROBLEM_ID,)

    def __init__(self, cfg: DedupConfig, reasons: dict[str, str] | None = None, **_: Any) -> None:
        self.cfg = cfg
        self.reasons = reasons

    @classmethod
    def prepare(cls, cfg: DedupConfig, upstream_dir: str, context) -> dict[str, Any]:
        from pipeline.io import read_columns

        table = read_columns(upstream_dir, (C.PROBLEM_ID, C.PROBLEM))
        grams = evaluation_ngrams(cfg.evaluation, cfg.ngram, context.seed) if cfg.evaluation else set()
        ids = [str(x) for x in table[C.PROBLEM_ID].to_pylist()]
        return {"reasons": find_duplicates(ids, [t or "" for t in table[C.PROBLEM].to_pylist()], cfg, grams)}

    def __call__(self, batch: Batch) -> Batch:
        reasons = self.reasons
        if reasons is None:  # a self-contained batch (tests): deduplicate within the batch
            grams = evaluation_ngrams(self.cfg.evaluation, self.cfg.ngram) if self.cfg.evaluation else set()
            reasons = find_duplicates([str(p) for p in batch[C.PROBLEM_ID]], [t or "" for t in batch[C.PROBLEM]],
                                      self.cfg, grams)
        out = dict(batch)
        out[C.REJECT_REASON] = [reasons.get(str(p)) for p in batch[C.PROBLEM_ID]]
        return out

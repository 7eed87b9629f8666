"""curate: choose training problems by a rule and a budget, then the trace(s) to train on for each.

Rules rank or filter the problem table (one row per problem). The ranking is a fixed permutation for a given rule
and seed, and a budget takes a prefix of it, so the N=200 set is a subset of the N=1000 set.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from pipeline import columns as C
from stages.base import Batch, Stage, StageConfig

TRACES = ("any", "shortest_correct", "longest_correct", "random_correct", "all_correct")
PROBLEM_TABLE_COLUMNS = (C.PROBLEM_ID, C.LEVEL, C.PASS_RATE, C.N_SAMPLES, C.N_CORRECT, C.CI_LOW, C.CI_HIGH)


class CurateConfig(StageConfig):
    """Which problems and traces become training rows."""

    rule: Literal["all", "random", "keep_hard", "keep_easy", "pass_rate_band"] = Field(
        "all",
        description="all: every problem (scale-style); random; keep_hard / keep_easy: lowest / highest pass rate "
        "first; pass_rate_band: problems with band[0] <= pass_rate <= band[1].",
    )
    label_aware: bool = Field(
        True,
        description="Keep only verified-correct traces (and so only problems with one). False gives the theory's "
        "label-agnostic rules: train on the generator's completions whether or not they are correct.",
    )
    n: int | None = Field(None, ge=1, description="Budget: keep at most this many problems.")
    p: float | None = Field(None, gt=0, le=1, description="Budget: keep this fraction of the pool's problems.")
    band: tuple[float, float] = Field((0.0, 1.0), description="pass_rate_band: inclusive [low, high].")
    trace: Literal["any", "shortest_correct", "longest_correct", "random_correct", "all_correct"] | None = Field(
        None,
        description="Trace(s) per kept problem. Default: all_correct for rule 'all', random_correct when label-aware, "
        "any (one random completion) otherwise.",
    )
    seed: int | None = Field(None, description="Seed of ties, random selection and trace choice (default: run seed).")

    @model_validator(mode="after")
    def _check(self) -> "CurateConfig":
        if self.n is not None and self.p is not None:
            raise ValueError("set one budget: n (problems) or p (fraction), not both")
        if self.band[0] > self.band[1]:
            raise ValueError("band: low must not exceed high")
        if not self.label_aware and self.trace not in (None, "any"):
            raise ValueError(f"trace {self.trace!r} needs label_aware: true; label-agnostic rules use trace: any")
        return self

    @property
    def effective_trace(self) -> str:
        if self.trace:
            return self.trace
        if not self.label_aware:
            return "any"
        return "all_correct" if self.rule == "all" else "random_correct"


def _hash_unit(seed: int, key: str) -> float:
    """A seeded uniform in [0, 1) per key: the same problem gets the same tie-breaker in every pool."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") / 2**64


def select_problems(problems, cfg: CurateConfig, seed: int) -> dict[str, tuple[int | None, str]]:
    """problem_id -> (rank among kept, reason). Rank None means dropped, and the reason says why.

    ``problems`` is a pandas DataFrame with PROBLEM_TABLE_COLUMNS. Tie-breaks hash the problem id, so a problem's
    place in the order does not depend on which other problems are in the pool (nested selection).
    """
    ids = problems[C.PROBLEM_ID].tolist()
    rate = problems[C.PASS_RATE].to_numpy(dtype=float)
    tie = np.array([_hash_unit(seed, pid) for pid in ids])
    out: dict[str, tuple[int | None, str]] = {}
    eligible = np.ones(len(ids), dtype=bool)
    if cfg.label_aware:
        has_correct = problems[C.N_CORRECT].to_numpy() > 0
        for i in np.flatnonzero(~has_correct):
            out[ids[i]] = (None, "no_correct_completion")
        eligible &= has_correct
    if cfg.rule == "pass_rate_band":
        in_band = (rate >= cfg.band[0]) & (rate <= cfg.band[1])
        for i in np.flatnonzero(eligible & ~in_band):
            out[ids[i]] = (None, "outside_pass_rate_band")
        eligible &= in_band
    if cfg.rule == "keep_hard":
        order = np.lexsort((tie, rate))
    elif cfg.rule == "keep_easy":
        order = np.lexsort((tie, -rate))
    else:  # all, random, pass_rate_band: a seeded random order
        order = np.argsort(tie, kind="stable")
    order = [i for i in order if eligible[i]]
    budget = len(order)
    if cfg.n is not None:
        budget = min(budget, cfg.n)
    elif cfg.p is not None:
        budget = min(budget, int(round(cfg.p * len(ids))))
    for rank, i in enumerate(order):
        out[ids[i]] = (rank, cfg.rule) if rank < budget else (None, "over_budget")
    return out


SAMPLE_TABLE_COLUMNS = (*PROBLEM_TABLE_COLUMNS, C.SAMPLE_IDX, C.CORRECT, C.FINISH_REASON, "completion_chars")


def choose_traces(rows, trace: str, seed: int) -> list[int]:
    """Positions (into ``rows``: one problem's samples, dicts with SAMPLE_TABLE_COLUMNS) of the traces to train on."""
    usable = [i for i, r in enumerate(rows) if r[C.FINISH_REASON] != "error"]
    pool = usable if trace == "any" else [i for i in usable if bool(rows[i][C.CORRECT])]
    if not pool:
        return []
    if trace == "all_correct":
        return pool
    if trace in ("shortest_correct", "longest_correct"):
        sign = 1 if trace == "shortest_correct" else -1
        return [min(pool, key=lambda i: (sign * rows[i]["completion_chars"], rows[i][C.SAMPLE_IDX]))]
    pid = rows[pool[0]][C.PROBLEM_ID]
    return [min(pool, key=lambda i: _hash_unit(seed, f"{pid}:{rows[i][C.SAMPLE_IDX]}"))]


def plan(samples, cfg: CurateConfig, seed: int) -> dict[tuple[str, int], tuple[bool, str]]:
    """(problem_id, sample_idx) -> (kept, reason) for every sample row.

    ``samples`` is a pandas DataFrame with SAMPLE_TABLE_COLUMNS (narrow: no completion text).
    """
    problems = samples.drop_duplicates(subset=[C.PROBLEM_ID]).reset_index(drop=True)
    selection = select_problems(problems, cfg, seed)
    trace = cfg.effective_trace
    decisions: dict[tuple[str, int], tuple[bool, str]] = {}
    for pid, group in samples.groupby(C.PROBLEM_ID, sort=False):
        rows = group.to_dict("records")
        rank, reason = selection[pid]
        chosen = set(choose_traces(rows, trace, seed)) if rank is not None else set()
        for i, r in enumerate(rows):
            if i in chosen:
                decision = (True, f"{reason}:{trace}")
            elif rank is None:
                decision = (False, reason)
            elif r[C.FINISH_REASON] == "error":
                decision = (False, "generation_error")
            elif trace != "any" and not bool(r[C.CORRECT]):
                decision = (False, "incorrect_completion")
            else:
                decision = (False, "other_trace_chosen")
            decisions[(pid, int(r[C.SAMPLE_IDX]))] = decision
    return decisions


def sample_table(upstream_dir: str):
    """The narrow per-sample table curation needs, read file by file (completion text is reduced to its length)."""
    import pandas as pd
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline.io import part_files

    frames = []
    for f in part_files(upstream_dir):
        t = pq.read_table(f, columns=[c for c in SAMPLE_TABLE_COLUMNS if c != "completion_chars"] + [C.COMPLETION])
        t = t.append_column("completion_chars", pc.fill_null(pc.utf8_length(t[C.COMPLETION]), 0)).drop_columns([C.COMPLETION])
        frames.append(t.to_pandas())
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SAMPLE_TABLE_COLUMNS))


class CurateStage(Stage):
    """Marks every row kept or dropped, with the reason; nothing is removed, so counts always reconcile."""

    name = "curate"
    kind = "map"
    config_model = CurateConfig
    requires = (C.PROBLEM_ID, C.SAMPLE_IDX, C.PASS_RATE, C.N_CORRECT, C.CORRECT, C.COMPLETION, C.FINISH_REASON)
    adds = C.CURATE_COLUMNS
    input_key = (C.PROBLEM_ID, C.SAMPLE_IDX)

    def __init__(self, cfg: CurateConfig, decisions: dict | None = None, seed: int = 0) -> None:
        self.cfg = cfg
        self.decisions = decisions
        self.seed = cfg.seed if cfg.seed is not None else seed

    @classmethod
    def prepare(cls, cfg: CurateConfig, upstream_dir: str, context) -> dict[str, Any]:
        seed = cfg.seed if cfg.seed is not None else context.seed
        return {"decisions": plan(sample_table(upstream_dir), cfg, seed), "seed": seed}

    def __call__(self, batch: Batch) -> Batch:
        decisions = self.decisions
        if decisions is None:  # a self-contained batch (tests, single process): plan on the batch itself
            import pandas as pd

            frame = pd.DataFrame({c: batch[c] for c in SAMPLE_TABLE_COLUMNS if c in batch})
            frame["completion_chars"] = [len(c or "") for c in batch[C.COMPLETION]]
            if C.LEVEL not in frame:
                frame[C.LEVEL] = None
            decisions = plan(frame, self.cfg, self.seed)
        out: dict[str, list[Any]] = dict(batch)
        picked = [decisions[(p, int(i))] for p, i in zip(batch[C.PROBLEM_ID], batch[C.SAMPLE_IDX])]
        out[C.KEPT] = [k for k, _ in picked]
        out[C.RULE] = [self.cfg.rule] * len(picked)
        out[C.KEEP_REASON] = [r if k else None for k, r in picked]
        out[C.DROP_REASON] = [None if k else r for k, r in picked]
        return out

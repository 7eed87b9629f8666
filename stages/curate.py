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
from stages.base import Batch, Stage, StageConfig, batch_len

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


def choose_traces(rows: list[dict[str, Any]], trace: str, seed: int) -> set[int]:
    """Indices (into ``rows``, one problem's samples) of the traces to train on."""
    usable = [i for i, r in enumerate(rows) if r[C.FINISH_REASON] != "error"]
    if trace == "any":
        pool = usable
    else:
        pool = [i for i in usable if r_correct(rows[i])]
    if not pool:
        return set()
    if trace == "all_correct":
        return set(pool)
    if trace in ("shortest_correct", "longest_correct"):
        sign = 1 if trace == "shortest_correct" else -1
        return {min(pool, key=lambda i: (sign * len(rows[i][C.COMPLETION] or ""), rows[i][C.SAMPLE_IDX]))}
    key = rows[pool[0]][C.PROBLEM_ID]
    return {min(pool, key=lambda i: _hash_unit(seed, f"{key}:{rows[i][C.SAMPLE_IDX]}"))}


def r_correct(row: dict[str, Any]) -> bool:
    return bool(row.get(C.CORRECT))


class CurateStage(Stage):
    """Called on all rows of one problem; marks each row kept or dropped, with the reason. Nothing is removed."""

    name = "curate"
    kind = "group"
    group_key = C.PROBLEM_ID
    config_model = CurateConfig
    requires = (C.PROBLEM_ID, C.PASS_RATE, C.N_CORRECT, C.CORRECT, C.COMPLETION, C.FINISH_REASON)
    adds = C.CURATE_COLUMNS

    def __init__(self, cfg: CurateConfig, selection: dict[str, tuple[int | None, str]] | None = None,
                 seed: int = 0) -> None:
        self.cfg = cfg
        self.selection = selection or {}
        self.seed = cfg.seed if cfg.seed is not None else seed

    @classmethod
    def prepare(cls, cfg: CurateConfig, upstream_dir: str, context) -> dict[str, Any]:
        from pipeline.io import read_problem_table

        seed = cfg.seed if cfg.seed is not None else context.seed
        table = read_problem_table(upstream_dir, PROBLEM_TABLE_COLUMNS)
        return {"selection": select_problems(table, cfg, seed), "seed": seed}

    def __call__(self, batch: Batch) -> Batch:
        n = batch_len(batch)
        rows = [{k: v[i] for k, v in batch.items()} for i in range(n)]
        out: dict[str, list[Any]] = dict(batch)
        out[C.KEPT], out[C.RULE], out[C.KEEP_REASON], out[C.DROP_REASON] = [False] * n, [self.cfg.rule] * n, [None] * n, [None] * n
        by_problem: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            by_problem.setdefault(r[C.PROBLEM_ID], []).append(i)
        trace = self.cfg.effective_trace
        for pid, idx in by_problem.items():
            rank, reason = self.selection.get(pid, (None, "not_in_problem_table"))
            chosen = set()
            if rank is not None:
                local = choose_traces([rows[i] for i in idx], trace, self.seed)
                chosen = {idx[j] for j in local}
            for i in idx:
                if i in chosen:
                    out[C.KEPT][i], out[C.KEEP_REASON][i] = True, f"{reason}:{trace}"
                elif rank is None:
                    out[C.DROP_REASON][i] = reason
                elif rows[i][C.FINISH_REASON] == "error":
                    out[C.DROP_REASON][i] = "generation_error"
                elif trace != "any" and not r_correct(rows[i]):
                    out[C.DROP_REASON][i] = "incorrect_completion"
                else:
                    out[C.DROP_REASON][i] = "other_trace_chosen"
        return out

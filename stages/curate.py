"""curate: choose training problems by a rule and a budget, then the trace(s) to train on for each.

``plan(samples, cfg, seed)`` is the whole decision as a pure function of a pandas sample table (one row per
sample, no completion text needed); the stage runs it once on the driver and marks every row kept or dropped with
a reason, so rows in = kept + dropped always. The sweep calls ``plan`` directly, per trial, on an in-memory table.

Rules (``stages.rules``) drop and order problems; the ranking is a fixed permutation for a rule and seed (ties
hash the problem id), and a budget takes a prefix of it, so the N=200 set is a subset of the N=1000 set.

Two experiment knobs, seeded per problem / per row and recorded in the rows:

- ``oracle_noise`` (eta): for a fraction eta of problems the difficulty score the rules see is replaced by a
  uniform random number (``oracle_noise`` = true on those rows; ``curation_score`` holds the score used);
- ``generator_noise`` (eps): a fraction eps of the correct training completions are replaced by wrong-answer ones:
  an incorrect sample of the same problem when there is one (``swapped_in``; the correct one is dropped as
  ``generator_noise_swapped_out``), else the same completion with its final answer changed (``corrupted_answer``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from pipeline import columns as C
from stages import rules as R
from stages.base import Batch, OnRay, Stage, StageConfig

TRACES = ("any", "shortest_correct", "longest_correct", "random_correct", "all_correct", "best_quality")
LABEL_AGNOSTIC_TRACES = ("any",)
RuleSpec = str | dict[str, Any] | list[str | dict[str, Any]]
# Narrow per-sample table the planner reads (completion text is reduced to its length and quality score).
SAMPLE_TABLE_COLUMNS = (
    C.PROBLEM_ID, C.SAMPLE_IDX, C.LEVEL, C.SOURCE, C.CORRECT, C.FINISH_REASON, C.PASS_RATE, C.N_SAMPLES, C.N_CORRECT,
    C.CI_LOW, C.CI_HIGH, C.DIFFICULTY_MODEL, C.SCREEN_PASS_RATE,
)
log = logging.getLogger(__name__)
PLAN_COLUMNS = (C.KEPT, C.KEEP_REASON, C.DROP_REASON, C.RULE, *C.CURATE_DETAIL_COLUMNS, "rank")


class CurateConfig(StageConfig, OnRay):
    """Which problems and traces become training rows."""

    rule: RuleSpec = Field(
        "all",
        description="A rule name, {name: {params}}, or a list of them applied in order (see stages/rules.py): "
        "all, random, correct_only, keep_hard, keep_easy, keep_hard_correct, keep_easy_correct, "
        "keep_hard_stratified, keep_easy_stratified (ranked within each level; {by: COLUMN} for other strata), "
        "keep_hard_stratified_correct, keep_easy_stratified_correct, "
        "pass_rate_band {lo, hi}, screen_unsolved, quality, diversity, limo, s1.",
    )
    label_aware: bool | None = Field(
        None,
        description="true: train only on verified-correct traces (adds correct_only); false: the theory's "
        "label-agnostic rules, training on the generator's completions whether or not correct. None: label-aware "
        "when the rule or the trace needs correct traces (correct_only, limo, s1, all, *_correct traces).",
    )
    n: int | None = Field(None, ge=1, description="Budget: keep at most this many problems.")
    p: float | None = Field(None, gt=0, le=1, description="Budget: keep this fraction of the pool's problems.")
    trace: Literal["any", "shortest_correct", "longest_correct", "random_correct", "all_correct", "best_quality"] | None = Field(
        None,
        description="Trace(s) per kept problem. Default: the rule's (all_correct for all, best_quality for limo, "
        "longest_correct for s1), random_correct when label-aware, any (one random completion) otherwise.",
    )
    score: Literal["pass_rate", "ci_low", "ci_high"] = Field(
        "pass_rate", description="The difficulty score rules rank and filter by."
    )
    oracle_noise: float = Field(0.0, ge=0, le=1, description="eta: fraction of problems whose difficulty score is "
                                "replaced by a uniform random one (seeded per problem).")
    generator_noise: float = Field(0.0, ge=0, le=1, description="eps: fraction of correct training completions "
                                   "replaced by wrong-answer ones (seeded per row).")
    quality: R.QualityConfig = Field(default_factory=R.QualityConfig,
                                     description="Trace quality score (rules limo and quality).")
    report: bool = Field(True, description="Write run_dir/curation_report/ (histograms and counts).")
    seed: int | None = Field(None, description="Seed of ties, random selection, noise and trace choice "
                             "(default: run seed).")

    @field_validator("rule")
    @classmethod
    def _known_rule(cls, spec: RuleSpec) -> RuleSpec:
        R.parse_rule(spec)  # raises with the list of valid names
        return spec

    @model_validator(mode="after")
    def _check(self) -> "CurateConfig":
        if self.n is not None and self.p is not None:
            raise ValueError("set one budget: n (problems) or p (fraction), not both")
        aware_steps = [s.name for s in R.expand(R.parse_rule(self.rule)) if s.label_aware]
        if self.label_aware is False and aware_steps:
            raise ValueError(f"label_aware: false contradicts the label-aware rule step(s) {aware_steps}; "
                             f"drop label_aware or use a label-agnostic rule (keep_hard, keep_easy, random)")
        if self.label_aware is False and self.trace not in (None, "any"):
            raise ValueError(f"trace {self.trace!r} needs label_aware: true; label-agnostic rules use trace: any")
        if self.trace == "any" and (self.label_aware or aware_steps):
            raise ValueError("trace: any trains on unverified completions; a label-aware rule needs a correct "
                             "trace (shortest_correct, longest_correct, random_correct, all_correct, best_quality)")
        return self

    @property
    def effective_label_aware(self) -> bool:
        """Whether training traces must be verified correct."""
        if self.label_aware is not None:
            return self.label_aware
        steps = R.parse_rule(self.rule)
        if any(s.label_aware for s in R.expand(steps)):
            return True
        if self.trace is not None:
            return self.trace != "any"
        return all(s.name == "all" for s in steps)

    @property
    def steps(self) -> list[R.RuleStep]:
        """The rule's plain steps, with correct_only first when the rule is label-aware and lacks it."""
        steps = R.expand(R.parse_rule(self.rule))
        if self.effective_label_aware and not any(s.name == "correct_only" for s in steps):
            steps = [R.CorrectOnly(), *steps]
        return steps

    @property
    def effective_trace(self) -> str:
        """The trace policy actually used."""
        if self.trace:
            return self.trace
        if not self.effective_label_aware:
            return "any"
        for step in reversed(R.parse_rule(self.rule)):
            if step.default_trace:
                return step.default_trace
        return "random_correct"

    @property
    def rule_label(self) -> str:
        """The rule as written into the ``rule`` column, e.g. ``correct_only+keep_hard``."""
        steps = R.parse_rule(self.rule)
        names = [s.label() for s in steps]
        if self.effective_label_aware and not any(s.name == "correct_only" for s in R.expand(steps)):
            names.insert(0, "correct_only")
        return "+".join(names)

    @property
    def needs_quality(self) -> bool:
        """Whether the plan needs per-trace quality scores (and so completion text or a quality column)."""
        return self.effective_trace == "best_quality" or any(s.needs_quality for s in self.steps)


# -- the planner ---------------------------------------------------------------------------------------------------


def _column(frame, name: str, default) -> np.ndarray:
    return frame[name].to_numpy() if name in frame else np.full(len(frame), default)


def plan(samples, cfg: CurateConfig, seed: int):
    """Kept/dropped decision and reason for every sample row: the curation as a pure function.

    Args:
        samples: pandas DataFrame, one row per sample. Needs ``problem_id``, ``sample_idx``, ``correct``,
            ``finish_reason``; uses when present: ``pass_rate``/``n_samples``/``n_correct`` (else computed from the
            rows), ``ci_low``/``ci_high`` (for ``score``), ``level``, ``source``, ``screen_pass_rate``,
            ``completion_chars`` or ``completion`` (trace length), ``quality_score`` or ``completion`` (limo,
            quality), and the diversity domain column.
        cfg: the curate config (rule, budget, trace, noise knobs).
        seed: seed of ties, random order, noise and trace choice.

    Returns:
        A DataFrame with the index of ``samples`` and columns ``kept`` (bool), ``keep_reason``, ``drop_reason``,
        ``rule``, ``curation_score`` (the problem's score after oracle noise), ``oracle_noise`` (bool),
        ``generator_noise`` (None, ``swapped_in`` or ``corrupted_answer``), ``quality_score`` (NaN when not
        computed) and ``rank`` (the problem's place in the rule's order among eligible problems; -1 when a step
        dropped it). Kept problems are exactly those with 0 <= rank < budget, so one call with no budget gives
        every budget's selection.
    """
    import pandas as pd

    missing = [c for c in (C.PROBLEM_ID, C.SAMPLE_IDX, C.CORRECT, C.FINISH_REASON) if c not in samples]
    if missing:
        raise R.RuleError(f"curate: the sample table lacks column(s) {missing}; run the sample and verify stages first")
    n_rows = len(samples)
    if n_rows == 0:
        return pd.DataFrame({c: pd.Series([], dtype=object) for c in PLAN_COLUMNS}, index=samples.index)
    pids_all = samples[C.PROBLEM_ID].astype(str).to_numpy()
    codes, uniques = pd.factorize(pids_all, sort=False)
    n_problems = len(uniques)
    sample_idx = samples[C.SAMPLE_IDX].to_numpy().astype(np.int64)
    usable = _column(samples, C.FINISH_REASON, "stop") != "error"
    correct = samples[C.CORRECT].fillna(False).to_numpy().astype(bool) & usable
    trace = cfg.effective_trace
    if "completion_chars" in samples:
        chars = samples["completion_chars"].fillna(0).to_numpy(dtype=float)
    elif C.COMPLETION in samples:
        chars = samples[C.COMPLETION].fillna("").str.len().to_numpy(dtype=float)
    else:
        chars = _column(samples, C.NUM_COMPLETION_TOKENS, 0).astype(float)
    quality = np.full(n_rows, np.nan)
    if cfg.needs_quality:
        if C.QUALITY_SCORE in samples:
            quality = samples[C.QUALITY_SCORE].to_numpy(dtype=float)
        elif C.COMPLETION in samples:
            quality = R.quality_scores(samples[C.COMPLETION].tolist(), cfg.quality)
        else:
            raise R.RuleError(f"curate: rule {cfg.rule_label!r} / trace {trace!r} ranks traces by quality; the "
                              "sample table needs a `completion` or `quality_score` column")

    # -- the problem table (one row per problem, in order of first appearance)
    first = np.unique(codes, return_index=True)[1]
    problems = pd.DataFrame({C.PROBLEM_ID: np.asarray(uniques, dtype=object)})
    for col in samples.columns:
        if col not in (C.PROBLEM_ID, C.SAMPLE_IDX, C.COMPLETION, C.CORRECT, C.FINISH_REASON):
            problems[col] = samples[col].to_numpy()[first]
    problems[R.N_USABLE] = np.bincount(codes, weights=usable, minlength=n_problems).astype(int)
    problems[R.N_CORRECT_USABLE] = np.bincount(codes, weights=correct, minlength=n_problems).astype(int)
    best_q = np.full(n_problems, np.nan)
    if cfg.needs_quality:
        q = np.where(correct, np.nan_to_num(quality, nan=-1.0), -np.inf)
        best = np.full(n_problems, -np.inf)
        np.maximum.at(best, codes, q)
        best_q = np.where(np.isfinite(best), best, np.nan)
    problems[R.BEST_QUALITY] = best_q
    longest = np.full(n_problems, -1.0)
    np.maximum.at(longest, codes, np.where(correct, chars, -1.0))
    problems[R.LONGEST_CORRECT] = longest
    if C.PASS_RATE not in problems:
        problems[C.PASS_RATE] = np.divide(problems[R.N_CORRECT_USABLE], np.maximum(problems[R.N_USABLE], 1))
    if cfg.score not in problems:
        raise R.RuleError(f"curate: score {cfg.score!r} is not in the sample table; run the difficulty stage or "
                          f"set score: pass_rate")
    pids = problems[C.PROBLEM_ID].tolist()
    score = problems[cfg.score].to_numpy(dtype=float)
    score, noisy_oracle = oracle_noise(pids, score, cfg.oracle_noise, seed)
    problems[R.SCORE] = score
    problems[R.TIE] = R.unit_hash(seed, "tie", pids)

    # -- rule steps: drops (first reason wins) and the ranking (the last step that orders)
    reason = np.full(n_problems, None, dtype=object)
    key = None
    for step in cfg.steps:
        dropped = step.drop(problems, seed)
        if dropped is not None:
            fresh = (reason == None) & (dropped != None)  # noqa: E711 - elementwise on object arrays
            reason[fresh] = dropped[fresh]
        problems[R.ELIGIBLE] = reason == None  # noqa: E711 - what the earlier steps left, for stratified orders
        step_key = step.order(problems, seed)
        if step_key is not None:
            key = np.asarray(step_key, dtype=float)
    needs_correct = trace not in LABEL_AGNOSTIC_TRACES
    no_trace = problems[R.N_CORRECT_USABLE if needs_correct else R.N_USABLE].to_numpy() == 0
    reason[(reason == None) & no_trace] = "no_correct_completion" if needs_correct else "no_usable_completion"  # noqa: E711
    eligible = reason == None  # noqa: E711
    order = np.lexsort((problems[R.TIE].to_numpy(), key)) if key is not None else np.argsort(problems[R.TIE].to_numpy(), kind="stable")
    order = order[eligible[order]]
    rank = np.full(n_problems, -1, dtype=np.int64)
    rank[order] = np.arange(len(order))
    budget = len(order)
    if cfg.n is not None:
        budget = min(budget, cfg.n)
    elif cfg.p is not None:
        budget = min(budget, int(round(cfg.p * n_problems)))
    selected = eligible & (rank < budget)
    reason[eligible & ~selected] = "over_budget"

    # -- traces of the selected problems
    row_selected = selected[codes]
    candidate = row_selected & (correct if needs_correct else usable)
    row_hash = R.to_unit(R.mix64(R.hash64(seed, "trace", pids)[codes], sample_idx))
    chosen = np.zeros(n_rows, dtype=bool)
    if trace == "all_correct":
        chosen = candidate.copy()
    elif candidate.any():
        primary = {"any": row_hash, "random_correct": row_hash, "shortest_correct": chars,
                   "longest_correct": -chars, "best_quality": -np.nan_to_num(quality, nan=-1.0)}[trace]
        rows = np.flatnonzero(candidate)
        ranked = rows[np.lexsort((sample_idx[rows], primary[rows], codes[rows]))]
        first_of_problem = np.ones(len(ranked), dtype=bool)
        first_of_problem[1:] = codes[ranked][1:] != codes[ranked][:-1]
        chosen[ranked[first_of_problem]] = True

    # -- generator noise: swap chosen correct rows for wrong-answer ones
    chosen, noise, swapped_out = generator_noise(pids_all, sample_idx, correct, usable, chosen, cfg.generator_noise, seed)

    # -- per-row reasons
    label = cfg.rule_label
    problem_reason = reason[codes]
    drop = np.full(n_rows, None, dtype=object)
    drop[~row_selected] = problem_reason[~row_selected]
    rest = row_selected & ~chosen
    drop[rest] = "other_trace_chosen"
    if needs_correct:
        drop[rest & ~correct] = "incorrect_completion"
    drop[rest & ~usable] = "generation_error"
    drop[swapped_out] = "generator_noise_swapped_out"
    keep = np.full(n_rows, None, dtype=object)
    keep[chosen] = f"{label}:{trace}"
    noisy_rows = chosen & (noise != None)  # noqa: E711
    keep[noisy_rows] = f"{label}:{trace}:generator_noise"
    text = lambda values: pd.Series(values, index=samples.index, dtype=object)  # noqa: E731 - keeps None as None
    return pd.DataFrame({
        C.KEPT: chosen, C.KEEP_REASON: text(keep), C.DROP_REASON: text(drop),
        C.RULE: text(np.full(n_rows, label, dtype=object)), C.CURATION_SCORE: score[codes],
        C.ORACLE_NOISE: noisy_oracle[codes], C.GENERATOR_NOISE: text(noise), C.QUALITY_SCORE: quality,
        "rank": rank[codes],
    }, index=samples.index)


def oracle_noise(problem_ids, scores, eta: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Oracle noise: the difficulty scores with those of a seeded fraction ``eta`` of problems replaced by uniform
    random numbers. Returns (scores, replaced). Decided per problem id, so a problem is hit (and gets the same
    number) in every pool and at every budget."""
    pids = [str(p) for p in problem_ids]
    hit = R.unit_hash(seed, "oracle_noise", pids) < eta
    return np.where(hit, R.unit_hash(seed, "oracle_score", pids), np.asarray(scores, dtype=float)), hit


def generator_noise(problem_ids, sample_idx, correct, usable, chosen, eps: float, seed: int):
    """Generator noise: each chosen correct row is, with seeded probability ``eps``, replaced by a wrong-answer
    completion: an unchosen incorrect usable row of the same problem when one is left (``swapped_in``; the correct
    row is then no longer chosen), else the row itself, to be rewritten with a wrong final answer
    (``corrupted_answer``, see ``corrupt_answer``). Arrays are per row; returns (chosen, noise label or None,
    swapped_out)."""
    import pandas as pd

    chosen = np.asarray(chosen, dtype=bool).copy()
    correct = np.asarray(correct, dtype=bool)
    sample_idx = np.asarray(sample_idx, dtype=np.int64)
    noise = np.full(len(chosen), None, dtype=object)
    swapped_out = np.zeros(len(chosen), dtype=bool)
    if eps <= 0 or not chosen.any():
        return chosen, noise, swapped_out
    codes, uniques = pd.factorize(np.asarray([str(p) for p in problem_ids], dtype=object))
    pid_hash = R.hash64(seed, "generator_noise", list(uniques))
    flip = chosen & correct & (R.to_unit(R.mix64(pid_hash[codes], sample_idx)) < eps)
    if not flip.any():
        return chosen, noise, swapped_out
    swap_hash = R.to_unit(R.mix64(R.hash64(seed, "noise_swap", list(uniques))[codes], sample_idx))
    spare = np.asarray(usable, dtype=bool) & ~correct & ~chosen
    spare_by_problem: dict[int, list[int]] = {}
    for r in np.flatnonzero(spare)[np.argsort(swap_hash[spare], kind="stable")]:
        spare_by_problem.setdefault(int(codes[r]), []).append(int(r))
    for r in np.flatnonzero(flip)[np.lexsort((sample_idx[flip], codes[flip]))]:
        pool = spare_by_problem.get(int(codes[r]))
        if pool:
            swap = pool.pop(0)
            chosen[r], swapped_out[r] = False, True
            chosen[swap], noise[swap] = True, "swapped_in"
        else:
            noise[r] = "corrupted_answer"
    return chosen, noise, swapped_out


def training_rows(samples, decisions):
    """The kept rows of ``samples`` (with completion text) with generator noise applied: what a student trains on.

    ``decisions`` is ``plan``'s output for the same table. Rows marked ``corrupted_answer`` get a wrong final
    answer written into their completion (and ``correct`` = False).
    """
    kept = samples.loc[decisions[C.KEPT].to_numpy()].copy()
    for col in (C.RULE, C.KEEP_REASON, C.GENERATOR_NOISE, C.ORACLE_NOISE, C.CURATION_SCORE):
        kept[col] = decisions.loc[kept.index, col]
    corrupt = (kept[C.GENERATOR_NOISE] == "corrupted_answer").to_numpy()
    if corrupt.any():
        if C.COMPLETION not in kept:
            raise R.RuleError("training_rows: generator noise needs the `completion` column to corrupt answers")
        kept.loc[corrupt, C.COMPLETION] = [
            corrupt_answer(text, ans, f"{pid}:{idx}")
            for text, ans, pid, idx in zip(kept.loc[corrupt, C.COMPLETION], kept.loc[corrupt].get(C.ANSWER, [None] * int(corrupt.sum())),
                                           kept.loc[corrupt, C.PROBLEM_ID], kept.loc[corrupt, C.SAMPLE_IDX])
        ]
        if C.CORRECT in kept:
            kept.loc[corrupt, C.CORRECT] = False
    return kept


def corrupt_answer(completion: str | None, answer: str | None, key: str) -> str:
    """The completion with its final ``\\boxed{...}`` answer replaced by a wrong one (appended when it has none).

    Integers move by a nonzero offset (hashed from ``key``, so the same row always gets the same wrong answer), except
    the labels 1 and -1 of the linear world, which flip (a sign is the only wrong answer a sign classifier has); other
    answers get a changed last character."""
    import hashlib

    text = completion or ""
    start = text.rfind("\\boxed{")
    current = None
    end = -1
    if start >= 0:
        end = text.find("}", start)
        if end > start:
            current = text[start + len("\\boxed{"):end]
    basis = (current if current is not None else answer or "0").strip()
    offset = 1 + hashlib.blake2b(key.encode(), digest_size=2).digest()[0] % 9
    try:
        wrong = str(-int(basis)) if basis in ("1", "-1") else str(int(basis) + offset)
    except ValueError:
        wrong = basis + str(offset) if basis else str(offset)
    if current is not None:
        return text[:start] + "\\boxed{" + wrong + "}" + text[end + 1:]
    return f"{text} Answer: \\boxed{{{wrong}}}".strip()


# -- reading the upstream rows -------------------------------------------------------------------------------------


def sample_table(upstream_dir: str, cfg: CurateConfig | None = None):
    """The narrow per-sample table ``plan`` needs, read file by file: completion text is reduced to its length
    (and to its quality score when the rule ranks by quality); extra columns a rule names (a diversity domain)
    are read too."""
    import pandas as pd
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline.io import part_files

    wanted = list(SAMPLE_TABLE_COLUMNS)
    if cfg is not None:
        for step in cfg.steps:
            domain = getattr(step, "domain", None)
            if domain and domain not in wanted:
                wanted.append(domain)
    frames = []
    for f in part_files(upstream_dir):
        names = set(pq.read_schema(f).names)
        t = pq.read_table(f, columns=[c for c in wanted if c in names] + [C.COMPLETION])
        if cfg is not None and cfg.needs_quality:
            t = t.append_column(C.QUALITY_SCORE, [R.quality_scores(t[C.COMPLETION], cfg.quality)])
        t = t.append_column("completion_chars", pc.fill_null(pc.utf8_length(t[C.COMPLETION]), 0)).drop_columns([C.COMPLETION])
        frames.append(t.to_pandas())
    if not frames:
        return pd.DataFrame(columns=[*wanted, "completion_chars"])
    return pd.concat(frames, ignore_index=True)


def check_budget(cfg: CurateConfig, n_problems: int) -> None:
    """Refuse a fraction budget that keeps nothing: p of the pool's problems rounds to 0 (``p: 0.01`` of 20)."""
    if cfg.p is not None and n_problems and int(round(cfg.p * n_problems)) == 0:
        raise R.RuleError(f"curate: rule {cfg.rule_label} with p = {cfg.p:g} keeps none of the {n_problems} "
                          f"problems (p x {n_problems} rounds to 0); set p >= {1 / n_problems:.3g} or a budget n")


class CurateStage(Stage):
    """Marks every row kept or dropped, with the reason; nothing is removed, so counts always reconcile."""

    name = "curate"
    kind = "map"
    config_model = CurateConfig
    requires = (C.PROBLEM_ID, C.SAMPLE_IDX, C.PASS_RATE, C.N_CORRECT, C.CORRECT, C.COMPLETION, C.FINISH_REASON)
    adds = (*C.CURATE_COLUMNS, *C.CURATE_DETAIL_COLUMNS)
    input_key = (C.PROBLEM_ID, C.SAMPLE_IDX)
    output_key = (C.PROBLEM_ID, C.SAMPLE_IDX)

    def __init__(self, cfg: CurateConfig, decisions: dict | None = None, seed: int = 0) -> None:
        self.cfg = cfg
        self.decisions = decisions
        self.seed = cfg.seed if cfg.seed is not None else seed

    @classmethod
    def code_sources(cls) -> tuple[Any, ...]:
        import sys

        return (sys.modules[__name__], R)  # the stage and the rule library

    @classmethod
    def prepare(cls, cfg: CurateConfig, upstream_dir: str, context) -> dict[str, Any]:
        seed = cfg.seed if cfg.seed is not None else context.seed
        samples = sample_table(upstream_dir, cfg)
        check_budget(cfg, samples[C.PROBLEM_ID].nunique() if C.PROBLEM_ID in samples else 0)
        decided = plan(samples, cfg, seed)
        if len(decided) and not decided[C.KEPT].any():
            reasons = decided[C.DROP_REASON].value_counts().head(3)
            log.warning("curate: rule %s kept no rows (dropped: %s); the export will be empty", cfg.rule_label,
                        ", ".join(f"{k} {v}" for k, v in reasons.items()))
        if cfg.report:
            from pathlib import Path

            from stages.curation_report import write_report

            write_report(samples, decided, cfg, Path(context.run_dir) / "curation_report", run_dir=context.run_dir)
        return {"decisions": _by_key(samples, decided), "seed": seed}

    def __call__(self, batch: Batch) -> Batch:
        decisions = self.decisions
        if decisions is None:  # a self-contained batch (tests, single process): plan on the batch itself
            import pandas as pd

            frame = pd.DataFrame({c: batch[c] for c in batch if c != C.COMPLETION or self.cfg.needs_quality})
            frame["completion_chars"] = [len(c or "") for c in batch[C.COMPLETION]]
            decisions = _by_key(frame, plan(frame, self.cfg, self.seed))
        out: dict[str, list[Any]] = dict(batch)
        picked = [decisions[(p, int(i))] for p, i in zip(batch[C.PROBLEM_ID], batch[C.SAMPLE_IDX])]
        for j, col in enumerate(_DECISION_COLUMNS):
            out[col] = [d[j] for d in picked]
        corrupt = [i for i, d in enumerate(picked) if d[0] and d[_DECISION_COLUMNS.index(C.GENERATOR_NOISE)] == "corrupted_answer"]
        if corrupt:
            out[C.COMPLETION] = list(out[C.COMPLETION])
            out[C.CORRECT] = list(out[C.CORRECT])
            answers = batch.get(C.ANSWER) or [None] * len(picked)
            for i in corrupt:
                out[C.COMPLETION][i] = corrupt_answer(out[C.COMPLETION][i], answers[i],
                                                      f"{batch[C.PROBLEM_ID][i]}:{batch[C.SAMPLE_IDX][i]}")
                out[C.CORRECT][i] = False
        return out


_DECISION_COLUMNS = (C.KEPT, C.RULE, C.KEEP_REASON, C.DROP_REASON, *C.CURATE_DETAIL_COLUMNS)


def _by_key(samples, decided) -> dict[tuple[str, int], tuple]:
    """(problem_id, sample_idx) -> the row's decision values, in _DECISION_COLUMNS order (plain Python values)."""
    values = []
    for col in _DECISION_COLUMNS:
        v = decided[col].to_numpy()
        if col == C.QUALITY_SCORE:
            v = [None if np.isnan(x) else float(x) for x in v]
        elif col in (C.KEPT, C.ORACLE_NOISE):
            v = [bool(x) for x in v]
        elif col == C.CURATION_SCORE:
            v = [float(x) for x in v]
        else:
            v = list(v)
        values.append(v)
    keys = zip(samples[C.PROBLEM_ID].astype(str), samples[C.SAMPLE_IDX].astype(int))
    return {k: tuple(col[i] for col in values) for i, k in enumerate(keys)}

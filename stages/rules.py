"""Curation rules: composable steps over the problem table, named in YAML.

A rule is a list of steps. Each step may *drop* problems (with a reason that is counted) and may *order* them;
the last step that orders decides the ranking, ties broken by a per-problem hash. The curate stage then takes a
budget-sized prefix of that ranking, so for one rule and seed the N=200 set is a subset of the N=1000 set.

    rule: keep_hard                                     # one step
    rule: [correct_only, keep_hard]                     # label-aware: hard problems among those with a correct trace
    rule: [{pass_rate_band: {lo: 0.2, hi: 0.8}}, random]
    rule: {limo: {max_pass_rate: 0.25}}                 # a preset: it expands into steps

Steps (``RULES``): all, random, correct_only, keep_hard, keep_easy, keep_hard_correct, keep_easy_correct,
keep_hard_stratified, keep_easy_stratified (ranked within each level, keeping the pool's level mix) and their
``_correct`` forms, pass_rate_band, screen_unsolved, quality, diversity, limo, s1. Steps read the problem table that
``stages.curate.plan`` builds: one row per problem with the difficulty ``score`` (pass rate, or a random number for
problems hit by oracle noise), counts, a ``tie`` hash, and per-problem trace aggregates.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, ClassVar, Literal, Union

import numpy as np
from pydantic import Field, TypeAdapter, model_validator

from pipeline import columns as C
from stages.base import Frozen

# Per-problem columns of the problem table (besides the difficulty columns and the domain column).
SCORE = "score"  # the difficulty score rules rank by (after oracle noise)
TIE = "tie"  # seeded per-problem uniform: ties and random order
N_USABLE = "n_usable"  # attempts that did not end in a generation error
N_CORRECT_USABLE = "n_correct_usable"
BEST_QUALITY = "best_quality"  # highest trace-quality score among the problem's correct traces
LONGEST_CORRECT = "longest_correct_chars"
ELIGIBLE = "eligible"  # not dropped by an earlier step of the rule (set before each step orders)


class RuleStep(Frozen):
    """One step of a rule. Subclasses set ``name`` and override ``drop`` and/or ``order``."""

    name: str
    label_aware: ClassVar[bool] = False  # needs verified-correct traces
    needs_quality: ClassVar[bool] = False
    default_trace: ClassVar[str | None] = None

    def drop(self, problems, seed: int) -> np.ndarray | None:
        """Per problem: a drop reason (str) or None. ``problems`` is the pandas problem table."""
        return None

    def order(self, problems, seed: int) -> np.ndarray | None:
        """Per problem: an ascending sort key (smaller first), or None to leave the ranking to other steps."""
        return None

    def expand(self) -> list["RuleStep"]:
        """Presets expand into plain steps; a plain step is itself."""
        return [self]

    def label(self) -> str:
        """Short text for the ``rule`` column, e.g. ``pass_rate_band(0.2,0.8)``."""
        params = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                  for k, v in self.model_dump(exclude_defaults=True).items() if k != "name"]
        return f"{self.name}({','.join(params)})" if params else self.name


class AllProblems(RuleStep):
    """Every problem, every correct trace (scale-style; set trace: any for one unverified completion each)."""

    name: Literal["all"] = "all"
    default_trace: ClassVar[str | None] = "all_correct"


class Random(RuleStep):
    """A seeded random order of the problems (the baseline of every sweep)."""

    name: Literal["random"] = "random"

    def order(self, problems, seed):
        return problems[TIE].to_numpy()


class CorrectOnly(RuleStep):
    """Label-aware: drop problems with no verified-correct trace; train on correct traces only."""

    name: Literal["correct_only"] = "correct_only"
    label_aware: ClassVar[bool] = True

    def drop(self, problems, seed):
        return _reasons(problems[N_CORRECT_USABLE].to_numpy() == 0, "no_correct_completion")


class KeepHard(RuleStep):
    """Lowest difficulty score (pass rate) first."""

    name: Literal["keep_hard"] = "keep_hard"

    def order(self, problems, seed):
        return problems[SCORE].to_numpy(dtype=float)


class KeepEasy(RuleStep):
    """Highest difficulty score (pass rate) first."""

    name: Literal["keep_easy"] = "keep_easy"

    def order(self, problems, seed):
        return -problems[SCORE].to_numpy(dtype=float)


class KeepHardCorrect(RuleStep):
    """Shorthand for [correct_only, keep_hard]: the LIMO/s1-style 'hard and correct'."""

    name: Literal["keep_hard_correct"] = "keep_hard_correct"

    def expand(self):
        return [CorrectOnly(), KeepHard()]


class KeepEasyCorrect(RuleStep):
    """Shorthand for [correct_only, keep_easy]."""

    name: Literal["keep_easy_correct"] = "keep_easy_correct"

    def expand(self):
        return [CorrectOnly(), KeepEasy()]


class KeepHardStratified(RuleStep):
    """Lowest difficulty score first *within each stratum* (by default each level), keeping the pool's mix: every
    prefix of the ranking takes about the same share of each stratum's eligible problems, so the hard/easy contrast
    is within a skill rather than between skills (instrument.md §3b)."""

    name: Literal["keep_hard_stratified"] = "keep_hard_stratified"
    by: str = Field("level", description="Column whose values are the strata (level, source, ...).")

    def order(self, problems, seed):
        return stratified_order(problems, problems[SCORE].to_numpy(dtype=float), self.by)


class KeepEasyStratified(RuleStep):
    """Highest difficulty score first within each stratum (by default each level), keeping the pool's mix."""

    name: Literal["keep_easy_stratified"] = "keep_easy_stratified"
    by: str = Field("level", description="Column whose values are the strata (level, source, ...).")

    def order(self, problems, seed):
        return stratified_order(problems, -problems[SCORE].to_numpy(dtype=float), self.by)


class KeepHardStratifiedCorrect(RuleStep):
    """Shorthand for [correct_only, keep_hard_stratified]."""

    name: Literal["keep_hard_stratified_correct"] = "keep_hard_stratified_correct"
    by: str = Field("level", description="Column whose values are the strata.")

    def expand(self):
        return [CorrectOnly(), KeepHardStratified(by=self.by)]


class KeepEasyStratifiedCorrect(RuleStep):
    """Shorthand for [correct_only, keep_easy_stratified]."""

    name: Literal["keep_easy_stratified_correct"] = "keep_easy_stratified_correct"
    by: str = Field("level", description="Column whose values are the strata.")

    def expand(self):
        return [CorrectOnly(), KeepEasyStratified(by=self.by)]


def stratified_order(problems, key: np.ndarray, by: str) -> np.ndarray:
    """A sort key that interleaves strata: a problem's place is its rank by ``key`` (ties: the ``tie`` hash) among
    the eligible problems of its stratum, as a fraction (rank + 1/2) / stratum size. A prefix of the ranking then
    holds each stratum in proportion to its eligible problems. Problems an earlier step dropped (``ELIGIBLE`` false)
    go last; they are never kept."""
    if by not in problems:
        raise RuleError(f"stratified rule: no column {by!r} in the sample table; set `by` to one of: "
                        + ", ".join(c for c in problems.columns if not c.startswith("_")))
    eligible = problems[ELIGIBLE].to_numpy(dtype=bool) if ELIGIBLE in problems else np.ones(len(problems), bool)
    strata = problems[by].astype(str).to_numpy()
    tie = problems[TIE].to_numpy()
    place = np.full(len(problems), np.inf)
    for value in np.unique(strata[eligible]):
        members = np.flatnonzero(eligible & (strata == value))
        ranked = members[np.lexsort((tie[members], key[members]))]
        place[ranked] = (np.arange(len(ranked)) + 0.5) / len(ranked)
    return place


class PassRateBand(RuleStep):
    """Keep problems whose difficulty score lies in [lo, hi] (open-r1's pass-rate filter)."""

    name: Literal["pass_rate_band"] = "pass_rate_band"
    lo: float = Field(0.0, ge=0, le=1, description="Lowest pass rate kept (inclusive).")
    hi: float = Field(1.0, ge=0, le=1, description="Highest pass rate kept (inclusive).")

    @model_validator(mode="after")
    def _ordered(self) -> "PassRateBand":
        if self.lo > self.hi:
            raise ValueError(f"pass_rate_band: lo ({self.lo}) must not exceed hi ({self.hi})")
        return self

    def drop(self, problems, seed):
        score = problems[SCORE].to_numpy(dtype=float)
        return _reasons((score < self.lo - 1e-12) | (score > self.hi + 1e-12), "outside_pass_rate_band")


class ScreenUnsolved(RuleStep):
    """Drop problems a cheaper screening model solved (needs the screen stage's columns)."""

    name: Literal["screen_unsolved"] = "screen_unsolved"
    max_pass_rate: float = Field(0.0, ge=0, le=1, description="Drop problems the screen model solved more often.")
    required: bool = Field(True, description="Fail when the screen columns are missing (false: skip the step).")

    def drop(self, problems, seed):
        if C.SCREEN_PASS_RATE not in problems:
            if self.required:
                raise RuleError("rule screen_unsolved (used by limo) needs the screen stage's columns; add a "
                                "`screen: {sample: {model: toy:weak}}` stage before sample, or set "
                                "screen_unsolved.required / limo.screen to false")
            return None
        rate = problems[C.SCREEN_PASS_RATE].to_numpy(dtype=float)
        return _reasons(np.nan_to_num(rate, nan=0.0) > self.max_pass_rate + 1e-12, "solved_by_screen_model")


class Quality(RuleStep):
    """Rank problems by their best correct trace's quality score (LIMO's rule-based score); optionally a floor."""

    name: Literal["quality"] = "quality"
    min_score: float | None = Field(None, ge=0, le=1, description="Drop problems whose best trace scores lower.")
    rank: bool = Field(True, description="Order problems by best trace quality, highest first.")
    label_aware: ClassVar[bool] = True
    needs_quality: ClassVar[bool] = True
    default_trace: ClassVar[str | None] = "best_quality"

    def drop(self, problems, seed):
        if self.min_score is None:
            return None
        best = problems[BEST_QUALITY].to_numpy(dtype=float)
        return _reasons(np.nan_to_num(best, nan=-1.0) < self.min_score, "low_trace_quality")

    def order(self, problems, seed):
        return -np.nan_to_num(problems[BEST_QUALITY].to_numpy(dtype=float), nan=-1.0) if self.rank else None


class Diversity(RuleStep):
    """s1's diversity step: pick a domain uniformly at random, then a problem in it with weight 2^-rank, where
    rank orders the domain's problems by their longest correct trace, longest first; repeat without replacement.

    The picks form one sequence per seed, so a budget takes a prefix of it (nested selection)."""

    name: Literal["diversity"] = "diversity"
    domain: str = Field("level", description="Column whose values are the domains (level, source, ...).")
    length_weighted: bool = Field(True, description="Weight 2^-rank by trace length (false: uniform in a domain).")

    def order(self, problems, seed):
        if self.domain not in problems:
            raise RuleError(f"rule diversity: no column {self.domain!r} in the sample table; set diversity.domain "
                            f"(or s1.domain) to one of: {', '.join(c for c in problems.columns if not c.startswith('_'))}")
        rng = np.random.default_rng([seed, 0x51])
        draws = unit_hash(seed, "diversity", problems[C.PROBLEM_ID].tolist())
        domains = problems[self.domain].astype(str).to_numpy()
        position = np.empty(len(problems), dtype=float)
        queues: list[list[int]] = []
        for value in sorted(set(domains)):
            members = np.flatnonzero(domains == value)
            length = problems[LONGEST_CORRECT].to_numpy(dtype=float)[members]
            by_length = members[np.lexsort((problems[TIE].to_numpy()[members], -length))]
            if self.length_weighted:
                # Efraimidis-Spirakis: keys u^(1/w) with w = 2^-rank give weighted sampling without replacement.
                rank = np.arange(len(by_length), dtype=float)
                u = np.clip(draws[by_length], 1e-300, 1.0)
                keys = np.log(u) * np.exp2(np.minimum(rank, 1000.0))  # log(u^(1/w)) = log(u) / w
                by_length = by_length[np.argsort(-keys, kind="stable")]
            queues.append(list(by_length[::-1]))  # pop() from the end
        step = 0
        while queues:
            q = int(rng.integers(len(queues)))
            position[queues[q].pop()] = step
            step += 1
            if not queues[q]:
                queues.pop(q)
        return position


class Limo(RuleStep):
    """LIMO: drop what a cheaper model solves, keep what the strong model solves at most x of k times (with a
    correct trace), rank by trace quality, keep the top N (the budget)."""

    name: Literal["limo"] = "limo"
    max_pass_rate: float = Field(3 / 32, ge=0, le=1, description="Keep problems solved at most this often (LIMO: 3/32).")
    screen: bool = Field(True, description="Drop problems the screen model solved (needs the screen stage).")
    screen_max_pass_rate: float = Field(0.0, ge=0, le=1, description="Screen: drop problems solved more often.")
    label_aware: ClassVar[bool] = True
    needs_quality: ClassVar[bool] = True
    default_trace: ClassVar[str | None] = "best_quality"

    def expand(self):
        steps: list[RuleStep] = []
        if self.screen:
            steps.append(ScreenUnsolved(max_pass_rate=self.screen_max_pass_rate))
        return [*steps, CorrectOnly(), PassRateBand(lo=0.0, hi=self.max_pass_rate), Quality()]


class S1(RuleStep):
    """s1: quality (a finished correct trace, optional quality floor), then difficulty (drop what the screen model
    or the generator always solves), then diversity (uniform over domains, length-weighted)."""

    name: Literal["s1"] = "s1"
    max_pass_rate: float = Field(0.99, ge=0, le=1, description="Drop problems the generator solves more often.")
    min_quality: float | None = Field(None, ge=0, le=1, description="Drop problems whose best trace scores lower.")
    domain: str = Field("level", description="Column of the domains the diversity step balances.")
    screen: bool = Field(False, description="Also drop what the screen model solved (needs the screen stage).")
    label_aware: ClassVar[bool] = True
    default_trace: ClassVar[str | None] = "longest_correct"

    def expand(self):
        steps: list[RuleStep] = [CorrectOnly()]
        if self.min_quality is not None:
            steps.append(Quality(min_score=self.min_quality, rank=False))
        if self.screen:
            steps.append(ScreenUnsolved())
        return [*steps, PassRateBand(lo=0.0, hi=self.max_pass_rate), Diversity(domain=self.domain)]


class RuleError(ValueError):
    """A rule cannot run on the given table; the message says what to add or change."""


_STEP_TYPES = (AllProblems, Random, CorrectOnly, KeepHard, KeepEasy, KeepHardCorrect, KeepEasyCorrect,
               KeepHardStratified, KeepEasyStratified, KeepHardStratifiedCorrect, KeepEasyStratifiedCorrect,
               PassRateBand, ScreenUnsolved, Quality, Diversity, Limo, S1)
#: YAML name -> step class.
RULES: dict[str, type[RuleStep]] = {t.model_fields["name"].default: t for t in _STEP_TYPES}
Step = Annotated[Union[_STEP_TYPES], Field(discriminator="name")]  # type: ignore[valid-type]
_STEPS_ADAPTER = TypeAdapter(list[Step])


def parse_rule(spec: Any) -> list[RuleStep]:
    """A YAML rule (a name, ``{name: {params}}``, or a list of those) as a list of steps (presets not expanded)."""
    items = spec if isinstance(spec, (list, tuple)) else [spec]
    if not items:
        raise ValueError(f"rule: empty; name at least one of: {', '.join(RULES)}")
    raw = []
    for item in items:
        if isinstance(item, RuleStep):
            raw.append(item.model_dump())
            continue
        if isinstance(item, str):
            name, params = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            (name, params), = item.items()
            params = {} if params is None else params
            if not isinstance(params, dict):
                raise ValueError(f"rule {name}: parameters must be a mapping, e.g. {{{name}: {{...}}}}")
        elif isinstance(item, dict) and "name" in item:
            name, params = item["name"], {k: v for k, v in item.items() if k != "name"}
        else:
            raise ValueError(f"rule: expected a name or {{name: {{params}}}}, got {item!r}")
        if name not in RULES:
            raise ValueError(f"unknown rule {name!r}; valid rules: {', '.join(RULES)}")
        raw.append({"name": name, **params})
    return list(_STEPS_ADAPTER.validate_python(raw))


def expand(steps: list[RuleStep]) -> list[RuleStep]:
    """Presets and shorthands replaced by their plain steps."""
    out: list[RuleStep] = []
    for step in steps:
        inner = step.expand()
        out.extend(inner if inner == [step] else expand(inner))
    return out


_MASK64 = (1 << 64) - 1


_KEY_HASHES: dict[str, int] = {}  # key -> blake2b-64 of the key; keys (problem ids) repeat across plan() calls


def _key_hashes(keys) -> np.ndarray:
    import hashlib

    cache = _KEY_HASHES
    if len(cache) > 4_000_000:
        cache.clear()
    values = []
    for key in keys:
        value = cache.get(key)
        if value is None:
            value = cache[key] = int.from_bytes(hashlib.blake2b(str(key).encode(), digest_size=8).digest(), "little")
        values.append(value)
    return np.array(values, dtype=np.uint64)


def hash64(seed: int, salt: str, keys) -> np.ndarray:
    """A seeded 64-bit hash of each key (a string): the same key gets the same value in every pool and order."""
    import hashlib

    salted = int.from_bytes(hashlib.blake2b(f"{seed}:{salt}".encode(), digest_size=8).digest(), "little")
    return mix64(_key_hashes(keys) ^ np.uint64(salted), 0)


def mix64(hashes: np.ndarray, numbers) -> np.ndarray:
    """splitmix64 of (hash, number): per-row hashes from a per-problem hash and a sample index."""
    with np.errstate(over="ignore"):
        z = hashes.astype(np.uint64) ^ (np.asarray(numbers).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        z = (z + np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def to_unit(hashes: np.ndarray) -> np.ndarray:
    """64-bit hashes as uniforms in [0, 1)."""
    return (hashes >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def unit_hash(seed: int, salt: str, keys, numbers=None) -> np.ndarray:
    """Seeded uniforms in [0, 1) per key (and per (key, number) when ``numbers`` is given)."""
    h = hash64(seed, salt, keys)
    return to_unit(mix64(h, numbers) if numbers is not None else h)


def _reasons(mask: np.ndarray, reason: str) -> np.ndarray:
    out = np.full(len(mask), None, dtype=object)
    out[np.asarray(mask, dtype=bool)] = reason
    return out


# -- trace quality (LIMO's rule-based score) ---------------------------------------------------------------------


class QualityConfig(Frozen):
    """LIMO-style trace quality: length-normalized reasoning markers, weighted (LIMO: 30/20/25/25)."""

    length_ref: float = Field(
        1000.0, gt=0, description="Words at which the elaboration part saturates (LIMO chains run to thousands)."
    )
    weights: tuple[float, float, float, float] = Field(
        (0.30, 0.20, 0.25, 0.25), description="Weights of elaboration, self-verification, exploration, granularity."
    )
    verification: tuple[str, ...] = Field(
        ("verify", "check", "confirm", "double-check", "substitut", "plug", "indeed", "correct"),
        description="Self-verification markers (case-insensitive word prefixes).",
    )
    exploration: tuple[str, ...] = Field(
        ("perhaps", "maybe", "might", "alternatively", "what if", "suppose", "wait", "let's try", "another", "instead"),
        description="Exploration markers.",
    )
    granularity: tuple[str, ...] = Field(
        ("first", "then", "next", "so", "therefore", "thus", "hence", "because", "since", "step", "="),
        description="Step and connective markers ('=' counts each written equation step).",
    )


def _marker_regex(markers: tuple[str, ...]) -> str:
    words = [re.escape(m) for m in markers if re.match(r"\w", m)]
    symbols = [re.escape(m) for m in markers if not re.match(r"\w", m)]
    parts = ([rf"\b(?:{'|'.join(words)})"] if words else []) + symbols
    return "|".join(parts)


def quality_scores(texts, cfg: QualityConfig | None = None) -> np.ndarray:
    """Quality score in [0, 1] of each trace: elaboration (length, saturating at ``length_ref`` words) plus, per
    marker group, the density d (markers per 100 words) mapped to d / (1 + d), weighted (vectorized in Arrow)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cfg = cfg or QualityConfig()
    arr = texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(list(texts), type=pa.string())
    arr = pc.fill_null(arr, "")
    words = np.maximum(1, pc.list_value_length(pc.utf8_split_whitespace(arr)).to_numpy(zero_copy_only=False))
    w = cfg.weights
    score = w[0] * np.minimum(1.0, np.log1p(words) / math.log1p(cfg.length_ref))
    for weight, markers in zip(w[1:], (cfg.verification, cfg.exploration, cfg.granularity)):
        regex = _marker_regex(markers)
        if not regex:
            continue
        hits = pc.count_substring_regex(arr, regex, ignore_case=True).to_numpy(zero_copy_only=False)
        density = 100.0 * hits / words
        score = score + weight * density / (1.0 + density)
    return score / sum(w) if sum(w) > 0 else np.zeros(len(words))

"""The toy world: a procedural arithmetic task family and its tiny tokenizer.

A level-L problem is a chain of L operations evaluated left to right, with no operator precedence:

    prompt:     "Compute 72+10-75+50-11.\\n"
    completion: "72+10=82. 82-75=7. 7+50=57. 57-11=46. Answer: \\boxed{46}"

The first operand and the operands of + and - are 1-99; the operand of * is 2-9. Every intermediate value stays in
0 <= v < 100, because the operation and its operand are drawn again until the step lands in range. Chain length is the
difficulty knob: one step is one skill, and a longer chain gives a small model more chances to slip.

The tokenizer has 24 tokens: three specials, the words "Compute ", "Answer: " and "\\boxed{", and single characters.
Digits are single tokens, so arithmetic is learnable by a tiny model. The model built on this task lives in
`pipeline.toymodel`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

MIN_LEVEL = 1
MAX_LEVEL = 6
ALL_LEVELS = tuple(range(MIN_LEVEL, MAX_LEVEL + 1))
VALUE_BOUND = 100  # every intermediate value v satisfies 0 <= v < VALUE_BOUND
OPERATIONS = "+-*"

PAD_TOKEN = "<pad>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, EOS_TOKEN, UNK_TOKEN)
WORD_TOKENS = ("Compute ", "Answer: ", "\\boxed{")
CHAR_TOKENS = tuple("0123456789") + tuple("+-*=. \n}")
VOCABULARY = SPECIAL_TOKENS + WORD_TOKENS + CHAR_TOKENS

# Repeats in a row after which the problems of a level left to draw are listed instead (level 1 has only 9,979).
_MAX_REPEATS_IN_A_ROW = 5_000


def _apply(value: int, operation: str, operand: int) -> int:
    if operation == "+":
        return value + operand
    if operation == "-":
        return value - operand
    return value * operand


def _draw_chain(rng: random.Random, level: int) -> tuple[int, list[tuple[str, int]]]:
    """Draws a start value and `level` (operation, operand) steps whose running values all stay in bounds."""
    start = rng.randint(1, VALUE_BOUND - 1)
    value = start
    steps: list[tuple[str, int]] = []
    while len(steps) < level:
        operation = rng.choice(OPERATIONS)
        operand = rng.randint(2, 9) if operation == "*" else rng.randint(1, VALUE_BOUND - 1)
        result = _apply(value, operation, operand)
        if 0 <= result < VALUE_BOUND:
            steps.append((operation, operand))
            value = result
    return start, steps


def _render(start: int, steps: list[tuple[str, int]], level: int) -> dict:
    expression = str(start) + "".join(f"{operation}{operand}" for operation, operand in steps)
    worked_steps = []
    value = start
    for operation, operand in steps:
        result = _apply(value, operation, operand)
        worked_steps.append(f"{value}{operation}{operand}={result}.")
        value = result
    return {
        "problem": f"Compute {expression}.\n",
        "answer": str(value),
        "level": level,
        "solution": " ".join(worked_steps) + f" Answer: \\boxed{{{value}}}",
    }


def _level_counts(n: int, levels: Sequence[int], level_weights: Sequence[float] | None) -> list[int]:
    """Splits n over levels in proportion to the weights (largest remainder), so the split is exact and stable."""
    weights = [1.0] * len(levels) if level_weights is None else [float(w) for w in level_weights]
    if len(weights) != len(levels):
        raise ValueError(
            f"level_weights has {len(weights)} entries but levels has {len(levels)}; give one weight per level."
        )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"level_weights must be non-negative with a positive sum, got {list(weights)}.")
    total = sum(weights)
    exact = [n * w / total for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(levels)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


def _check_levels(levels: Sequence[int]) -> None:
    bad = [level for level in levels if not isinstance(level, int) or not MIN_LEVEL <= level <= MAX_LEVEL]
    if bad or not levels:
        raise ValueError(f"levels must be integers in {MIN_LEVEL}..{MAX_LEVEL} (operations per chain), got {levels}.")
    if len(set(levels)) != len(levels):
        raise ValueError(f"levels must not repeat, got {levels}; use level_weights to weight a level more.")


def _steps(value: int) -> list[tuple[str, int, int]]:
    """The (operation, operand, result) steps ``_draw_chain`` can take from ``value``."""
    out = []
    for operation in OPERATIONS:
        for operand in range(2, 10) if operation == "*" else range(1, VALUE_BOUND):
            result = _apply(value, operation, operand)
            if 0 <= result < VALUE_BOUND:
                out.append((operation, operand, result))
    return out


def level_supply(level: int) -> int:
    """How many distinct level-``level`` problems exist (9,979 at level 1; over a million from level 2)."""
    counts = {v: 1 for v in range(1, VALUE_BOUND)}
    for _ in range(level):
        reached: dict[int, int] = {}
        for value, count in counts.items():
            for _, _, result in _steps(value):
                reached[result] = reached.get(result, 0) + count
        counts = reached
    return sum(counts.values())


def _all_chains(level: int) -> list[tuple[int, tuple]]:
    """Every level-``level`` problem as (start, steps), in a fixed order (only for the small levels)."""
    chains: list[tuple[int, tuple]] = [(v, ()) for v in range(1, VALUE_BOUND)]
    values = {(v, ()): v for v in range(1, VALUE_BOUND)}
    for _ in range(level):
        grown = []
        for start, steps in chains:
            for operation, operand, result in _steps(values.pop((start, steps))):
                key = (start, steps + ((operation, operand),))
                values[key] = result
                grown.append(key)
        chains = grown
    return chains


def check_request(n: int, levels: Sequence[int], level_weights: Sequence[float] | None = None) -> None:
    """Raise ValueError, saying what to change, when ``levels`` are not valid or cannot supply ``n`` distinct
    problems split over them (the split is even unless weighted)."""
    levels = tuple(levels)
    _check_levels(levels)
    for level, count in zip(levels, _level_counts(n, levels, level_weights), strict=True):
        if level <= 2 and count > level_supply(level):  # later levels hold over 10^8 problems
            raise ValueError(f"n = {n} asks for {count} level-{level} problems, but level {level} has only "
                             f"{level_supply(level):,} distinct ones; ask for fewer problems or add levels")


def make_problems(
    n: int,
    levels: Sequence[int] = ALL_LEVELS,
    seed: int = 0,
    level_weights: Sequence[float] | None = None,
) -> list[dict]:
    """Draws `n` distinct arithmetic-chain problems, deterministically for a given (n, levels, seed, weights).

    Args:
        n: number of problems.
        levels: chain lengths to draw from (1-6 operations).
        seed: random seed; the same arguments always give the same list.
        level_weights: relative share of each level (aligned with `levels`); uniform if None. The split over levels is
            exact (largest remainder), and the rows come out shuffled.

    Returns:
        Dicts with `problem` (the prompt, e.g. "Compute 72+10-75+50-11.\\n"), `answer` (the integer as a string),
        `level` (int) and `solution` (the worked steps ending in " Answer: \\boxed{46}"). No problem appears twice.

    Raises:
        ValueError: a level cannot supply that many distinct problems (level 1 has 9,979).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}.")
    levels = tuple(levels)
    check_request(n, levels, level_weights)
    rng = random.Random(f"toyworld-problems-{seed}")
    rows: list[dict] = []
    for level, count in zip(levels, _level_counts(n, levels, level_weights), strict=True):
        seen: set[tuple[int, tuple]] = set()
        repeats_in_a_row = 0
        while len(seen) < count:
            start, steps = _draw_chain(rng, level)
            key = (start, tuple(steps))
            if key in seen:
                repeats_in_a_row += 1
                if repeats_in_a_row == _MAX_REPEATS_IN_A_ROW:
                    # Nearly every problem of the level is drawn (check_request allowed the count): the rest are
                    # found by listing the level, in a seeded order.
                    rest = [chain for chain in _all_chains(level) if chain not in seen]
                    rng.shuffle(rest)
                    for start, chain in rest[: count - len(seen)]:
                        rows.append(_render(start, list(chain), level))
                    break
                continue
            repeats_in_a_row = 0
            seen.add(key)
            rows.append(_render(start, steps, level))
    rng.shuffle(rows)
    return rows


def draw_training_problems(
    n: int, levels: Sequence[int], level_weights: Sequence[float] | None, seed: int
) -> list[dict]:
    """Draws `n` independent problems, repeats allowed (fresh data for training, like an endless stream).

    Unlike `make_problems`, repeats are kept: forcing distinct problems would distort the level-1 mix once its 9,979
    problems run short (multiplication has only 178 of them).
    """
    levels = tuple(levels)
    _check_levels(levels)
    rng = random.Random(f"toyworld-training-{seed}")
    rows = []
    for level, count in zip(levels, _level_counts(n, levels, level_weights), strict=True):
        rows.extend(_render(*_draw_chain(rng, level), level) for _ in range(count))
    rng.shuffle(rows)
    return rows


# -- the gold generator: the worked solution, with systematic errors on a fraction eps of problems ----------------

GOLD_MODEL = "toy:gold"  # `toy:gold` (always right) or `toy:gold,eps=E` (wrong on a fraction E of problems)
_GOLD_SPEC = re.compile(r"^toy:gold(?:,eps=([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?))?$")
_EXPRESSION = re.compile(r"Compute (\d+)((?:[-+*]\d+)+)\.")
_STEP = re.compile(r"([-+*])(\d+)")
# The miscomputations a corrupted trace makes, tried in a per-problem order: off by one or by ten (a carry slip).
_SLIPS = (1, -1, 10, -10)


def is_gold_model(ref: str) -> bool:
    """Whether ``ref`` names the gold generator (``toy:gold`` or ``toy:gold,eps=E``)."""
    return ref == GOLD_MODEL or ref.startswith(GOLD_MODEL + ",")


def parse_gold(ref: str) -> float:
    """The error fraction eps of a ``toy:gold[,eps=E]`` reference (0 without ``eps``).

    Raises:
        ValueError: the reference is not of that form, or eps lies outside [0, 1].
    """
    match = _GOLD_SPEC.match(ref.strip())
    if match is None:
        raise ValueError(f"model {ref!r}: write the gold generator as toy:gold or toy:gold,eps=E (E in [0, 1])")
    eps = float(match.group(1)) if match.group(1) is not None else 0.0
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"model {ref!r}: eps must lie in [0, 1], got {eps}")
    return eps


def _unit(salt: str, text: str) -> float:
    """A uniform in [0, 1) fixed by (salt, text): the same problem always draws the same number."""
    import hashlib

    digest = hashlib.blake2b(f"{salt}:{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def parse_chain(problem: str) -> tuple[int, list[tuple[str, int]]] | None:
    """(start, [(operation, operand), ...]) of a problem text such as "Compute 72+10-75.\\n"; None if it is not one."""
    match = _EXPRESSION.search(problem)
    if match is None:
        return None
    return int(match.group(1)), [(op, int(x)) for op, x in _STEP.findall(match.group(2))]


def gold_errs(problem: str, eps: float) -> bool:
    """Whether the gold generator at error fraction ``eps`` gets this problem wrong: the problem's hash falls in the
    band [0, eps), a property of the problem alone (so a problem wrong at eps is wrong at every larger eps)."""
    return eps > 0 and _unit("gold-error", problem.strip()) < eps


def gold_solution(problem: str, eps: float = 0.0) -> str | None:
    """The gold generator's completion of a problem: the worked solution (as in :func:`make_problems`), except on
    the fraction eps of problems picked by :func:`gold_errs`, which get one coherent wrong trace, the same every time:
    one step's result is off by 1 or 10 (step and slip fixed by the problem's hash, the slip chosen to stay in
    0..99) and every later step computes correctly from the wrong value, so the final answer is wrong (+ and - carry
    the slip, * multiplies it by 2-9). None when the text holds no arithmetic chain."""
    parsed = parse_chain(problem)
    if parsed is None:
        return None
    start, steps = parsed
    wrong_step, slip = None, 0
    if gold_errs(problem, eps):
        wrong_step = int(_unit("gold-step", problem.strip()) * len(steps))
        value = start
        for operation, operand in steps[:wrong_step + 1]:
            value = _apply(value, operation, operand)
        first = int(_unit("gold-slip", problem.strip()) * len(_SLIPS))
        slips = [_SLIPS[(first + i) % len(_SLIPS)] for i in range(len(_SLIPS))]
        slip = next(s for s in slips if 0 <= value + s < VALUE_BOUND)
    worked, value = [], start
    for index, (operation, operand) in enumerate(steps):
        result = _apply(value, operation, operand) + (slip if index == wrong_step else 0)
        worked.append(f"{value}{operation}{operand}={result}.")
        value = result
    return " ".join(worked) + f" Answer: \\boxed{{{value}}}"


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Builds the 24-token tokenizer: `<pad> <eos> <unk>` as special tokens, three words, and single characters.

    Digits are split into single tokens. `<eos>` is a special token, so the text "<eos>" maps to one id (TRL appends
    the eos token as a string). No chat template: prompts are plain text. Pads on the left, for generation.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(VOCABULARY)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # The words first, then any single character ("." does not match the newline, so it is named).
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"Compute |Answer: |\\boxed\{|\n|."), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        padding_side="left",
        model_max_length=256,
    )

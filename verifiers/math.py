"""``math``: symbolic equivalence with math-verify, hardened against its known false positives.

Steps (all inside a worker process with a hard deadline, see ``verifiers.pool``):

1. extract the final answer with ``verifiers.extract`` (boxed, ####, "the answer is", ..., and a conclusion stated
   in prose: "Therefore, the total is 42."), the one the response commits to last. math-verify is never pointed at
   the whole response, where it would pick up an intermediate number. A reference that is one choice letter is
   answered by the letter the response names last ("the correct option is (B)"), never by a capital in a sentence;
2. wrap the answer and the reference in ``$...$`` before parsing: math-verify reads bare text as a plain
   expression, so an un-delimited ``3x+4y+14=0`` or ``x^2+2x+1`` parses to ``0`` or nothing, and ``2, 3`` to ``3``.
   A plain number, with words after it or not ("18 dollars", "$1,000", "\\$9{,}500", "USD 1,250", "25%"), goes to
   math-verify's fast number reader as the bare number; plain words ("Monday") are compared as ``\text{...}``; a
   mixed number ``4 4/9`` becomes ``4\\frac{4}{9}``, which math-verify reads as 40/9; a matrix environment is
   delimited as one line, so math-verify's matrix support reads it;
3. ``verify(gold, answer)``, gold first, with math-verify's signal timeouts off (they fail off the main thread) and
   its set-relation comparison on, so ``x < 3`` answers ``(-\\infty, 3)``. Two polynomial equations with small
   rational coefficients are decided by exact polynomial algebra instead (``equations_equal``), only where that
   verdict is certain to be math-verify's: ms instead of 50-300 ms. A run of boxes that ends the response
   (``\\boxed{1}, \\boxed{2}``; parts (a) and (b)) is one answer, a list, compared with math-verify's set and tuple
   comparison; it never matches a reference with a different number of elements;
4. a relative-tolerance check on numbers: math-verify rounds to ``float_rounding`` decimals, which makes
   ``1/2^99`` equal ``1/2^98`` and ``0.001`` equal ``0.0010001``; and a unit check: math-verify drops units, so
   ``5 cm`` would equal ``5 m`` (``units_differ``).

The reference is parsed once per worker and distinct reference, and each (reference, answer) pair is compared
once per worker: k samples of a problem mostly end in the same few answers, and a symbolic comparison (two
equations, say) costs tens of milliseconds of sympy. Both caches are small LRUs.
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Any

from pydantic import Field

from verifiers.base import Verdict, Verifier, VerifierOptions
from verifiers.choice import find_choice
from verifiers.extract import Extraction, boxed_run, clean_text, extract_answer

_DELIMITED = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed|\\fbox")
_ENVIRONMENT = re.compile(r"\\begin\{")
# A currency sign before a number ("$1,250", "\\$1{,}250", "€12", "\\text{\\$}5").
_CURRENCY = r"(?:\\?\$|\\text\{\\?\$\}|€|£|¥|₹|\\euro|\\pounds|(?:USD|US\$|EUR|GBP|INR|Rs\.?)(?=\s*[0-9]))"
_PLAIN_NUMBER = re.compile(
    r"^(?:" + _CURRENCY + r"\s*)?(?P<sign>[-+\u2212]?)\s*(?:" + _CURRENCY + r"\s*)?"
    r"(?P<number>[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
    r"\s*(?P<percent>\\?%|percent\b)?\s*(?:€|£|¥|₹|\\?\$)?"
    r"(?:,?\s+[A-Za-z]{2,}[A-Za-z.'/-]*){0,4}\s*$"
)
# Thousands separators LaTeX writes inside numbers: "1{,}250", "1\\,250", "1\\!,\\!250", "1\\ 250", "1 250".
_THOUSANDS = re.compile(r"(?<=\d)(?:\{,\}|\\[,!;: ]|\\!,\\!|,\\!| |\u2009|\u202f)(?=\d{3}(?!\d))")
# A mixed number "4 4/9" (4 + 4/9): math-verify reads it as a product; "4\\frac{4}{9}" it reads as mixed already.
_MIXED_NUMBER = re.compile(
    r"^(?P<sign>-?)(?P<whole>\d+)\s+(?P<num>\d+)\s*/\s*(?P<den>\d+)(?:\s+[A-Za-z]{2,}[A-Za-z.]*){0,3}$")
# One comma between digits, not a thousands group ("1000,99", "0,111"; not "1,250"; "1,2" stays a list).
_DECIMAL_COMMA = re.compile(r"^(?P<sign>-?)(?P<int>\d+),(?P<frac>\d{2,})$")
# Dots between thousands and a decimal comma, as much of Europe writes amounts: "1.250,00 €", "12.000,5".
_EUROPEAN_NUMBER = re.compile(r"^(?:€\s*)?(?P<sign>-?)(?P<int>\d{1,3}(?:\.\d{3})+),(?P<frac>\d{1,2})\s*(?:€|EUR)?$")
# A reference that is one choice letter: "B", "(B)", "\\text{(B)}", "B.".
_CHOICE_REFERENCE = re.compile(r"^\s*(?:\\(?:text|textbf|mathrm)\{)?\s*\(?\s*([A-J])\s*\)?\s*\}?\s*\.?\s*$")
_CHOICE_LETTERS = "ABCDEFGHIJ"
# A letter chosen in a sentence: "the correct option is (B)", "I choose C", "Option D is correct", "**B**" ending a
# line. Each form commits to the letter; an enumeration of the options ("option A gives 5, (B) gives 6, **C**: 7")
# matches none of them, so a response that walks through the options without concluding names no letter.
_LETTER = r"\(?(?P<{0}>(?-i:[A-J]))\)?(?=[ \t]*(?:[.!;,)]|$|because\b|since\b|as\b))"
_CHOICE_STATED = re.compile(
    r"\b(?:answer|option|choice|r[ée]ponse|respuesta|antwort)\b[^.\n]{0,30}?(?:\bis\b|:|\best\b|\bes\b|\bist\b)"
    r"[ \t*_]*(?:(?:option|choice|answer)[ \t]+)?(?:\\text(?:bf)?\{)?" + _LETTER.format("a")
    + r"|\b(?:choose|select|pick|go with)[ \t]+(?:(?:option|choice|answer)[ \t]+)?" + _LETTER.format("b")
    + r"|\((?P<c>(?-i:[A-J]))\)(?=[ \t]*(?:is\b|[.!]?[ \t]*$))"
    + r"|\*\*\(?(?P<d>(?-i:[A-J]))\)?\*\*(?=[ \t]*[.!]?[ \t]*$)"
    + r"|(?<![A-Za-z])\(?(?P<e>(?-i:[A-J]))\)?[ \t]+is[ \t]+(?:the[ \t]+)?(?:correct|right|best|answer)\b",
    re.IGNORECASE | re.MULTILINE,
)
_CHOICE_WINDOW = 600
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
# Plain words ("Monday", "yes", "no solution"): compared as \text{...}, not as products of one-letter variables.
_WORDS = re.compile(r"^[A-Za-z]{3,}(?:[ -][A-Za-z]+)*$")
# Two words in a row, outside LaTeX commands: the answer is prose ("she makes 18 dollars a day").
_PROSE = re.compile(r"(?<![\\A-Za-z{])[A-Za-z]{3,}\s+[A-Za-z]{3,}")
# Both sides bare integers: equal exactly when their values are, as math-verify would find after its LaTeX parse
# (the costliest step of a verification); GSM8K-style answers take this path.
_INTEGER = re.compile(r"-?\d{1,300}")
_GOLD_CACHE_SIZE = 2048
_ANSWER_CACHE_SIZE = 8192
_WARM_UP = (
    ("$\\frac{1}{2}$", "\\boxed{0.5}"),
    ("$(x+1)^2$", "\\boxed{x^2+2x+1}"),
    ("$[1, 2)$", "\\boxed{(1, 2]}"),
    ("$y = 2x + 1$", "\\boxed{2x - y + 1 = 0}"),
    ("$\\{1, 2\\}$", "\\boxed{2, 1}"),
    ("12", "13"),
)


class MathOptions(VerifierOptions):
    """Options of the ``math`` verifier."""

    workers: int = Field(
        1, ge=1, description="Worker processes; each item runs in one with a hard deadline (timeout_s)."
    )
    float_rounding: int = Field(
        6, ge=0, le=50, description="Decimal places math-verify rounds floats to before comparing them."
    )
    rel_tol: float = Field(
        1e-5,
        ge=0,
        description="Relative tolerance two numbers must also meet. math-verify's rounding alone accepts any two "
        "numbers that are both tiny (1/2^99 vs 1/2^98); 0 turns this check off.",
    )


class MathVerifier(Verifier):
    """Symbolic answer checking with math-verify (see the module docstring)."""

    name = "math"
    Options = MathOptions
    inline_allowed = False

    def _setup_runtime(self) -> None:
        super()._setup_runtime()
        # Per-instance LRUs, rebuilt in every worker: both are pure functions of their texts.
        self._parse_gold = functools.lru_cache(maxsize=_GOLD_CACHE_SIZE)(self._parse_gold_uncached)
        self._compare = functools.lru_cache(maxsize=_ANSWER_CACHE_SIZE)(self._compare_uncached)

    def _clear_local_caches(self) -> None:
        self._parse_gold.cache_clear()
        self._compare.cache_clear()

    def prepare(self) -> None:
        """Import math-verify and warm its regexes and parser, once per worker template."""
        # Signal timeouts are off on purpose (the pool enforces deadlines); silence the warning that says so.
        logging.getLogger("math_verify").setLevel(logging.ERROR)
        from math_verify import parse, verify

        # One of each comparison path, so that sympy's lazily imported modules (simplify, solve, sets) load here,
        # once, and not in every worker on its first item.
        for gold, answer in _WARM_UP:
            verify(parse(gold, parsing_timeout=None), parse(answer, parsing_timeout=None), timeout_seconds=None)

    def check(self, response: str, reference: str) -> Verdict:
        """Verify one response against one reference (runs in a worker)."""
        reference = clean_text(reference).strip()
        if not reference:
            return self._verdict(False, None, "error")
        response = clean_text(response)
        extraction = extract_answer(response, last_number_fallback=self.options.last_number_fallback, prose=True)
        letter = _CHOICE_REFERENCE.match(reference)
        if letter is not None:
            # A multiple-choice reference: the response is right when the letter it commits to is that letter.
            chosen = chosen_letter(response, extraction)
            if chosen is None:
                if extraction is None:
                    return self._verdict(False, None, "no_answer")
                return self._verdict(False, extraction.text, "mismatch")
            return self._verdict(chosen == letter[1], chosen, "ok" if chosen == letter[1] else "mismatch")
        if extraction is None:
            return self._verdict(False, None, "no_answer")
        run = boxed_run(response) if extraction.source == "boxed" else []
        if len(set(run)) > 1:
            # Several boxes that together answer ("\\boxed{1}, \\boxed{2}" for {1, 2}, parts (a) and (b)) are one
            # answer, a list: it matches a reference of as many elements, never one of them ("1, 2, 3" is not "3").
            size, ordered = self._gold_shape(reference)
            joined = ", ".join(_without_unit(item) for item in run)
            if ordered:  # a pair or tuple is compared in order: x = \boxed{2}, y = \boxed{3} is (2, 3), not (3, 2)
                joined = f"({joined})"
            correct = size == len(run) and self._compare(reference, "$\\boxed{" + joined + "}$")
        elif _INTEGER.fullmatch(reference) and _INTEGER.fullmatch(extraction.text):
            correct = int(reference) == int(extraction.text)
        else:
            correct = self._compare(reference, answer_latex(extraction))
            if not correct and _OR.search(extraction.text):
                correct = self._compare_union(reference, extraction.text)
        if correct and units_differ(reference, extraction.text):
            correct = False  # math-verify drops units: "5 cm" would equal "5 m"
        return self._verdict(correct, extraction.text, "ok" if correct else "mismatch")

    def _gold_shape(self, reference: str) -> tuple[int, bool]:
        """How many elements the reference lists (a set or a tuple; 1 for anything else) and whether their order
        counts (a tuple)."""
        from sympy import FiniteSet, Interval, Tuple

        gold = next((g for g in self._parse_gold(reference) if not isinstance(g, str)), None)
        if isinstance(gold, (FiniteSet, Tuple)):
            return len(gold.args), isinstance(gold, Tuple)
        if isinstance(gold, Interval) and gold.left_open and gold.right_open and gold.is_finite_set is False and (
                gold.start.is_finite and gold.end.is_finite):
            return 2, True  # "(2, 3)" reads as an open interval, and as the pair it usually is
        return 1, False

    def _compare_union(self, reference: str, text: str) -> bool:
        """Whether relations joined by "or" ("x \\le -1 \\text{ or } x \\ge 2") describe the reference's set.

        math-verify turns one relation into its set (set-relation comparison) but reads no "or"; each relation is
        parsed by math-verify, turned into its set by sympy, and the union compared by math-verify's set comparison.
        """
        from math_verify import parse, verify
        from sympy import Set, Union
        from sympy.core.relational import Relational

        gold = self._parse_gold(reference)
        if not any(isinstance(g, Set) for g in gold):
            return False
        parts = [p.strip(" $,") for p in _OR.split(text.replace("$", " "))]
        if not 2 <= len(parts) <= 4:
            return False
        sets, symbols = [], set()
        for part in parts:
            parsed = next((p for p in parse(f"${part}$", parsing_timeout=None) if not isinstance(p, str)), None)
            if not isinstance(parsed, Relational) or len(parsed.free_symbols) != 1:
                return False
            symbols |= parsed.free_symbols
            sets.append(parsed.as_set())
        if len(symbols) != 1:  # "x < 1 or y > 3" is no set of one variable
            return False
        return bool(verify(gold, [Union(*sets)], float_rounding=self.options.float_rounding, timeout_seconds=None))

    def _compare_uncached(self, reference: str, latex: str) -> bool:
        """Whether the answer text ``latex`` equals ``reference``."""
        from math_verify import parse

        gold = self._parse_gold(reference)
        answer = parse(latex, parsing_timeout=None)
        correct = self._equal(gold, answer)
        if not correct:
            # math-verify reads "9%" as 9 against a gold 9, but only for integers; so do "12.5%" vs 12.5.
            if any(_percent_value(item) is not None for item in [*gold, *answer]):
                correct = self._equal(_without_percent(gold), _without_percent(answer))
        return correct

    def _equal(self, gold: list[Any], answer: list[Any]) -> bool:
        from math_verify import verify

        decided = equations_equal(gold, answer)
        if decided is None:
            # allow_set_relation_comp: "x < 3" answers "(-\\infty, 3)" (math-verify turns the relation into its set).
            decided = verify(gold, answer, float_rounding=self.options.float_rounding, timeout_seconds=None,
                             allow_set_relation_comp=True)
        if not decided:
            return False
        return not (self.options.rel_tol > 0 and numbers_differ(gold, answer, self.options.rel_tol))

    def _parse_gold_uncached(self, reference: str) -> list[Any]:
        from math_verify import parse

        gold = parse(reference_latex(reference), parsing_timeout=None)
        if not any(not isinstance(g, str) for g in gold):
            gold = parse(reference, parsing_timeout=None) or gold  # let math-verify find the math itself
        return gold


def answer_latex(extraction: Extraction) -> str:
    """The text handed to ``math_verify.parse`` for an extracted answer."""
    return _to_latex(extraction.text, boxed=extraction.source == "boxed")


def reference_latex(reference: str) -> str:
    """The text handed to ``math_verify.parse`` for a reference answer."""
    return _to_latex(reference, boxed=False)


# "or" between two relations: "x \\le -1 \\text{ or } x \\ge 2", "x < 1 or x > 3", "x<1 \\lor x>3".
_OR = re.compile(r"\\text\{\s*or\s*\}|\\(?:lor|vee)\b|\bor\b")
# Unicode math that models write and math-verify's LaTeX parser does not read.
_UNICODE_MATH = str.maketrans({"∞": r"\infty ", "≤": r"\le ", "≥": r"\ge ", "≠": r"\ne ", "−": "-", "×": r"\times ",
                               "·": r"\cdot ", "π": r"\pi ", "÷": "/", "∈": r"\in ", "∪": r"\cup ",
                               "∩": r"\cap ", "√": r"\sqrt "})


def _to_latex(text: str, *, boxed: bool) -> str:
    text = _THOUSANDS.sub("", text.strip().translate(_UNICODE_MATH))
    european = _EUROPEAN_NUMBER.match(text)
    if european is not None:  # "1.250,00 €": dots group thousands, the comma marks the decimals
        return f"{european['sign']}{european['int'].replace('.', '')}.{european['frac']}"
    decimal = _DECIMAL_COMMA.match(text.strip("$ "))
    if decimal is not None and (len(decimal["frac"]) != 3 or decimal["int"] == "0"):
        return f"{decimal['sign']}{decimal['int']}.{decimal['frac']}"  # "1000,99" and "0,111": a decimal comma
    number = _PLAIN_NUMBER.match(text)
    if number is not None:
        sign = "-" if number["sign"] in ("-", "\u2212") else ""
        # Bare, so that math-verify reads it with its fast number path rather than the LaTeX parser.
        return f"{sign}{number['number'].replace(',', '')}{'%' if number['percent'] else ''}"
    mixed = _MIXED_NUMBER.match(text.strip("$ "))
    if mixed is not None and 0 < int(mixed["num"]) < int(mixed["den"]) and len(text) < 40:
        # As one improper fraction, bare: math-verify's fast number reader, not its LaTeX parser.
        whole, num, den = int(mixed["whole"]), int(mixed["num"]), int(mixed["den"])
        return f"{mixed['sign']}{whole * den + num}/{den}"
    if _WORDS.match(text):
        return f"$\\text{{{text}}}$"
    if boxed:
        return "\\boxed{" + text + "}"
    if _DELIMITED.search(text) or _PROSE.search(text):
        return text  # already delimited, or prose in which math-verify finds the math itself
    if _ENVIRONMENT.search(text):
        # A matrix or cases environment over several lines: math-verify's inline math is one line.
        return "$" + " ".join(text.split()) + "$"
    return f"${text}$"


def chosen_letter(response: str, extraction: Extraction | None) -> str | None:
    """The choice letter (A-J) a response commits to last, or None.

    The extracted final answer decides when it names a letter ("\\boxed{B}", "The answer is (C) 12"); otherwise
    the last letter stated as a choice in the response's final ``_CHOICE_WINDOW`` characters ("the correct option
    is (B)", "I choose C", "**D**"). A capital letter alone in a sentence ("A total of") is never a choice.
    """
    if extraction is not None and extraction.source != "bold":  # a bold letter may label an option ("**B**: 6")
        chosen = find_choice(extraction.text, _CHOICE_LETTERS)
        # An anchored or boxed answer names its letter first or in parentheses ("(C) 12", "C: 12"); a bare line
        # or a prose answer counts only when it is the letter alone ("(B)"), not "I choose C" or "Options (A), (B)".
        anchored = extraction.source in ("boxed", "tag", "hash", "answer_is")
        text = _TEXT_WRAPPER.sub(r"\1", extraction.text).strip("$*_ .")
        if chosen is not None and (len(text) <= 3 or anchored and (
                re.match(r"^\W*\(?[A-J]\)?(?![A-Za-z])", text) or re.search(r"\([A-J]\)", text))):
            return chosen
    last = None
    for last in _CHOICE_STATED.finditer(response, max(0, len(response) - _CHOICE_WINDOW)):  # noqa: B007
        pass
    if last is None:
        return None
    return next(g for g in last.groups() if g is not None).upper()


# Units by what they measure's spelling: every spelling of one unit maps to one name. A unit outside this table is
# never compared (a word after a number may be anything: "18 dollars a day", "5 apples").
_UNIT_NAMES = {
    "mm": "mm", "millimeter": "mm", "millimetre": "mm",
    "cm": "cm", "centimeter": "cm", "centimetre": "cm",
    "m": "m", "meter": "m", "metre": "m",
    "km": "km", "kilometer": "km", "kilometre": "km",
    "in": "in", "inch": "in", "inche": "in", "ft": "ft", "foot": "ft", "feet": "ft", "yd": "yd", "yard": "yd",
    "mi": "mi", "mile": "mi",
    "mg": "mg", "milligram": "mg", "g": "g", "gram": "g", "kg": "kg", "kilogram": "kg",
    "lb": "lb", "pound": "lb", "oz": "oz", "ounce": "oz", "ton": "ton", "tonne": "t",
    "ml": "ml", "milliliter": "ml", "millilitre": "ml", "l": "l", "liter": "l", "litre": "l",
    "gal": "gal", "gallon": "gal",
    "s": "s", "sec": "s", "second": "s", "min": "min", "minute": "min", "h": "h", "hr": "h", "hour": "h",
    "day": "day", "week": "week", "month": "month", "year": "year",
    "degree": "deg", "deg": "deg", "°": "deg", "^\\circ": "deg", "rad": "rad", "radian": "rad",
    "dollar": "$", "cent": "cent", "euro": "€",
}
UNIT_WINDOW = 80
_UNIT_WRAPPER = re.compile(r"\\(?:text|mathrm|mbox|textrm|operatorname)\s*\{([^{}]*)\}")
_UNIT_TAIL = re.compile(
    r"[0-9})](?:\\[,;:! ]|~|\s)*(?P<unit>(?:square |sq\.? |cubic )?[A-Za-z°]+\.?(?:\s*\^\s*\{?[23]\}?|²|³)?)\s*\.?$"
)


def unit_of(text: str) -> str | None:
    """The unit a number is given in ("5 cm", "5\\text{ m}^2", "3 square feet": ``cm``, ``m^2``, ``ft^2``), or None
    when the text ends in no unit of ``_UNIT_NAMES``."""
    # A unit ends the answer: the last characters are enough, and they bound the regex work.
    text = _UNIT_WRAPPER.sub(r" \1", text[-UNIT_WINDOW:]).replace("$", " ").replace("\\ ", " ").strip()
    text = text.replace("^\\circ", "°").replace("^{\\circ}", "°")
    match = _UNIT_TAIL.search(text)
    if match is None:
        return None
    unit = match["unit"].lower().replace(" ", "")
    power = ""
    for marker, value in (("square", "2"), ("sq.", "2"), ("sq", "2"), ("cubic", "3")):
        if unit.startswith(marker):
            unit, power = unit[len(marker):], value
            break
    exponent = re.search(r"(?:\^\{?([23])\}?|([²³]))$", unit)
    if exponent is not None:
        power = exponent[1] or ("2" if exponent[2] == "²" else "3")
        unit = unit[: exponent.start()]
    unit = unit.rstrip(".")
    name = _UNIT_NAMES.get(unit) or (_UNIT_NAMES.get(unit[:-1]) if unit.endswith("s") and len(unit) > 3 else None)
    if name is None:
        return None
    return name + (f"^{power}" if power else "")


def _without_unit(text: str) -> str:
    """``text`` without a trailing unit of ``_UNIT_NAMES`` ("35 \\text{ cm}" gives "35"): math-verify drops units
    from a single answer but not from the elements of a list."""
    if unit_of(text) is None:
        return text
    stripped = re.sub(r"(?:\\[,;: ]|~|\s)*(?:\\(?:text|mathrm|mbox|textrm)\s*\{[^{}]*\}|[A-Za-z°.]+)(?:\s*\^\s*\{?[23]\}?)?\s*$",
                      "", text)
    return stripped or text


def units_differ(reference: str, answer: str) -> bool:
    """True when reference and answer both name a unit (``unit_of``) and the units differ: "5 cm" is not "5 m".

    A unit on one side only is no evidence either way ("5" answers "5 cm"); two spellings of one unit are equal
    ("5 meters", "5\\text{ m}"). Conversions are not attempted: "50 mm" against "5 cm" is a mismatch, a false
    negative rather than a false positive.
    """
    gold_unit = unit_of(reference)
    if gold_unit is None:
        return False
    answer_unit = unit_of(answer)
    return answer_unit is not None and answer_unit != gold_unit


def numbers_differ(gold: list[Any], answer: list[Any], rel_tol: float) -> bool:
    """True when gold and answer are both plain numbers that differ by more than ``rel_tol`` (relative).

    Percentages count both ways (25% may mean 25 or 0.25), as in math-verify.
    """
    gold_expr = next((g for g in gold if not isinstance(g, str)), None)
    answer_expr = next((a for a in answer if not isinstance(a, str)), None)
    if gold_expr is None or answer_expr is None:
        return False
    gold_values = _numeric_values(gold_expr)
    answer_values = _numeric_values(answer_expr)
    if not gold_values or not answer_values:
        return False
    return not any(_close(g, a, rel_tol) for g in gold_values for a in answer_values)


def equations_equal(gold: list[Any], answer: list[Any]) -> bool | None:
    """``verify(gold, answer)`` for two polynomial equations, decided with exact polynomial algebra; else None.

    Why: math-verify compares equations by subtracting sides, ``simplify`` and then ``solve`` on both (its variables
    are real), 50-300 ms of sympy per pair, most of it on pairs that differ. Equations of degree at most 2 with small
    rational coefficients are decided here in a few milliseconds, only where the verdict is certain to be
    math-verify's (``tests/test_verifiers.py`` checks the two against each other):

    * the sides' differences ``lhs - rhs`` are equal or opposite: a match (math-verify's first checks);
    * both linear in two or more variables: a match iff proportional (``2x + 3y = 6``, ``4x + 6y = 12``), since
      ``solve`` then gives both the same solution, and different lines give different ones;
    * one variable, and one of the two has a real root: no match, because math-verify's ``solve`` step never
      matches one-variable equations that have real roots (it returns a list of roots where it expects mappings).

    Anything else returns None and math-verify decides: floats, constants such as pi, functions, sets, several
    relations, quadratics in two or more variables, and one-variable equations with no real root (math-verify's
    ``solve`` finds no roots for either and calls them equal).
    """
    gold_exprs = [g for g in gold if not isinstance(g, str)]
    answer_exprs = [a for a in answer if not isinstance(a, str)]
    if len(gold_exprs) != 1 or len(answer_exprs) != 1:
        return None
    try:
        polys = _equation_polys(gold_exprs[0], answer_exprs[0])
    except Exception:  # whatever sympy raises here, math-verify decides (it turns its own errors into False)
        return None
    if polys is None:
        return None
    # verify() also compares the raw texts it kept beside the parsed expressions; equal texts are a match.
    texts_equal = any(
        isinstance(g, str) and isinstance(a, str) and g.strip() and g.strip() == a.strip() for g in gold for a in answer
    )
    g, a = polys
    try:
        if g == a or g == -a:
            return True
        if len(g.gens) >= 2:
            if g.total_degree() == 1 and a.total_degree() == 1:
                return _proportional(g, a) or texts_equal
            return None
        if _has_real_root(g) or _has_real_root(a):
            return texts_equal
    except Exception:
        pass
    return None


_MAX_DEGREE = 2
# Numerators and denominators: keeps coefficient differences far above math-verify's 15-digit tolerance.
_MAX_COEFFICIENT = 10**3
_MAX_NUMBER_EXPONENT = 64


def _equation_polys(gold: Any, answer: Any) -> tuple[Any, Any] | None:
    """``lhs - rhs`` of two single equations as polynomials over the rationals in their variables, or None."""
    from sympy import Eq, Expr, Integer, Poly, Pow, Symbol
    from sympy.polys.domains import QQ, ZZ
    from sympy.polys.polyerrors import PolynomialError

    if not (isinstance(gold, Eq) and isinstance(answer, Eq)):
        return None
    if not all(isinstance(side, Expr) for side in (gold.lhs, gold.rhs, answer.lhs, answer.rhs)):
        return None  # x = {1, 2}, an interval, a matrix
    sides = [gold.lhs - gold.rhs, answer.lhs - answer.rhs]
    symbols = gold.free_symbols | answer.free_symbols
    if not symbols or not all(isinstance(s, Symbol) for s in symbols):
        return None
    for side in sides:
        # Exponents are checked before expanding anything: (x + 1)^(10^9) or 10^(10^9) must not reach Poly.
        for power in side.atoms(Pow):
            if not isinstance(power.exp, Integer):
                return None
            if power.base.free_symbols and not 0 <= power.exp <= _MAX_DEGREE:
                return None
            if not power.base.free_symbols and abs(power.exp) > _MAX_NUMBER_EXPONENT:  # x/2 is x * 2^-1
                return None
    gens = sorted(symbols, key=lambda s: s.name)
    polys = []
    for side in sides:
        try:
            poly = Poly(side, *gens)
        except PolynomialError:  # not a polynomial in these variables (1/x, sin(x))
            return None
        if poly.domain not in (ZZ, QQ) or poly.is_zero or poly.total_degree() > _MAX_DEGREE:
            return None
        if poly.total_degree() == 0:
            return None  # a constant equation (0 = 5) is not an equation in these variables
        for coefficient in poly.coeffs():
            if max(abs(coefficient.p), abs(coefficient.q)) > _MAX_COEFFICIENT:
                return None
        polys.append(poly.to_field())  # both over QQ: a Poly over ZZ never equals one over QQ
    return polys[0], polys[1]


def _has_real_root(p: Any) -> bool:
    """Whether a one-variable polynomial of degree 1 or 2 has a real root."""
    return p.degree() == 1 or p.discriminant() >= 0


def _proportional(p: Any, q: Any) -> bool:
    """Whether polynomials ``p`` and ``q`` (same variables, over QQ) are constant multiples of each other."""
    return p.monic() == q.monic()


def _without_percent(parsed: list[Any]) -> list[Any]:
    """``parsed`` with a percentage ``X%`` (X * 1/100 unevaluated) replaced by X."""
    return [item if (value := _percent_value(item)) is None else value for item in parsed]


def _percent_value(expr: Any) -> Any:
    from sympy import Mul, Rational, UnevaluatedExpr

    if isinstance(expr, Mul) and len(expr.args) == 2 and expr.args[1] == UnevaluatedExpr(Rational(1, 100)):
        return expr.args[0]
    return None


def _numeric_values(expr: Any) -> list[Any]:
    """The real values an expression may stand for (two for a percentage), or [] if it is not a plain number."""
    from sympy import Eq, Expr, Symbol

    if isinstance(expr, Eq) and isinstance(expr.lhs, Symbol):  # "x = 5" is the number 5
        expr = expr.rhs
    if not isinstance(expr, Expr) or expr.free_symbols:
        return []
    candidates = [expr]
    if _percent_value(expr) is not None:
        candidates.append(_percent_value(expr))
    values = []
    for candidate in candidates:
        value = candidate.doit().evalf(30)
        if value.is_real and value.is_finite:
            values.append(value)
    return values


def _close(a: Any, b: Any, rel_tol: float) -> bool:
    if a == b:
        return True
    return bool(abs(a - b) <= rel_tol * max(abs(a), abs(b)))

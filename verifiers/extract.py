"""Find the final answer in a model response. Extraction is separate from comparison.

Sources, tried in this order (the first that yields an answer wins):

1. ``boxed``: the last ``\\boxed{...}`` or ``\\fbox{...}`` that closes, nested braces included (an unclosed one, as
   in a completion cut at max_tokens, is skipped);
2. ``tag``: the last ``<answer>...</answer>``;
3. ``hash`` / ``answer_is``: the later of the last ``#### N`` line and the last "the (final) answer is ..." /
   "Answer: ..." phrase, up to the end of its sentence or line;
4. ``bold``: a short ``**...**`` span on the last non-empty line ("Thus the total is **73**.");
5. ``bare``: the whole response when it is one short line ("72", "x = 5", "(B)");
6. ``prose``: only when asked for (``prose=True``), a conclusion stated in words on the last lines ("Therefore,
   the total is 42.", "Donc $x = 3$."): the last math span of the last sentence that opens with a conclusion word,
   else what follows its last "is" / "=" / "est" ...;
7. ``last_number``: the last number in the response; only when asked for (it turns intermediate results into
   false positives).

The answer anchors also read other languages' words for "answer" ("réponse", "respuesta", "Antwort", ...).

Markdown emphasis is stripped from the answer (``**73**`` gives ``73``). Every scan is linear in the response
length and bounded by ``MAX_ANSWER_CHARS``, so a multi-megabyte or adversarial response costs milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

#: An answer longer than this many characters is not an answer (also bounds every scan).
MAX_ANSWER_CHARS = 2000
#: How many ``\boxed`` openings, from the end, are tried before giving up on boxed answers.
MAX_BOXED_TRIES = 32
#: How many "answer" / "####" occurrences, from the end, are tried as anchors.
MAX_ANCHOR_TRIES = 256
#: The last-number fallback looks at this many final characters only: a final answer sits at the end.
LAST_NUMBER_WINDOW = 10_000
#: A response this short, on one line, with few words, is its own answer ("bare").
BARE_MAX_CHARS = 64
BARE_MAX_WORDS = 6

Source = Literal["boxed", "tag", "hash", "answer_is", "bold", "bare", "prose", "last_number"]

_BOXED_OPEN = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)\b")
_BRACE_TOKEN = re.compile(r"\\.|[{}]", re.S)
_HASH = re.compile(r"####[ \t]*(?P<hash>[^\n]*)")
# "The answer is", "Final Answer: ", "**Answer:**", "the answer to the question is: " ...
_ANSWER_IS = re.compile(
    r"\b(?:answer|r[ée]ponse|respuesta|resposta|risposta|antwort|ответ)\b"
    r"(?:[ \t]+(?:to|for|of|à|a|de|du|al|auf|zu)\b[^.\n:=]{0,40}?)?(?:[ \t]+(?:finale?|final))?"
    r"[ \t]*(?:[*_]{1,2}[ \t]*)?(?:is\b|est\b|es\b|é\b|è\b|ist\b|lautet\b|:|=|(?=\s*(?:\\\[|\$\$))|(?<=\*\*)(?=[ \t]*\n))[ \t]*(?:[*_]{1,2}[ \t]*)?:?"
    # Chinese and Japanese: "答案是 12", "最终答案：12", "答えは 12" (no word boundaries between these characters).
    r"|(?:答案|答え|解答)[ \t]*(?:是|为|為|は|：|:)[ \t]*[：:]?",
    re.IGNORECASE,
)
# The first letters of the answer words above: where ``_last_anchor`` looks for an anchor (lower-cased text).
_ANSWER_WORDS = ("answer", "réponse", "reponse", "respuesta", "resposta", "risposta", "antwort", "ответ", "答案", "答え",
                 "解答")
# A sentence that states a conclusion: it opens with one of these words, or has one after a comma ("..., so the
# total is 18"), in any language the anchors read.
_CONCLUSION = re.compile(
    r"(?:^|[,;]|\$|\\\]|\\\))[ \t*_]*(?:therefore|thus|hence|so|consequently|finally|in conclusion|"
    r"donc|ainsi|alors|par conséquent|por lo tanto|por tanto|entonces|así|portanto|quindi|also|daher|somit|итак|"
    r"поэтому|所以|因此)\b[ \t,:]*",
    re.IGNORECASE,
)
_VALUE_LIKE = re.compile(r"[0-9$\\]")
_CLAUSE = re.compile(r",\s+(?!and\b|or\b)(?=[A-Za-z])")
_LEADING_CUE = re.compile(
    r"^(?:therefore|thus|hence|so|then|finally|donc|ainsi|alors|entonces|also|daher|quindi)\b[ \t]*[,:]?[ \t]+",
    re.IGNORECASE,
)
# What states the value in a conclusion sentence: the answer follows the last of these.
_COPULA = re.compile(
    r"\s(?:is|are|equals|was|gives|est|sont|vaut|es|son|ist|sind|é|è|sono|равно|равен)(?:\s+de)?\s+|=|:\s"
    r"|\b(?:it|that|which|this)['’]s\s+",
    re.IGNORECASE,
)
_MATH_SPAN = re.compile(
    r"\$\$(?P<d>[^$]{1,500}?)\$\$|(?<!\\)\$(?P<i>[^$\n]{1,500}?)(?<!\\)\$|\\\((?P<p>.{1,500}?)\\\)|\\\[(?P<b>.{1,500}?)\\\]",
    re.S,
)
# A lead-in that ends in "is" / "=" / "equals": the display that follows is the stated value.
_COPULA_END = re.compile(r"(?:\b(?:is|are|equals|est|es|ist)|=)\s*$", re.IGNORECASE)
#: A conclusion answer longer than this is prose, not an answer.
PROSE_MAX_CHARS = 80
# Two words in a row: a sentence, not a bare answer ("The sequence is 1, 2, 3", "Donc, il reste 7 pommes").
_SENTENCE_WORDS = re.compile(r"(?<![\\A-Za-z{])[A-Za-z\u00c0-\u024f]{2,},?\s+[A-Za-z\u00c0-\u024f]{2,}")
#: Conclusions are read in this many final characters and final non-empty lines only.
PROSE_WINDOW = 4000
PROSE_LINES = 3
PROSE_LINE_CHARS = 1000
PROSE_MAX_WORDS = 5
#: A response's final sentence without a conclusion word or a copula states its one number when this short.
FINAL_SENTENCE_MAX_WORDS = 8
# What a final sentence without a conclusion word must state: a number (or a sign, a currency, math) first.
# An anchored answer after the last box replaces it only when it looks like one: a number, math, a choice.
_COMMITTED = re.compile(r"^(?:[-+\u2212(\[]|\\|\$|€|£|[0-9]|\(?[A-J]\)?$)")
_STATED_NUMBER = re.compile(r"^(?:[-+\u2212]|\\?\$|€|£|(?:USD|EUR|GBP|INR|Rs\.?)\s)?\s*[0-9.\\]")
_PART_LABEL = re.compile(r"(?:^|\s)(?:\((?:[a-h]|i{1,3}|iv|vi{0,3})\)|part\s+\(?[a-h1-9]\)?)\s", re.IGNORECASE)
#: Boxes closer than this (connecting text such as ", ", " and ", "(b) ") form one run of answers.
RUN_GAP_CHARS = 40
# A short label before a colon on a bare answer line ("Total: 3 hours", "Final: 12").
_LABEL = re.compile(r"^[A-Za-z][A-Za-z ]{0,30}:\s+(?P<value>[-+$€£0-9\\(\[].*)$")
_BOLD = re.compile(r"\*\*(?P<bold>[^*\n]{1,100})\*\*")
# Starts with a plain character class: the regex engine scans multi-megabyte text for it quickly.
_NUMBER = re.compile(r"[0-9]+(?:,[0-9]{3})*(?:\.[0-9]+)?")
# A period after a word and before a number is an abbreviation ("Rs. 500", "No. 5"), not a sentence end.
_SENTENCE_END = re.compile(r"(?:[!?]|(?<![A-Za-z])\.|(?<=[A-Za-z])\.(?!\s+[-+0-9$€£]))(?=\s|$)|[。！？]")
_LEADING_SPACE = re.compile(r"\s*")


@dataclass(frozen=True)
class Extraction:
    """An answer found in a response: its text (markdown stripped) and where it came from."""

    text: str
    source: Source


def clean_text(text: str) -> str:
    """Drop NUL characters and replace lone surrogates, so every later step sees valid text."""
    if "\x00" in text:
        text = text.replace("\x00", "")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", errors="replace").decode("utf-8")
    return text


def extract_answer(text: str, *, last_number_fallback: bool = False, prose: bool = False) -> Extraction | None:
    """Return the final answer of ``text`` (see the module docstring for the sources), or None.

    ``prose``: also read a conclusion stated in words on the last lines (source ``prose``).
    """
    text = clean_text(text)
    boxed = _last_boxed_span(text)
    if boxed is not None and boxed[1].strip():
        # A later "the final answer is 10,455" restates or corrects the boxed one: the response commits to it last.
        later = _last_anchored(text, after=boxed[0])
        if later is not None and _COMMITTED.match(later.text) and len(later.text) <= PROSE_MAX_CHARS:
            return later
        return Extraction(strip_markdown(boxed[1]), "boxed")
    tagged = last_tag(text, "answer")
    if tagged:
        return Extraction(tagged, "tag")
    anchored = _last_anchored(text)
    if anchored is not None:
        return anchored
    bold = _bold_on_last_line(text)
    if bold:
        return Extraction(bold, "bold")
    bare = _bare(text)
    if bare and not (prose and _SENTENCE_WORDS.search(_MATH_SPAN.sub(" ", bare))):
        return Extraction(bare, "bare")
    if prose:
        # A one-line sentence ("The sequence is 1, 2, 3.") is read as prose, not handed whole to the comparison.
        stated = conclusion(text)
        if stated:
            return Extraction(stated, "prose")
        return None
    if last_number_fallback:
        number = last_number(text)
        if number is not None:
            return Extraction(number, "last_number")
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}``/``\\fbox{...}`` that closes within ``MAX_ANSWER_CHARS``, or None."""
    found = _last_boxed_span(text)
    return None if found is None else found[1]


def _last_boxed_span(text: str) -> tuple[int, str] | None:
    """``(end, content)`` of the last closed ``\\boxed{...}``/``\\fbox{...}`` (``end`` just after its brace)."""
    last = {command: text.rfind(command) for command in ("\\boxed", "\\fbox")}
    for _ in range(MAX_BOXED_TRIES):
        command, position = max(last.items(), key=lambda item: item[1])
        if position < 0:
            return None
        opening = _BOXED_OPEN.match(text, position)
        if opening is not None:
            content = _braced_content(text, opening.end())
            if content is not None:
                return opening.end() + len(content) + 1, content
        last[command] = text.rfind(command, 0, position)
    return None


def _braced_content(text: str, start: int) -> str | None:
    """Text from ``start`` (just after an opening brace) to its matching closing brace; escaped braces skipped."""
    depth = 1
    stop = min(len(text), start + MAX_ANSWER_CHARS)
    for token in _BRACE_TOKEN.finditer(text, start, stop):
        char = token.group()
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[start : token.start()]
    return None


def last_tag(text: str, tag: str) -> str | None:
    """Content of the last ``<tag>...</tag>`` (markdown stripped), or None."""
    close = text.rfind(f"</{tag}>")
    if close < 0:
        return None
    opening = text.rfind(f"<{tag}>", max(0, close - MAX_ANSWER_CHARS), close)
    if opening < 0:
        return None
    content = strip_markdown(text[opening + len(tag) + 2 : close])
    return content or None


def _last_anchored(text: str, after: int = 0) -> Extraction | None:
    """The later of the last ``####`` line and the last "answer is"/"Answer:" phrase, if it has content (and starts
    at or after ``after``).

    A span holding ``\\boxed`` is skipped: that box never closed, or the boxed source would have answered.
    """
    candidates: list[tuple[int, Extraction]] = []
    hash_match = _last_anchor(_HASH, text, "####")
    if hash_match is not None:
        span = strip_markdown(_sentence(hash_match["hash"]))
        if span and not _BOX_COMMAND.search(span):
            candidates.append((hash_match.start(), Extraction(span, "hash")))
    answer_match = _last_anchor(_ANSWER_IS, text, _ANSWER_WORDS)
    if answer_match is not None:
        span = drop_cue(strip_markdown(_span_after(text, answer_match.end())))
        if span and not _BOX_COMMAND.search(span):
            candidates.append((answer_match.start(), Extraction(span, "answer_is")))
    candidates = [c for c in candidates if c[0] >= after]
    if not candidates:
        return None
    return max(candidates, key=lambda c: c[0])[1]


def _last_anchor(pattern: re.Pattern[str], text: str, literals: str | tuple[str, ...]) -> re.Match[str] | None:
    """The last match of ``pattern`` that starts at an occurrence of one of ``literals``, searched from the end with
    ``rfind`` (C speed), trying at most ``MAX_ANCHOR_TRIES`` occurrences."""
    if isinstance(literals, str):
        literals = (literals,)
    # Case variants are searched as they are written ("answer", "Answer", "ANSWER") rather than lowering the text:
    # lowering copies it, and on non-ASCII text that copy alone costs about a second per 3 MB.
    if pattern.flags & re.IGNORECASE:
        literals = tuple({variant for literal in literals for variant in (literal, literal.capitalize(), literal.upper())})
    # Each literal's last occurrence, searched again only for the literal just tried: one scan per try.
    haystack = text
    positions = {literal: haystack.rfind(literal) for literal in literals}
    for _ in range(MAX_ANCHOR_TRIES):
        literal, position = max(positions.items(), key=lambda item: item[1])
        if position < 0:
            return None
        match = pattern.match(text, position)
        if match is not None:
            return match
        positions[literal] = haystack.rfind(literal, 0, position)
    return None


def _last_in(pattern: re.Pattern[str], text: str, start: int = 0) -> re.Match[str] | None:
    """The last match of ``pattern`` in ``text[start:]`` (callers keep that tail short)."""
    last = None
    for last in pattern.finditer(text, start):  # noqa: B007 - keep the last
        pass
    return last


def _span_after(text: str, position: int) -> str:
    """The answer text after an anchor: skips blank space (the answer may be on the next line), ends at the line
    or sentence end; a display-math block (``\\[ ... \\]``, ``$$ ... $$``) is taken whole, over its lines."""
    position = _LEADING_SPACE.match(text, position, min(len(text), position + MAX_ANSWER_CHARS)).end()  # type: ignore[union-attr]
    stop = min(len(text), position + MAX_ANSWER_CHARS)
    for opening, closing in (("\\[", "\\]"), ("$$", "$$")):
        if text.startswith(opening, position):
            end = text.find(closing, position + 2, stop)
            if end >= 0:
                return " ".join(text[position + 2 : end].split())
    newline = text.find("\n", position, stop)
    return _sentence(text[position : stop if newline < 0 else newline])


def _sentence(line: str) -> str:
    """Cut ``line`` at the first sentence end (". ", "! ", "? " or a final period) outside ``$...$`` math."""
    for end in _SENTENCE_END.finditer(line):
        if line.count("$", 0, end.start()) % 2 == 0:
            return line[: end.start()]
    return line


def _first_clause(text: str) -> str:
    """``text`` up to a comma that opens a closing clause without numbers ("1/2, so we are done"); a clause with a
    number ("18, then we divide by 2") is kept, since the value may not be final."""
    cut = _CLAUSE.search(text)
    if cut is None or any(c.isdigit() for c in text[cut.end() :]):
        return text
    return text[: cut.start()]


def drop_cue(span: str) -> str:
    """``span`` without a conclusion word in front ("donc 42", "So x = 3"): an anchor or a bare line can start with
    one, and it is no part of the answer."""
    return _LEADING_CUE.sub("", span, count=1)


def strip_markdown(span: str) -> str:
    """Remove markdown emphasis and surrounding punctuation: ``**73**.`` gives ``73`` (``5!`` stays ``5!``)."""
    span = span.replace("**", "").replace("__", "")
    span = span.strip().strip("*_`").strip()
    while span and span[-1] in ".,;:":
        span = span[:-1].rstrip()
    while span and span[0] in ":=":
        span = span[1:].lstrip()
    return span


def _bold_on_last_line(text: str) -> str | None:
    stripped = text.rstrip()
    line = stripped[stripped.rfind("\n") + 1 :]
    if len(line) > MAX_ANSWER_CHARS:
        return None
    match = _last_in(_BOLD, line)
    if match is None:
        return None
    inner = strip_markdown(match["bold"])
    if not inner or match["bold"].rstrip().endswith(":"):  # a heading such as **Step 2:**
        return None
    if any(c.isdigit() for c in inner) or "\\" in inner or len(inner) <= 3:
        return inner
    return None


def _bare(text: str) -> str | None:
    stripped = text.strip()
    if not stripped or len(stripped) > BARE_MAX_CHARS or "\n" in stripped:
        return None
    if len(stripped.split()) > BARE_MAX_WORDS or _ANSWER_IS.search(stripped) or _BOX_COMMAND.search(stripped):
        return None  # too long to be an answer, or an anchor or box with nothing after it
    labelled = _LABEL.match(stripped)  # "Total: 3 hours": the value after its label
    return drop_cue(strip_markdown(labelled["value"] if labelled else stripped)) or None


def boxed_run(text: str) -> list[str]:
    """Contents of the run of ``\\boxed{}`` answers that ends the response, in order: ``\\boxed{1}, \\boxed{2}``,
    ``(a) \\boxed{3} (b) \\boxed{5}``, ``x = \\boxed{1}$ and $y = \\boxed{2}``. Boxes belong to one run when
    at most ``RUN_GAP_CHARS`` characters of connecting text, on at most one line break, separate them; an earlier
    box further away is a superseded or intermediate answer. At most ``MAX_BOXED_TRIES`` boxes are read."""
    found: list[tuple[int, int, str]] = []  # (start, end, content), from the end
    end = len(text)
    for _ in range(MAX_BOXED_TRIES):
        position = max(text.rfind("\\boxed", 0, end), text.rfind("\\fbox", 0, end))
        if position < 0:
            break
        end = position
        opening = _BOXED_OPEN.match(text, position)
        if opening is None:
            continue
        content = _braced_content(text, opening.end())
        if content is None or not content.strip():
            continue
        stop = opening.end() + len(content) + 1
        if found:
            gap = text[stop : found[-1][0]]
            # A sentence end separates a superseded box from the final one, unless a part label follows it
            # ("... km/h. (b) The time is \\boxed{3}"): the parts of one question answer together.
            ended = _SENTENCE_END.search(gap.replace("$", " ")) and not _PART_LABEL.search(gap)
            if len(gap) > RUN_GAP_CHARS or gap.count("\n") > 1 or ended:
                break
        found.append((position, stop, strip_markdown(content)))
    return [content for _, _, content in reversed(found)]


def conclusion(text: str) -> str | None:
    """The answer a conclusion sentence near the end of ``text`` states ("Therefore, the total is 42."), or None.

    Only the last ``PROSE_LINES`` non-empty lines are read: an answer stated in prose is the response's last word
    on the matter, and earlier sentences hold intermediate results. The sentence read is the last one that opens
    with a conclusion word ("Therefore", "So", "Donc", ...), or else the response's final sentence when the response
    ends there (a completion that stops mid-thought states nothing). Its answer is its last math span
    (``$...$``, ``\\(...\\)``), else the text after its last "is" / "=" / "est" ..., else its only number; a final
    sentence without a conclusion word must state a number or math, in a few words.
    """
    tail = text[-PROSE_WINDOW:].rstrip()
    displayed = _final_display(tail)
    if displayed is not None:
        return displayed
    # Each line's end only: bounds the regex work on a long line (a conclusion sentence is short).
    lines = [line[-PROSE_LINE_CHARS:] for line in tail.split("\n") if line.strip()][-PROSE_LINES:]
    # A response that stops mid-sentence states nothing, unless it is one short line (an answer written as such).
    complete = bool(tail) and (tail[-1] in ".!?$)]" or ("\n" not in tail and len(tail) <= BARE_MAX_CHARS))
    final = True
    for line in reversed(lines):
        for sentence in reversed([s for s in _split_sentences(line) if s.strip()]):
            cue = _last_in(_CONCLUSION, sentence)
            if cue is not None:
                stated = _stated(sentence[cue.end() :], strict=False)
                if stated and not _VALUE_LIKE.search(stated) and final and complete:
                    # "x is 1/2, so we are done": the cue's clause states no value; the sentence's does.
                    stated = _stated(sentence, strict=True) or stated
                if stated or not (final and complete):
                    return stated
            if final and complete:
                stated = _stated(sentence, strict=True)
                if stated:
                    return stated
            final = False
    return None


def _final_display(tail: str) -> str | None:
    """The display math (``\\[ ... \\]``, ``$$ ... $$``) that ends a response, when the sentence that leads into it
    states a conclusion ("Therefore,", "Thus the matrix is", "... is:"), whitespace collapsed; else None."""
    for opening, closing in (("\\[", "\\]"), ("$$", "$$")):
        if not tail.endswith(closing):
            continue
        start = tail.rfind(opening, max(0, len(tail) - MAX_ANSWER_CHARS), len(tail) - len(closing))
        if start < 0:
            return None
        content = " ".join(tail[start + len(opening) : len(tail) - len(closing)].split())
        lead = tail[max(0, start - 300) : start].rstrip()
        lead = _split_sentences(lead.split("\n\n")[-1])[-1] if lead else ""
        if content and lead and (_last_in(_CONCLUSION, lead) is not None or lead.endswith(":")
                                 or _COPULA_END.search(lead)):
            return content
        return None
    return None


def _stated(sentence: str, *, strict: bool) -> str | None:
    """The value a conclusion sentence states (see ``conclusion``); ``strict``: a number or math, in few words."""
    spans = list(_MATH_SPAN.finditer(sentence))
    # Without a conclusion word, only math that ends the sentence is its answer ("The area is $12$.").
    if spans and not (strict and sentence[spans[-1].end() :].strip(" \t.,;!*_")):
        return strip_markdown(next(g for g in spans[-1].groups() if g is not None)) or None
    copulas = list(_COPULA.finditer(sentence))
    # The last "is" that states a value: in "x is 1/2, so we are done" the value follows the first one.
    for stated in reversed(copulas):
        answer = drop_cue(strip_markdown(_first_clause(sentence[stated.end() :]) if strict else sentence[stated.end() :]))
        if not answer or len(answer) > PROSE_MAX_CHARS or _BOX_COMMAND.search(answer):
            continue
        if strict and not (_STATED_NUMBER.match(answer) and len(answer.split()) <= PROSE_MAX_WORDS):
            continue
        return answer
    if copulas:
        return None
    numbers = _NUMBER.findall(sentence)
    # A final short sentence with one number states it ("He needs 8 more."); a longer one may be a step.
    if len(numbers) == 1 and (not strict or len(sentence.split()) <= FINAL_SENTENCE_MAX_WORDS):
        return numbers[0].replace(",", "")
    return None


def _split_sentences(line: str) -> list[str]:
    """``line`` cut at sentence ends (". ", "! ", "? ") outside ``$...$`` math."""
    parts, start = [], 0
    for end in _SENTENCE_END.finditer(line):
        if line.count("$", 0, end.start()) % 2 == 0:
            parts.append(line[start : end.start()])
            start = end.end()
    parts.append(line[start:])
    return parts


def last_number(text: str) -> str | None:
    """The last number in the final ``LAST_NUMBER_WINDOW`` characters of ``text`` (thousands separators removed)."""
    match = _last_in(_NUMBER, text, max(0, len(text) - LAST_NUMBER_WINDOW))
    if match is None:
        return None
    number, start = match.group().replace(",", ""), match.start()
    # A minus sign counts when it is not a subtraction ("= -5", "is -5", but not "10-5").
    if start > 0 and text[start - 1] == "-" and (start < 2 or not (text[start - 2].isalnum() or text[start - 2] in ")]}")):
        number = "-" + number
    return number

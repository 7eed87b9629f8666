"""Audit a verifier on a hand-labelled set: accuracy, false positives/negatives, per-category confusion, latency,
the rows where ensemble members disagree, and the same figures for two math-verify baselines: raw
``verify(parse(reference), parse(response))`` and boxed-gold ``verify(parse("$\\boxed{reference}$"),
parse(response))`` (the reference wrapped so that math-verify reads it as one LaTeX answer).

Input: JSON lines with ``response``, ``reference``, ``expected`` (bool: is the response correct?), ``category``,
and optionally ``origin``, ``truncated`` (bool) and ``note``. A malformed line is reported with its line number
and reason, never silently skipped.

    lessmore audit-verifier tests/data/verifier_labelled.jsonl --verifier math
    lessmore audit-verifier labelled.jsonl --verifier ensemble -o 'members=["math","numeric"]' -o policy=all
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from verifiers import build_verifier
from verifiers.base import Verdict

#: Categories of known false-positive modes (math-verify's, and units and sequences, where recall work could add
#: them); the acceptance bar is strictly fewer false positives on these than raw math-verify.
TRAP_CATEGORIES = (
    "tiny_values",
    "equation_lists",
    "undelimited_equations",
    "bold_answers",
    "text_wrapped",
    "percentages",
    "intervals_sets",
    "units",
    "sequence",
)
_REQUIRED = {"response": str, "reference": str, "expected": bool, "category": str}


def read_labelled(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Read a labelled JSONL file: ``(rows, rejected)``; each rejected entry has ``line`` and ``reason``."""
    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except ValueError as err:
                rejected.append({"line": number, "reason": f"not JSON: {err}"})
                continue
            if not isinstance(row, dict):
                rejected.append({"line": number, "reason": "not a JSON object"})
                continue
            problems = [
                f"'{key}' must be {kind.__name__}" for key, kind in _REQUIRED.items() if not isinstance(row.get(key), kind)
            ]
            if "truncated" in row and not isinstance(row["truncated"], bool):
                problems.append("'truncated' must be bool")
            if problems:
                rejected.append({"line": number, "reason": "; ".join(problems)})
                continue
            row["line"] = number
            rows.append(row)
    return rows, rejected


def raw_math_verify(response: str, reference: str) -> bool:
    """The baseline: plain ``verify(parse(reference), parse(response))`` with math-verify's defaults.

    Its signal timeouts work only on the main thread; elsewhere they are turned off.
    """
    from math_verify import parse, verify

    on_main = threading.current_thread() is threading.main_thread()
    timeout = 5 if on_main else None
    try:
        return bool(
            verify(parse(reference, parsing_timeout=timeout), parse(response, parsing_timeout=timeout), timeout_seconds=timeout)
        )
    except Exception:
        return False


def boxed_math_verify(response: str, reference: str) -> bool:
    """The second baseline: math-verify with the reference wrapped as ``$\\boxed{...}$``, as RL reward code often
    calls it, so that a reference such as ``1, 2`` or ``x^2+1`` is read as one LaTeX answer."""
    return raw_math_verify(response, "$\\boxed{" + reference + "}$")


def audit(path: str | Path, verifier_name: str = "math", *, compare_raw: bool = True, **options: Any) -> dict[str, Any]:
    """Run ``verifier_name`` (with ``options``) over the labelled set at ``path`` and return the report dict.

    Keys: ``summary``, ``per_category``, ``reasons``, ``misjudged`` (rows the verifier got wrong),
    ``disagreements`` (rows where ensemble members disagree, with every member's verdict), ``raw_math_verify`` and
    ``boxed_math_verify`` (each baseline's summary and per-category figures), ``differences`` (rows where verifier
    and raw baseline differ),
    ``trap_false_positives`` and ``rejected`` (malformed input lines).
    """
    import logging

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    rows, rejected = read_labelled(path)
    if not rows:
        raise ValueError(f"{path} has no usable labelled rows ({len(rejected)} rejected); see the file format in "
                         "verifiers/audit.py")
    with build_verifier(verifier_name, **options) as verifier:
        verdicts = verifier.batch(
            [r["response"] for r in rows], [r["reference"] for r in rows], [r.get("truncated", False) for r in rows]
        )
    predictions = [v.correct for v in verdicts]
    report: dict[str, Any] = {
        "path": str(path),
        "verifier": verifier_name,
        "options": options,
        "n": len(rows),
        "rejected": rejected,
        "summary": _summary(rows, predictions, [v.ms for v in verdicts]),
        "per_category": _per_category(rows, predictions),
        "reasons": dict(Counter(v.reason for v in verdicts).most_common()),
        "misjudged": [
            _row_view(row, verdict) for row, verdict in zip(rows, verdicts) if verdict.correct != row["expected"]
        ],
        "disagreements": [
            {**_row_view(row, verdict), "members": [_verdict_view(m) for m in verdict.members]}
            for row, verdict in zip(rows, verdicts)
            if len({m.correct for m in verdict.members}) > 1
        ],
    }
    report["trap_false_positives"] = {"verifier": _trap_fp(report["per_category"])}
    if compare_raw:
        baselines = {}
        for key, baseline in (("raw_math_verify", raw_math_verify), ("boxed_math_verify", boxed_math_verify)):
            predicted, ms = [], []
            for row in rows:
                started = time.perf_counter()
                predicted.append(baseline(row["response"], row["reference"]))
                ms.append((time.perf_counter() - started) * 1e3)
            baselines[key] = predicted
            report[key] = {"summary": _summary(rows, predicted, ms), "per_category": _per_category(rows, predicted)}
            report["trap_false_positives"][key] = _trap_fp(report[key]["per_category"])
        report["differences"] = [
            {**_row_view(row, verdict), "raw_math_verify": raw_correct}
            for row, verdict, raw_correct in zip(rows, verdicts, baselines["raw_math_verify"])
            if raw_correct != verdict.correct
        ]
    return report


def _confusion(expected: list[bool], predicted: list[bool]) -> dict[str, Any]:
    tp = sum(e and p for e, p in zip(expected, predicted))
    tn = sum(not e and not p for e, p in zip(expected, predicted))
    fp = sum(not e and p for e, p in zip(expected, predicted))
    fn = sum(e and not p for e, p in zip(expected, predicted))
    n = len(expected)
    return {"n": n, "tp": tp, "tn": tn, "fp": fp, "fn": fn, "accuracy": (tp + tn) / n if n else 0.0}


def _summary(rows: list[dict[str, Any]], predicted: list[bool], ms: list[float]) -> dict[str, Any]:
    summary = _confusion([r["expected"] for r in rows], predicted)
    ordered = sorted(ms)
    summary["latency_ms"] = {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "max": ordered[-1],
    }
    return summary


def _per_category(rows: list[dict[str, Any]], predicted: list[bool]) -> dict[str, dict[str, Any]]:
    categories = sorted({r["category"] for r in rows})
    return {
        c: _confusion([r["expected"] for r in rows if r["category"] == c], [p for r, p in zip(rows, predicted) if r["category"] == c])
        for c in categories
    }


def _trap_fp(per_category: dict[str, dict[str, Any]]) -> int:
    return sum(stats["fp"] for category, stats in per_category.items() if category in TRAP_CATEGORIES)


def _verdict_view(verdict: Verdict) -> dict[str, Any]:
    return {"verifier": verdict.verifier, "correct": verdict.correct, "reason": verdict.reason, "extracted": verdict.extracted}


def _row_view(row: dict[str, Any], verdict: Verdict) -> dict[str, Any]:
    return {
        "line": row["line"],
        "category": row["category"],
        "origin": row.get("origin"),
        "expected": row["expected"],
        "reference": row["reference"],
        "response_tail": row["response"][-160:],
        **_verdict_view(verdict),
    }


# -- printing -------------------------------------------------------------------------------------------------
def print_report(report: dict[str, Any], console: Any = None) -> None:
    """Print an audit report as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    name = report["verifier"]
    raw = report.get("raw_math_verify")

    table = Table(title=f"Verifier audit: {report['path']} ({report['n']} rows)")
    for column in ("verifier", "accuracy", "TP", "TN", "FP", "FN", "FP on traps", "p50 ms", "p99 ms"):
        table.add_column(column, justify="left" if column == "verifier" else "right", no_wrap=column == "verifier")
    boxed = report.get("boxed_math_verify")
    lines = [(name, report["summary"], report["trap_false_positives"]["verifier"])]
    if raw:
        lines.append(("raw math-verify", raw["summary"], report["trap_false_positives"]["raw_math_verify"]))
    if boxed:
        lines.append(("boxed-gold math-verify", boxed["summary"], report["trap_false_positives"]["boxed_math_verify"]))
    for label, s, trap_fp in lines:
        table.add_row(label, f"{s['accuracy']:.3f}", *(str(s[k]) for k in ("tp", "tn", "fp", "fn")), str(trap_fp),
                      f"{s['latency_ms']['p50']:.1f}", f"{s['latency_ms']['p99']:.1f}")
    console.print(table)

    # One column group per checker: accuracy, false positives, false negatives, for each category.
    checkers = [(name, report["per_category"])]
    if raw:
        checkers.append(("raw", raw["per_category"]))
    if boxed:
        checkers.append(("boxed-gold", boxed["per_category"]))
    title = "Per category: accuracy FP/FN" + (" beside math-verify (raw, boxed-gold)" if raw else "")
    table = Table(title=title)
    table.add_column("category", no_wrap=True)
    table.add_column("n", justify="right")
    for label, _ in checkers:
        table.add_column(label, justify="right", no_wrap=True)
    for category, s in report["per_category"].items():
        cells = [category + (" *" if category in TRAP_CATEGORIES else ""), str(s["n"])]
        for _, per_category in checkers:
            c = per_category[category]
            cells.append(f"{c['accuracy']:.2f} {c['fp']}/{c['fn']}")
        table.add_row(*cells)
    console.print(table)
    console.print("* trap category (known false-positive mode); cells: accuracy FP/FN")
    console.print("reasons: " + ", ".join(f"{k}={v}" for k, v in report["reasons"].items()))

    if report["disagreements"]:
        members = max(len(d["members"]) for d in report["disagreements"])
        table = Table(title=f"Rows where ensemble members disagree ({len(report['disagreements'])})")
        for column in ("line", "category", "expected", "ensemble", *(f"member {i + 1}" for i in range(members))):
            table.add_column(column)
        for d in report["disagreements"]:
            table.add_row(str(d["line"]), d["category"], str(d["expected"]), _verdict_cell(d),
                          *(_verdict_cell(m) for m in d["members"]))
        console.print(table)

    if report["misjudged"]:
        table = Table(title=f"Rows {name} gets wrong ({len(report['misjudged'])})")
        for column in ("line", "category", "expected", "verdict", "reference", "response (end)"):
            table.add_column(column, overflow="fold")
        for m in report["misjudged"]:
            table.add_row(str(m["line"]), m["category"], str(m["expected"]), _verdict_cell(m), _show(m["reference"], 40),
                          _show(m["response_tail"], 80))
        console.print(table)
    if report["rejected"]:
        for r in report["rejected"]:
            console.print(f"[red]line {r['line']} rejected:[/red] {r['reason']}")


def _verdict_cell(v: dict[str, Any]) -> str:
    extracted = "" if v["extracted"] is None else f" [{_show(v['extracted'], 30)}]"
    return f"{v['verifier']}: {'✓' if v['correct'] else '✗'} {v['reason']}{extracted}"


def _show(text: str, width: int) -> str:
    """Printable, one-line, escaped for rich markup."""
    from rich.markup import escape

    text = text.encode("utf-8", errors="backslashreplace").decode("utf-8").replace("\n", "⏎")
    return escape(text if len(text) <= width else text[: width - 1] + "…")


# -- command line ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``audit-verifier LABELLED.jsonl [--verifier NAME] [-o KEY=VALUE ...]``."""
    parser.add_argument("labelled", help="JSON lines with response, reference, expected (bool), category")
    parser.add_argument("--verifier", default="math", help="verifier name (default: math)")
    parser.add_argument(
        "-o", "--option", action="append", default=[], metavar="KEY=VALUE",
        help="verifier option; VALUE is read as YAML (e.g. -o timeout_s=2 -o 'members=[math, numeric]')",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the full report as JSON to PATH")
    parser.add_argument("--no-raw", action="store_true", help="skip the math-verify baselines (raw and boxed-gold)")
    parser.add_argument("--min-accuracy", type=float, metavar="X", help="exit with status 1 if accuracy < X")


def run_cli(args: argparse.Namespace) -> int:
    """Entry point of ``audit-verifier``: returns the process exit code."""
    import yaml

    options: dict[str, Any] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"error: option {item!r} is not KEY=VALUE (for example -o timeout_s=2)")
            return 2
        options[key.strip()] = yaml.safe_load(value)
    try:
        report = audit(args.labelled, args.verifier, compare_raw=not args.no_raw, **options)
    except (OSError, ValueError) as err:
        print(f"error: {err}")
        return 2
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=True))
    if args.min_accuracy is not None and report["summary"]["accuracy"] < args.min_accuracy:
        print(f"accuracy {report['summary']['accuracy']:.3f} is below --min-accuracy {args.min_accuracy}")
        return 1
    return 0


if __name__ == "__main__":
    import sys

    _parser = argparse.ArgumentParser(prog="python -m verifiers.audit", description=__doc__,
                                      formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(_parser)
    sys.exit(run_cli(_parser.parse_args()))

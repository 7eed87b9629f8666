"""The curation report: what a rule kept and why the rest went, as PNG plots, JSON and Markdown.

Written by the curate stage into ``run_dir/curation_report/``:

- ``pass_rate.png``: histogram of problem pass rates before curation (every problem) and after (kept problems);
- ``kept.png``: kept problems by level, and rows by drop reason;
- ``report.json`` / ``report.md``: the same counts, plus rows quarantined by earlier stages (dedup, screen) by reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline import columns as C


def summarize(samples, decisions, rejects: dict[str, int] | None = None) -> dict[str, Any]:
    """Counts of a plan: problems and rows kept, kept by level, dropped rows by reason, pass rates before/after."""
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({
        "pid": samples[C.PROBLEM_ID].to_numpy(),
        "level": samples[C.LEVEL].to_numpy() if C.LEVEL in samples else np.full(len(samples), None),
        "rate": samples[C.PASS_RATE].to_numpy(dtype=float) if C.PASS_RATE in samples else np.nan,
        "kept": decisions[C.KEPT].to_numpy(), "drop": decisions[C.DROP_REASON].to_numpy(),
        "noise": decisions[C.GENERATOR_NOISE].to_numpy(), "oracle": decisions[C.ORACLE_NOISE].to_numpy(),
    })
    problems = frame.groupby("pid", sort=False).agg(level=("level", "first"), rate=("rate", "first"),
                                                   kept=("kept", "any"), oracle=("oracle", "first"))
    level_key = problems["level"].map(lambda v: "none" if v is None or (isinstance(v, float) and np.isnan(v)) else str(int(v)))
    by_level = {
        lv: {"problems": int((level_key == lv).sum()), "kept_problems": int(((level_key == lv) & problems["kept"]).sum())}
        for lv in sorted(level_key.unique(), key=lambda s: (s == "none", int(s) if s != "none" else 0))
    }
    dropped = frame.loc[~frame["kept"], "drop"].value_counts()
    return {
        "rule": str(decisions[C.RULE].iloc[0]) if len(decisions) else None,
        "rows": int(len(frame)),
        "kept_rows": int(frame["kept"].sum()),
        "problems": int(len(problems)),
        "kept_problems": int(problems["kept"].sum()),
        "dropped_rows_by_reason": {str(k): int(v) for k, v in dropped.items()},
        "kept_by_level": by_level,
        "generator_noise_rows": {str(k): int(v) for k, v in frame.loc[frame["kept"], "noise"].dropna().value_counts().items()},
        "oracle_noise_problems": int(problems["oracle"].sum()),
        "pass_rate_before": [float(x) for x in problems["rate"].to_numpy()],
        "pass_rate_after": [float(x) for x in problems.loc[problems["kept"], "rate"].to_numpy()],
        "quarantined_upstream_by_reason": dict(rejects or {}),
    }


def upstream_rejects(run_dir: str | Path) -> dict[str, int]:
    """Rows earlier stages quarantined (run_dir/rejects/*), by stage and reason category (text before ':')."""
    from pipeline import io

    out: dict[str, int] = {}
    root = Path(run_dir) / "rejects"
    if not root.is_dir():
        return out
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        table = io.read_columns(stage_dir, [C.REJECT_REASON])
        for reason in table[C.REJECT_REASON].to_pylist() if table.num_rows else []:
            key = f"{stage_dir.name}: {str(reason).split(':')[0].strip()}"
            out[key] = out.get(key, 0) + 1
    return out


def write_report(samples, decisions, cfg, out_dir: str | Path, run_dir: str | Path | None = None) -> Path:
    """Write the PNGs, report.json and report.md for a plan into ``out_dir``; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(samples, decisions, upstream_rejects(run_dir) if run_dir else None)
    summary["config"] = cfg.model_dump(mode="json", exclude={"resources"})
    _plots(summary, out)
    (out / "report.json").write_text(json.dumps(summary, indent=1))
    (out / "report.md").write_text(_markdown(summary))
    return out


def _plots(summary: dict[str, Any], out: Path) -> None:
    import numpy as np

    from pipeline.plots import pyplot

    plt = pyplot()

    bins = np.linspace(-0.025, 1.025, 22)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(summary["pass_rate_before"], bins=bins, alpha=0.5, label=f"before ({summary['problems']} problems)")
    ax.hist(summary["pass_rate_after"], bins=bins, alpha=0.8, label=f"after ({summary['kept_problems']} kept)")
    ax.set_xlabel("pass rate")
    ax.set_ylabel("problems")
    ax.set_title(f"pass rate before and after curation: {summary['rule']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "pass_rate.png", dpi=110)
    plt.close(fig)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    levels = list(summary["kept_by_level"])
    totals = [summary["kept_by_level"][lv]["problems"] for lv in levels]
    kept = [summary["kept_by_level"][lv]["kept_problems"] for lv in levels]
    x = np.arange(len(levels))
    left.bar(x - 0.2, totals, width=0.4, label="pool")
    left.bar(x + 0.2, kept, width=0.4, label="kept")
    left.set_xticks(x, levels)
    left.set_xlabel("level")
    left.set_ylabel("problems")
    left.legend(fontsize=8)
    reasons = summary["dropped_rows_by_reason"]
    names = list(reasons) + ["kept"]
    counts = list(reasons.values()) + [summary["kept_rows"]]
    right.barh(np.arange(len(names)), counts, color=["tab:gray"] * len(reasons) + ["tab:green"])
    right.set_yticks(np.arange(len(names)), names, fontsize=8)
    right.set_xlabel("rows")
    right.set_title("rows by outcome", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "kept.png", dpi=110)
    plt.close(fig)


def _markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"# Curation report: {summary['rule']}",
        "",
        f"{summary['kept_problems']} of {summary['problems']} problems kept, {summary['kept_rows']} of "
        f"{summary['rows']} rows. Oracle-noise problems: {summary['oracle_noise_problems']}. Generator-noise rows: "
        f"{summary['generator_noise_rows'] or 0}.",
        "",
        "![pass rate](pass_rate.png) ![kept](kept.png)",
        "",
        "| level | problems | kept |",
        "|---|---|---|",
        *[f"| {lv} | {v['problems']} | {v['kept_problems']} |" for lv, v in summary["kept_by_level"].items()],
        "",
        "| rows dropped by reason | rows |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in summary["dropped_rows_by_reason"].items()],
    ]
    if summary["quarantined_upstream_by_reason"]:
        lines += ["", "| quarantined upstream (stage: reason) | rows |", "|---|---|",
                  *[f"| {k} | {v} |" for k, v in summary["quarantined_upstream_by_reason"].items()]]
    return "\n".join(lines) + "\n"

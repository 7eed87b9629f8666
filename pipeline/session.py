"""A whole `lessmore run`: the stages, then fine-tuning and evaluation when the config asks for them."""

from __future__ import annotations

from pipeline.config import RunConfig


def run_all(cfg: RunConfig, console=None) -> int:
    """Run everything the config names; print a summary and where the outputs are. Returns an exit code."""
    from rich.console import Console
    from rich.table import Table

    from pipeline.runner import run

    console = console or Console(stderr=True)
    result = run(cfg, console=console)
    table = Table(title=f"lessmore run: {result.run_dir}")
    for col in ("stage", "status", "rows in", "rows out", "rejected", "kept", "dropped", "seconds"):
        table.add_column(col)
    for r in result.stages:
        table.add_row(r.name, r.status, str(r.rows_in), str(r.rows_out), str(r.rejected),
                      "-" if r.kept is None else str(r.kept), str(sum(r.dropped.values())) if r.dropped else "-",
                      f"{r.seconds:.1f}")
    console.print(table)
    if "dataset" in result.outputs:
        print(f"dataset: {result.outputs['dataset']}")
    return 0

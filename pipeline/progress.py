"""A stage's progress as a person reads it: its name (``01_sample``), rows done of the total, rows/s and the time
left. On a terminal it is a live rich bar; elsewhere (a log file, CI) a line every ``interval`` seconds and one at
the end, so a long stage never looks stuck."""

from __future__ import annotations

import time


def duration(seconds: float) -> str:
    """``1:02:03`` / ``2:03``: a short clock for ETAs and elapsed times."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class StageProgress:
    """Rows done of ``total`` for one stage (``done`` of them already before this run: a resume).

    Use as a context manager and call :meth:`advance` as rows finish; ``enabled=False`` shows nothing (the stage's
    summary line says what it did)."""

    def __init__(self, name: str, total: int, console, done: int = 0, enabled: bool = True,
                 interval: float = 30.0) -> None:
        self.name, self.total, self.console, self.enabled, self.interval = name, total, console, enabled, interval
        self.done = self.start_done = done
        self.started = self.last_line = time.monotonic()
        self._live = None
        self._task = None

    # -- figures -------------------------------------------------------------------------------------------------
    @property
    def rate(self) -> float | None:
        """Rows per second in this run (None before the first rows)."""
        elapsed = time.monotonic() - self.started
        rows = self.done - self.start_done
        return rows / elapsed if rows > 0 and elapsed > 0 else None

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate (None while unknown)."""
        rate = self.rate
        return (self.total - self.done) / rate if rate else None

    def line(self) -> str:
        """``01_sample: 200/300 rows (67%), 12.5 rows/s, ETA 0:08``; at the end the elapsed time instead of the ETA."""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return f"{self.name}: {self.done}/{self.total} rows{pct}, {self._stats()}"

    def _stats(self) -> str:
        rate, eta = self.rate, self.eta
        text = f"{rate:.1f} rows/s" if rate else "- rows/s"
        if self.done >= self.total:
            return text + f", {duration(time.monotonic() - self.started)}"
        return text + (f", ETA {duration(eta)}" if eta is not None else ", ETA -")

    # -- display -------------------------------------------------------------------------------------------------
    def __enter__(self) -> "StageProgress":
        if self.enabled and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._live = Progress(TextColumn("[bold cyan]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("rows, {task.fields[stats]}"), console=self.console)
            self._task = self._live.add_task(self.name, total=self.total, completed=self.done, stats=self._stats())
            self._live.start()
        return self

    def advance(self, rows: int) -> None:
        """Count ``rows`` more rows done."""
        self.done += rows
        if not self.enabled:
            return
        if self._live is not None:
            self._live.update(self._task, completed=self.done, stats=self._stats())
        elif time.monotonic() - self.last_line >= self.interval and self.done < self.total:
            self.last_line = time.monotonic()
            self.console.print(self.line(), highlight=False, soft_wrap=True)

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self._task, completed=self.done, stats=self._stats())
            self._live.stop()
        elif self.enabled and exc[0] is None:
            self.console.print(self.line(), highlight=False, soft_wrap=True)

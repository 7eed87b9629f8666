"""Ray Tune callbacks of a sweep: a line per finished trial and a summary (``TrialReporter``), and the experiment
trackers that ``tune.callbacks`` names, through Ray Tune's own logger callbacks (``tracker_callback``)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from pipeline.progress import duration
from pipeline.sweep.config import TrackerConfig


def trial_error(metrics: dict[str, Any]) -> tuple[float, float, float] | None:
    """(error, low, high) of a trial's last report: 1 - the overall accuracy with its interval, else the exact test
    error of a linear-world trial (no interval: NaNs). None when the trial reported neither."""
    acc = metrics.get("accuracy_overall")
    if acc is not None and not math.isnan(acc):
        high, low = metrics.get("accuracy_overall_low", math.nan), metrics.get("accuracy_overall_high", math.nan)
        return 1.0 - acc, 1.0 - low, 1.0 - high
    exact = metrics.get("exact_error")
    if exact is not None and not math.isnan(exact):
        return float(exact), math.nan, math.nan
    return None


def format_error(error: tuple[float, float, float] | None) -> str:
    """``error 0.62 [0.55, 0.70]`` (or ``error 0.12``, or ``no error reported``)."""
    if error is None:
        return "no error reported"
    est, low, high = error
    interval = "" if math.isnan(low) or math.isnan(high) else f" [{low:.3f}, {high:.3f}]"
    return f"error {est:.3f}{interval}"


class TrialReporter(Callback):
    """Prints one line per finished trial (its cell, error with interval, trials left, ETA) and a summary at the end.

    Tune keeps its callbacks in the experiment state it restores on resume, so the console is not pickled and the
    counts restart in ``setup``. Trials finished in an earlier run count as done; trials read back from their result
    files (``from_cache``) count as done without counting towards the ETA's rate."""

    def __init__(self, total: int, console=None) -> None:
        self.total = total
        self.console = console
        self.setup()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "console": None}

    def setup(self, *args, **kwargs) -> None:
        self.started = time.monotonic()
        self.computed = 0
        self.ok = 0
        self.failed = 0
        self.seen: set[str] = set()

    def _print(self, text: str) -> None:
        if self.console is None:
            from rich.console import Console

            self.console = Console(stderr=True)
        self.console.print(text, highlight=False, soft_wrap=True)  # one line per trial, also in a log

    def _left(self, trials) -> int:
        done = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")} | self.seen
        return max(0, self.total - len(done))

    def _eta(self, left: int) -> str:
        if not left:
            return ""
        if not self.computed:
            return ", ETA -"
        return f", ETA {duration((time.monotonic() - self.started) / self.computed * left)}"

    @staticmethod
    def _name(trial) -> str:
        return (trial.config.get("trial") or {}).get("trial_id") or str(trial)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        result = trial.last_result or {}
        self.seen.add(trial.trial_id)
        self.ok += 1
        cached = bool(result.get("from_cache"))
        self.computed += not cached
        seconds = result.get("seconds")
        took = " (read back)" if cached else (f" ({seconds:.0f}s)" if seconds is not None else "")
        left = self._left(trials)
        self._print(f"[bold]trial[/] {self._name(trial)}: {format_error(trial_error(result))}{took}; "
                    f"{left} left{self._eta(left)}")

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.seen.add(trial.trial_id)
        self.failed += 1
        self.computed += 1
        left = self._left(trials)
        self._print(f"[bold red]trial {self._name(trial)} failed[/] (see the report); {left} left{self._eta(left)}")

    def on_experiment_end(self, trials: list, **info) -> None:
        ok = sum(t.status == "TERMINATED" for t in trials)
        failed = sum(t.status == "ERROR" for t in trials)
        self._print(f"[bold]trials[/]: {ok} ok, {failed} failed of {self.total}; {self.computed} ran here in "
                    f"{duration(time.monotonic() - self.started)}")


def tracker_arguments(tracker: TrackerConfig, name: str, run_dir: Path) -> tuple[str, dict[str, Any]]:
    """The Ray Tune logger callback of a tracker (its import path) and its keyword arguments. Nothing leaves this
    machine unless the config says so: MLflow's default store and W&B's offline runs are under ``run_dir``.
    Credentials come from the environment only (the trackers read WANDB_API_KEY, MLFLOW_TRACKING_TOKEN, ...)."""
    project = tracker.project or name
    if tracker.kind == "mlflow":
        # SQLite, not a ./mlruns directory: MLflow refuses its file store unless MLFLOW_ALLOW_FILE_STORE is set.
        uri = tracker.tracking_uri or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        return "ray.air.integrations.mlflow.MLflowLoggerCallback", {
            "tracking_uri": uri, "experiment_name": project, "tags": dict(tracker.tags) or None, "save_artifact": False}
    # W&B tags are plain strings; wandb.init takes mode and dir through the callback's keyword arguments.
    tags = [f"{key}:{value}" for key, value in sorted(tracker.tags.items())] or None
    return "ray.air.integrations.wandb.WandbLoggerCallback", {
        "project": project, "group": name, "mode": tracker.mode, "dir": str(run_dir), "tags": tags,
        "upload_checkpoints": False}


def tracker_callbacks(trackers: tuple[TrackerConfig, ...], name: str, run_dir: Path) -> list:
    """The Ray Tune logger callbacks of ``tune.callbacks`` (see ``tracker_arguments``), each set up once here so that
    a tracker that cannot start (a server that does not answer, W&B online without a key) stops the sweep in one line
    before any trial runs, not in a traceback."""
    import importlib

    from pipeline.config import ConfigError

    callbacks = []
    for i, tracker in enumerate(trackers):
        path, kwargs = tracker_arguments(tracker, name, run_dir)
        module, _, cls = path.rpartition(".")
        try:
            callback = getattr(importlib.import_module(module), cls)(**kwargs)
            callback.setup()  # Tune sets it up again at the start; both trackers allow that
        except Exception as e:  # noqa: BLE001 - any failure of a third-party tracker, reported in one line
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            raise ConfigError(f"tune.callbacks.{i}: the {tracker.kind} tracker does not start: {reason}") from None
        callbacks.append(callback)
    return callbacks

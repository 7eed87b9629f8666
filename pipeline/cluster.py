"""Reaching Ray: the one place that starts the embedded local Ray or attaches to a cluster, and that keeps Ray's known
noise off the terminal.

The runner, the sweep and fine-tuning call :func:`connect`; nothing else calls ``ray.init``. What is filtered is
listed here (``LOG_NOISE``, ``WARNING_NOISE``, ``NATIVE_NOISE``) and nothing else is: Ray Data's INFO lines (its own
progress log; each stage shows its own progress instead) and messages that tell a user nothing they can act on. Ray's
full logs stay in its session directory (``/tmp/ray/session_latest/logs``)."""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import warnings

from pydantic import Field

from stages.base import Frozen


class RayConfig(Frozen):
    """How lessmore reaches Ray, and what it shows of it."""

    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded local Ray (None: all). Ignored on a cluster.")
    address: str | None = Field(
        None, description="Cluster address; the RAY_ADDRESS environment variable takes precedence. None: embedded local Ray."
    )
    progress_bars: bool = Field(
        True, description="Show each stage's progress: rows done of the total, rows/s and the time left (a live bar on "
        "a terminal, a line every 30 s otherwise). Off: one line per stage when it finishes."
    )
    log_to_driver: bool = Field(
        True, description="Stream the Ray workers' output to this terminal, prefixed with the worker (their warnings, "
        "e.g. a batch that failed and was retried row by row). Off: only in Ray's session logs."
    )
    dashboard: bool = Field(
        False, description="Start the Ray dashboard with the embedded local Ray (Ray prints its address). A cluster "
        "has its own."
    )


# Ray and Ray Data log records that are not for a user: advice about Ray Data's own progress UIs (lessmore shows its
# own progress) and the line that announces its logging progress mode.
LOG_NOISE = (
    re.compile(r"A new progress UI is available"),
    re.compile(r"^Progress bars (for operators )?disabled"),
    re.compile(r"^Progress will be logged because stdout is a non-interactive terminal"),
)
# (message regex, category) of Python warnings that are not for a user: a stage with fewer batches than its pool has
# workers (the usual case for a small run), and a pyarrow deprecation inside libraries' sorting code.
WARNING_NOISE = (
    (r"The (maximum|minimum) number of concurrent (tasks|actors) for '.*' is set to", UserWarning),
    (r"Specifying null_placement in SortOptions is deprecated", FutureWarning),
)
# Lines Ray's C++ core worker writes straight to the driver's stderr. Ray Data hands every actor pool its function
# through the object store, so each stage would print this one (ray-project/ray#57733); nothing a user can change.
NATIVE_NOISE = (
    re.compile(rb"core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the object store and "
               rb"max_restarts > 0"),
)


class RayNoiseFilter(logging.Filter):
    """Drops Ray Data's INFO records and the ``LOG_NOISE`` messages from a console handler (warnings stay)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("ray.data") and record.levelno < logging.WARNING:
            return False
        message = record.getMessage()
        return not any(pattern.search(message) for pattern in LOG_NOISE)


def ignore_known_warnings() -> None:
    """Ignore the ``WARNING_NOISE`` warnings in this process (cheap: the runner calls it even when Ray never starts)."""
    for message, category in WARNING_NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)


def quiet_ray_noise() -> None:
    """Filter the known noise (see the module docstring) in this process: Python warnings, and Ray's console log
    handlers. Idempotent; the log files keep everything."""
    ignore_known_warnings()
    import ray.data  # noqa: F401  (configures the "ray.data" logger and its console handler)

    for name in ("ray", "ray.data"):
        for handler in logging.getLogger(name).handlers:
            is_console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
            if is_console and not any(isinstance(f, RayNoiseFilter) for f in handler.filters):
                handler.addFilter(RayNoiseFilter())


class NativeStderrFilter:
    """Routes this process's file descriptor 2 through a pipe that drops ``NATIVE_NOISE`` lines.

    Python's ``sys.stderr`` is pointed at the real stderr first, so rich still sees a terminal and Python's own output
    goes straight through; what reaches descriptor 2 from native code (Ray's C++ logs) passes the filter."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self.real = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        old = sys.stderr
        sys.stderr = open(os.dup(self.real), "w", buffering=1, encoding=old.encoding, errors=old.errors)
        for handler in logging.getLogger().handlers:  # lessmore's log lines keep their order with its prints
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(sys.stderr)
        self.thread = threading.Thread(target=self._pump, args=(read_end,), name="lessmore-stderr-filter", daemon=True)
        self.thread.start()
        atexit.register(self.close)  # registered before ray.init: runs after Ray's own shutdown

    def _pump(self, read_end: int) -> None:
        pending = b""
        while chunk := os.read(read_end, 65536):
            *lines, pending = (pending + chunk).split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not any(p.search(line) for p in NATIVE_NOISE))
            if pending and not pending.startswith(b"["):  # only Ray's log lines start with "[": hold nothing else
                out, pending = out + pending, b""
            while out:
                out = out[os.write(self.real, out):]
        if pending:
            os.write(self.real, pending)

    def close(self) -> None:
        """Put the real stderr back on descriptor 2; the pipe's last writer closes, so the filter passes on what
        is left in it and stops."""
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.real, 2)
        self.thread.join(timeout=2)


_NATIVE_FILTER: NativeStderrFilter | None = None
# Environment of the embedded Ray's workers.
WORKER_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _filter_native_stderr() -> None:
    """Install :class:`NativeStderrFilter` once, where stderr is the process's own (not under a test's capture)."""
    global _NATIVE_FILTER
    if _NATIVE_FILTER is not None or sys.stderr is not sys.__stderr__:
        return
    try:
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, OSError, ValueError):
        return
    _NATIVE_FILTER = NativeStderrFilter()


def connect(cfg: RayConfig | None = None, console=None) -> None:
    """Start the embedded local Ray, or attach to the cluster that ``RAY_ADDRESS`` or ``cfg.address`` names.

    Does nothing when Ray is already up in this process (a sweep's trials, fine-tuning after a run)."""
    import ray

    quiet_ray_noise()
    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    _filter_native_stderr()
    address = os.environ.get("RAY_ADDRESS") or cfg.address
    if address:
        if console is not None:
            console.print(f"[bold]ray[/]: attaching to cluster at {address}")
        ray.init(address=address, log_to_driver=cfg.log_to_driver)  # the cluster's own environment
        return
    if not _is_terminal():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # worker lines in a log file without colour codes
    # The workers' model loads show no progress bars (the stage's own progress is shown instead).
    # Ray prints the dashboard's address itself ("View the dashboard at ...").
    ray.init(num_cpus=cfg.num_cpus, include_dashboard=cfg.dashboard, log_to_driver=cfg.log_to_driver,
             runtime_env={"env_vars": WORKER_ENV})

"""The run directory: a stamp says lessmore made it, a lock lets one run at a time use it, and nothing lessmore
deletes or rewrites in it is a symlink (which could point outside ``output_root``)."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline import io
from pipeline.config import ConfigError
from pipeline.registry import STAGES

STAMP = "_LESSMORE"  # written once, into a directory lessmore created or found empty
LOCK = "_LOCK"  # the OS lock; it is released when its holder exits, however it exits
HOLDER = "_LOCK.json"  # who holds the lock: pid, host, start time
# What lessmore writes at the top of a run directory (besides its stage directories NN_<stage>).
RUN_FILES = {"config.yaml", "stats.json", "rejects", "curation_report", "finetune", "evaluate", STAMP, LOCK, HOLDER}
_STAGE_DIR = re.compile(rf"^\d\d_({'|'.join(map(re.escape, STAGES))})$")


class RunDirError(ConfigError):
    """The run directory cannot be used as it is; the message says what to change."""


def is_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` is a lessmore run: it carries the stamp, or (written before the stamp existed) holds only
    what lessmore writes, with at least one stage directory that lessmore marked."""
    try:
        stamp = json.loads((run_dir / STAMP).read_text())
        return isinstance(stamp, dict) and stamp.get("lessmore") == "run"
    except (OSError, ValueError):
        pass
    entries = [p for p in run_dir.iterdir() if not p.name.startswith(".")]
    stage_dirs = [p for p in entries if _STAGE_DIR.match(p.name)]
    return (all(p.name in RUN_FILES or p in stage_dirs for p in entries)
            and any((p / io.MARKER).is_file() or (p / io.STARTED).is_file() for p in stage_dirs))


def check_is_run(run_dir: Path) -> None:
    """Refuse a directory that exists, is not empty and is not a lessmore run (lessmore would delete in it)."""
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        raise RunDirError(f"run directory {run_dir} is not a directory; choose another name or run_dir")
    if not run_dir.exists() or not any(run_dir.iterdir()) or is_run(run_dir):
        return
    raise RunDirError(f"run directory {run_dir} exists and is not a lessmore run (it has no {STAMP}); "
                      "choose another name or run_dir, or empty it")


def check_no_symlinks(run_dir: Path) -> None:
    """Refuse symlinks where lessmore deletes and writes: at the top of the run directory and in ``rejects/``."""
    for parent in (run_dir, run_dir / "rejects"):
        if not parent.is_dir() or parent.is_symlink():
            continue
        for path in sorted(parent.iterdir()):
            if path.is_symlink():
                raise RunDirError(f"{path} is a symlink; lessmore deletes and writes there, so it must be a plain "
                                  f"directory or file inside the run directory: remove the link")


def holder(run_dir: Path) -> str:
    """Who holds the run directory's lock, in words (from its side file)."""
    try:
        info = json.loads((run_dir / HOLDER).read_text())
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return f"another process (its {HOLDER} cannot be read)"


@contextmanager
def claim(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for one run: checked to be a lessmore run (or new), stamped, locked for as long as the block
    runs, and free of symlinks. Nested claims in one process share the lock. A second process gets a RunDirError
    naming the holder; a holder that died leaves no lock behind (the OS releases it)."""
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir)
    check_is_run(run_dir)
    check_no_symlinks(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK, is_singleton=True)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunDirError(f"run directory {run_dir} is in use by {holder(run_dir)}; wait for that run to end or "
                          "stop it, or choose another name or run_dir") from None
    try:
        if lock.lock_counter == 1:
            started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
            io.write_text_atomic(run_dir / HOLDER, json.dumps(
                {"pid": os.getpid(), "host": socket.gethostname(), "started": started}))
            if not (run_dir / STAMP).is_file():
                io.write_text_atomic(run_dir / STAMP, json.dumps({"lessmore": "run", "created": started}))
        yield
    finally:
        if lock.lock_counter == 1:
            (run_dir / HOLDER).unlink(missing_ok=True)
        lock.release()

"""Reaching Ray: the one place that starts the embedded local Ray or attaches to a cluster.

The runner, the sweep and fine-tuning call :func:`connect`; nothing else calls ``ray.init``."""

from __future__ import annotations

import os

from pydantic import Field

from stages.base import Frozen


class RayConfig(Frozen):
    """How lessmore reaches Ray."""

    num_cpus: int | None = Field(None, ge=1, description="CPUs of the embedded local Ray (None: all). Ignored on a cluster.")
    address: str | None = Field(
        None, description="Cluster address; the RAY_ADDRESS environment variable takes precedence. None: embedded local Ray."
    )
    progress_bars: bool = Field(True, description="Show Ray Data progress bars.")


def connect(cfg: RayConfig | None = None, console=None) -> None:
    """Start the embedded local Ray, or attach to the cluster that ``RAY_ADDRESS`` or ``cfg.address`` names.

    Does nothing when Ray is already up in this process (a sweep's trials, fine-tuning after a run)."""
    import ray

    if ray.is_initialized():
        return
    cfg = cfg or RayConfig()
    address = os.environ.get("RAY_ADDRESS") or cfg.address
    if address:
        if console is not None:
            console.print(f"[bold]ray[/]: attaching to cluster at {address}")
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=False)

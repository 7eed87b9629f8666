"""Shared fixtures. Tests run offline and on 2 CPU cores."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def toy_test_model() -> str:
    """The fast 'test' variant of the toy model (built once into the cache, then reused)."""
    from pipeline.toyworld import ensure_toy_model

    return str(ensure_toy_model("test", progress=False))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray

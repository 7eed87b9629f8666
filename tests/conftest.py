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
    from pipeline.toymodel import ensure_toy_model

    return str(ensure_toy_model("test", progress=False))


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray



@pytest.fixture
def fake_sample_backend(monkeypatch, tmp_path):
    """``install(backend_cls, name)``: a model directory whose sampling goes through ``backend_cls`` instead of
    transformers; returns its path.

    The sample stage resolves and fingerprints the directory as usual, so stage caches and skips behave as with a
    real model, while the generations come from the fake.
    """
    import json

    import stages.sample as sample_module
    import stages.sample.hf as hf_module

    def install(backend_cls, name: str = "fake-model") -> str:
        model_dir = tmp_path / name
        model_dir.mkdir()
        (model_dir / "config.json").write_text(json.dumps({"model_type": "fake"}))
        # The real backend also takes the worker's torch thread count; fakes need only (cfg, path).
        monkeypatch.setattr(hf_module, "HFBackend", lambda cfg, path, threads=1: backend_cls(cfg, path))
        monkeypatch.setattr(sample_module, "choose_backend", lambda cfg: "hf")
        return str(model_dir)

    return install

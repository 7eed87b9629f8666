"""A model that cannot load is found on the driver before any Ray work: `lessmore run` exits 2 within seconds with one
line naming the field and what to change, never a traceback. A training failure is one line too (exit 1)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, **blocks) -> Path:
    data = {
        "name": "bad-model",
        "output_root": str(tmp_path / "runs"),
        "stages": {
            "source": {"kind": "toyworld", "n": 4},
            "sample": {"model": "toy:test", "k": 1, "max_tokens": 8},
            "verify": {},
            "difficulty": {},
            "curate": {"rule": "all"},
            "export": {},
        },
    }
    for key, value in blocks.items():
        if key in ("finetune", "evaluate"):
            data[key] = value
        elif key == "screen":  # screens the problems before the generator samples them
            stages = list(data["stages"].items())
            data["stages"] = dict([stages[0], ("screen", value), *stages[1:]])
        else:
            data["stages"][key] = {**data["stages"][key], **value}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _lessmore(tmp_path: Path, command: str, config: Path) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_CACHE": str(tmp_path / "empty-hub-cache")}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", command, str(config)], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=60)
    return res, time.perf_counter() - t0


CASES = {
    "unknown-toy": ({"sample": {"model": "toy:nosuch"}}, "stages.sample.model", "choose one of toy:"),
    "missing-directory": ({"sample": {"model": "{tmp}/no-such-model"}}, "stages.sample.model",
                          "no such model directory"),
    "uncached-hub-id": ({"sample": {"model": "nosuch-org/nosuch-model"}}, "stages.sample.model",
                        "not in the local hub cache"),
    "screen-model": ({"screen": {"sample": {"model": "nosuch-org/nosuch-model"}}}, "stages.screen.sample.model",
                     "hf download nosuch-org/nosuch-model"),
    "finetune-student": ({"finetune": {"student": "toy:nosuch"}}, "finetune.student", "choose one of toy:"),
    "evaluate-model": ({"evaluate": {"model": "{tmp}/gone"}}, "evaluate.model", "no such model directory"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_model_that_cannot_load_is_one_line_and_exit_2_before_any_work(tmp_path, case):
    blocks, field, fix = CASES[case]
    blocks = yaml.safe_load(yaml.safe_dump(blocks).replace("{tmp}", str(tmp_path)))
    config = _config(tmp_path, **blocks)
    res, seconds = _lessmore(tmp_path, "run", config)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"error: {field}: ") and fix in lines[0]
    assert "Traceback" not in res.stderr + res.stdout
    assert seconds < 10
    assert not (tmp_path / "runs").exists()  # nothing ran, nothing was written


def test_validate_checks_the_models_too(tmp_path):
    res, _ = _lessmore(tmp_path, "validate", _config(tmp_path, sample={"model": "toy:nosuch"}))
    assert res.returncode == 2 and "stages.sample.model" in res.stderr and "Traceback" not in res.stderr
    res, _ = _lessmore(tmp_path, "validate", _config(tmp_path, sample={"model": "toy:test"}))
    assert res.returncode == 0, res.stderr


def test_a_directory_without_a_config_names_the_fix(tmp_path):
    (tmp_path / "weights-only").mkdir()
    res, _ = _lessmore(tmp_path, "run", _config(tmp_path, sample={"model": str(tmp_path / "weights-only")}))
    assert res.returncode == 2 and "stages.sample.model" in res.stderr and "config.json" in res.stderr


# -- training failures -------------------------------------------------------------------------------------------

def test_a_ray_train_failure_is_one_line(tmp_path, monkeypatch):
    """Ray Train V2 raises TrainingFailedError from fit(); the user sees the worker's own error, on one line."""
    import types

    from ray.train import WorkerGroupError

    import pipeline.cluster
    from pipeline import finetune as ft

    class FailingTrainer:
        def __init__(self, *args, **kwargs):
            pass

        def fit(self):
            raise WorkerGroupError("rank 0 died\nlong traceback ...",
                                   {1: ValueError("y"), 0: RuntimeError("CUDA out of memory.\nTried to allocate")})

    # A stand-in for ray.train.torch (importing the real one costs seconds): only fit() matters here.
    fake = types.SimpleNamespace(TorchTrainer=FailingTrainer, TorchConfig=lambda **k: None)
    monkeypatch.setitem(sys.modules, "ray.train.torch", fake)
    monkeypatch.setattr(pipeline.cluster, "connect", lambda *a, **k: None)
    monkeypatch.setattr(ft, "_rows_of", lambda rows: (["1+1"] * 4, ["2"] * 4))
    monkeypatch.setattr(ft, "tokenize_rows", lambda *a, **k: ({"input_ids": [[1]] * 4}, 0))
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: object())
    cfg = ft.FinetuneConfig(student=str(_model_dir(tmp_path)), steps=1, batch_size=2, micro_batch_size=1,
                            num_workers=2)
    with pytest.raises(ft.FinetuneError) as err:
        ft.finetune(cfg, [], tmp_path / "ft")
    message = str(err.value)
    assert "\n" not in message
    assert "worker 0: RuntimeError: CUDA out of memory." in message


def test_an_in_process_training_failure_is_one_line(tmp_path, monkeypatch):
    from pipeline import finetune as ft

    def boom(job, save_dir, wrap_trainer=None):
        raise RuntimeError("shapes do not match\n  at layer 3")

    monkeypatch.setattr(ft, "train_once", boom)
    monkeypatch.setattr(ft, "_rows_of", lambda rows: (["1+1"] * 2, ["2"] * 2))
    monkeypatch.setattr(ft, "tokenize_rows", lambda *a, **k: ({"input_ids": [[1]] * 2}, 0))
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: object())
    cfg = ft.FinetuneConfig(student=str(_model_dir(tmp_path)), steps=1, batch_size=2, micro_batch_size=2)
    with pytest.raises(ft.FinetuneError, match=r"^finetune: training failed: RuntimeError: shapes do not match \(") \
            as err:
        ft.finetune(cfg, [], tmp_path / "ft")
    assert "\n" not in str(err.value)


def test_a_training_failure_exits_1_with_one_line(tmp_path, monkeypatch, capsys):
    """The session turns a FinetuneError into `error: ...` and exit 1 (the run's stages had finished)."""
    from types import SimpleNamespace

    from pipeline import finetune as ft
    from pipeline import session
    from pipeline.config import parse_config

    cfg = parse_config(yaml.safe_load(_config(tmp_path, finetune={"student": "toy:test"}).read_text()))
    result = SimpleNamespace(run_dir=tmp_path, stages=[], outputs={})
    monkeypatch.setattr("pipeline.runner.run", lambda cfg, console=None: result)

    def failing_step(cfg, result, console):
        raise ft.FinetuneError("finetune: Ray Train run failed: worker 0: RuntimeError: CUDA out of memory.")

    monkeypatch.setattr(session, "_finetune_step", failing_step)
    assert session.run_all(cfg) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: finetune: Ray Train run failed: worker 0: RuntimeError: CUDA out of memory."


def _model_dir(root: Path) -> Path:
    d = root / "student"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def test_a_sweep_checks_its_generators_and_student_before_any_work(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    from pipeline.cli import main

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    for key, value in (("pool.generators.weak.model", "toy:nosuch"), ("finetune.student", "nosuch-org/nosuch-model")):
        code = main(["sweep", str(ROOT / "configs" / "phase_tiny.yaml"), "--validate", "--set", f"{key}={value}"])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {key}: "), lines

"""The stage contract as the runner and the config loader use it: every knob a config accepts does something (resources
only where workers run on Ray, verifier options checked at load), and a stage's fingerprint covers all of its code and
the content of what its config only names."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, parse_config
from pipeline.registry import STAGES, stage_class

ROOT = Path(__file__).resolve().parents[1]


def tiny() -> dict:
    return yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())


def test_registry_key_module_and_stage_name_are_one_word():
    for key in STAGES:
        stage = stage_class(key)
        assert stage.name == key
        assert stage.__module__ == f"stages.{key}"


def test_only_stages_that_run_on_ray_take_resources():
    from stages.base import OnRay

    for key in STAGES:
        stage = stage_class(key)
        assert issubclass(stage.config_model, OnRay) == (stage.kind == "map"), key


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["stages"]["source"].update(resources={"num_cpus": 2}), "stages.source.resources: unknown key"),
        (lambda d: d["stages"]["export"].update(resources={"num_cpus": 2}), "stages.export.resources: unknown key"),
        (lambda d: d["stages"]["verify"]["options"].update(timeout=3), "stages.verify.options.timeout"),
        (lambda d: d["stages"]["verify"]["options"].update(timeout_s=-1), "stages.verify.options.timeout_s"),
        (lambda d: d["stages"].update(screen={"sample": {"k": 1, "resources": {"num_cpus": 1}}}),
         "stages.screen.sample.resources: unknown key"),
        (lambda d: d.update(evaluate={"model": "toy:strong", "heldout": {"kind": "toyworld", "n": 5, "split": "x"}}),
         "evaluate.heldout"),
    ],
)
def test_knobs_that_would_do_nothing_are_errors(mutate, expected):
    data = tiny()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert expected in str(err.value)


def test_validate_names_an_unknown_verifier_option(tmp_path: Path):
    data = tiny()
    data["stages"]["verify"] = {"verifier": "math", "options": {"timeout": 3}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "validate", str(path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert res.returncode == 2
    assert "stages.verify.options.timeout" in res.stderr
    assert "Traceback" not in res.stderr


def _fake_package(tmp_path: Path, source: Path) -> types.ModuleType:
    """A copy of a package, standing in for it as a module object (what ``code_sources`` returns)."""
    copy = tmp_path / source.name
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
    module = types.ModuleType(f"copy_of_{source.name}")
    module.__file__ = str(copy / "__init__.py")
    module.__path__ = [str(copy)]
    return module


def test_editing_any_file_of_the_sample_package_changes_the_sample_fingerprint(tmp_path: Path, monkeypatch):
    import stages.sample
    from pipeline.runner import stage_fingerprint
    from stages.sample import SampleConfig, SampleStage

    # The stage's code is its whole package, the vLLM engine included.
    sources = SampleStage.code_sources()
    package_dirs = [Path(s.__file__).parent for s in sources if getattr(s, "__path__", None)]
    assert Path(stages.sample.__file__).parent in package_dirs
    assert (package_dirs[0] / "vllm.py").is_file()

    copy = _fake_package(tmp_path / "code", Path(stages.sample.__file__).parent)
    monkeypatch.setattr(SampleStage, "code_sources", classmethod(lambda cls: (copy,)))
    monkeypatch.setattr(SampleStage, "fingerprint_extra", classmethod(lambda cls, cfg: "weights"))
    cfg = SampleConfig(model="toy:strong")
    before = stage_fingerprint("upstream", "sample", cfg)
    assert stage_fingerprint("upstream", "sample", cfg) == before
    vllm_file = Path(copy.__path__[0]) / "vllm.py"
    vllm_file.write_text(vllm_file.read_text() + "\n# an edit to the vLLM engine\n")
    assert stage_fingerprint("upstream", "sample", cfg) != before
    # Where the workers run is not part of what the stage computes.
    wider = cfg.model_copy(update={"resources": cfg.resources.model_copy(update={"concurrency": 8})})
    vllm_file.write_text(vllm_file.read_text())
    assert stage_fingerprint("upstream", "sample", wider) == stage_fingerprint("upstream", "sample", cfg)


def test_the_screen_model_is_part_of_the_screen_fingerprint(tmp_path: Path):
    from pipeline.runner import stage_fingerprint
    from stages.screen import ScreenConfig

    model = tmp_path / "screen-model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (model / "model.safetensors").write_bytes(b"old weights")
    cfg = ScreenConfig.model_validate({"sample": {"model": str(model), "k": 1}})
    before = stage_fingerprint("upstream", "screen", cfg)
    (model / "model.safetensors").write_bytes(b"new weights, other size")
    assert stage_fingerprint("upstream", "screen", cfg) != before


def test_sample_workers_get_their_cpus_from_the_run_context(toy_test_model: str):
    from stages.base import RunContext
    from stages.sample import SampleConfig, SampleStage

    cfg = SampleConfig(model=toy_test_model)
    prepared = SampleStage.prepare(cfg, "", RunContext(run_dir=".", num_cpus=3))
    assert prepared["threads"] == 3


def test_every_shipped_config_reads_back_from_what_it_writes():
    """A run writes its resolved config (config.yaml) and a sweep its config JSON; both must load again unchanged."""
    from pipeline.config import load_config
    from pipeline.sweep.config import load_sweep_config, parse_sweep_config

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if path.name.startswith("phase_"):
            cfg = load_sweep_config(path)
            assert parse_sweep_config(json.loads(json.dumps(cfg.model_dump(mode="json")))) == cfg, path
        else:
            cfg = load_config(path)
            written = yaml.safe_dump(cfg.to_yaml_dict(), sort_keys=False)  # as the runner writes config.yaml
            assert parse_config(yaml.safe_load(written)) == cfg, path

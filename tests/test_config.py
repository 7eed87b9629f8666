"""Config loading: frozen models, errors that name the YAML path, overrides, and `lessmore validate`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, apply_overrides, load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]


def tiny() -> dict:
    return yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())


def test_every_shipped_config_is_valid():
    from pipeline.sweep.config import load_sweep_config

    paths = sorted((ROOT / "configs").glob("*.yaml"))
    assert len(paths) >= 5
    for path in paths:
        if path.name.startswith("phase_"):  # sweep configs
            assert load_sweep_config(path), path
        else:
            assert load_config(path).stages, path


def test_config_is_frozen():
    cfg = parse_config(tiny())
    with pytest.raises(Exception):
        cfg.seed = 3  # type: ignore[misc]
    with pytest.raises(Exception):
        cfg.stage("sample").k = 3  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda d: d["stages"]["sample"].update(temprature=0.5), "stages.sample.temprature: unknown key"),
        (lambda d: d["stages"]["sample"].update(k="many"), "stages.sample.k"),
        (lambda d: d.update(sed=1), "sed: unknown key"),
        (lambda d: d["stages"].update(sampel={}), "unknown stage 'sampel'; valid stages: source, sample"),
        (lambda d: d["stages"]["verify"].update(verifier="maths"), "unknown verifier 'maths'; valid verifiers:"),
        (lambda d: d["stages"]["curate"].update(rule="keep_hardest"), "stages.curate.rule"),
        (lambda d: d["stages"]["sample"]["resources"].update(concurrency=0), "stages.sample.resources.concurrency"),
        (lambda d: d["stages"]["curate"].update(n=10, p=0.5), "set one budget"),
        (lambda d: d.pop("stages"), "stages: required"),
    ],
)
def test_bad_configs_name_the_field(mutate, expected):
    data = tiny()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert expected in str(err.value)


def test_overrides_parse_yaml_values():
    data = apply_overrides(tiny(), ["stages.sample.k=16", "stages.curate.rule=keep_easy", "seed=7"])
    cfg = parse_config(data)
    assert cfg.stage("sample").k == 16
    assert cfg.stage("curate").rule == "keep_easy"
    assert cfg.seed == 7
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides(tiny(), ["stages.sample.k"])


def test_run_dir_cannot_escape_output_root(tmp_path):
    data = tiny() | {"output_root": str(tmp_path), "run_dir": "../elsewhere"}
    with pytest.raises(ConfigError, match="escapes output_root"):
        parse_config(data).resolved_run_dir


def test_stage_order_is_checked_before_any_work():
    from pipeline.runner import check_columns

    data = tiny()
    data["stages"] = {"source": data["stages"]["source"], "verify": {}, "sample": {}}
    with pytest.raises(ConfigError, match="stages.verify: needs column"):
        check_columns(parse_config(data))


def _validate(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "validate", str(path), *extra],
                          capture_output=True, text=True, cwd=ROOT)


def test_validate_command_exit_codes(tmp_path):
    ok = _validate(ROOT / "configs" / "tiny.yaml")
    assert ok.returncode == 0, ok.stderr
    data = tiny()
    data["stages"]["sample"]["max_tokns"] = 10
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    res = _validate(bad)
    assert res.returncode == 2
    assert "stages.sample.max_tokns" in res.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("stages: {source: [1, 2\n")
    res = _validate(broken)
    assert res.returncode == 2 and "malformed YAML" in res.stderr
    assert not (ROOT / "runs" / "tiny" / "bad").exists()
    sweep = _validate(ROOT / "configs" / "phase_smoke.yaml")  # a sweep config handed to the run validator
    assert sweep.returncode == 2 and "lessmore sweep" in sweep.stderr

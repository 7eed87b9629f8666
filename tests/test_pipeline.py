"""The tiny config end to end under Ray: outputs, resume after kill -9, skipping and partial re-runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import columns as C
from pipeline import io
from pipeline.config import parse_config

ROOT = Path(__file__).resolve().parents[1]


def small_config(tmp_path: Path, model: str, n: int = 24, k: int = 3, **curate) -> dict:
    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    data["output_root"] = str(tmp_path)
    data["ray"] = {"num_cpus": 2, "progress_bars": False}
    data["stages"]["source"].update(n=n, levels=[1, 2, 3])
    data["stages"]["sample"].update(model=model, k=k, max_tokens=48)
    data["stages"]["sample"]["resources"]["batch_size"] = 8
    # Label-agnostic, so the weak test model still yields training rows.
    data["stages"]["curate"].update(curate or {"rule": "random", "label_aware": False, "n": 10, "p": None, "trace": "any"})
    return data


def test_tiny_pipeline_end_to_end(tmp_path, toy_test_model, ray_local):
    import io as text_io

    import datasets
    from rich.console import Console

    from pipeline.runner import run

    data = small_config(tmp_path, toy_test_model)
    data["ray"]["progress_bars"] = True
    cfg = parse_config(data)
    shown = text_io.StringIO()
    first = run(cfg, console=Console(file=shown, width=200))
    assert [r.status for r in first.stages] == ["ran"] * 6
    # Each Ray stage's progress, by the stage's name, in input rows with a rate (a log file gets lines, not bars).
    for line in ("01_sample: 24/24 rows (100%), ", "02_verify: 72/72 rows (100%), ", "04_curate: 72/72 rows (100%), "):
        assert line in shown.getvalue(), shown.getvalue()
    assert shown.getvalue().count(" rows/s") >= 6 + 4  # every stage's summary line, and each Ray stage's progress
    by = {r.name: r for r in first.stages}
    assert by["sample"].rows_out == 24 * 3 and by["verify"].rows_out == 72
    assert by["curate"].kept + sum(by["curate"].dropped.values()) == 72
    dd = datasets.load_from_disk(first.outputs["dataset"])
    train = dd["train"]
    assert len(train) == by["curate"].kept > 0
    assert len(train) == 10  # one trace for each of the 10 problems kept
    from verifiers import build_verifier

    v = build_verifier("math")
    assert [v(c, a).correct for c, a in zip(train["completion"], train["answer"])] == train["correct"]
    card = (Path(first.outputs["dataset"]) / "README.md").read_text()
    assert "Counts per stage" in card and "toyworld" in card and "Resolved config" in card
    assert (cfg.resolved_run_dir / "config.yaml").is_file() and (cfg.resolved_run_dir / "stats.json").is_file()

    again = run(cfg)
    assert [r.status for r in again.stages] == ["skipped"] * 6

    changed = parse_config({**small_config(tmp_path, toy_test_model),
                            "stages": {**small_config(tmp_path, toy_test_model)["stages"],
                                       "curate": {"rule": "keep_hard", "n": 5}}})
    third = run(changed)
    assert [r.status for r in third.stages] == ["skipped"] * 4 + ["ran", "ran"]
    assert third.stages[4].kept == 5 or third.stages[4].kept <= 5 * 3


def test_bad_rows_are_quarantined_and_counted(tmp_path, toy_test_model, ray_local):
    from pipeline.runner import run

    src = tmp_path / "problems.jsonl"
    src.write_text('{"problem": "Compute 2+3.\\n", "answer": "5"}\n{"problem": "Compute 4+4.\\n"}\n'
                   '{"problem": 7, "answer": "1"}\n{"problem": "Compute 2+3.\\n", "answer": "5"}\n')
    data = small_config(tmp_path, toy_test_model)
    data["stages"]["source"] = {"kind": "jsonl", "path": str(src)}
    result = run(parse_config(data))
    source = result.stages[0]
    assert (source.rows_in, source.rows_out, source.rejected) == (4, 1, 3)
    rejects = io.read_table(result.run_dir / "rejects" / "00_source").to_pydict()
    assert len(rejects[C.REJECT_REASON]) == 3 and all(rejects[C.REJECT_REASON])


def test_kill_9_during_sample_then_rerun_loses_and_duplicates_nothing(tmp_path, toy_test_model):
    n, k = 40, 2
    data = small_config(tmp_path, toy_test_model, n=n, k=k)
    data["stages"]["sample"]["resources"]["batch_size"] = 4
    data["stages"]["sample"]["generate_batch_size"] = 8
    data["stages"] = {k: data["stages"][k] for k in ("source", "sample", "verify")}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    run_dir = Path(tmp_path) / data["name"]
    sample_dir = run_dir / "01_sample"
    cmd = [sys.executable, "-m", "pipeline.cli", "run", str(cfg_path)]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 480
    while time.time() < deadline and not io.part_files(sample_dir):
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.1)
    assert io.part_files(sample_dir), "sample wrote nothing in 8 minutes"
    assert not (sample_dir / "_SUCCESS").exists(), "sample finished before the kill; make the run longer"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    written_before = io.count_rows(sample_dir)
    assert 0 < written_before < n * k

    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "already done; resuming" in rerun.stderr
    t = io.read_columns(sample_dir, [C.PROBLEM_ID, C.SAMPLE_IDX]).to_pandas()
    assert len(t) == n * k
    assert not t.duplicated().any()
    assert t[C.PROBLEM_ID].nunique() == n
    verify = io.read_columns(run_dir / "02_verify", [C.PROBLEM_ID, C.SAMPLE_IDX]).to_pandas()
    assert len(verify) == n * k and not verify.duplicated().any()

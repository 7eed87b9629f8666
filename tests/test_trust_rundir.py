"""The run directory is trusted only as far as it can be checked: one run at a time holds it, a directory that is not
a lessmore run is left alone, nothing is deleted or written through a symlink, a stage is skipped only when its
``_SUCCESS`` still describes the files on disk and the input they came from, and a resume repairs what a crash or a
second run left (duplicate rows, unreadable parts) instead of failing on every rerun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline import columns as C
from pipeline import io
from pipeline.cli import main
from pipeline.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
N = 6


def source_config(tmp_path: Path, n: int = N, **top) -> dict:
    """A run of one source stage: it runs on the driver, so no Ray starts and a run takes about a second."""
    return {"name": "r", "output_root": str(tmp_path / "out"), **top,
            "stages": {"source": {"kind": "toyworld", "n": n, "levels": [1, 2]}}}


def write_config(tmp_path: Path, data: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": ""}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


# -- one run at a time -------------------------------------------------------------------------------------------

def test_a_second_run_on_a_run_dir_in_use_gets_one_line_naming_the_holder_and_exit_2(tmp_path, monkeypatch, capsys):
    import stages.source as source_module

    cfg_path = write_config(tmp_path, source_config(tmp_path))
    second: list[subprocess.CompletedProcess] = []
    read = source_module.SourceStage.read

    def read_while_a_second_run_starts(self, *args, **kwargs):
        second.append(cli(["run", str(cfg_path)]))
        yield from read(self, *args, **kwargs)

    monkeypatch.setattr(source_module.SourceStage, "read", read_while_a_second_run_starts)
    assert main(["run", str(cfg_path)]) == 0
    [other] = second
    assert other.returncode == 2, other.stderr[-2000:]
    [line] = error_lines(other.stderr)
    assert line.startswith("error: ") and "in use" in line
    assert f"pid {os.getpid()}" in line and socket.gethostname() in line
    run_dir = tmp_path / "out" / "r"
    rows = io.read_columns(run_dir / "00_source", [C.PROBLEM_ID]).to_pandas()
    assert len(rows) == N and not rows.duplicated().any()
    assert not (run_dir / "_LOCK.json").exists()  # the holder's details go with the lock


def test_a_holder_killed_with_sigkill_leaves_no_lock_behind(tmp_path, capsys):
    cfg_path = write_config(tmp_path, source_config(tmp_path))
    die_mid_run = ("import os, signal, stages.source as s\n"
                   "s.SourceStage.read = lambda self, *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
                   "from pipeline.cli import main\n"
                   f"main(['run', {str(cfg_path)!r}])\n")
    killed = subprocess.run([sys.executable, "-c", die_mid_run], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "out" / "r"
    assert json.loads((run_dir / "_LOCK.json").read_text())["pid"] != os.getpid()  # the dead holder's details
    assert main(["run", str(cfg_path)]) == 0
    assert io.count_rows(run_dir / "00_source") == N


def test_claims_nest_in_one_process(tmp_path):
    from pipeline.rundir import claim

    run_dir = tmp_path / "out" / "r"
    with claim(run_dir):
        with claim(run_dir):
            pass
        assert (run_dir / "_LOCK.json").is_file()  # still held by the outer claim
    assert not (run_dir / "_LOCK.json").exists()


# -- directories lessmore did not make ----------------------------------------------------------------------------

def test_a_folder_that_is_not_a_run_is_refused_and_left_alone(tmp_path, capsys):
    folder = tmp_path / "out" / "r"
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("mine")
    (folder / "config.yaml").write_text("my: own config\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert main(["run", str(write_config(tmp_path, source_config(tmp_path)))]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "is not a lessmore run" in line and str(folder) in line
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_an_empty_folder_and_a_run_written_before_the_stamp_are_runs(tmp_path, capsys):
    from pipeline.rundir import STAMP

    cfg_path = write_config(tmp_path, source_config(tmp_path))
    run_dir = tmp_path / "out" / "r"
    run_dir.mkdir(parents=True)
    assert main(["run", str(cfg_path)]) == 0
    (run_dir / STAMP).unlink()  # what an older lessmore left: its own files only
    assert main(["run", str(cfg_path)]) == 0
    assert (run_dir / STAMP).is_file()


@pytest.mark.parametrize("link", ["rejects", "00_source", "config.yaml"])
def test_a_symlink_where_lessmore_deletes_or_writes_is_refused(link, tmp_path, capsys):
    cfg_path = write_config(tmp_path, source_config(tmp_path))
    assert main(["run", str(cfg_path)]) == 0
    run_dir = tmp_path / "out" / "r"
    outside = tmp_path / "outside"
    (outside / "00_source").mkdir(parents=True)
    (outside / "00_source" / "keep.txt").write_text("not the run's")
    (outside / "config.yaml").write_text("not the run's")
    target = run_dir / link
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)
    target.symlink_to(outside / link if link != "rejects" else outside)
    changed = write_config(tmp_path, source_config(tmp_path, n=N + 1), "changed.yaml")  # the source runs again
    capsys.readouterr()
    assert main(["run", str(changed)]) == 2
    [line] = error_lines(capsys.readouterr().err)
    assert "is a symlink" in line and link in line
    assert (outside / "00_source" / "keep.txt").read_text() == "not the run's"
    assert (outside / "config.yaml").read_text() == "not the run's"


# -- markers that prove what is on disk ---------------------------------------------------------------------------

def _damage(kind: str, stage_dir: Path) -> None:
    [part] = io.part_files(stage_dir)
    if kind == "deleted part":
        part.unlink()
    elif kind == "truncated part":
        part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])
    elif kind == "extra part":
        shutil.copy(part, stage_dir / "part-000000000000.parquet")
    elif kind == "empty _SUCCESS":
        (stage_dir / io.MARKER).write_text("")
    elif kind == "garbled _SUCCESS":
        marker = json.loads((stage_dir / io.MARKER).read_text())
        (stage_dir / io.MARKER).write_text(json.dumps({"fingerprint": marker["fingerprint"], "result": 5}))
    elif kind == "result of another shape":
        marker = json.loads((stage_dir / io.MARKER).read_text())
        marker["result"]["unknown"] = 1
        (stage_dir / io.MARKER).write_text(json.dumps(marker))


DAMAGE = ["deleted part", "truncated part", "extra part", "empty _SUCCESS", "garbled _SUCCESS",
          "result of another shape"]


@pytest.mark.parametrize("kind", DAMAGE)
def test_a_stage_whose_files_do_not_match_its_marker_runs_again(kind, tmp_path, capsys):
    from rich.console import Console

    from pipeline.runner import run

    cfg = parse_config(source_config(tmp_path))
    run(cfg, console=Console(stderr=True))
    stage_dir = cfg.resolved_run_dir / "00_source"
    _damage(kind, stage_dir)
    capsys.readouterr()
    again = run(cfg, console=Console(stderr=True))
    assert again.stages[0].status == "ran"
    assert again.stages[0].rows_out == io.count_rows(stage_dir) == N
    notices = [line for line in capsys.readouterr().err.splitlines() if "running the stage again" in line]
    assert len(notices) == 1 and notices[0].startswith("00_source: ")
    assert run(cfg, console=Console(stderr=True)).stages[0].status == "skipped"


def test_a_rejects_part_that_went_missing_runs_the_stage_again(tmp_path, capsys):
    from rich.console import Console

    from pipeline.runner import run

    src = tmp_path / "problems.jsonl"
    src.write_text('{"problem": "Compute 2+3.", "answer": "5"}\n{"problem": "Compute 4+4."}\n')
    data = {**source_config(tmp_path), "stages": {"source": {"kind": "jsonl", "path": str(src)}}}
    cfg = parse_config(data)
    run(cfg, console=Console(stderr=True))
    [reject_part] = io.part_files(cfg.resolved_run_dir / "rejects" / "00_source")
    reject_part.unlink()
    capsys.readouterr()
    again = run(cfg, console=Console(stderr=True))
    assert again.stages[0].status == "ran" and again.stages[0].rejected == 1
    assert "rejects/00_source: " in capsys.readouterr().err


def test_markers_and_started_files_are_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "_SUCCESS"
    io.write_text_atomic(path, "old")

    def killed(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        io.write_text_atomic(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["_SUCCESS"]


def test_drop_duplicate_rows_keeps_the_first_of_each_key(tmp_path):
    io.write_part(pa.table({"k": [1, 2, 3], "v": ["a", "b", "c"]}), tmp_path, prefix="a")
    io.write_part(pa.table({"k": [3, 4], "v": ["c2", "d"]}), tmp_path, prefix="b")
    io.write_part(pa.table({"k": [4], "v": ["d2"]}), tmp_path, prefix="c")
    assert io.drop_duplicate_rows(tmp_path, ["k"], seen={(1,)}) == 3
    rows = sorted(zip(*io.read_table(tmp_path).to_pydict().values()))
    assert rows == [(2, "b"), (3, "c"), (4, "d")]
    assert io.drop_duplicate_rows(tmp_path, ["k"]) == 0


def test_a_truncated_part_is_dropped_before_a_resume(tmp_path):
    good = io.write_part(pa.table({"k": [1]}), tmp_path)
    bad = io.write_part(pa.table({"k": [2]}), tmp_path)
    bad.write_bytes(bad.read_bytes()[:10])
    assert io.drop_damaged_parts(tmp_path) == [bad.name]
    assert io.part_files(tmp_path) == [good]


# -- end to end under Ray: duplicates left by two runs, and a re-run upstream stage ------------------------------

def dedup_config(tmp_path: Path) -> dict:
    data = source_config(tmp_path, n=12)
    data["ray"] = {"num_cpus": 2, "progress_bars": False}
    data["stages"]["dedup"] = {"resources": {"batch_size": 4}}
    return data


def test_duplicate_rows_left_by_two_runs_are_repaired_on_resume(tmp_path, ray_local, capsys):
    from pipeline.runner import run

    cfg = parse_config(dedup_config(tmp_path))
    first = run(cfg)
    dedup_dir = cfg.resolved_run_dir / "01_dedup"
    expected = io.read_columns(dedup_dir, [C.PROBLEM_ID]).to_pandas()
    # What two runs writing one stage leave: every part twice, and no _SUCCESS (the accounting failed).
    for part in io.part_files(dedup_dir):
        shutil.copy(part, dedup_dir / f"part-copy{part.name[5:]}")
    fingerprint = json.loads((dedup_dir / io.MARKER).read_text())["fingerprint"]
    (dedup_dir / io.MARKER).unlink()
    (dedup_dir / "_STARTED").write_text(fingerprint)
    capsys.readouterr()
    again = run(cfg)
    assert again.stages[1].status == "resumed"
    assert "duplicate row(s)" in capsys.readouterr().err
    rows = io.read_columns(dedup_dir, [C.PROBLEM_ID]).to_pandas()
    assert not rows.duplicated().any() and sorted(rows[C.PROBLEM_ID]) == sorted(expected[C.PROBLEM_ID])
    assert (again.stages[1].rows_out, again.stages[1].rejected) == (first.stages[1].rows_out, first.stages[1].rejected)
    assert [r.status for r in run(cfg).stages] == ["skipped", "skipped"]


def test_a_stage_whose_input_was_rewritten_runs_again(tmp_path, ray_local, capsys):
    from pipeline.runner import run

    cfg = parse_config(dedup_config(tmp_path))
    run(cfg)
    (cfg.resolved_run_dir / "00_source" / io.MARKER).write_text("")  # the source runs again, with new part names
    capsys.readouterr()
    again = run(cfg)
    assert [r.status for r in again.stages] == ["ran", "ran"]
    assert "01_dedup: its input changed since it ran" in capsys.readouterr().err
    assert io.count_rows(cfg.resolved_run_dir / "01_dedup") == again.stages[1].rows_out


def test_a_sweep_whose_pool_is_in_use_gets_one_line_and_exit_2(tmp_path, capsys):
    from pipeline.rundir import claim
    from pipeline.sweep.config import load_sweep_config
    from pipeline.sweep.pool import pool_run_config

    args = ["sweep", str(ROOT / "configs" / "phase_smoke.yaml"), "--set", f"output_root={tmp_path}"]
    cfg = load_sweep_config(args[1], args[3:])
    pool_dir = pool_run_config(cfg, next(iter(cfg.pool.generators))).resolved_run_dir
    with claim(pool_dir):  # another run holds the pool: this test's process
        held = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env={**os.environ, "RAY_ADDRESS": ""})
    assert held.returncode == 2, held.stderr[-2000:]
    assert "Traceback" not in held.stderr
    [line] = [line for line in error_lines(held.stderr) if line.startswith("error: ")]
    assert "in use" in line and f"pid {os.getpid()}" in line

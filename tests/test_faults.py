"""Faults on a real multi-node Ray cluster: a worker node lost mid-stage, and the driver killed with SIGKILL mid-run.

In both, the job ends with every row present exactly once, and rows in = rows out + dropped + rejected at every
stage. After a driver crash the rerun resumes: it skips the rows already written and the work lost is at most the
sampling pool's batches in flight.
"""

from __future__ import annotations

import signal
import sqlite3
import time
import uuid
from pathlib import Path

import psutil
import pytest
import yaml

from pipeline import columns as C
from pipeline import io
from test_cluster import LocalRayCluster, assert_counts_reconcile, cluster_config

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

# Ray Data submits at most this many batches to one actor at a time (its default: 2 x max_concurrency of 1).
TASKS_IN_FLIGHT_PER_ACTOR = 2


@pytest.fixture(scope="module")
def cluster():
    """A head with spare CPU (where a lost worker's actors restart) and one worker node that the tests may kill."""
    c = LocalRayCluster()
    try:
        c.start_head(num_cpus=2)
        c.add_worker("doomed", num_cpus=1)
        yield c
    finally:
        c.shutdown()
    assert not c.processes(), "cluster processes survived the teardown"


def fault_config(output_root: Path, model: str, n: int, k: int, batch_size: int, **sample) -> dict:
    data = cluster_config(output_root, model, n=n, k=k)
    data["stages"]["source"]["levels"] = [1, 2, 3]
    data["stages"]["sample"].update(max_tokens=48, **sample)
    data["stages"]["sample"]["resources"]["batch_size"] = batch_size
    return data


def wait_for(predicate, timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def submit(cluster: LocalRayCluster, tmp_path: Path, data: dict, name: str) -> tuple[Path, str]:
    cfg_path = tmp_path / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    job = f"{name}-{uuid.uuid4().hex[:8]}"
    cluster.submit(["lessmore", "run", str(cfg_path)], job)
    return cfg_path, job


def job_failed_early(cluster: LocalRayCluster, job: str) -> bool:
    status = str(cluster.client().get_job_status(job).value)
    if status in ("FAILED", "STOPPED", "SUCCEEDED"):
        raise AssertionError(f"job {job} ended ({status}) before the fault was injected:\n"
                             f"{cluster.client().get_job_logs(job)[-3000:]}")
    return False


def test_losing_a_worker_node_mid_sample_loses_and_duplicates_nothing(cluster, tmp_path, toy_test_model):
    from ray.util.state import list_actors, list_nodes

    n, k = 60, 4
    data = fault_config(tmp_path / "out", toy_test_model, n=n, k=k, batch_size=4)
    _, job = submit(cluster, tmp_path, data, "nodeloss")
    run_dir = tmp_path / "out" / "cluster"
    sample_dir = run_dir / "01_sample"
    wait_for(lambda: job_failed_early(cluster, job) or len(io.part_files(sample_dir)) >= 1, 300,
             "the first sample part file")

    doomed = next(nd.node_id for nd in list_nodes(address=cluster.dashboard)
                  if nd.resources_total.get("doomed") and nd.state == "ALIVE")
    on_doomed = [a for a in list_actors(address=cluster.dashboard, filters=[("state", "=", "ALIVE")], limit=1000,
                                        raise_on_missing_output=False)
                 if "MapWorker" in a.class_name and a.node_id == doomed]
    assert on_doomed, "no sampling actor ran on the worker node, so losing it would test nothing"
    killed = cluster.kill_node("doomed")
    written_at_kill = io.count_rows(sample_dir)
    assert not (sample_dir / "_SUCCESS").exists(), "sample finished before the node was lost; make the run longer"
    assert killed >= 2 and written_at_kill < n * k

    status, logs = cluster.wait_job(job, timeout=420)
    assert status == "SUCCEEDED", logs[-4000:]
    assert cluster.alive_nodes() == 1
    assert_counts_reconcile(run_dir, problems=n, k=k)


def _cache_entries(cache_dir: Path) -> int:
    db = cache_dir / "generations.sqlite"
    if not db.exists():
        return 0
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM generations").fetchone()[0]


def _driver(cluster: LocalRayCluster, cfg_path: Path):
    """The job's driver: the `lessmore run` Python process (not the shell Ray wraps the entrypoint in)."""
    for proc in cluster.processes():
        try:
            cmd = proc.cmdline()
        except psutil.Error:
            continue
        if str(cfg_path) in cmd and any("python" in part or part.endswith("lessmore") for part in cmd[:2]) \
                and cmd[0] not in ("/bin/sh", "sh", "/bin/bash", "bash"):
            return proc
    return None


def test_driver_killed_mid_sample_resumes_and_repeats_at_most_the_batches_in_flight(cluster, tmp_path,
                                                                                     toy_test_model):
    n, k, batch_size = 80, 4, 4
    cache_dir = tmp_path / "generations"
    data = fault_config(tmp_path / "out", toy_test_model, n=n, k=k, batch_size=batch_size, cache_dir=str(cache_dir))
    cfg_path, job = submit(cluster, tmp_path, data, "driverkill")
    run_dir = tmp_path / "out" / "cluster"
    sample_dir = run_dir / "01_sample"
    wait_for(lambda: job_failed_early(cluster, job) or len(io.part_files(sample_dir)) >= 2, 300,
             "two sample part files")
    driver = _driver(cluster, cfg_path)
    assert driver is not None, "could not find the job's driver process"
    driver.send_signal(signal.SIGKILL)
    psutil.wait_procs([driver], timeout=30)
    assert not (sample_dir / "_SUCCESS").exists(), "sample finished before the kill; make the run longer"
    status, _ = cluster.wait_job(job, timeout=120)
    assert status == "FAILED"
    time.sleep(2)  # let Ray reap the dead job's actors, so nothing writes into the cache any more
    present = io.count_rows(sample_dir)
    generated_first = _cache_entries(cache_dir)
    assert 0 < present < n * k and generated_first >= present

    _, rerun = submit(cluster, tmp_path, data, "driverkill-rerun")
    status, logs = cluster.wait_job(rerun, timeout=420)
    assert status == "SUCCEEDED", logs[-4000:]
    assert f"{present // k} input rows already done; resuming the rest" in logs
    stats = assert_counts_reconcile(run_dir, problems=n, k=k)
    sample = stats["sample"]
    assert sample["status"] == "resumed"
    assert sample["extra"]["rows_already_done"] == present
    assert sample["extra"]["rows_written"] == n * k - present  # nothing already on disk was produced again

    # Work the crash threw away: completions generated before the kill that never reached a part file. It is
    # bounded by the pool's batches in flight; the generation cache hands them back to the rerun.
    lost = generated_first - present
    in_flight_bound = data["stages"]["sample"]["resources"]["concurrency"] * TASKS_IN_FLIGHT_PER_ACTOR * batch_size * k
    print(f"driver kill: {present} rows on disk, {generated_first} generated, {lost} lost in flight "
          f"(bound {in_flight_bound}); rerun wrote {sample['extra']['rows_written']}, "
          f"generated {_cache_entries(cache_dir) - generated_first} new")
    assert lost <= in_flight_bound
    assert _cache_entries(cache_dir) == n * k  # each completion generated once across both runs
    rows = io.read_columns(sample_dir, [C.PROBLEM_ID, C.SAMPLE_IDX]).to_pandas()
    assert rows[C.PROBLEM_ID].nunique() == n

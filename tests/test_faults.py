"""Faults on a real multi-node Ray cluster: a worker node lost mid-stage, and the driver killed with SIGKILL mid-run.

The cluster is the one `test_cluster.py` starts (a head with a spare CPU, where a lost worker's actors restart, and a
1-CPU worker node).

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
from test_cluster import LocalRayCluster, assert_counts_reconcile, cluster, cluster_config, ray_cluster  # noqa: F401

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

# Ray Data submits at most this many batches to one actor at a time (its default: 2 x max_concurrency of 1).
TASKS_IN_FLIGHT_PER_ACTOR = 2


def fault_config(output_root: Path, model: str, n: int, k: int, batch_size: int, **sample) -> dict:
    """Source, sample and verify only: the stages where the faults land (and fewer worker pools to start)."""
    data = cluster_config(output_root, model, n=n, k=k)
    data["stages"] = {name: data["stages"][name] for name in ("source", "sample", "verify")}
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


# Holds one head CPU until the job is stopped: a task pinned to the head by its built-in resource.
_HOLD_HEAD_CPU = (
    "import time, ray\n"
    "ray.init()\n"
    "@ray.remote(num_cpus=1, resources={'node:__internal_head__': 0.001})\n"
    "def hold():\n"
    "    print('holding a head CPU', flush=True)\n"
    "    time.sleep(3600)\n"
    "ray.get(hold.remote())\n"
)


def test_losing_a_worker_node_mid_sample_loses_and_duplicates_nothing(cluster, tmp_path, toy_test_model):
    from ray.util.state import list_actors, list_nodes

    n, k = 60, 4
    # The head has 2 CPUs and the worker 1; the pool has 2 actors. While the pool starts, one head CPU is held, so
    # one actor must land on the worker; then it is freed, so the lost actor has somewhere to restart.
    worker = cluster.ensure_worker()
    doomed = next(nd.node_id for nd in list_nodes(address=cluster.dashboard)
                  if nd.resources_total.get(worker) and nd.state == "ALIVE")
    holder = f"hold-{uuid.uuid4().hex[:8]}"
    cluster.client().submit_job(entrypoint=f"python -c \"{_HOLD_HEAD_CPU}\"", submission_id=holder)
    wait_for(lambda: "holding a head CPU" in cluster.client().get_job_logs(holder), 120, "the head CPU to be held",
             poll=0.5)
    data = fault_config(tmp_path / "out", toy_test_model, n=n, k=k, batch_size=4)
    _, job = submit(cluster, tmp_path, data, "nodeloss")
    run_dir = tmp_path / "out" / "cluster"
    sample_dir = run_dir / "01_sample"
    def sampling_on_doomed() -> bool:
        job_failed_early(cluster, job)
        return any("MapWorker" in a.class_name and a.node_id == doomed
                   for a in list_actors(address=cluster.dashboard, filters=[("state", "=", "ALIVE")], limit=1000,
                                        raise_on_missing_output=False))

    try:
        # The worker node's actor starts later than the head's (the job's working dir is copied there first).
        wait_for(sampling_on_doomed, 300, "a sampling actor alive on the worker node", poll=0.5)
        wait_for(lambda: job_failed_early(cluster, job) or len(io.part_files(sample_dir)) >= 1, 300,
                 "the first sample part file")
    finally:
        cluster.client().stop_job(holder)
    killed = cluster.kill_node(worker)
    written_at_kill = io.count_rows(sample_dir)
    assert not (sample_dir / "_SUCCESS").exists(), "sample finished before the node was lost; make the run longer"
    assert killed >= 2 and written_at_kill < n * k

    status, logs = cluster.wait_job(job, timeout=420)
    assert status == "SUCCEEDED", logs[-4000:]
    assert cluster.alive_nodes() == 1  # the head finished the job alone
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


def test_driver_killed_mid_sample_resumes_and_repeats_at_most_the_batches_in_flight(ray_cluster, tmp_path,
                                                                                     toy_test_model):
    cluster = ray_cluster  # whatever nodes are up: the driver runs on the head either way
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
    # In flight: the batches each actor holds, plus one finished batch per actor waiting for the driver to take it
    # (a driver slowed by a loaded machine takes blocks later; they are lost with it all the same).
    in_flight_bound = (data["stages"]["sample"]["resources"]["concurrency"] * (TASKS_IN_FLIGHT_PER_ACTOR + 1)
                       * batch_size * k)
    print(f"driver kill: {present} rows on disk, {generated_first} generated, {lost} lost in flight "
          f"(bound {in_flight_bound}); rerun wrote {sample['extra']['rows_written']}, "
          f"generated {_cache_entries(cache_dir) - generated_first} new")
    assert lost <= in_flight_bound
    assert _cache_entries(cache_dir) == n * k  # each completion generated once across both runs
    rows = io.read_columns(sample_dir, [C.PROBLEM_ID, C.SAMPLE_IDX]).to_pandas()
    assert rows[C.PROBLEM_ID].nunique() == n

"""A real multi-node Ray cluster on this machine: a head and a worker started with `ray start` (separate raylets, each
with its own resources), the pipeline submitted with `ray job submit --working-dir`, and its output compared with a
single-process run of the same config.

The cluster lives in its own temp dir with its own ports, and every process of it carries a marker in its
environment, so tearing it down kills exactly those processes (never `ray stop`, which would also stop other Ray
instances on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from pipeline import columns as C
from pipeline import io

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MARK = "LESSMORE_TEST_CLUSTER"  # environment variable naming the cluster a process belongs to
NODE = "LESSMORE_TEST_NODE"  # ... and the node

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(420)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> list[str]:
    names = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port", "metrics-export-port")
    return [f"--{name}={_free_port()}" for name in names]


class LocalRayCluster:
    """A head and worker nodes on this machine, each a `ray start` with its own raylet, ports and resources."""

    def __init__(self) -> None:
        # Short path: Ray's unix sockets live under it, and socket paths are limited to 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="lm-ray-", dir="/tmp"))
        self.token = uuid.uuid4().hex[:12]
        self.gcs_port = _free_port()
        self.dashboard_port = _free_port()
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update({
            MARK: self.token, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        })
        self.nodes: list[str] = []  # nodes started and not killed
        self._started = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _ray_start(self, node: str, args: list[str]) -> None:
        # Each node its own temp dir, as on separate machines: a shared one would let one node's runtime-env agent
        # delete the job's working-dir copy that another node still runs in.
        cmd = [str(BIN / "ray"), "start", *args, "--node-ip-address=127.0.0.1", f"--temp-dir={self.root / node}",
               "--object-store-memory=300000000", "--disable-usage-stats", *_node_ports()]
        res = subprocess.run(cmd, env={**self.env, NODE: node}, capture_output=True, text=True, timeout=180)
        if res.returncode != 0:
            raise RuntimeError(f"`ray start` for {node} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        self.nodes.append(node)
        self._started += 1

    def start_head(self, num_cpus: int = 1) -> None:
        self._ray_start("head", [
            "--head", f"--port={self.gcs_port}", f"--num-cpus={num_cpus}", '--resources={"head_node": 1}',
            "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
        ])

    def add_worker(self, name: str, num_cpus: int = 1) -> None:
        """Starts a worker node with ``num_cpus`` CPUs and a custom resource named after it."""
        self._ray_start(name, [f"--address={self.address}", f"--num-cpus={num_cpus}",
                               f'--resources={{"{name}": 1}}'])
        self.wait_for_nodes(len(self.nodes))

    def ensure_worker(self) -> str:
        """A live worker node's name, starting a fresh one (1 CPU) when an earlier test killed the last one."""
        workers = [n for n in self.nodes if n != "head"]
        if not workers:
            workers = [f"worker{self._started}"]
            self.add_worker(workers[0], num_cpus=1)
        return workers[0]

    def alive_nodes(self) -> int:
        from ray.util.state import list_nodes

        return sum(n.state == "ALIVE" for n in list_nodes(address=self.dashboard))

    def wait_for_nodes(self, count: int, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while self.alive_nodes() != count:
            if time.time() > deadline:
                raise TimeoutError(f"cluster has {self.alive_nodes()} alive nodes, expected {count}")
            time.sleep(0.5)

    def processes(self, node: str | None = None):
        """This cluster's processes (all, or one node's), found by the marker in their environment."""
        import psutil

        found = []
        for proc in psutil.process_iter(["pid"]):
            try:
                env = proc.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
                continue
            if env.get(MARK) == self.token and (node is None or env.get(NODE) == node):
                found.append(proc)
        return found

    def kill_node(self, node: str) -> int:
        """Node loss: SIGKILL the node's raylet first, then every other process of the node. Returns the count."""
        procs = self.processes(node)
        self.nodes.remove(node)
        raylets = [p for p in procs if "raylet" in " ".join(_cmdline(p))]
        assert raylets, f"no raylet found for node {node}"
        for p in raylets + [p for p in procs if p not in raylets]:
            try:
                p.send_signal(signal.SIGKILL)
            except Exception:  # noqa: BLE001 - already gone
                pass
        return len(procs)

    def submit(self, entrypoint: list[str], submission_id: str, working_dir: Path = ROOT) -> None:
        """`ray job submit --working-dir` (the runbook's command), returning once the job is accepted."""
        cmd = [str(BIN / "ray"), "job", "submit", f"--address={self.dashboard}", f"--working-dir={working_dir}",
               f"--submission-id={submission_id}", "--no-wait", "--", *entrypoint]
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard)

    def wait_job(self, submission_id: str, timeout: float = 300) -> tuple[str, str]:
        client = self.client()
        deadline = time.time() + timeout
        while True:
            status = str(client.get_job_status(submission_id).value)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status, client.get_job_logs(submission_id)
            if time.time() > deadline:
                client.stop_job(submission_id)
                raise TimeoutError(f"job {submission_id} still {status} after {timeout}s:\n"
                                   f"{client.get_job_logs(submission_id)[-3000:]}")
            time.sleep(0.5)

    def shutdown(self) -> None:
        """Kills every process of this cluster (and only those) and removes its temp dir."""
        import psutil

        for _ in range(3):
            procs = self.processes()
            if not procs:
                break
            for p in procs:
                try:
                    p.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(procs, timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)
        if self.processes():
            raise RuntimeError(f"processes of the test cluster in {self.root} survived the teardown")


def _cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except Exception:  # noqa: BLE001
        return []


def cluster_config(output_root: Path, model: str, n: int = 16, k: int = 2) -> dict:
    """A small run whose sample and verify pools need both nodes (two 1-CPU actors on two 1-CPU nodes)."""
    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    data.update(name="cluster", output_root=str(output_root), ray={"progress_bars": False})
    data["stages"]["source"].update(n=n, levels=[1, 2])
    data["stages"]["sample"].update(model=model, k=k, max_tokens=32, threads=1)
    data["stages"]["sample"]["resources"] = {"num_cpus": 1, "concurrency": 2, "batch_size": 2}
    data["stages"]["verify"]["resources"] = {"num_cpus": 1, "concurrency": 2, "batch_size": 8}
    data["stages"]["curate"].update(rule="all", p=None)
    return data


def verified_rows(run_dir: Path) -> list[tuple]:
    t = io.read_columns(run_dir / "02_verify", [C.PROBLEM_ID, C.SAMPLE_IDX, C.COMPLETION, C.CORRECT])
    return sorted(zip(*(t[c].to_pylist() for c in t.column_names)))


def assert_counts_reconcile(run_dir: Path, problems: int, k: int) -> dict:
    """Every stage the run has: rows in = rows out (or kept + dropped) + rejected; each (problem, sample) once."""
    stats = {s["name"]: s for s in json.loads((run_dir / "stats.json").read_text())["stages"]}
    assert stats["source"]["rows_out"] + stats["source"]["rejected"] == stats["source"]["rows_in"] == problems
    assert stats["sample"]["rows_out"] == problems * k and stats["sample"]["rejected"] == 0
    assert stats["verify"]["rows_out"] + stats["verify"]["rejected"] == stats["verify"]["rows_in"] == problems * k
    stage_dirs = ["01_sample", "02_verify"]
    if "curate" in stats:
        curate = stats["curate"]
        assert curate["kept"] + sum(curate["dropped"].values()) + curate["rejected"] == curate["rows_in"] == problems * k
        assert stats["export"]["rows_out"] == curate["kept"]
        stage_dirs.append("04_curate")
    for stage_dir in stage_dirs:
        keys = io.read_columns(run_dir / stage_dir, [C.PROBLEM_ID, C.SAMPLE_IDX]).to_pandas()
        assert len(keys) == problems * k and not keys.duplicated().any(), f"lost or duplicate rows in {stage_dir}"
    return stats


_SHARED: list[LocalRayCluster] = []


@pytest.fixture(scope="session")
def ray_cluster(request) -> LocalRayCluster:
    """One head node (2 CPUs) per test session, shared by the cluster and fault tests (starting one costs tens of
    seconds); each test adds the worker nodes it needs. Torn down when the session ends."""
    if not _SHARED:
        cluster = LocalRayCluster()
        request.config.add_cleanup(cluster.shutdown)
        cluster.start_head(num_cpus=2)
        _SHARED.append(cluster)
    return _SHARED[0]


@pytest.fixture
def cluster(ray_cluster) -> LocalRayCluster:
    """The shared cluster with a live worker node (1 CPU): two raylets."""
    ray_cluster.ensure_worker()
    return ray_cluster


def single_process_rows(data: dict) -> list[tuple]:
    """The same config's source, sample and verify stages called in this process, with no Ray at all."""
    from pipeline.config import parse_config
    from pipeline.models import resolve_model
    from stages.sample import SampleStage
    from stages.source import SourceStage
    from stages.verify import VerifyStage

    cfg = parse_config(data)
    problems = {c: [] for c in (C.PROBLEM_ID, C.PROBLEM, C.ANSWER)}
    for batch in SourceStage(cfg.stage("source"), seed=cfg.seed).read():
        for c in problems:
            problems[c] += batch[c]
    sample_cfg = cfg.stage("sample")
    sampled = SampleStage(sample_cfg, seed=cfg.seed, model_path=resolve_model(sample_cfg.model))(problems)
    verified = VerifyStage(cfg.stage("verify"))(sampled)
    return sorted(zip(*(verified[c] for c in (C.PROBLEM_ID, C.SAMPLE_IDX, C.COMPLETION, C.CORRECT))))


def test_two_node_job_matches_the_single_process_run(cluster, tmp_path, toy_test_model):
    from ray.util.state import list_actors

    data = cluster_config(tmp_path / "cluster", toy_test_model)
    cfg_path = tmp_path / "cluster.yaml"
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    job = f"lessmore-{uuid.uuid4().hex[:8]}"
    cluster.submit(["lessmore", "run", str(cfg_path)], job)
    status, logs = cluster.wait_job(job)
    assert status == "SUCCEEDED", logs[-4000:]
    assert "attaching to cluster" in logs

    run_dir = tmp_path / "cluster" / "cluster"
    assert_counts_reconcile(run_dir, problems=16, k=2)
    assert verified_rows(run_dir) == single_process_rows(data)

    # The stages' actors ran on both raylets: the job really was spread over two nodes.
    actors = list_actors(address=cluster.dashboard, detail=True, limit=1000, raise_on_missing_output=False)
    nodes = {a.node_id for a in actors if "MapWorker" in a.class_name and a.node_id}
    assert len(nodes) == 2, f"stage actors ran on {len(nodes)} node(s)"

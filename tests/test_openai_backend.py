"""backend openai against a real HTTP server on 127.0.0.1 (an OpenAI-compatible one written here, deterministic, that
records every request): the row contract, seeds and sampling parameters in the requests, retries after injected
500/429, failures as rows, concurrency, the key in the Authorization header and in no file, and `lessmore run`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

pytest.importorskip("openai", reason="needs the openai client (pip install -e '.[openai]')")

from pipeline import columns as C  # noqa: E402
from pipeline.config import ConfigError, parse_config  # noqa: E402
from stages.sample import SampleConfig, SampleStage, locate_model  # noqa: E402
from stages.sample.backend import choose_backend, row_seed  # noqa: E402
from test_sample import check_sample_rows, toy_batch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = "served-toy"


class OpenAICompatibleServer:
    """/v1/models, /v1/completions and /v1/chat/completions, answering from a hash of (prompt, seed, temperature).

    ``faults[seed]``: HTTP statuses to answer, one per attempt, before a request with that seed succeeds;
    ``key``: the key the server requires (401 otherwise); ``delay``: seconds each completion takes."""

    def __init__(self, key: str | None = None, delay: float = 0.0) -> None:
        self.key, self.delay = key, delay
        self.requests: list[dict] = []
        self.faults: dict[int, list[int]] = {}
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def bodies(self, path: str = "") -> list[dict]:
        return [r["body"] for r in self.requests if r["path"].endswith(path) and r["body"] is not None]

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self) -> bool:
                if server.key is None or self.headers.get("Authorization") == f"Bearer {server.key}":
                    return True
                self._send(401, {"error": {"message": "invalid key", "type": "auth"}})
                return False

            def do_GET(self) -> None:
                with server.lock:
                    server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": None})
                if not self._authorised():
                    return
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                                                  "owned_by": "test"}]})
                else:
                    self._send(404, {"error": {"message": "no route"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                    fault = server.faults.get(body.get("seed"), [])
                    status = fault.pop(0) if fault else None
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if not self._authorised():
                        return
                    if status == 429:
                        self._send(429, {"error": {"message": "slow down"}}, {"retry-after-ms": "20"})
                        return
                    if status is not None:
                        self._send(status, {"error": {"message": f"injected {status}"}})
                        return
                    if body.get("model") != MODEL:
                        self._send(404, {"error": {"message": f"model {body.get('model')} not found"}})
                        return
                    time.sleep(server.delay)
                    self._send(200, completion(self.path, body))
                finally:
                    with server.lock:
                        server.in_flight -= 1

        return Handler

    def __enter__(self) -> "OpenAICompatibleServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(path: str, body: dict) -> dict:
    """A deterministic answer: the same prompt, seed and temperature give the same text."""
    chat = path.endswith("/chat/completions")
    prompt = json.dumps(body["messages"]) if chat else body["prompt"]
    h = hashlib.sha256(f"{prompt}|{body.get('seed')}|{body.get('temperature')}".encode()).digest()
    text = f"Steps. The answer is \\boxed{{{h[0] % 10}}}."
    limit = body.get("max_completion_tokens" if chat else "max_tokens")
    words = text.split()
    finish = "stop" if len(words) <= limit else "length"
    text = " ".join(words[:limit])
    usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": min(len(words), limit)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        return {"id": "c", "object": "chat.completion", "created": 0, "model": MODEL, "choices": [choice],
                "usage": usage}
    choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
    return {"id": "c", "object": "text_completion", "created": 0, "model": MODEL, "choices": [choice], "usage": usage}


@pytest.fixture
def server():
    with OpenAICompatibleServer() as s:
        yield s


def _config(url: str, **fields) -> SampleConfig:
    openai = {"base_url": url, "max_retries": 4, **fields.pop("openai", {})}
    base = {"model": MODEL, "backend": "openai", "k": 3, "max_tokens": 40, "temperature": 0.8, "openai": openai,
            "chat_template": False}
    return SampleConfig(**{**base, **fields})


def _stage(url: str, **fields) -> SampleStage:
    return SampleStage(_config(url, **fields), seed=5)


def test_rows_follow_the_contract_and_requests_carry_seeds_and_parameters(server):
    batch = toy_batch(4)
    stage = _stage(server.url, top_p=0.9, stop=["\n\n"], prompt_template="Q: {problem}")
    out = stage(batch)
    check_sample_rows(out, batch, k=3, seed=5, model_id=MODEL)
    assert set(out[C.FINISH_REASON]) == {"stop"} and all("boxed" in t for t in out[C.COMPLETION])
    bodies = server.bodies("/v1/completions")
    assert len(bodies) == 12
    assert sorted(b["seed"] for b in bodies) == sorted(out[C.SEED])  # each row's seed went with its request
    for b in bodies:
        assert (b["model"], b["n"], b["temperature"], b["top_p"], b["max_tokens"], b["stop"]) == (
            MODEL, 1, 0.8, 0.9, 40, ["\n\n"])
        assert b["prompt"].startswith("Q: ")
    # The served model's rows name it, and their fingerprint is one for the whole run.
    assert stage.model_id == MODEL and len(set(out[C.SAMPLING_FINGERPRINT])) == 1


def test_chat_endpoint_with_system_prompt_unless_chat_template_is_false(server):
    batch = toy_batch(2)
    out = _stage(server.url, chat_template=None, system_prompt="Be brief.", max_tokens=3)(batch)
    check_sample_rows(out, batch, k=3, seed=5, model_id=MODEL)
    assert set(out[C.FINISH_REASON]) == {"length"}  # 3 tokens cut the answer short
    bodies = server.bodies("/chat/completions")
    assert len(bodies) == 6 and not server.bodies("/v1/completions")
    assert all(b["messages"][0] == {"role": "system", "content": "Be brief."} for b in bodies)
    assert {b["messages"][1]["content"] for b in bodies} == set(batch[C.PROBLEM])
    assert all(b["max_completion_tokens"] == 3 and "max_tokens" not in b for b in bodies)


def test_same_seed_same_completion_whatever_k(server):
    batch = toy_batch(3, seed=1)
    two = _stage(server.url, k=2)(batch)
    four = _stage(server.url, k=4)(batch)
    by_key = {(p, j): t for p, j, t in zip(four[C.PROBLEM_ID], four[C.SAMPLE_IDX], four[C.COMPLETION])}
    assert [by_key[(p, j)] for p, j in zip(two[C.PROBLEM_ID], two[C.SAMPLE_IDX])] == two[C.COMPLETION]
    assert len(set(four[C.COMPLETION])) > 1  # k different seeds, not one text


def test_retries_after_injected_500_and_429(server):
    batch = toy_batch(2)
    flaky = row_seed(5, batch[C.PROBLEM_ID][0], 1)
    limited = row_seed(5, batch[C.PROBLEM_ID][1], 2)
    server.faults = {flaky: [500, 502], limited: [429, 429]}
    out = _stage(server.url)(batch)
    check_sample_rows(out, batch, k=3, seed=5, model_id=MODEL)
    assert "error" not in out[C.FINISH_REASON]
    attempts = [b["seed"] for b in server.bodies("/v1/completions")]
    assert attempts.count(flaky) == 3 and attempts.count(limited) == 3
    assert len(attempts) == 6 + 4


def test_a_request_that_keeps_failing_is_an_error_row_not_a_crash(server):
    batch = toy_batch(2)
    down = row_seed(5, batch[C.PROBLEM_ID][0], 0)
    rejected = row_seed(5, batch[C.PROBLEM_ID][1], 1)
    server.faults = {down: [503] * 10, rejected: [400]}
    out = _stage(server.url, openai={"max_retries": 1})(batch)
    assert len(out[C.PROBLEM_ID]) == 6
    reasons = {s: (f, e) for s, f, e in zip(out[C.SEED], out[C.FINISH_REASON], out[C.ERROR])}
    assert reasons[down][0] == "error" and reasons[down][1].startswith("HTTP 503 after 1 retries")
    assert reasons[rejected][0] == "error" and reasons[rejected][1].startswith("HTTP 400:")
    assert [f for s, f in zip(out[C.SEED], out[C.FINISH_REASON]) if s not in (down, rejected)] == ["stop"] * 4
    attempts = [b["seed"] for b in server.bodies("/v1/completions")]
    assert attempts.count(down) == 2 and attempts.count(rejected) == 1  # a 400 is not retried


def test_unreachable_server_gives_error_rows_and_a_one_line_check(server):
    url = server.url
    server.__exit__()  # nothing listens there now
    cfg = _config(url, openai={"max_retries": 0})
    out = SampleStage(cfg, seed=5)(toy_batch(1))
    assert out[C.FINISH_REASON] == ["error"] * 3
    assert all(e.startswith("APIConnectionError") for e in out[C.ERROR])
    with pytest.raises(ValueError, match=r"^stages\.sample\.openai\.base_url: cannot reach .*start the server"):
        locate_model(cfg, check=True)


def test_server_check_names_the_model_and_the_key(monkeypatch):
    with OpenAICompatibleServer(key="sk-right") as server:
        monkeypatch.delenv("LESSMORE_TEST_KEY", raising=False)
        cfg = _config(server.url, openai={"api_key_env": "LESSMORE_TEST_KEY"})
        with pytest.raises(ValueError, match=r"api_key_env: .* refused the key \(HTTP 401\); export the key in "
                                             r"\$LESSMORE_TEST_KEY"):
            locate_model(cfg, check=True)
        monkeypatch.setenv("LESSMORE_TEST_KEY", "sk-right")
        assert locate_model(cfg, check=True) == MODEL
        with pytest.raises(ValueError, match=r"^stages\.sample\.model: .* does not serve 'other'; it serves "
                                             r"'served-toy'"):
            locate_model(cfg.model_copy(update={"model": "other"}), check=True)


def test_requests_in_flight_are_bounded_by_max_concurrent_requests():
    with OpenAICompatibleServer(delay=0.1) as server:
        t0 = time.perf_counter()
        out = _stage(server.url, k=4, openai={"max_concurrent_requests": 4})(toy_batch(3))
        elapsed = time.perf_counter() - t0
    assert len(out[C.PROBLEM_ID]) == 12 and "error" not in out[C.FINISH_REASON]
    assert 2 <= server.max_in_flight <= 4
    assert elapsed < 12 * 0.1  # in parallel, not one after another


def test_generation_cache_asks_the_server_only_for_new_samples(server, tmp_path):
    batch = toy_batch(3, seed=4)
    two = _stage(server.url, k=2, cache_dir=str(tmp_path))(batch)
    assert len(server.bodies("/v1/completions")) == 6
    four = _stage(server.url, k=4, cache_dir=str(tmp_path))(batch)
    assert len(server.bodies("/v1/completions")) == 6 + 6
    assert sum(four[C.CACHED]) == 6 and not any(two[C.CACHED])
    other = _stage(server.url, k=2, cache_dir=str(tmp_path), openai={"extra_body": {"top_k": 5}})(batch)
    assert len(server.bodies("/v1/completions")) == 6 + 6 + 6 and not any(other[C.CACHED])
    assert server.bodies("/v1/completions")[-1]["top_k"] == 5  # extra_body reaches the server


def test_config_refuses_a_key_and_names_the_environment_variable():
    secret = "sk-do-not-print-this"
    stages = {"source": {"kind": "toyworld", "n": 2},
              "sample": {"model": MODEL, "backend": "openai",
                         "openai": {"base_url": "http://127.0.0.1:1/v1", "api_key": secret, "api_key_env": "MY_KEY"}}}
    with pytest.raises(ConfigError) as e:
        parse_config({"stages": stages})
    assert str(e.value) == ("stages.sample.openai: api_key is never read from the config; remove it and export the "
                            "key in the environment variable named by api_key_env (MY_KEY)")
    stages["sample"]["openai"] = {"base_url": "http://127.0.0.1:1/v1"}
    stages["sample"]["backend"] = "auto"
    assert choose_backend(parse_config({"stages": stages}).stage("sample")) == "openai"
    with pytest.raises(ConfigError, match="backend openai needs the server"):
        parse_config({"stages": {**stages, "sample": {"model": MODEL, "backend": "openai"}}})


def test_lessmore_run_end_to_end_and_the_key_is_written_nowhere(tmp_path):
    key = "sk-lessmore-test-" + os.urandom(8).hex()
    with OpenAICompatibleServer(key=key) as server:
        data = {
            "name": "served", "seed": 3, "output_root": str(tmp_path / "runs"),
            "ray": {"num_cpus": 2, "progress_bars": False},
            "stages": {
                "source": {"kind": "toyworld", "n": 8, "levels": [1, 2]},
                "sample": {"model": MODEL, "backend": "openai", "k": 2, "max_tokens": 32, "chat_template": False,
                           "openai": {"base_url": server.url, "api_key_env": "LESSMORE_TEST_KEY"},
                           "resources": {"num_cpus": 0.5, "concurrency": 1, "batch_size": 4}},
                "verify": {"verifier": "math", "resources": {"num_cpus": 0.5, "batch_size": 16}},
            },
        }
        cfg_path = tmp_path / "served.yaml"
        cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
        env = {**os.environ, "LESSMORE_TEST_KEY": key, "RAY_ADDRESS": ""}
        res = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(cfg_path)], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    from pipeline import io

    run_dir = tmp_path / "runs" / "served"
    out = io.read_table(run_dir / "01_sample").to_pydict()
    problems = io.read_table(run_dir / "00_source").to_pydict()
    batch = {c: problems[c] for c in (C.PROBLEM_ID, C.PROBLEM, C.ANSWER)}
    check_sample_rows(out, batch, k=2, seed=3, model_id=MODEL)
    assert len(server.bodies("/v1/completions")) == 16
    assert {r["auth"] for r in server.requests} == {f"Bearer {key}"}  # the key went where it belongs ...
    assert key not in res.stdout + res.stderr  # ... and nowhere else
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "config.yaml" for p in files)
    assert [p for p in files if key.encode() in p.read_bytes()] == []


def test_evaluation_samples_the_local_student_not_the_runs_server():
    from pipeline.evaluate import EvaluateConfig, _sample_config

    run_sampling = _config("http://127.0.0.1:1/v1", resources={"concurrency": 2})
    local = _sample_config(EvaluateConfig(), run_sampling, greedy=True, seed=0, gguf_file=None)
    assert local.openai is None and choose_backend(local) == "hf"
    assert (local.chat_template, local.prompt_template) == (run_sampling.chat_template, run_sampling.prompt_template)


def test_a_server_without_a_models_route_is_not_checked_but_said(server, caplog):
    cfg = _config(server.url + "/nested")  # /v1/nested/models: 404 here
    with caplog.at_level("WARNING"):
        assert locate_model(cfg, check=True) == MODEL
    assert "has no /models route" in caplog.text and "stages.sample.openai.base_url" in caplog.text

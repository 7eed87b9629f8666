"""The toy world: problem generator, tokenizer, and the cached toy-model build."""

from __future__ import annotations

import json
import os
import re
import threading
from collections import Counter
from pathlib import Path

import pytest

from pipeline import toymodel
from pipeline.toymodel import TOY_MODELS, ToyModelSpec, ensure_toy_model, toy_model_dir
from pipeline.toyworld import build_tokenizer, draw_training_problems, make_problems

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PROMPT = re.compile(r"Compute (\d+)((?:[-+*]\d+)+)\.\n")
STEP = re.compile(r"(\d+)([-+*])(\d+)=(\d+)\.")
BOXED = re.compile(r"\\boxed\{(-?\d+)\}")


def _check_problem(row: dict) -> None:
    """Re-derives everything about one problem from its prompt text alone."""
    match = PROMPT.fullmatch(row["problem"])
    assert match, row["problem"]
    value = int(match.group(1))
    assert 1 <= value <= 99
    operations = re.findall(r"([-+*])(\d+)", match.group(2))
    assert len(operations) == row["level"]
    steps = row["solution"].split(" Answer: ")[0].split(" ")
    assert len(steps) == row["level"]
    for (operation, operand_text), step in zip(operations, steps, strict=True):
        operand = int(operand_text)
        assert 2 <= operand <= 9 if operation == "*" else 1 <= operand <= 99
        result = {"+": value + operand, "-": value - operand, "*": value * operand}[operation]
        assert 0 <= result < 100, row
        assert STEP.fullmatch(step).groups() == (str(value), operation, operand_text, str(result)), (step, row)
        value = result
    assert row["answer"] == str(value)
    assert row["solution"].endswith(f" Answer: \\boxed{{{value}}}")


def test_problems_are_deterministic_and_seed_dependent():
    assert make_problems(300, seed=7) == make_problems(300, seed=7)
    assert make_problems(300, seed=7) != make_problems(300, seed=8)


def test_every_solution_step_is_right_and_within_bounds():
    rows = make_problems(1200, seed=3)
    for row in rows:
        _check_problem(row)
    for row in draw_training_problems(600, (1, 2, 3, 4, 5, 6), None, seed=3):
        _check_problem(row)


def test_levels_and_weights_are_honoured_without_duplicates():
    rows = make_problems(1000, levels=(1, 4, 6), seed=1, level_weights=(0.5, 0.3, 0.2))
    assert Counter(row["level"] for row in rows) == {1: 500, 4: 300, 6: 200}
    assert len({row["problem"] for row in rows}) == len(rows)
    assert all(row["level"] in (1, 4, 6) for row in rows)
    uniform = make_problems(601, seed=2)
    assert sorted(Counter(row["level"] for row in uniform).values()) == [100] * 5 + [101]


def test_bad_requests_say_what_to_change():
    with pytest.raises(ValueError, match="one weight per level"):
        make_problems(10, levels=(1, 2), level_weights=(1.0,))
    with pytest.raises(ValueError, match="1..6"):
        make_problems(10, levels=(0, 7))
    with pytest.raises(ValueError, match="fewer problems"):  # level 1 has 9,979 distinct problems
        make_problems(12_000, levels=(1,))


def test_tokenizer_splits_digits_and_round_trips(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = build_tokenizer()
    assert len(tokenizer) == 24
    row = make_problems(1, levels=(6,), seed=4)[0]
    text = row["problem"] + row["solution"]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text
    assert tokenizer.tokenize("Compute 72+10.\n") == ["Compute ", "7", "2", "+", "1", "0", ".", "\n"]
    assert tokenizer.tokenize(" Answer: \\boxed{46}") == [" ", "Answer: ", "\\boxed{", "4", "6", "}"]
    # <eos> is one special id (TRL appends it as text), and it is dropped when decoding completions.
    assert tokenizer("46<eos>", add_special_tokens=False)["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids + [tokenizer.eos_token_id], skip_special_tokens=True) == text
    assert tokenizer.chat_template is None
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text, add_special_tokens=False)["input_ids"] == ids
    assert (reloaded.pad_token, reloaded.eos_token, reloaded.unk_token) == ("<pad>", "<eos>", "<unk>")


def test_specs_validate_and_fingerprint():
    assert set(TOY_MODELS) == {"strong", "weak", "student", "student_all_levels", "test"}
    assert max(TOY_MODELS["student"].train_levels) <= 3
    assert TOY_MODELS["student_all_levels"].train_levels == (1, 2, 3, 4, 5, 6)
    # Equal specs share one build: the all-level student is the strong model's directory.
    assert toy_model_dir("student_all_levels") == toy_model_dir("strong")
    assert TOY_MODELS["strong"].fingerprint() != TOY_MODELS["weak"].fingerprint()
    assert ToyModelSpec().fingerprint() == ToyModelSpec().fingerprint()
    with pytest.raises(ValueError, match="must divide"):
        ToyModelSpec(hidden_size=130, num_heads=4)
    with pytest.raises(ValueError, match="one weight per level"):
        ToyModelSpec(train_levels=(1, 2), train_level_weights=(1.0,))
    with pytest.raises(ValueError, match="choose one of"):
        ensure_toy_model("tiny")


def _fake_build(calls: list):
    """A stand-in for the real training: writes the files a finished build has, and counts calls."""

    def build(name, spec, build_dir, progress):
        calls.append(name)
        build_dir.mkdir(parents=True)
        for file_name in ("config.json", "tokenizer.json", "spec.json", "accuracy.json"):
            (build_dir / file_name).write_text("{}")

    return build


def test_cache_root_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LESSMORE_CACHE", str(tmp_path / "env-cache"))
    assert toy_model_dir("weak").parent == tmp_path / "env-cache" / "toy"
    assert toy_model_dir("weak", cache_dir=tmp_path / "x").parent == tmp_path / "x" / "toy"
    monkeypatch.delenv("LESSMORE_CACHE")
    assert toy_model_dir("weak").is_relative_to(Path.home() / ".cache" / "lessmore")


def test_crashed_build_is_never_used(tmp_path, monkeypatch):
    def crashing_build(name, spec, build_dir, progress):
        build_dir.mkdir(parents=True)
        (build_dir / "config.json").write_text("{}")
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(toymodel, "_build", crashing_build)
    with pytest.raises(RuntimeError, match="mid-build"):
        ensure_toy_model("weak", cache_dir=tmp_path)
    toy_dir = tmp_path / "toy"
    assert not toy_model_dir("weak", tmp_path).exists()
    assert not list(toy_dir.glob(".building-*"))

    # A process killed outright leaves its temporary directory behind; the next build discards it.
    stale = toy_dir / f".building-{toy_model_dir('weak', tmp_path).name}-99999"
    stale.mkdir()
    calls: list = []
    monkeypatch.setattr(toymodel, "_build", _fake_build(calls))
    assert ensure_toy_model("weak", cache_dir=tmp_path) == toy_model_dir("weak", tmp_path)
    assert calls == ["weak"] and not stale.exists()


def test_concurrent_callers_build_once(tmp_path, monkeypatch):
    calls: list = []
    build = _fake_build(calls)

    def slow_build(*args):
        threading.Event().wait(0.3)  # long enough for the other caller to reach the lock
        build(*args)

    monkeypatch.setattr(toymodel, "_build", slow_build)
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(ensure_toy_model("student", cache_dir=tmp_path)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == ["student"]
    assert results == [toy_model_dir("student", tmp_path)] * 2


def test_test_model_loads_and_solves_easy_problems(toy_test_model, monkeypatch):
    """The real "test" model (built once per session by the fixture): its files, loaded like a hub model, and run."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(toy_test_model)
    assert model_dir == toy_model_dir("test")
    spec = json.loads((model_dir / "spec.json").read_text())
    assert spec["name"] == "test" and ToyModelSpec(**{k: v for k, v in spec.items() if k in ToyModelSpec.model_fields})
    accuracy = json.loads((model_dir / "accuracy.json").read_text())
    assert set(accuracy["greedy"]) == set(accuracy["sampled"]) == {"1", "2", "3", "4", "5", "6"}
    assert accuracy["build"]["total_seconds"] > 0

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    problems = make_problems(100, levels=(1,), seed=11)
    batch = tokenizer([row["problem"] for row in problems], return_tensors="pt", padding=True)
    with torch.inference_mode():
        output = model.generate(**batch, max_new_tokens=40, do_sample=False)
    completions = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    boxed = [BOXED.findall(text) for text in completions]
    assert sum(bool(found) for found in boxed) >= 90, completions[:5]  # it learned the format and stops
    correct = sum(bool(found) and found[-1] == row["answer"] for found, row in zip(boxed, problems, strict=True))
    # The test model gets ~15% of level-1 problems right; models that have only the format get 0-3%.
    assert correct >= 5, completions[:5]

    # A second call reuses the cache: no build.
    def no_build(*args):
        raise AssertionError("rebuilt a cached model")

    monkeypatch.setattr(toymodel, "_build", no_build)
    assert ensure_toy_model("test") == model_dir


# -- the gold generator ----------------------------------------------------------------------------------------------


def test_gold_generator_is_the_worked_solution_at_eps_zero():
    from pipeline.toyworld import gold_solution

    for row in make_problems(300, seed=5):
        assert gold_solution(row["problem"]) == row["solution"]
    assert gold_solution("What is 2 + 2?") is None


@pytest.mark.parametrize("eps", [0.03, 0.1, 0.3])
def test_gold_errors_are_a_fixed_fraction_of_coherent_wrong_traces(eps):
    from pipeline.toyworld import gold_errs, gold_solution

    rows = make_problems(3000, seed=7)
    wrong = [row for row in rows if gold_errs(row["problem"], eps)]
    assert abs(len(wrong) / len(rows) - eps) < 3 * (eps * (1 - eps) / len(rows)) ** 0.5 + 0.002
    # Nested in eps: a problem wrong at eps is wrong at every larger eps. Levels are hit alike.
    assert all(gold_errs(row["problem"], min(1.0, eps * 2)) for row in wrong)
    for row in rows:
        text = gold_solution(row["problem"], eps)
        assert text == gold_solution(row["problem"], eps)  # deterministic: the same trace every time
        if not gold_errs(row["problem"], eps):
            assert text == row["solution"]
            continue
        # Coherent: exactly one step miscomputed, by 1 or 10, and every later step computed from the wrong value.
        start, operations = int(PROMPT.fullmatch(row["problem"]).group(1)), re.findall(
            r"([-+*])(\d+)", PROMPT.fullmatch(row["problem"]).group(2))
        steps = re.findall(r"(-?\d+)([-+*])(\d+)=(-?\d+)\.", text)
        assert len(steps) == row["level"] and int(steps[0][0]) == start
        slips = []
        for index, ((left, op, operand, result), (op2, operand2)) in enumerate(zip(steps, operations, strict=True)):
            assert (op, operand) == (op2, operand2)
            if index:
                assert int(left) == int(steps[index - 1][3])  # carried forward
            exact = {"+": int(left) + int(operand), "-": int(left) - int(operand), "*": int(left) * int(operand)}[op]
            if int(result) != exact:
                slips.append(int(result) - exact)
        assert len(slips) == 1 and slips[0] in (1, -1, 10, -10)
        answer = BOXED.findall(text)[-1]
        assert answer == steps[-1][3] and answer != row["answer"]


def test_gold_model_references_and_backend():
    from pipeline.models import model_fingerprint, resolve_model
    from pipeline.toyworld import parse_gold
    from stages.sample import SampleConfig, SampleStage

    assert parse_gold("toy:gold") == 0.0 and parse_gold("toy:gold,eps=0.1") == 0.1
    for bad in ("toy:gold,eps=2", "toy:gold,rho=1", "toy:gold,eps=x"):
        with pytest.raises(ValueError, match="toy:gold"):
            parse_gold(bad)
    assert resolve_model("toy:gold,eps=0.1") == "toy:gold,eps=0.1"  # no weights: nothing is built
    assert model_fingerprint("toy:gold") != model_fingerprint("toy:gold,eps=0.1")
    rows = make_problems(40, seed=2)
    # backend: hf as a pool shares it with neural generators; the gold model still runs on its solver.
    stage = SampleStage(SampleConfig(model="toy:gold,eps=0.3", k=3, backend="hf"))
    out = stage({"problem_id": [str(i) for i in range(40)], "problem": [r["problem"] for r in rows],
                 "answer": [r["answer"] for r in rows]})
    assert len(out["completion"]) == 120 and set(out["finish_reason"]) == {"stop"}
    for i in range(40):
        assert len(set(out["completion"][3 * i: 3 * i + 3])) == 1  # k samples agree: the error is systematic
    bad = stage({"problem_id": ["x"], "problem": ["no chain here"], "answer": ["1"]})
    assert bad["finish_reason"] == ["error"] * 3 and "toy:gold" in bad["error"][0]

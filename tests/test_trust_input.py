"""Bad input refused or quarantined, never a traceback or silent damage: the YAML loader (duplicate keys, alias
bombs, deep nesting), what `validate` checks before any work (prompt template fields, toy-world levels and counts,
stage order), credentials kept off the disk, and rows the source stage quarantines (NaN/inf answers, lone
surrogates, parquet files whose schemas differ, a `__reject__` field in the data)."""

from __future__ import annotations

import json
import time
import tracemalloc
from pathlib import Path

import pytest
import yaml

from pipeline import columns as C
from pipeline.cli import main
from pipeline.config import ConfigError, load_yaml, parse_config

SECRET = "hf_trust-input-7c1e9"

# 342 bytes; each line multiplies by 9: 9^9 (387 million) strings once expanded.
ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi"))


def _validate(tmp_path: Path, text: str, capsys) -> tuple[int, str]:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    code = main(["validate", str(path)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def _run_refused(tmp_path: Path, text: str, capsys, monkeypatch) -> str:
    """`lessmore run` refuses the config before any work: exit 2, one error, no file written."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.yaml"], "a refused config wrote files"
    return err


# -- the YAML loader ------------------------------------------------------------------------------------------


def test_a_stage_given_twice_is_refused_naming_the_key_and_line(tmp_path, capsys, monkeypatch):
    text = ("stages:\n  source: {kind: toyworld, n: 4}\n  sample: {k: 2}\n  verify: {}\n"
            "  sample: {k: 8}\n")
    code, err = _validate(tmp_path, text, capsys)
    assert code == 2
    assert "duplicate key 'sample'" in err and "line 5" in err and "first at line 3" in err
    assert len(err.strip().splitlines()) == 1
    _run_refused(tmp_path, text, capsys, monkeypatch)


def test_duplicate_keys_are_refused_at_any_depth_but_merge_keys_may_override(tmp_path):
    nested = tmp_path / "nested.yaml"
    nested.write_text("stages:\n  source:\n    kind: toyworld\n    n: 4\n    n: 400\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'n' \(first at line 4\)"):
        load_yaml(nested)
    merged = tmp_path / "merged.yaml"
    merged.write_text("base: &base {k: 2, temperature: 0.5}\nsample:\n  <<: *base\n  k: 8\n")
    assert load_yaml(merged)["sample"] == {"k": 8, "temperature": 0.5}


def test_an_alias_bomb_is_refused_quickly_in_little_memory(tmp_path, capsys):
    assert len(ALIAS_BOMB) < 420
    path = tmp_path / "bomb.yaml"
    path.write_text(ALIAS_BOMB + "stages:\n  source: {kind: toyworld, n: 4}\n  sample:\n    engine_kwargs:\n"
                    "      x: *i\n")
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError, match="aliases expand the document past"):
            load_yaml(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 2.0
    assert peak < 20 * 2**20, f"refusing the bomb took {peak / 2**20:.0f} MiB"
    assert main(["validate", str(path)]) == 2
    assert "aliases expand" in capsys.readouterr().err


@pytest.mark.parametrize("text", [
    "stages: " + "[" * 5000 + "]" * 5000 + "\n",
    "stages:\n  source:\n    task_options:\n" + "".join("  " * (i + 3) + f"k{i}:\n" for i in range(200)),
], ids=["flow", "block"])
def test_deep_nesting_is_refused_without_recursion_error(tmp_path, capsys, text):
    code, err = _validate(tmp_path, text, capsys)
    assert code == 2 and "nested deeper than" in err and "RecursionError" not in err


def test_overrides_go_through_the_same_loader():
    from pipeline.config import apply_overrides

    assert apply_overrides({}, ["a.b=[1, 2]"]) == {"a": {"b": [1, 2]}}
    # A value the loader refuses stays the literal text (as malformed YAML always did), never an expansion.
    flow_bomb = "[&a [lol,lol,lol,lol,lol,lol,lol,lol,lol]" + "".join(
        f", &{name} [{','.join([f'*{prev}'] * 9)}]" for prev, name in zip("abcdefgh", "bcdefghi")) + "]"
    out = apply_overrides({}, ["x=" + flow_bomb])
    assert out["x"] == flow_bomb


# -- what validate checks before any work ---------------------------------------------------------------------

_BASE = "stages:\n  source: {kind: toyworld, n: 4, levels: [1]}\n"


@pytest.mark.parametrize("template", ["Put the answer in \\\\boxed{}: {problem}", "{problem} }", "{problem} {answer}",
                                      "{problem.__class__}"])
def test_a_template_str_format_cannot_render_is_refused_with_the_fix(tmp_path, capsys, monkeypatch, template):
    text = _BASE + f'  sample: {{prompt_template: "{template}"}}\n'
    code, err = _validate(tmp_path, text, capsys)
    assert code == 2
    assert err.startswith("error: stages.sample.prompt_template: ") and "{{}}" in err
    _run_refused(tmp_path, text, capsys, monkeypatch)


def test_templates_that_render_pass():
    from stages.sample import SampleConfig
    from stages.sample.backend import render_prompt

    for template in ("{problem}", "Solve: {problem}\nPut the answer in \\boxed{{}}."):
        cfg = SampleConfig(prompt_template=template)
        assert "1+1" in render_prompt(cfg, None, "1+1")
    with pytest.raises(ValueError, match="no {problem} field"):
        SampleConfig(prompt_template="the same text for every problem")


@pytest.mark.parametrize("source, fragment", [
    ("{kind: toyworld, n: 4, levels: [0]}", "levels must be integers in 1..6"),
    ("{kind: toyworld, n: 4, levels: [1, 1]}", "levels must not repeat"),
    ("{kind: toyworld, n: 20000, levels: [1]}", "level 1 has only 9,979 distinct ones"),
    ("{kind: toyworld, n: 30000, levels: [1, 2, 3]}", "asks for 10000 level-1 problems"),
], ids=["level-zero", "repeated-level", "n-over-supply", "n-split-over-levels"])
def test_toyworld_levels_and_counts_are_checked_by_validate(tmp_path, capsys, monkeypatch, source, fragment):
    text = f"stages:\n  source: {source}\n"
    code, err = _validate(tmp_path, text, capsys)
    assert code == 2 and err.startswith("error: stages.source: ") and fragment in err
    _run_refused(tmp_path, text, capsys, monkeypatch)


def test_every_problem_of_a_level_can_be_asked_for():
    from pipeline.toyworld import make_problems

    rows = make_problems(9979, levels=[1], seed=3)
    assert len({r["problem"] for r in rows}) == 9979
    assert make_problems(9979, levels=[1], seed=3) == rows  # still deterministic


@pytest.mark.parametrize("stages, fragment", [
    ("source: {kind: toyworld, n: 4}\n  sample: {}\n  dedup: {}\n", "place dedup before sample"),
    ("source: {kind: toyworld, n: 4}\n  sample: {}\n  verify: {}\n  screen: {}\n", "place screen before sample"),
], ids=["dedup-after-sample", "screen-after-sample"])
def test_stage_order_by_row_kind_is_checked_by_validate(tmp_path, capsys, monkeypatch, stages, fragment):
    text = f"stages:\n  {stages}"
    code, err = _validate(tmp_path, text, capsys)
    assert code == 2 and fragment in err and "one row per problem_id, sample_idx" in err
    _run_refused(tmp_path, text, capsys, monkeypatch)


def test_the_documented_orders_still_validate(capsys):
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("tiny.yaml", "limo.yaml", "s1.yaml"):
        assert main(["validate", str(root / name)]) == 0, capsys.readouterr().err


# -- a curation budget that keeps nothing ------------------------------------------------------------------------


def test_a_fraction_budget_that_keeps_nothing_is_an_error_naming_rule_and_numbers(tmp_path):
    import pandas as pd

    from stages.base import RunContext
    from stages.curate import CurateConfig, CurateStage
    from stages.rules import RuleError

    rows = [{C.PROBLEM_ID: f"p{i}", C.SAMPLE_IDX: 0, C.CORRECT: True, C.FINISH_REASON: "stop", C.COMPLETION: "x",
             C.PASS_RATE: 1.0, C.N_CORRECT: 1, C.N_SAMPLES: 1} for i in range(20)]
    upstream = tmp_path / "up"
    upstream.mkdir()
    pd.DataFrame(rows).to_parquet(upstream / "part-0.parquet")
    context = RunContext(run_dir=str(tmp_path))
    with pytest.raises(RuleError) as info:
        CurateStage.prepare(CurateConfig(rule="keep_hard", p=0.01, report=False), str(upstream), context)
    message = str(info.value)
    assert "keep_hard" in message and "p = 0.01" in message and "20 problems" in message and "p >= 0.05" in message
    assert "\n" not in message
    kept = CurateStage.prepare(CurateConfig(rule="keep_hard", p=0.05, report=False), str(upstream), context)
    assert sum(d[0] for d in kept["decisions"].values()) == 1


def test_validate_refuses_a_fraction_budget_the_source_cannot_fill(tmp_path, capsys, monkeypatch):
    text = ("stages:\n  source: {kind: toyworld, n: 20, levels: [1]}\n  sample: {}\n  verify: {}\n"
            "  difficulty: {}\n  curate: {rule: keep_hard, p: 0.01}\n")
    code, err = _validate(tmp_path, text, capsys)
    assert code == 2 and err.startswith("error: stages.curate.p: rule keep_hard with p = 0.01 keeps none")
    assert "p >= 0.05" in err
    _run_refused(tmp_path, text, capsys, monkeypatch)
    code, _ = _validate(tmp_path, text.replace("p: 0.01", "p: 0.05"), capsys)
    assert code == 0


def test_a_sweep_cell_whose_budget_keeps_nothing_is_refused():
    from pipeline.sweep.config import parse_sweep_config

    data = load_yaml(Path(__file__).resolve().parents[1] / "configs" / "phase_linear_smoke.yaml")
    data["grid"]["blocks"] = [{"pool_sizes": [20, 200], "keep_fractions": [0.01, 1.0]}]
    with pytest.raises(ConfigError, match=r"grid.blocks.0: keep fraction p = 0.01 of pool size 20 keeps no problem"):
        parse_sweep_config(data)
    data["grid"]["blocks"] = [{"pool_sizes": [200], "keep_fractions": [0.01, 1.0]}]
    parse_sweep_config(data)


# -- credentials ----------------------------------------------------------------------------------------------


def test_redaction_covers_credential_keys_at_any_depth_and_nothing_else():
    from pipeline.config import redact_secrets

    data = {"stages": {"sample": {"engine_kwargs": {"hf_token": SECRET, "max_model_len": 512}, "max_tokens": 8}},
            "finetune": {"sft": {"hub_token": SECRET, "pad_token": "<pad>", "eos_token_id": 2}},
            "x": [{"api_key": SECRET, "client_secret": SECRET, "password": SECRET, "tokenizer": "t"}],
            "hf_token": None, "push_to_hub": True}
    out = redact_secrets(data)
    assert SECRET not in json.dumps(out)
    assert out["stages"]["sample"] == {"engine_kwargs": {"hf_token": "<redacted>", "max_model_len": 512},
                                       "max_tokens": 8}
    assert out["finetune"]["sft"] == {"hub_token": "<redacted>", "pad_token": "<pad>", "eos_token_id": 2}
    assert out["x"][0]["tokenizer"] == "t" and out["hf_token"] is None


def test_a_sweep_never_saves_credentials(tmp_path, monkeypatch, capsys):
    import pipeline.sweep.run as sweep_run
    from pipeline.sweep.config import parse_sweep_config

    data = load_yaml(Path(__file__).resolve().parents[1] / "configs" / "phase_linear_smoke.yaml")
    data.update(output_root=str(tmp_path), name="sweep")
    data["pool"]["sample"]["engine_kwargs"] = {"hf_token": SECRET}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    # Given in the file: refused, since the trials read the saved (redacted) config back.
    assert main(["sweep", str(path), "--validate"]) == 2
    assert "pool.sample.engine_kwargs.hf_token: a credential" in capsys.readouterr().err

    # Built in code: the saved config is redacted.
    def stop(*args, **kwargs):
        raise RuntimeError("stop after the config is saved")

    monkeypatch.setattr(sweep_run, "build_pools", stop)
    with pytest.raises(RuntimeError, match="stop after"):
        sweep_run.run_sweep(parse_sweep_config(data))
    saved = (tmp_path / "sweep" / "sweep_config.json").read_text()
    assert SECRET not in saved and json.loads(saved)["pool"]["sample"]["engine_kwargs"]["hf_token"] == "<redacted>"


# -- rows the source stage quarantines -------------------------------------------------------------------------


def _read_source(**cfg) -> list[dict]:
    from stages.source import SourceConfig, SourceStage

    rows = []
    for batch in SourceStage(SourceConfig(**cfg)).read():
        rows += [dict(zip(batch, values)) for values in zip(*batch.values())]
    return rows


def test_answers_that_cannot_be_answers_are_quarantined(tmp_path):
    src = tmp_path / "p.jsonl"
    answers = [float("nan"), float("inf"), float("-inf"), "nan", " inf", "-Infinity", "NaN", "7", "\\infty"]
    # json.dumps writes NaN/Infinity, which Python's json reads back as floats
    src.write_text("".join(json.dumps({"problem": f"Problem {i}.", "answer": a}) + "\n" for i, a in enumerate(answers)))
    rows = _read_source(kind="jsonl", path=str(src))
    reasons = [r[C.REJECT_REASON] for r in rows]
    assert all(r and "cannot be an answer" in r for r in reasons[:7]), reasons
    assert reasons[7:] == [None, None]  # a number and a real symbol stay
    odd_level = tmp_path / "l.jsonl"
    odd_level.write_text(json.dumps({"problem": "P.", "answer": "1", "level": float("inf")}) + "\n")
    assert _read_source(kind="jsonl", path=str(odd_level), level_field="level")[0][C.LEVEL] is None
    gsm = tmp_path / "g.jsonl"
    gsm.write_text(json.dumps({"problem": "P.", "answer": "so #### nan"}) + "\n")
    assert "cannot be an answer" in _read_source(kind="jsonl", path=str(gsm), answer_format="gsm8k")[0][C.REJECT_REASON]


def test_a_lone_surrogate_row_is_quarantined_and_the_rest_kept(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text('{"problem": "Compute 1+\\ud800.", "answer": "1"}\n'
                   '{"problem": "Compute 1+1.", "answer": "\\udfff"}\n'
                   '{"problem": "Compute 2+2.", "answer": "4"}\n')
    rows = _read_source(kind="jsonl", path=str(src))
    assert "'problem' is not valid Unicode" in rows[0][C.REJECT_REASON]
    assert "'answer' is not valid Unicode" in rows[1][C.REJECT_REASON]
    assert rows[2][C.REJECT_REASON] is None


def test_parquet_files_whose_schemas_differ_are_read_file_by_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"problem": ["A?", "B?"], "answer": ["1", "2"]}), data / "a.parquet")
    pq.write_table(pa.table({"problem": ["C?"], "answer": [3], "extra": [[1.5]]}), data / "b.parquet")
    pq.write_table(pa.table({"question": ["D?"]}), data / "c.parquet")
    (data / "d.parquet").write_bytes(b"PAR1 not really parquet")
    for path in (str(data), str(data / "*.parquet")):
        rows = _read_source(kind="parquet", path=path)
        by_text = {r[C.PROBLEM]: r for r in rows}
        assert [by_text[p][C.ANSWER] for p in ("A?", "B?", "C?")] == ["1", "2", "3"]
        assert all(by_text[p][C.REJECT_REASON] is None for p in ("A?", "B?", "C?"))
        reasons = [r[C.REJECT_REASON] for r in rows if r[C.REJECT_REASON]]
        assert len(rows) == 5 and len(reasons) == 2 and "missing field 'problem'" in reasons
        assert any("d.parquet is not a readable parquet file" in r for r in reasons)
    assert len(_read_source(kind="parquet", path=str(data), n=2)) == 2


def test_a_reject_field_in_the_data_is_not_a_reject_reason(tmp_path):
    src = tmp_path / "p.jsonl"
    src.write_text(json.dumps({"problem": "Compute 3+4.", "answer": "7", "__reject__": "please drop me"}) + "\n"
                   + "not json\n" + "[" * 100_000 + "\n")
    rows = _read_source(kind="jsonl", path=str(src))
    assert rows[0][C.REJECT_REASON] is None and rows[0][C.ANSWER] == "7"
    # the readers' own marks still work
    assert rows[1][C.REJECT_REASON].startswith("line 2 is not valid JSON")
    assert rows[2][C.REJECT_REASON] == "line 3 is nested too deeply"


# -- one small run: quarantine counted, credentials nowhere on disk -------------------------------------------------


def test_a_run_quarantines_bad_rows_and_writes_no_credential(tmp_path, toy_test_model, ray_local):
    from pipeline import io
    from pipeline.runner import run

    good = [{"problem": f"Compute {a}+1.\n", "answer": str(a + 1)} for a in range(1, 5)]
    bad = [{"problem": "Compute 9+9.\n", "answer": float("nan")}, {"problem": "Compute 8+8.\n", "answer": "inf"}]
    lines = [json.dumps(r) for r in good + bad]
    lines += ['{"problem": "Compute 5+\\ud800.\\n", "answer": "5"}',
              json.dumps({"problem": "Compute 6+1.\n", "answer": "7", "__reject__": "forged"})]
    src = tmp_path / "p.jsonl"
    src.write_text("\n".join(lines) + "\n")
    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").read_text())
    data.update(output_root=str(tmp_path / "out"), name="trust", ray={"num_cpus": 2, "progress_bars": False})
    stages = data["stages"]
    stages["source"] = {"kind": "jsonl", "path": str(src)}
    stages["sample"].update(model=toy_test_model, k=2, max_tokens=24, engine_kwargs={"hf_token": SECRET})
    stages["sample"]["resources"]["batch_size"] = 8
    stages["verify"]["resources"] = {"num_cpus": 1, "concurrency": 1, "batch_size": 64}
    stages["curate"].update(rule="all", p=None, report=True)
    data["finetune"] = {"sft": {"hub_token": SECRET}}  # not trained here: only written into config.yaml
    result = run(parse_config(data))
    source = result.stages[0]
    assert (source.rows_in, source.rows_out, source.rejected) == (8, 5, 3)
    reasons = io.read_table(result.run_dir / "rejects" / "00_source").to_pydict()[C.REJECT_REASON]
    assert sum("cannot be an answer" in r for r in reasons) == 2 and sum("not valid Unicode" in r for r in reasons) == 1
    written = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert written["stages"]["sample"]["engine_kwargs"]["hf_token"] == "<redacted>"
    assert written["finetune"]["sft"]["hub_token"] == "<redacted>"
    assert "<redacted>" in Path(result.outputs["dataset"]).parent.joinpath("README.md").read_text()
    leaked = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == []

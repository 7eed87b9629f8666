"""Hostile input: malformed configs, malformed rows, adversarial completions, secrets and paths.

Every case ends in a clear error (exit 2, naming the field) or in a quarantine with a reason, and the counts
reconcile: rows in = rows out + dropped + rejected, with no duplicates.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from pipeline import columns as C
from pipeline import io
from pipeline.cli import main
from pipeline.config import ConfigError, parse_config

ROOT = Path(__file__).resolve().parents[1]
BAD_CONFIGS = sorted((ROOT / "tests" / "data" / "bad_configs").glob("*.yaml"))
VERDICT_REASONS = {"ok", "mismatch", "no_answer", "timeout", "error"}


def expected_fragments(path: Path) -> list[str]:
    """What the error must say, from the file's first line: ``# expect: fragment | fragment``."""
    first = path.read_text().splitlines()[0] if path.read_text() else ""
    assert first.startswith("# expect:"), f"{path.name}: first line must be '# expect: ...'"
    return [f.strip() for f in first[len("# expect:"):].split("|")]


def test_the_corpus_is_big_enough():
    assert len(BAD_CONFIGS) >= 15


@pytest.mark.parametrize("path", BAD_CONFIGS, ids=[p.stem for p in BAD_CONFIGS])
def test_malformed_config_exits_2_naming_the_field_and_writes_nothing(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # relative output roots would land here
    for command in ("validate", "run"):
        assert main([command, str(path)]) == 2, f"`lessmore {command}` accepted {path.name}"
        err = capsys.readouterr().err
        assert err.startswith("error: ")
        for fragment in expected_fragments(path):
            assert fragment in err, f"{path.name}: {fragment!r} not in {err!r}"
        assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == [], "a rejected config wrote files"


def test_console_script_exit_code(tmp_path):
    import subprocess
    import sys

    script = Path(sys.executable).parent / "lessmore"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "pipeline.cli"]
    res = subprocess.run([*cmd, "validate", str(BAD_CONFIGS[0])], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2 and expected_fragments(BAD_CONFIGS[0])[0] in res.stderr


def test_run_dir_symlinked_out_of_output_root_is_refused(tmp_path):
    outside = tmp_path / "outside"
    root = tmp_path / "root"
    outside.mkdir()
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    data = {"output_root": str(root), "run_dir": "link/run", "stages": {"source": {"kind": "toyworld", "n": 3}}}
    with pytest.raises(ConfigError, match="run_dir: link/run escapes output_root"):
        parse_config(data)
    data = {**data, "run_dir": "run", "stages": {**data["stages"], "sample": {}, "verify": {}, "difficulty": {},
                                                 "curate": {"rule": "all"}, "export": {"path": "link/data"}}}
    with pytest.raises(ConfigError, match="stages.export.path: link/data escapes output_root"):
        parse_config(data)


def test_file_uri_output_root_is_a_local_path(tmp_path):
    cfg = parse_config({"output_root": f"file://{tmp_path}", "name": "r",
                        "stages": {"source": {"kind": "toyworld", "n": 3}}})
    assert cfg.resolved_run_dir == tmp_path / "r"


# -- malformed rows through the whole pipeline ---------------------------------------------------------------------

GOOD = [{"problem": f"Compute {a}+{b}.\n", "answer": str(a + b)} for a, b in ((2, 3), (10, 7), (40, 2), (8, 8))]
BAD_ROWS = [
    ("missing problem", {"answer": "3"}),
    ("missing answer", {"problem": "Compute 1+1.\n"}),
    ("problem is a number", {"problem": 7, "answer": "1"}),
    ("problem is a list", {"problem": ["Compute 1+2."], "answer": "3"}),
    ("answer is a bool", {"problem": "Compute 3+3.\n", "answer": True}),
    ("answer is an object", {"problem": "Compute 4+3.\n", "answer": {"value": 7}}),
    ("empty problem", {"problem": "", "answer": "1"}),
    ("whitespace problem", {"problem": " \n\t ", "answer": "1"}),
    ("empty answer", {"problem": "Compute 5+5.\n", "answer": ""}),
    ("duplicate of the first", GOOD[0]),
]
ACCEPTED_ODD = [
    ("level is not a number", {"problem": "Compute 6+1.\n", "answer": "7", "level": "hard"}),
    ("numeric answer", {"problem": "Compute 9+1.\n", "answer": 10}),
    ("null byte", {"problem": "Compute 2+2.\x00\n", "answer": "4"}),
    ("1 MB problem", {"problem": "Compute 1+" + "1+" * 500_000 + "1.\n", "answer": "500002"}),
]


def small_config(tmp_path: Path, model: str, source: dict, k: int = 2) -> dict:
    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    data.update(output_root=str(tmp_path), name="hostile", ray={"num_cpus": 2, "progress_bars": False})
    data["stages"]["source"] = source
    data["stages"]["sample"].update(model=model, k=k, max_tokens=32)
    data["stages"]["sample"]["resources"]["batch_size"] = 4
    data["stages"]["verify"]["resources"] = {"num_cpus": 1, "concurrency": 1, "batch_size": 64}
    data["stages"]["curate"].update(rule="all", p=None)
    return data


def test_malformed_rows_are_quarantined_and_counts_reconcile(tmp_path, toy_test_model, ray_local):
    from pipeline.runner import run

    lines = [json.dumps(r) for r in GOOD] + [json.dumps(r) for _, r in BAD_ROWS + ACCEPTED_ODD]
    lines += ["this line is not JSON", "[1, 2, 3]", ""]  # the empty line is not a record
    src = tmp_path / "problems.jsonl"
    src.write_text("\n".join(lines) + "\n")
    result = run(parse_config(small_config(tmp_path, toy_test_model, {"kind": "jsonl", "path": str(src)})))
    by = {r.name: r for r in result.stages}
    records = len(lines) - 1
    accepted = len(GOOD) + len(ACCEPTED_ODD)
    source = by["source"]
    assert (source.rows_in, source.rows_out, source.rejected) == (records, accepted, records - accepted)
    rejects = io.read_table(result.run_dir / "rejects" / "00_source").to_pydict()
    reasons = rejects[C.REJECT_REASON]
    assert len(reasons) == records - accepted and all(reasons)
    assert sum("duplicate" in r for r in reasons) == 1
    assert sum("not valid JSON" in r for r in reasons) == 1
    assert sum("expected an object" in r for r in reasons) == 1

    sample = by["sample"]
    assert sample.rows_in == accepted and sample.rows_out == accepted * 2 and sample.rejected == 0
    rows = io.read_table(result.run_dir / "01_sample").to_pandas()
    assert not rows.duplicated([C.PROBLEM_ID, C.SAMPLE_IDX]).any()
    huge = rows[rows[C.PROBLEM].str.len() > 1_000_000]
    assert len(huge) == 2 and set(huge[C.FINISH_REASON]) == {"error"}
    assert all("exceeds the model context" in e for e in huge[C.ERROR])
    assert rows[C.PROBLEM].str.contains("\x00", regex=False).sum() == 2  # kept byte for byte

    verify = by["verify"]
    assert verify.rows_in == verify.rows_out == accepted * 2
    verdicts = io.read_table(result.run_dir / "02_verify").to_pandas()
    assert set(verdicts[C.VERDICT_REASON]) <= VERDICT_REASONS
    errored = verdicts[verdicts[C.FINISH_REASON] == "error"]
    assert len(errored) == 2 and set(errored[C.VERDICT_REASON]) == {"error"} and not errored[C.CORRECT].any()

    curate = by["curate"]
    assert curate.kept + sum(curate.dropped.values()) + curate.rejected == curate.rows_in == accepted * 2
    assert by["export"].rows_out == curate.kept


def test_lone_surrogate_in_a_json_source_is_stored_not_fatal(tmp_path):
    """A JSON "\\ud800" escape decodes to a lone surrogate, which is not UTF-8. The storage layer keeps the row."""
    table = io.to_arrow({C.PROBLEM: ["bad \ud800 text", "good"], C.LEVEL: [1, None]})
    assert table[C.PROBLEM].to_pylist() == ["bad \ufffd text", "good"]
    io.write_part(table, tmp_path)
    assert io.count_rows(tmp_path) == 2


def test_lone_surrogate_row_is_quarantined_by_the_source(tmp_path):
    from stages.source import SourceConfig, SourceStage

    src = tmp_path / "p.jsonl"
    src.write_text('{"problem": "Compute 1+\\ud800.", "answer": "1"}\n{"problem": "Compute 1+1.", "answer": "2"}\n')
    batches = list(SourceStage(SourceConfig(kind="jsonl", path=str(src))).read())
    reasons = [r for b in batches for r in b[C.REJECT_REASON]]
    assert len(reasons) == 2 and reasons[1] is None and reasons[0]


# -- adversarial completions through the verify stage, under Ray -----------------------------------------------

_DEEP = 5000
ADVERSARIAL_COMPLETIONS = {
    "plain_correct": (r"12-5=7. Answer: \boxed{7}", "7", "stop"),
    "huge_prose": ("lorem ipsum " * 200_000 + r"\boxed{7}", "7", "length"),
    "null_bytes": ("\x00\x00 Answer: \\boxed{4\x00}", "4", "stop"),
    "unclosed_boxed": (r"so the answer is \boxed{42", "42", "stop"),
    "many_unclosed_boxed": (r"\boxed{" * 200_000, "7", "length"),
    "deep_braces": (r"\boxed{" + "{" * _DEEP + "1" + "}" * _DEEP + "}", "1", "stop"),
    "huge_integer": (r"\boxed{" + "9" * 50_000 + "}", "1", "stop"),
    "empty": ("", "3", "stop"),
    "null_completion": (None, "3", "stop"),
    "generation_error": ("", "3", "error"),
}


def test_adversarial_completions_get_a_verdict_each(tmp_path, ray_local):
    from pipeline.registry import stage_class
    from pipeline.runner import Runner

    names = list(ADVERSARIAL_COMPLETIONS)
    upstream = tmp_path / "hostile" / "01_sample"
    batch = {
        C.PROBLEM_ID: [f"p{i}" for i in range(len(names))], C.PROBLEM: ["Compute it.\n"] * len(names),
        C.ANSWER: [v[1] for v in ADVERSARIAL_COMPLETIONS.values()], C.SAMPLE_IDX: [0] * len(names),
        C.COMPLETION: [v[0] for v in ADVERSARIAL_COMPLETIONS.values()],
        C.FINISH_REASON: [v[2] for v in ADVERSARIAL_COMPLETIONS.values()],
    }
    io.write_part(io.to_arrow(batch), upstream)
    cfg = parse_config({"output_root": str(tmp_path), "name": "hostile", "ray": {"progress_bars": False},
                        "stages": {"source": {"kind": "toyworld", "n": 1},
                                   "verify": {"options": {"timeout_s": 2},
                                              "resources": {"concurrency": 1, "batch_size": 4}}}})
    runner = Runner(cfg)
    result = runner._run_stage(stage_class("verify"), cfg.stage("verify"), tmp_path / "hostile" / "02_verify",
                               str(upstream), "adversarial")
    assert (result.rows_in, result.rows_out, result.rejected) == (len(names), len(names), 0)
    out = io.read_table(tmp_path / "hostile" / "02_verify").to_pandas().set_index(C.PROBLEM_ID)
    verdict = {name: out.loc[f"p{i}"] for i, name in enumerate(names)}
    assert {v[C.VERDICT_REASON] for v in verdict.values()} <= VERDICT_REASONS
    assert verdict["plain_correct"][C.CORRECT] and verdict["plain_correct"][C.VERDICT_REASON] == "ok"
    assert verdict["generation_error"][C.VERDICT_REASON] == "error" and not verdict["generation_error"][C.CORRECT]
    for name in ("empty", "null_completion"):
        assert verdict[name][C.VERDICT_REASON] == "no_answer" and not verdict[name][C.CORRECT]
    for name in ("huge_integer", "many_unclosed_boxed"):
        assert not verdict[name][C.CORRECT], name  # neither holds the reference answer
    # completions are stored as they came, null bytes and all
    assert verdict["null_bytes"][C.COMPLETION] == ADVERSARIAL_COMPLETIONS["null_bytes"][0]
    assert len(verdict["huge_prose"][C.COMPLETION]) == len(ADVERSARIAL_COMPLETIONS["huge_prose"][0])


# -- secrets, remote code, overwriting ------------------------------------------------------------------------

SECRET = "secret-xyz-7f3a"


def _files_containing(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def test_token_never_written_and_export_refuses_to_overwrite(tmp_path, toy_test_model, ray_local, monkeypatch,
                                                             capsys, caplog):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", SECRET)
    data = small_config(tmp_path / "out", toy_test_model, {"kind": "toyworld", "n": 6, "levels": [1]})
    data["stages"]["export"] = {"path": "datasets/hostile"}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(data, sort_keys=False))
    published = tmp_path / "out" / "datasets" / "hostile"

    assert main(["run", str(cfg_path)]) == 0
    first = capsys.readouterr()
    assert (published / "dataset" / "dataset_dict.json").is_file() and (published / "README.md").is_file()
    config_written = yaml.safe_load((tmp_path / "out" / "hostile" / "config.yaml").read_text())
    assert config_written["stages"]["sample"]["trust_remote_code"] is False  # off unless asked for
    card_before = (published / "README.md").read_text()

    # A changed curation re-runs export, which must not replace the published dataset without --overwrite.
    change = ["--set", "stages.curate.rule=keep_hard", "--set", "stages.curate.n=2", "--set", "stages.curate.p=null"]
    assert main(["run", str(cfg_path), *change]) == 2
    second = capsys.readouterr()
    assert "refusing to overwrite" in second.err and "--overwrite" in second.err
    assert (published / "README.md").read_text() == card_before

    assert main(["run", str(cfg_path), *change, "--overwrite"]) == 0
    third = capsys.readouterr()
    card_after = (published / "README.md").read_text()
    assert card_after != card_before and "keep_hard" in card_after
    assert not [p for p in published.parent.iterdir() if p.name.startswith(".")], "staging dirs left behind"

    logs = first.out + first.err + second.out + second.err + third.out + third.err + caplog.text
    assert SECRET not in logs
    assert _files_containing(tmp_path / "out", SECRET.encode()) == []


def test_trust_remote_code_is_logged_on_the_driver_when_on(toy_test_model, caplog):
    from stages.base import RunContext
    from stages.sample import SampleConfig, SampleStage

    caplog.set_level(logging.WARNING)
    SampleStage.prepare(SampleConfig(model=toy_test_model), "", RunContext(run_dir="."))
    assert "trust_remote_code" not in caplog.text
    SampleStage.prepare(SampleConfig(model=toy_test_model, trust_remote_code=True), "", RunContext(run_dir="."))
    assert "trust_remote_code is on" in caplog.text and toy_test_model in caplog.text

"""The docs stay true: docs/config.md is what the config models generate, every model is documented once with its
real defaults, links resolve, and the README stays short and opens with the two commands."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.cli import REFERENCE_PATH, config_reference, main
from pipeline.reference import slug

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "lessmore config-reference --write"


def _sections(text: str) -> dict[str, str]:
    """Heading anchor -> the text of that section (up to the next heading)."""
    parts = re.split(r"^(#{1,6} .+)$", text, flags=re.M)
    return {slug(parts[i].lstrip("#")): parts[i + 1] for i in range(1, len(parts), 2)}


def test_config_reference_is_current():
    committed = (ROOT / REFERENCE_PATH).read_text(encoding="utf-8")
    assert committed == config_reference(), (
        f"{REFERENCE_PATH} differs from what the config models generate; regenerate it with "
        f"`{REGENERATE}` from the repository root and commit it")


def test_every_model_is_documented_once_with_its_real_defaults():
    text = config_reference()
    headings = re.findall(r"^#{1,6} (.+)$", text, flags=re.M)
    assert len(headings) == len(set(headings)), "a section appears twice"
    sections = _sections(text)
    from pipeline.registry import STAGES

    for name in STAGES:
        assert f"stages{name}" in sections, name
    for block in ("ray", "finetune", "finetunelora", "evaluate", "pool", "grid", "gridblocks", "tune", "loop",
                  "report", "resources", "verifier-options", "curation-rules"):
        assert block in sections, block
    assert text.count("| `num_gpus` |") == 1  # the Resources table, once
    assert "(see below)" not in text
    assert "`{batch_size: 128}`" in sections["stagessample"]  # default_factory defaults, called
    assert "`{kind: toyworld, n: 600}`" in sections["evaluate"]
    # reused blocks link to their one section instead of repeating it
    assert "[SampleSettings](#stagessample) (no `resources`)" in sections["stagesscreen"]
    assert "[VerifySettings](#stagesverify) (no `resources`)" in sections["evaluate"]
    assert "[SourceConfig](#stagessource)" in sections["evaluate"]
    assert "[SourceConfig](#stagessource)" in sections["stagesdedup"]
    assert "[DecideConfig](#stagessampledecide)" in sections["stagessample"]


def test_resources_section_names_exactly_the_blocks_that_take_it():
    from pipeline.registry import STAGES, stage_class
    from stages.base import OnRay

    intro = _sections(config_reference())["resources"]
    for name in STAGES:
        takes = issubclass(stage_class(name).config_model, OnRay)
        assert (f"`stages.{name}`" in intro) == takes, name


def test_links_in_the_docs_resolve():
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        anchors = set(_sections(text))
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://")):
                continue
            file, _, anchor = target.partition("#")
            doc = (path.parent / file) if file else path
            assert doc.exists(), f"{path.name}: link to missing {file}"
            if anchor:
                found = anchors if not file else set(_sections(doc.read_text(encoding="utf-8")))
                assert anchor in found, f"{path.name}: no section #{anchor} in {doc.name}"


def test_config_reference_command_prints_and_writes(tmp_path, capsys):
    assert main(["config-reference"]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "config.md"
    assert main(["config-reference", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == printed == config_reference()


def test_readme_is_short_and_opens_with_the_two_commands():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 400, f"README.md has {len(lines)} lines; keep it at 400 or fewer (move detail to docs/)"
    assert lines[0] == "# lessmore"
    block = lines[lines.index("```bash") + 1: lines.index("```")]
    assert lines.index("```bash") <= 3
    assert [line.split()[:2] for line in block] == [["make", "run"], ["make", "test"]]
    assert any(f"]({REFERENCE_PATH})" in line for line in lines), "the README links to the config reference"


def _fenced_block_after(lines: list[str], heading: str) -> list[str]:
    start = lines.index(heading)
    begin = next(i for i in range(start, len(lines)) if lines[i].startswith("```"))
    end = next(i for i in range(begin + 1, len(lines)) if lines[i].startswith("```"))
    return lines[begin + 1: end]


def test_readme_layout_mirrors_the_tree():
    block = "\n".join(_fenced_block_after((ROOT / "README.md").read_text(encoding="utf-8").splitlines(), "## Layout"))
    named = set(re.findall(r"[\w.]+\.py\b", block))
    modules = {p.name for pkg in ("pipeline", "stages", "verifiers") for p in (ROOT / pkg).rglob("*.py")
               if p.name != "__init__.py"}
    assert not named - modules, f"README layout names files that do not exist: {sorted(named - modules)}"
    assert not modules - named, f"README layout leaves out: {sorted(modules - named)}"
    for directory in re.findall(r"^([\w]+/)", block, flags=re.M):
        assert (ROOT / directory).is_dir(), directory


def test_readme_shows_configs_tiny_yaml_as_it_is():
    import yaml

    shown = _fenced_block_after((ROOT / "README.md").read_text(encoding="utf-8").splitlines(),
                                "## The embedded default: `configs/tiny.yaml`")
    assert yaml.safe_load("\n".join(shown)) == yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())

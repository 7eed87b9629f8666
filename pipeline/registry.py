"""The one place where YAML names meet code. The YAML key, the registry key and the module name are one word."""

from __future__ import annotations

import importlib

# name -> "module:Class". Stage modules import only pydantic at module level, so looking a name up is cheap.
STAGES: dict[str, str] = {
    "source": "stages.source:SourceStage",
    "sample": "stages.sample:SampleStage",
    "verify": "stages.verify:VerifyStage",
    "difficulty": "stages.difficulty:DifficultyStage",
    "curate": "stages.curate:CurateStage",
    "export": "stages.export:ExportStage",
    "dedup": "stages.dedup:DedupStage",
    "screen": "stages.screen:ScreenStage",
}


class UnknownName(ValueError):
    """A YAML name that is not registered; the message lists the valid names."""


def stage_class(name: str):
    """The stage class registered under ``name``."""
    try:
        target = STAGES[name]
    except KeyError:
        raise UnknownName(f"unknown stage {name!r}; valid stages: {', '.join(STAGES)}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)

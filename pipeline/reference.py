"""The config reference (``docs/config.md``), generated from the config models.

Every model is documented once, in one section; a block whose model is documented elsewhere gets one table row that
links to that section. ``resources`` (``stages.base.Resources``) has one section of its own. A stage config that is a
settings model plus ``resources`` (``SampleConfig`` = ``SampleSettings`` + ``resources``) shares the settings
model's section. Defaults are the real ones, ``default_factory`` ones included, written as YAML.

The run-level models are imported here; the sweep's config model is handed in by the caller (``pipeline.cli``), so
this module, like the rest of pipeline's ground floor, never imports the sweep.
"""

from __future__ import annotations

import re
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

# Fields whose value is a verifier's options: their rows link to the verifier options section.
_VERIFIER_OPTIONS = {("VerifySettings", "options"), ("DecideConfig", "verifier_options")}
_VERIFIER_OPTIONS_TITLE = "Verifier options"
_RULES_TITLE = "Curation rules"


def slug(heading: str) -> str:
    """The anchor a markdown renderer (GitHub's) gives a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _yaml(value: Any) -> str:
    """A value as it would be written in YAML, on one line."""
    import yaml

    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_unset=True)
    text = yaml.safe_dump(value, default_flow_style=True, width=10**9, sort_keys=False).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def _cell(text: str) -> str:
    """Text made safe for one cell of a markdown table."""
    return " ".join(text.split()).replace("|", "\\|")


def _first_paragraph(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split())


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation holds (``X``, ``X | None``, ``tuple[X, ...]``, ``dict[str, X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _shape(annotation: Any) -> str:
    """How a model sits in its parent field: ``''`` (a block), ``'[]'`` (a list of blocks), ``'.<name>'`` (a map)."""
    origin = typing.get_origin(annotation)
    if origin is dict:
        return ".<name>"
    if origin is tuple or origin is list:
        return "[]"
    for arg in typing.get_args(annotation):
        shape = _shape(arg)
        if shape:
            return shape
    return ""


def _on_ray_fields(model: type[BaseModel]) -> set[str]:
    from stages.base import OnRay

    return set(OnRay.model_fields) if issubclass(model, OnRay) else set()


def settings_of(model: type[BaseModel]) -> type[BaseModel]:
    """The model that holds what ``model`` computes: itself, or for ``SampleConfig`` (``SampleSettings`` +
    ``resources``) the settings model it extends. Both are documented in one section."""
    own = set(model.model_fields) - _on_ray_fields(model)
    for base in reversed(model.__mro__):
        if (isinstance(base, type) and issubclass(base, BaseModel) and base.model_fields
                and not _on_ray_fields(base) and set(base.model_fields) == own):
            return base
    return model


@dataclass
class Section:
    """One documented model: its heading, the YAML path it sits at, and what else to say about it."""

    heading: str
    model: type[BaseModel]
    path: str  # the YAML path of its keys ('' at the top level)
    intro: list[str] = field(default_factory=list)
    children: list["Section"] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return slug(self.heading)


class Reference:
    """Assigns every model one section (the first place it is met), then writes the sections."""

    def __init__(self) -> None:
        self.homes: dict[type[BaseModel], Section] = {}
        self.ray_paths: list[str] = []  # where `resources` is accepted
        self.rules_anchor = slug(_RULES_TITLE)
        self.options_anchor = slug(_VERIFIER_OPTIONS_TITLE)
        self.stage_links = ""

    # -- pass 1: one home per model ------------------------------------------------------------------------------
    def claim(self, section: Section, skip: tuple[str, ...] = ()) -> Section:
        """Make ``section`` the home of its model, and claim homes for the blocks nested in it."""
        self.homes.setdefault(settings_of(section.model), section)
        if _on_ray_fields(section.model):
            self.ray_paths.append(section.path)
        for name, info in section.model.model_fields.items():
            if name in skip:
                continue
            for sub in _models_in(info.annotation):
                key = settings_of(sub)
                if key in self.homes:
                    if _on_ray_fields(sub):
                        self.ray_paths.append(f"{section.path}.{name}".lstrip("."))
                    continue
                path = f"{section.path}.{name}{_shape(info.annotation)}".lstrip(".")
                section.children.append(self.claim(Section(f"`{path}`", sub, path)))
        return section

    # -- pass 2: markdown ----------------------------------------------------------------------------------------
    def link(self, model: type[BaseModel]) -> str:
        home = self.homes[settings_of(model)]
        text = f"[{model.__name__}](#{home.anchor})"
        has, home_has = bool(_on_ray_fields(model)), bool(_on_ray_fields(home.model))
        if home_has and not has:
            text += " (no `resources`)"
        elif has and not home_has:
            text += " + `resources`"
        return text

    def type_cell(self, annotation: Any) -> str:
        models = _models_in(annotation)
        text = _cell(type_name(annotation))
        if not models:
            return f"`{text}`"
        for model in models:  # the model's name becomes a link to its section
            text = re.sub(rf"\b{model.__name__}\b", self.link(model).replace("\\", "\\\\"), text, count=1)
        return text

    def default_cell(self, info: Any) -> str:
        if info.is_required():
            return "required"
        value = info.default_factory() if info.default_factory is not None else info.default
        return f"`{_cell(_yaml(value))}`"

    def row(self, model: type[BaseModel], name: str, info: Any) -> str:
        meaning = info.description or ""
        if name == "stages" and model.__name__ == "RunConfig":  # a mapping of stage name -> that stage's block
            return (f"| `stages` | `{{str: block}}` | required | {_cell(meaning)} Run in the order written; "
                    f"each is one of: {self.stage_links}. |")
        if (settings_of(model).__name__, name) in _VERIFIER_OPTIONS:
            meaning += f" Keys: [{_VERIFIER_OPTIONS_TITLE.lower()}](#{self.options_anchor})."
        if name == "rule" and any(m.__name__ == "CurateConfig" for m in model.__mro__):
            meaning += f" See [{_RULES_TITLE.lower()}](#{self.rules_anchor})."
        return f"| `{name}` | {self.type_cell(info.annotation)} | {self.default_cell(info)} | {_cell(meaning)} |"

    def render(self, section: Section) -> list[str]:
        """The section, then the sections of the blocks first met inside it."""
        model = section.model
        out = [f"### {section.heading}", "", _first_paragraph(model.__doc__), ""]
        out += [*section.intro, ""] if section.intro else []
        settings = settings_of(model)
        if settings is not model:
            out += [f"`{model.__name__}`: the keys of `{settings.__name__}`, and `resources`. Blocks nested elsewhere "
                    f"that are a `{settings.__name__}` take the same keys without `resources`.", ""]
        out += ["| key | type | default | meaning |", "|---|---|---|---|"]
        out += [self.row(model, name, info) for name, info in model.model_fields.items()] + [""]
        for child in section.children:
            out += self.render(child)
        return out


def type_name(annotation: Any) -> str:
    """A type as a YAML writer thinks of it: ``str | null``, ``list[int]``, ``'hf' | 'vllm'``, ``{str: X}``."""
    if annotation is type(None):
        return "null"
    if annotation is Any:
        return "any"
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin in (tuple, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list[{type_name(args[0])}]"
        return "[" + ", ".join(type_name(a) for a in args) + "]"
    if origin is dict:
        return f"{{{type_name(args[0])}: {type_name(args[1])}}}"
    return getattr(annotation, "__name__", str(annotation))


def _stage_line(stage: Any) -> str:
    from stages.base import OnRay

    where = ("workers on Ray; takes `resources`" if issubclass(stage.config_model, OnRay)
             else "runs on the driver; no `resources`")
    parts = [f"Kind `{stage.kind}` ({where})."]
    if stage.requires:
        parts.append("Needs " + ", ".join(f"`{c}`" for c in stage.requires) + ".")
    if stage.adds:
        parts.append("Adds " + ", ".join(f"`{c}`" for c in stage.adds) + ".")
    return " ".join(parts)


def _rules_section() -> list[str]:
    from stages.rules import RULES

    out = [f"## {_RULES_TITLE}", "",
           "`stages.curate.rule` is a rule name, `{name: {params}}`, or a list of them applied in order (each step "
           "may drop problems, with a reason, and may order them; the last step that orders decides the ranking). "
           "Label-aware steps train only on verified-correct traces.", "",
           "| rule | parameters (default) | label-aware | what it does |", "|---|---|---|---|"]
    for name, step in RULES.items():
        params = ", ".join(f"`{k}: {_yaml(f.default)}`" for k, f in step.model_fields.items() if k != "name")
        aware = any(s.label_aware for s in step().expand())  # presets: label-aware when a step they expand to is
        out.append(f"| `{name}` | {_cell(params) or '-'} | {'yes' if aware else 'no'} | "
                   f"{_cell(_first_paragraph(step.__doc__))} |")
    return out + [""]


def _verifier_options_section() -> list[str]:
    from verifiers import VERIFIERS
    from verifiers.base import VerifierOptions

    shared = VerifierOptions.model_fields
    others = ", ".join(f"`{n}`" for n, c in VERIFIERS.items() if not issubclass(c.Options, VerifierOptions))
    out = [f"## {_VERIFIER_OPTIONS_TITLE}", "",
           "`options` of a verify block (and `verifier_options` of `decide`) are the named verifier's options. They "
           "are validated when the config loads: an unknown key or a bad value fails `lessmore validate`, naming it.",
           "", f"Every verifier but {others} takes these:", "", "| key | type | default | meaning |",
           "|---|---|---|---|"]
    out += [f"| `{n}` | `{_cell(type_name(f.annotation))}` | `{_cell(_yaml(f.default))}` | {_cell(f.description or '')} |"
            for n, f in shared.items()]
    out.append("")
    for name, cls in VERIFIERS.items():
        options = cls.Options
        inherits = issubclass(options, VerifierOptions)
        own = [n for n, f in options.model_fields.items()
               if not inherits or n not in shared or f.default != shared[n].default]
        summary = _first_paragraph(sys.modules[cls.__module__].__doc__)
        summary = summary.removeprefix(f"``{name}``: ")
        summary = summary[:1].upper() + summary[1:]
        out += [f"### `{name}`", "", summary + (" Also takes the options above." if inherits else ""), ""]
        if own:
            out += ["| key | type | default | meaning |", "|---|---|---|---|"]
            out += [f"| `{n}` | `{_cell(type_name(options.model_fields[n].annotation))}` | "
                    f"`{_cell(_yaml(options.model_fields[n].default))}` | "
                    f"{_cell(options.model_fields[n].description or '')} |" for n in own]
            out.append("")
    return out


def reference_markdown(sweep: type[BaseModel] | None = None) -> str:
    """The config reference: the run config (top level, ``ray``, every registered stage, ``finetune``,
    ``evaluate``), ``resources``, the sweep config when ``sweep`` (its model) is given, the curation rules and the
    verifier options."""
    from pipeline.config import RunConfig
    from pipeline.registry import STAGES, stage_class
    from stages.base import Resources

    ref = Reference()
    resources = Section("`resources`", Resources, "resources")
    ref.homes[Resources] = resources

    run = ref.claim(Section("Run config: top-level keys", RunConfig, ""), skip=("stages", "finetune", "evaluate"))
    stages = [ref.claim(Section(f"`stages.{name}`", stage_class(name).config_model, f"stages.{name}",
                                intro=[_stage_line(stage_class(name))])) for name in STAGES]
    tail = [ref.claim(Section(f"`{name}`", _models_in(RunConfig.model_fields[name].annotation)[0], name))
            for name in ("finetune", "evaluate")]
    sweep_section = ref.claim(Section("Sweep config: top-level keys", sweep, "")) if sweep is not None else None

    on_ray = [f"`{p}`" for p in ref.ray_paths]
    resources.intro = [
        f"Accepted only by blocks whose workers run on Ray: {', '.join(on_ray)}. Stages that run on the driver "
        "(source, export) and blocks nested in a stage or in `evaluate` (e.g. `stages.screen.sample`, "
        "`evaluate.verify`) do not take it: `resources` there is an unknown key. Each block that takes it has its "
        "own default, given in its `resources` row."]

    ref.stage_links = ", ".join(f"[`{name}`](#{s.anchor})" for name, s in zip(STAGES, stages))
    lines = [
        "# Config reference", "",
        "Generated from the config models by `lessmore config-reference --write`; edit the models' descriptions, "
        "not this page. `lessmore config-reference` prints it.", "",
        "Two kinds of config file: a run config (`lessmore run`, `lessmore validate`) and a sweep config "
        "(`lessmore sweep`). Unknown keys are errors, and every block is validated when the file loads. A default "
        "that is a block is shown as the keys it sets (`{}`: every key at its own default). A type that names a "
        "block links to the one section that documents it.", "",
    ]
    contents = [run, resources, *stages, *tail] + ([sweep_section] if sweep_section is not None else [])
    lines += ["Contents: " + ", ".join(f"[{s.heading}](#{s.anchor})" for s in contents)
              + f", [{_RULES_TITLE.lower()}](#{ref.rules_anchor}), "
              f"[{_VERIFIER_OPTIONS_TITLE.lower()}](#{ref.options_anchor}).", "", "## Run config", ""]
    lines += ref.render(run)
    lines += ref.render(resources)
    for s in stages + tail:
        lines += ref.render(s)
    if sweep_section is not None:
        lines += ["## Sweep config", "", "A sweep config (`lessmore sweep CONFIG`) has its own top level; its "
                  "blocks reuse the run config's models where they are the same.", ""]
        lines += ref.render(sweep_section)
    lines += _rules_section()
    lines += _verifier_options_section()
    while lines and lines[-1] == "":
        lines.pop()
    return "\n".join(lines) + "\n"

"""Run configuration: YAML -> frozen, validated models. Errors name the YAML path of the bad field."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError

from pipeline import io
from pipeline.cluster import RayConfig
from pipeline.evaluate import EvaluateConfig
from pipeline.finetune import FinetuneConfig
from pipeline.registry import STAGES, UnknownName, stage_class
from stages.base import Frozen, StageConfig


class ConfigError(ValueError):
    """A config that cannot run. The message names the field and what to change."""


class RunConfig(Frozen):
    """A whole run: stages in order, plus optional fine-tuning and evaluation."""

    name: str = Field("run", description="Run name; the run directory defaults to <output_root>/<name>.")
    output_root: str = Field("runs", description="Every output path of the run stays inside this directory.")
    run_dir: str | None = Field(None, description="Run directory, relative to output_root (default: the name).")
    seed: int = Field(0, description="Seed of every random choice in the run (sampling, selection).")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray connection settings.")
    stages: tuple[tuple[str, StageConfig], ...] = Field(
        description="Stages in order, as a mapping stage-name -> stage config block."
    )
    finetune: FinetuneConfig | None = Field(None, description="Fine-tune a student on the exported dataset.")
    evaluate: EvaluateConfig | None = Field(
        None, description="Evaluate the untouched and the fine-tuned student on held-out problems."
    )

    @property
    def resolved_run_dir(self) -> Path:
        """The run directory, checked to stay inside ``output_root``."""
        return safe_join(self.output_root, self.run_dir or self.name)

    def stage(self, name: str) -> StageConfig | None:
        """The config block of stage ``name``, if the run has it."""
        return dict(self.stages).get(name)

    def to_yaml_dict(self) -> dict[str, Any]:
        """The resolved config, as it would be written in YAML."""
        out = self.model_dump(mode="json", exclude={"stages"})
        out["stages"] = {name: cfg.model_dump(mode="json") for name, cfg in self.stages}
        return out


def safe_join(root: str | os.PathLike, relative: str | os.PathLike, field: str = "run_dir") -> Path:
    """``root/relative``, refusing paths that escape ``root`` (absolute paths, ``..``, symlinks out of it).

    ``field`` is the config key named in the error."""
    try:
        return io.inside(root, relative, field)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def check_output_paths(cfg: "RunConfig") -> None:
    """Every output path the config controls (run directory, export path) must stay inside ``output_root``."""
    field = "run_dir" if cfg.run_dir else "name"
    run_dir = safe_join(cfg.output_root, cfg.run_dir or cfg.name, field=field)
    if run_dir == Path(cfg.output_root).resolve():
        raise ConfigError(f"{field}: the run directory cannot be output_root itself; name a subdirectory")
    export = cfg.stage("export")
    export_path = getattr(export, "path", None)
    if export_path:
        target = safe_join(cfg.output_root, export_path, field="stages.export.path")
        if target == run_dir or run_dir in target.parents or target in run_dir.parents:
            raise ConfigError(f"stages.export.path: {export_path} overlaps the run directory {run_dir}; "
                              "choose a directory of its own inside output_root, e.g. datasets/<name>")


def check_budget(cfg: "RunConfig") -> None:
    """A curate budget ``p`` that rounds to no problem of the most the source gives (``source.n``) is refused before
    any work; the curate stage checks the pool it actually gets again."""
    n = getattr(cfg.stage("source"), "n", None)
    curate = cfg.stage("curate")
    p = getattr(curate, "p", None)
    if n and p and int(round(p * n)) == 0:
        raise ConfigError(f"stages.curate.p: rule {curate.rule_label} with p = {p:g} keeps none of the at most {n} "
                          f"problems of stages.source.n (p x n rounds to 0); set p >= {1 / n:.3g} or a budget n")


def _local_output_root(data: dict[str, Any]) -> dict[str, Any]:
    """``file://`` output roots become plain paths; other URI schemes are refused with what to do instead."""
    root = data.get("output_root")
    if not isinstance(root, str) or "://" not in root:
        return data
    scheme = root.split("://", 1)[0]
    if scheme == "file":
        return {**data, "output_root": root[len("file://"):] or "/"}
    raise ConfigError(
        f"output_root: {scheme}:// URIs are not supported; stages write their directories with local file APIs. "
        f"Mount the bucket at a path every node sees (e.g. mountpoint-s3, gcsfuse, an NFS/EFS share) and set "
        f"output_root to that path"
    )


def _format(loc: tuple, err: dict, model_fields: list[str] | None = None) -> str:
    path = ".".join(str(p) for p in loc if p != "__root__")
    where = f"{path}: " if path else ""  # a check across a whole block names its own fields
    kind = err.get("type", "")
    if kind == "extra_forbidden":
        hint = f"; valid keys here: {', '.join(model_fields)}" if model_fields else ""
        return f"{where}unknown key{hint}"
    if kind == "missing":
        return f"{where}required field is missing"
    got = err.get("input")
    got_s = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    return f"{where}{err.get('msg', 'invalid').removeprefix('Value error, ')}{got_s}"


def _fields_at(model: type, loc: tuple) -> list[str] | None:
    """Valid keys of the model that sits at ``loc`` (for 'did you mean' hints)."""
    from pydantic import BaseModel

    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = field.annotation
        for arg in getattr(current, "__args__", ()) or ():
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def error_lines(e: ValidationError, prefix: tuple, model: type) -> list[str]:
    """One line per validation error of ``model`` (a run or sweep config, or a block at ``prefix``): the YAML path
    of the bad field, what is wrong, and the valid keys where a key is unknown."""
    lines = []
    for err in e.errors(include_url=False):
        loc = prefix + tuple(err["loc"])
        lines.append(_format(loc, err, _fields_at(model, tuple(err["loc"]))))
    return lines


def _build_stages(blocks: Any) -> tuple[tuple[str, StageConfig], ...]:
    if not isinstance(blocks, dict) or not blocks:
        raise ConfigError("stages: must be a mapping of stage name -> config block, e.g. {source: {...}, sample: {...}}")
    built = []
    for name, block in blocks.items():
        try:
            stage = stage_class(name)
        except UnknownName as e:
            raise ConfigError(f"stages.{name}: {e}") from None
        block = {} if block is None else block
        if not isinstance(block, dict):
            raise ConfigError(f"stages.{name}: must be a mapping of options, got {type(block).__name__}")
        try:
            built.append((name, stage.config_model.model_validate(block)))
        except ValidationError as e:
            raise ConfigError("\n".join(error_lines(e, ("stages", name), stage.config_model))) from None
    return tuple(built)


def parse_config(data: Any) -> RunConfig:
    """Validate a dict into a RunConfig, raising ConfigError with one line per problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: must be a mapping at the top level, got {type(data).__name__}")
    if "stages" not in data:
        raise ConfigError("stages: required field is missing (a mapping of stage name -> config block)")
    data = {**_local_output_root(data), "stages": _build_stages(data["stages"])}
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(error_lines(e, (), RunConfig))) from None
    check_output_paths(cfg)
    check_budget(cfg)
    return _export_test_split(cfg)


def _export_test_split(cfg: RunConfig) -> RunConfig:
    """A run that evaluates exports its held-out problems as the `test` split: ``stages.export.test`` is
    ``evaluate.heldout`` (one given differently is an error: the split would not be what the run evaluates on)."""
    export = cfg.stage("export")
    if cfg.evaluate is None or export is None:
        return cfg
    if export.test is not None and export.test != cfg.evaluate.heldout:
        raise ConfigError("stages.export.test: differs from evaluate.heldout; the test split holds the problems the "
                          "run evaluates on, so remove stages.export.test (or make it the same)")
    export = export.model_copy(update={"test": cfg.evaluate.heldout})
    return cfg.model_copy(update={"stages": tuple((n, export if n == "export" else c) for n, c in cfg.stages)})


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides; values are parsed as YAML (``k=8`` is an int, ``x=[1,2]`` a list)."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set stages.sample.k=8")
        try:
            value = parse_yaml(raw, f"--set {key}")
        except ConfigError:
            value = raw
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: {part} is not a mapping")
            node = nxt
        node[parts[-1]] = value
    return data


# Bounds of a config document: a few hundred bytes of nested aliases expand to gigabytes once the config is
# validated or written back, and deep nesting exhausts Python's recursion. Real configs stay far inside both.
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (else the last would silently win),
    nesting deeper than ``MAX_YAML_DEPTH`` and a document that aliases expand to more than ``MAX_YAML_NODES``."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node):
        _check_expansion(node)
        return super().construct_document(node)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *base` then a key of base: overriding is what merge keys are for
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = key in first_line
                except TypeError:  # an unhashable key: SafeLoader says so below
                    continue
                if seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line {first_line[key] + 1}); give each key once",
                        key_node.start_mark)
                first_line[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root) -> None:
    """Refuse a node graph that expands to more than MAX_YAML_NODES nodes or MAX_YAML_DEPTH levels. Aliases share
    nodes, so sizes and depths are counted once per node (no expansion happens here)."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in size and not done:
            continue
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else (
            node.value if isinstance(node, yaml.SequenceNode) else [])
        if not done:
            size[key] = -1  # in progress: a node that contains itself (a recursive alias) is caught below
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in size)
            continue
        if any(size.get(id(c), -1) < 0 for c in children):
            raise yaml.composer.ComposerError(None, None, "an alias refers to a node that contains it",
                                              node.start_mark)
        size[key] = 1 + sum(size[id(c)] for c in children)
        depth[key] = 1 + max((depth[id(c)] for c in children), default=0)
        if size[key] > MAX_YAML_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"aliases expand the document past {MAX_YAML_NODES:,} values; write the values out "
                "or use fewer aliases", node.start_mark)
        if depth[key] > MAX_YAML_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_YAML_DEPTH} levels",
                                              node.start_mark)


def parse_yaml(text: str, where: str = "config") -> Any:
    """YAML text -> Python data through ``StrictLoader``; a ConfigError saying where the YAML is broken."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - StrictLoader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where}: malformed YAML{at}: {getattr(e, 'problem', None) or e}") from None


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML file into a dict, with errors that say where the YAML is broken."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
    data = parse_yaml(text, str(path))
    if data is None:
        raise ConfigError(f"{path}: empty config")
    return data


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Load, override and validate a config file."""
    return parse_config(apply_overrides(load_yaml(path), overrides or []))


def with_export_overwrite(cfg: RunConfig) -> RunConfig:
    """The same config with ``stages.export.overwrite`` on (what ``lessmore run --overwrite`` means)."""
    if cfg.stage("export") is None:
        return cfg
    return parse_config(apply_overrides(cfg.to_yaml_dict(), ["stages.export.overwrite=true"]))


REDACTED = "<redacted>"
# Keys whose values are credentials, at any depth (engine_kwargs.hf_token, sft.hub_token, a client's api_key): a
# key that is or ends in one of these words. Tokenizer settings (pad_token, eos_token_id) are not credentials.
_SECRET_KEY = re.compile(r"(?:^|[_-])(?:token|secret|password|passwd|api[_-]?key|access[_-]?key|private[_-]?key|"
                         r"credentials?|auth)$|^(?:secret|password|api[_-]?key)(?:[_-]|$)", re.I)
_NOT_SECRET = re.compile(r"^(?:pad|eos|bos|unk|sep|cls|mask|start|end|stop|special|additional)_token$", re.I)


def is_secret_key(key: object) -> bool:
    """Whether a config key names a credential (its value is never written to disk)."""
    return isinstance(key, str) and bool(_SECRET_KEY.search(key)) and not _NOT_SECRET.match(key)


def redact_secrets(data: Any) -> Any:
    """A copy of JSON-like ``data`` with the value of every credential key (``is_secret_key``), at any depth,
    replaced by ``"<redacted>"``. What lessmore writes to disk (a run's config.yaml, hence the dataset card, and a
    sweep's saved config) goes through this; credentials belong in the environment (HF_TOKEN)."""
    if isinstance(data, dict):
        return {k: REDACTED if is_secret_key(k) and v not in (None, "", False, True) else redact_secrets(v)
                for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_secrets(v) for v in data]
    return data


def secret_paths(data: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the credential values in ``data`` (what ``redact_secrets`` would replace)."""
    found: list[str] = []
    if isinstance(data, dict):
        for k, v in data.items():
            path = f"{prefix}{k}"
            if is_secret_key(k) and v not in (None, "", False, True):
                found.append(path)
            else:
                found += secret_paths(v, path + ".")
    elif isinstance(data, (list, tuple)):
        for i, v in enumerate(data):
            found += secret_paths(v, f"{prefix}{i}.")
    return found


def config_json(cfg: Frozen) -> str:
    """A canonical JSON form of a config (for fingerprints)."""
    return json.dumps(cfg.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


__all__ = ["ConfigError", "RunConfig", "RayConfig", "load_config", "parse_config", "apply_overrides", "STAGES"]


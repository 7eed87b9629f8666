"""The sweep's configuration: the config blocks, parsing, the grid of trials (ids, shared p = 1 cells), the rule sets,
and what a trial's fingerprint covers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline import io
from pipeline.config import (ConfigError, RayConfig, apply_overrides, error_lines, load_yaml, safe_join,
                             secret_paths)
from pipeline.evaluate import EvaluateConfig
from pipeline.models import MODEL_FIELD
from pipeline.finetune import FinetuneConfig
from stages.base import Frozen
from stages.difficulty import DifficultyConfig
from stages.sample import SampleConfig
from stages.source import LinearOracle, SourceConfig
from stages.verify import VerifyConfig

# rule name -> CurateConfig fields. Label-agnostic rules train on one completion per problem, correct or not.
RULE_SPECS: dict[str, dict[str, Any]] = {
    "all": {"rule": "all", "label_aware": False},
    "random": {"rule": "random", "label_aware": False},
    "keep_hard": {"rule": "keep_hard", "label_aware": False},
    "keep_easy": {"rule": "keep_easy", "label_aware": False},
    "correct_only": {"rule": "correct_only"},
    "keep_hard_correct": {"rule": "keep_hard_correct"},
    "keep_easy_correct": {"rule": "keep_easy_correct"},
    "random_correct": {"rule": "random", "label_aware": True},
    # Ranked within each level, keeping the pool's level mix: difficulty within a skill (instrument.md §3b).
    "keep_hard_stratified": {"rule": "keep_hard_stratified", "label_aware": False},
    "keep_easy_stratified": {"rule": "keep_easy_stratified", "label_aware": False},
    "keep_hard_stratified_correct": {"rule": "keep_hard_stratified_correct"},
    "keep_easy_stratified_correct": {"rule": "keep_easy_stratified_correct"},
}
LABEL_AWARE_RULES = ("correct_only", "keep_hard_correct", "keep_easy_correct", "random_correct",
                     "keep_hard_stratified_correct", "keep_easy_stratified_correct")
# Each label-aware rule is its label-agnostic form behind the correctness filter (``all`` ranks nothing).
LABEL_AGNOSTIC_FORM = {"correct_only": "all", "keep_hard_correct": "keep_hard", "keep_easy_correct": "keep_easy",
                       "random_correct": "random", "keep_hard_stratified_correct": "keep_hard_stratified",
                       "keep_easy_stratified_correct": "keep_easy_stratified"}
# Rules that rank by the difficulty score: the only ones oracle noise can change.
SCORED_RULES = ("keep_hard", "keep_easy", "keep_hard_correct", "keep_easy_correct", "keep_hard_stratified",
                "keep_easy_stratified", "keep_hard_stratified_correct", "keep_easy_stratified_correct")
# The keep-hard / keep-easy pairs the report and the verdicts compare (label-agnostic first, then label-aware).
HARD_EASY_PAIRS = (("keep_hard", "keep_easy"), ("keep_hard_correct", "keep_easy_correct"),
                   ("keep_hard_stratified", "keep_easy_stratified"),
                   ("keep_hard_stratified_correct", "keep_easy_stratified_correct"))


ORACLE_POOL = "oracle"  # pool.oracle's samples live in run_dir/pool/oracle/


def family_baseline(rule: str) -> str:
    """The p = 1 cell of a rule's family: ``correct_only`` for label-aware rules, ``all`` otherwise."""
    return "correct_only" if rule in LABEL_AWARE_RULES else "all"


# -- configuration ---------------------------------------------------------------------------------------------


class GeneratorSpec(Frozen):
    """One generator of the pool (a point on the generator-quality axis)."""

    model: str = Field(description="toy:NAME, a local model directory, a hub id, or linear:rho=R[,sigma=S] (a "
                       "linear world); it samples the pool.", json_schema_extra=MODEL_FIELD)
    gguf_file: str | None = Field(None, description="GGUF file inside the model directory, if it ships GGUF.")
    oracle: LinearOracle | None = Field(
        None, description="Linear world: this pool's oracle (rho_star, rho_g), which answers its problems and scores "
        "their difficulty; rho_g is measured against this generator. Default: pool.source.oracle, else the truth."
    )


class OracleModel(Frozen):
    """A difficulty oracle that is not the generator: a model's pass rate over k samples of each pool problem (the
    LIMO / s1 practice: keep what the model to be trained fails). Its quality is measured against a reference
    difficulty, the same model at a larger k (with other seeds) on an audit subset of the pool."""

    model: str = Field(description="The oracle model (toy:NAME, a directory or a hub id), usually the untouched "
                       "student (finetune.student).")
    k: int = Field(16, ge=1, description="Samples per pool problem; the pass rate over them is the difficulty score "
                   "every rule ranks by.")
    temperature: float | None = Field(None, ge=0, description="Sampling temperature (default: pool.sample's).")
    audit_problems: int = Field(500, ge=2, description="Pool problems the reference difficulty is measured on.")
    audit_k: int = Field(64, ge=1, description="Samples per audit problem: the reference pass rate, drawn with "
                         "seeds the oracle's own samples do not use.")


class PoolConfig(Frozen):
    """The shared pool: problems, and for each generator its sampled, verified and scored completions."""

    source: SourceConfig = Field(description="Where the pool's problems come from (a source stage block).")
    generators: dict[str, GeneratorSpec] = Field(
        description="name -> generator. Each samples the same problems once into run_dir/pool/<name>/."
    )
    sample: SampleConfig = Field(
        default_factory=SampleConfig,
        description="Sampling settings shared by the generators (k, temperature, max_tokens, backend, resources); "
        "`model` is set per generator. Also the prompt format of fine-tuning and evaluation.",
    )
    verify: VerifyConfig = Field(default_factory=VerifyConfig, description="The verifier of the pool and evaluation.")
    difficulty: DifficultyConfig = Field(default_factory=DifficultyConfig, description="Pass-rate settings.")
    oracle: OracleModel | None = Field(
        None, description="A difficulty oracle that is not the generator (its pass rate replaces each generator's "
        "own as the difficulty score), sampled once into run_dir/pool/oracle/. None: each generator's own pass rate "
        "(the oracle is the generator), or a linear world's oracle margin."
    )

    @model_validator(mode="after")
    def _oracle_name(self) -> "PoolConfig":
        if self.oracle is not None and ORACLE_POOL in self.generators:
            raise ValueError(f"generators: {ORACLE_POOL!r} names the oracle's pool directory; rename the generator")
        return self

    @field_validator("generators")
    @classmethod
    def _some(cls, value: dict[str, GeneratorSpec]) -> dict[str, GeneratorSpec]:
        if not value:
            raise ValueError("name at least one generator, e.g. {strong: {model: toy:strong}}")
        bad = [name for name in value if not name.replace("_", "").replace("-", "").isalnum()]
        if bad:
            raise ValueError(f"generator names {bad} must be letters, digits, '-' or '_' (they name directories)")
        return value


class GridBlock(Frozen):
    """One cross product of the grid. The grid is the union of its blocks (duplicates run once)."""

    name: str = Field("grid", description="Label of the block (shown in the report).")
    generators: tuple[str, ...] | None = Field(None, description="Generators (default: all of pool.generators).")
    pool_sizes: tuple[int, ...] = Field(description="Pool sizes n: nested random subsets of the pool's problems.")
    keep_fractions: tuple[float, ...] = Field((1.0,), description="Keep fractions p (of the n problems).")
    rules: tuple[str, ...] = Field(("random",), description=f"Rules among {', '.join(RULE_SPECS)}.")
    oracle_noise: tuple[float, ...] = Field(
        (0.0,), description="eta: fraction of problems whose difficulty score is replaced by a random one."
    )
    generator_noise: tuple[float, ...] = Field(
        (0.0,), description="eps: fraction of correct training completions swapped for wrong-answer ones."
    )
    seeds: tuple[int, ...] | None = Field(
        None, description="Seeds of this block's cells (default: grid.seeds). theory.md §5: three seeds for the "
        "corners, one seed plus the bootstrap over evaluation problems elsewhere.",
    )

    @model_validator(mode="after")
    def _check(self) -> "GridBlock":
        unknown = [r for r in self.rules if r not in RULE_SPECS]
        if unknown:
            raise ValueError(f"unknown rule(s) {unknown}; valid rules: {', '.join(RULE_SPECS)}")
        if not self.pool_sizes or any(n < 1 for n in self.pool_sizes):
            raise ValueError("pool_sizes must be positive integers")
        if not self.keep_fractions or any(not 0 < p <= 1 for p in self.keep_fractions):
            raise ValueError("keep_fractions must lie in (0, 1]")
        empty = [(n, p) for n in self.pool_sizes for p in self.keep_fractions if int(round(p * n)) == 0]
        if empty:  # the curate stage's budget: round(p x n) problems
            n, p = empty[0]
            raise ValueError(f"keep fraction p = {p:g} of pool size {n} keeps no problem (p x n rounds to 0); "
                             f"use p >= {1 / n:.3g} or larger pool sizes")
        for name, values in (("oracle_noise", self.oracle_noise), ("generator_noise", self.generator_noise)):
            if not values or any(not 0 <= v <= 1 for v in values):
                raise ValueError(f"{name} values must lie in [0, 1]")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError("seeds must be a non-empty list of distinct integers (or omitted: grid.seeds)")
        return self


class GridConfig(Frozen):
    """The trials: every combination of each block's axes, for every seed."""

    seeds: tuple[int, ...] = Field((0, 1, 2), description="Seeds: each changes the pool subset, selection ties, "
                                   "noise draws, trace choice, weights init and data order.")
    blocks: tuple[GridBlock, ...] = Field(description="Cross products whose union is the grid.")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or len(set(value)) != len(value):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        return value


class TrackerConfig(Frozen):
    """An experiment tracker that receives every trial's cell (as parameters) and metrics, through Ray Tune's own
    logger callbacks (``ray.air.integrations``). Nothing leaves the machine unless the config points elsewhere;
    credentials come from the environment only (WANDB_API_KEY, MLFLOW_TRACKING_TOKEN, ...), never from the config."""

    kind: Literal["mlflow", "wandb"] = Field(
        description="mlflow: Ray Tune's MLflowLoggerCallback (pip install mlflow); wandb: its WandbLoggerCallback "
        "(pip install wandb)."
    )
    project: str | None = Field(None, description="W&B project / MLflow experiment name (default: the sweep's name).")
    tracking_uri: str | None = Field(
        None, description="mlflow: the tracking server or store, e.g. http://mlflow:5000 (default: "
        "sqlite:///<run_dir>/mlflow.db, on this machine; browse it with `mlflow ui --backend-store-uri <that URI>`)."
    )
    mode: Literal["offline", "online"] = Field(
        "offline", description="wandb: offline writes the runs under <run_dir>/wandb (upload them later with "
        "`wandb sync`); online sends them as they run (WANDB_API_KEY from the environment)."
    )
    tags: dict[str, str] = Field(default_factory=dict, description="Tags on every trial's run.")

    @model_validator(mode="after")
    def _fields_of_kind(self) -> "TrackerConfig":
        import importlib.util

        # Only values away from the defaults: a dumped config (every key written) must load again.
        if self.kind != "mlflow" and self.tracking_uri is not None:
            raise ValueError("tracking_uri is MLflow's; remove it or set kind: mlflow")
        if self.kind != "wandb" and self.mode != "offline":
            raise ValueError("mode is W&B's; remove it or set kind: wandb")
        if importlib.util.find_spec(self.kind) is None:  # the package is named as the kind
            raise ValueError(f"kind {self.kind} needs the {self.kind} package: pip install {self.kind}")
        return self


class TuneSettings(Frozen):
    """How Ray Tune runs the trials."""

    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs reserved per trial; trials run in parallel as the "
                                  "cluster's CPUs allow. Also the torch threads of a trial when finetune.threads / "
                                  "evaluate.threads are unset.")
    gpus_per_trial: float = Field(0.0, ge=0, description="GPUs reserved per trial.")
    max_concurrent_trials: int | None = Field(None, ge=1, description="Cap on parallel trials (None: resources).")
    max_failures: int = Field(1, ge=0, description="Retries of a failed trial before it is reported as failed.")
    reuse_actors: bool = Field(True, description="Run consecutive trials in the same worker process (saves the "
                               "torch/transformers import per trial).")
    keep_models: bool = Field(False, description="Keep each trial's fine-tuned model (off: deleted after evaluation).")
    callbacks: tuple[TrackerConfig, ...] = Field(
        (), description="Experiment trackers that log every trial, e.g. [{kind: mlflow}] or [{kind: wandb, project: "
        "lessmore, mode: online}] (see `TrackerConfig`)."
    )


class LoopConfig(Frozen):
    """The collapse loop: each round, the previous round's model generates the data and every rule curates it."""

    rounds: int = Field(0, ge=0, description="Rounds (0: no loop). Round 1 trains on the pool's curated data.")
    generator: str | None = Field(None, description="Pool generator of round 1 (default: the last one listed).")
    pool_size: int = Field(500, ge=1, description="Problems per round.")
    k: int = Field(4, ge=1, description="Completions per problem the student samples in rounds >= 2.")
    rules: tuple[str, ...] = Field(
        ("all", "correct_only", "keep_hard_correct", "keep_easy_correct"),
        description="One chain per rule; all and correct_only keep everything they accept (p = 1).",
    )
    keep_fraction: float = Field(0.3, gt=0, le=1, description="p of the difficulty rules in the loop.")
    seed: int = Field(0, description="Seed of the loop's problem draws, selection and training.")
    only_if_better: bool = Field(
        False, description="A round's model generates the next round's data only if its held-out accuracy beats the "
        "untouched student's (round 0); otherwise the next round samples fresh problems from the generator this "
        "round used. False: every round's model generates the next round (the plain collapse loop)."
    )

    @field_validator("rules")
    @classmethod
    def _rules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [r for r in value if r not in RULE_SPECS]
        if unknown:
            raise ValueError(f"unknown rule(s) {unknown}; valid rules: {', '.join(RULE_SPECS)}")
        return value


class StudentConfig(Frozen):
    """What a trial trains and evaluates: each trial is curate -> train -> evaluate, whatever the student is."""

    kind: Literal["trl", "linear"] = Field(
        "trl", description="trl: fine-tune `finetune.student` with TRL and evaluate it with the `evaluate` block; "
        "linear: ridge regression on the kept (x, y) of a linear world (the label y read from the kept completion), "
        "its loss averaged over the whole pool as in the theory, scored on the held-out problems of "
        "`evaluate.heldout` and by its exact test error arccos(cos(w, w*))/pi (instrument.md §3a)."
    )
    lam: float = Field(1e-3, gt=0, description="linear: the ridge penalty lambda.")

    @model_validator(mode="after")
    def _lam_is_linear(self) -> "StudentConfig":
        # Only a value away from the default: a dumped config (every key written) must load again.
        if self.kind != "linear" and self.lam != type(self).model_fields["lam"].default:
            raise ValueError("student.lam is the linear student's ridge penalty; remove it or set kind: linear")
        return self


class ReportSettings(Frozen):
    """What the report computes, and how it calibrates the theory (docs/sweep.md, "Verdicts")."""

    tiers: dict[str, tuple[int, ...]] = Field(
        default_factory=lambda: {"seen": (1, 2, 3), "hard": (4, 5, 6)},
        description="Named groups of levels reported beside each level.",
    )
    hard_tier: str | None = Field("hard", description="The tier drawn in error_vs_p_<tier>.png (a key of tiers; "
                                  "null when the evaluation problems have no levels).")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples (seeds and problems) per interval.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of every interval.")
    task: Literal["open_ended", "binary"] = Field(
        "open_ended", description="How accuracies map to the theory's cosines. open_ended: a wrong answer counts as "
        "a coin flip on the theory's binary label, so rho = cos(pi (1 - a) / 2) and a measured error e is e / 2 in "
        "theory units; binary: the task is the theory's own binary label, rho = cos(pi (1 - a)) and errors are taken "
        "as they are. Trials that carry an exact_error (a linear world) are binary whatever this says.",
    )
    rho_g: float | None = Field(
        None, ge=0, le=1, description="Cosine of the difficulty oracle with the generator. None: taken from the trial "
        "results when they carry rho_g (a linear world sets it), else 1: difficulty is the generator's own pass "
        "rate, so the oracle is the generator and rho* = rho.",
    )
    oracle_accuracy: float | None = Field(
        None, ge=0.5, le=1, description="Accuracy of an oracle independent of the generator (rho* = cos(pi (1 - a))), "
        "used when rho_g < 1 and the trials do not carry rho_star. None: the concordance of the difficulty score "
        "with the problems' levels.",
    )
    lam: float = Field(1e-3, gt=0, description="Ridge penalty of the theory's learner where the learning curve "
                       "cannot fit it, and the second penalty the report shows keep_hard's prediction at.")
    small_n_over_d: float = Field(2.0, gt=0, description="Prediction (ii) looks only at pool sizes with "
                                  "n / d_eff at most this.")
    small_keep_fraction: float = Field(0.1, gt=0, le=1, description="Prediction (i)'s secondary, LIMO/s1-style "
                                       "criterion: whether some p <= this beats p = 1 (reported, never the verdict).")
    exact_resolution: float | None = Field(
        None, gt=0, lt=0.5, description="Smallest half-width of an interval over exact test errors (a linear "
        "world): the spread between pool draws that one draw's exact error does not show. None: 0.15 / sqrt(d), "
        "twice the spread measured at d = 100 with one seed (0.015 there); more seeds measure it instead.",
    )
    tolerance: float = Field(0.01, ge=0, lt=1, description="Theory overlay: a rule 'pays' when E(best)/E(1) < "
                             "1 - tolerance.")


class SweepConfig(Frozen):
    """A whole sweep: the shared pool, the grid of trials, fine-tuning, evaluation, Tune, the loop, the report."""

    name: str = Field("sweep", description="Sweep name; the run directory defaults to <output_root>/<name>.")
    output_root: str = Field("runs", description="Every output path stays inside this directory.")
    run_dir: str | None = Field(None, description="Run directory, relative to output_root (default: the name).")
    seed: int = Field(0, description="Seed of the pool's problems and sampling, and of the held-out draw.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray connection settings.")
    pool: PoolConfig = Field(description="The shared pool.")
    grid: GridConfig = Field(description="The trials.")
    student: StudentConfig = Field(default_factory=StudentConfig,
                                   description="The student of every trial: TRL (the default) or the linear world's "
                                   "ridge regression.")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig,
                                     description="TRL student and budget (budget: steps = compute-matched, the "
                                     "default; epochs = epoch-matched).")
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig,
                                     description="Held-out evaluation (the same problems for every trial).")
    tune: TuneSettings = Field(default_factory=TuneSettings, description="Ray Tune settings.")
    loop: LoopConfig = Field(default_factory=LoopConfig, description="The collapse loop.")
    report: ReportSettings = Field(default_factory=ReportSettings, description="Report settings.")

    @model_validator(mode="after")
    def _cross_check(self) -> "SweepConfig":
        names = set(self.pool.generators)
        for i, block in enumerate(self.grid.blocks):
            unknown = [g for g in block.generators or () if g not in names]
            if unknown:
                raise ValueError(f"grid.blocks.{i}.generators: {unknown} not in pool.generators ({sorted(names)})")
            if self.pool.source.n is not None and max(block.pool_sizes) > self.pool.source.n:
                raise ValueError(f"grid.blocks.{i}.pool_sizes: {max(block.pool_sizes)} exceeds the pool's "
                                 f"{self.pool.source.n} problems; raise pool.source.n or lower the size")
        if self.loop.rounds and self.loop.generator is not None and self.loop.generator not in names:
            raise ValueError(f"loop.generator {self.loop.generator!r} not in pool.generators ({sorted(names)})")
        if self.loop.rounds and self.pool.source.n is not None and self.loop.pool_size > self.pool.source.n:
            raise ValueError(f"loop.pool_size {self.loop.pool_size} exceeds the pool's {self.pool.source.n} problems")
        if self.report.hard_tier is not None and self.report.hard_tier not in self.report.tiers:
            raise ValueError(f"report.hard_tier {self.report.hard_tier!r} is not a key of report.tiers")
        if not self.grid.blocks:
            raise ValueError("grid.blocks: name at least one block")
        self._check_world()
        return self

    def _check_world(self) -> None:
        """A linear world needs the linear student, linear generators and a linear held-out set, and vice versa."""
        from pipeline.linearworld import PREFIX, parse_spec

        linear_source = self.pool.source.kind == "linear"
        if self.pool.oracle is not None and linear_source:
            raise ValueError("pool.oracle: a linear world's oracle is pool.source.oracle (or a generator's oracle); "
                             "remove pool.oracle")
        with_oracle = [name for name, spec in self.pool.generators.items() if spec.oracle is not None]
        if with_oracle and not linear_source:
            raise ValueError(f"pool.generators.{with_oracle[0]}.oracle: only a linear world has an oracle; remove it "
                             "or set pool.source.kind: linear")
        if (self.student.kind == "linear") != linear_source:
            raise ValueError("student.kind: linear goes with pool.source.kind: linear (the linear world), and only "
                             f"with it; got student {self.student.kind!r} and source {self.pool.source.kind!r}")
        if not linear_source:
            return
        for name, spec in self.pool.generators.items():
            if not spec.model.startswith(PREFIX):
                raise ValueError(f"pool.generators.{name}.model: a linear world samples with linear:rho=R[,sigma=S] "
                                 f"generators, got {spec.model!r}")
            if spec.oracle is not None and spec.oracle.generator not in (None, spec.model):
                raise ValueError(f"pool.generators.{name}.oracle.generator: rho_g is measured against this pool's "
                                 f"own generator {spec.model}; remove oracle.generator")
            parse_spec(spec.model)
            oracle = spec.oracle or self.pool.source.oracle
            if oracle is not None:  # rho_g against this generator: is the triple of cosines possible?
                try:
                    oracle.model_copy(update={"generator": spec.model}).geometry()
                except ValueError as e:
                    raise ValueError(f"pool.generators.{name}.oracle: {e}") from None
        heldout = self.evaluate.heldout
        if heldout.kind != "linear" or heldout.dim != self.pool.source.dim or heldout.oracle is not None:
            raise ValueError(f"evaluate.heldout: the linear student is tested on {{kind: linear, dim: "
                             f"{self.pool.source.dim}, n: ...}} problems labelled by the truth (no oracle)")
        # A finetune block away from its default (a dumped config writes the default back: that must load).
        if self.finetune != type(self).model_fields["finetune"].get_default(call_default_factory=True):
            raise ValueError("finetune: the linear student is ridge regression (student.lam); remove the finetune "
                             "block")
        if self.pool.sample.backend not in ("linear", "auto"):
            raise ValueError("pool.sample.backend: a linear world samples with backend: linear")

    @property
    def resolved_run_dir(self) -> Path:
        """The run directory, checked to stay inside ``output_root``."""
        return safe_join(self.output_root, self.run_dir or self.name)

    @property
    def loop_generator(self) -> str:
        """The generator whose pool feeds round 1 of the loop."""
        return self.loop.generator or list(self.pool.generators)[-1]


def parse_sweep_config(data: Any) -> SweepConfig:
    """Validate a dict into a SweepConfig, raising ConfigError with one line per problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"sweep config: must be a mapping at the top level, got {type(data).__name__}")
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError("\n".join(error_lines(e, (), SweepConfig))) from None


def load_sweep_config(path: str | os.PathLike, overrides: list[str] | None = None) -> SweepConfig:
    """Load a sweep YAML, apply ``a.b=c`` overrides and validate it. Credentials are refused: the trials read the
    config back from the run directory, where they are redacted."""
    data = apply_overrides(load_yaml(path), overrides or [])
    secrets = secret_paths(data)
    if secrets:
        raise ConfigError(f"{secrets[0]}: a credential in a sweep config cannot reach the trials (the saved config "
                          "is redacted); remove it and set it in the environment (e.g. HF_TOKEN)")
    return parse_sweep_config(data)


# -- the grid ----------------------------------------------------------------------------------------------------


def trial_id(spec: dict[str, Any]) -> str:
    """A readable, unique directory name for a trial."""
    if spec["kind"] == "loop":
        return f"loop-{spec['rule']}"
    return (f"{spec['generator']}-n{spec['pool_size']}-{spec['rule']}-p{spec['keep_fraction']:g}"
            f"-eta{spec['oracle_noise']:g}-eps{spec['generator_noise']:g}-s{spec['seed']}")


def canonical_cell(rule: str, p: float, eta: float) -> tuple[str, float, float]:
    """The cell that computes (rule, p, eta): p = 1 is the family baseline, and unscored rules ignore eta."""
    if p >= 1.0:
        rule = family_baseline(rule)
    elif rule == "all":
        rule = "random"  # a prefix of the random order; the same set
    if rule not in SCORED_RULES:
        eta = 0.0
    return rule, (1.0 if p >= 1.0 else float(p)), float(eta)


def expand_grid(cfg: SweepConfig) -> list[dict[str, Any]]:
    """Every trial of the sweep as a plain dict (loop chains first: they take longest), without duplicates."""
    specs: dict[str, dict[str, Any]] = {}
    if cfg.loop.rounds:
        for rule in cfg.loop.rules:
            spec = {"kind": "loop", "rule": rule, "generator": cfg.loop_generator, "rounds": cfg.loop.rounds,
                    "pool_size": cfg.loop.pool_size, "keep_fraction": _loop_keep_fraction(rule, cfg.loop),
                    "oracle_noise": 0.0, "generator_noise": 0.0, "seed": cfg.loop.seed, "block": "loop"}
            specs[trial_id(spec)] = spec
    generators = list(cfg.pool.generators)
    for block in cfg.grid.blocks:
        for gen in block.generators or generators:
            for n in block.pool_sizes:
                for rule in block.rules:
                    for p in block.keep_fractions:
                        for eta in block.oracle_noise:
                            for eps in block.generator_noise:
                                for seed in block.seeds or cfg.grid.seeds:
                                    crule, cp, ceta = canonical_cell(rule, p, eta)
                                    spec = {"kind": "grid", "generator": gen, "pool_size": int(n), "rule": crule,
                                            "keep_fraction": cp, "oracle_noise": ceta,
                                            "generator_noise": float(eps), "seed": int(seed), "block": block.name}
                                    specs.setdefault(trial_id(spec), spec)
    out = []
    for tid, spec in specs.items():
        out.append({**spec, "trial_id": tid})
    return out


def _loop_keep_fraction(rule: str, loop: LoopConfig) -> float:
    return 1.0 if rule in ("all", "correct_only") else loop.keep_fraction


# -- fingerprints --------------------------------------------------------------------------------------------------


def trial_config_json(cfg: SweepConfig) -> dict[str, Any]:
    """The parts of the sweep config a trial's result depends on."""
    dump = cfg.model_dump(mode="json")
    return {k: dump[k] for k in ("seed", "student", "finetune", "evaluate")} | {
        "sample": dump["pool"]["sample"], "verify": dump["pool"]["verify"], "loop": dump["loop"],
        "source": dump["pool"]["source"],
    }


def code_version() -> str:
    """Hash of the code a trial's result depends on: curation, training, evaluation, sampling, and the sweep's own
    config, pool and trial modules (not its report: a new figure must not rerun the trials)."""
    import pipeline.evaluate
    import pipeline.finetune
    import pipeline.linearworld
    import stages.curate
    import stages.difficulty
    import stages.rules
    import stages.sample
    import stages.verify

    # Named by file, not imported: the modules above this one import it.
    here = Path(__file__).parent
    return io.code_hash(pipeline.evaluate, pipeline.finetune, pipeline.linearworld, stages.rules, stages.curate,
                        stages.difficulty, stages.sample, stages.verify,
                        *(here / name for name in ("config.py", "layout.py", "pool.py", "student.py", "trials.py")))

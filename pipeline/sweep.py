"""sweep: measure the size x quality phase transition of data curation on ONE shared pool, under Ray Tune.

    lessmore sweep configs/phase_tiny.yaml

1. **Pool.** For each generator, the runner samples k completions per problem, verifies them and scores difficulty
   (source -> sample -> verify -> difficulty into ``run_dir/pool/<generator>/``, resumable). No trial samples again.
2. **Reference.** The untouched student and every generator are evaluated once on the held-out problems.
3. **Trials.** Each grid cell (generator, pool size n, keep fraction p, rule, oracle noise eta, generator noise eps,
   seed) runs curate -> finetune -> evaluate as one Ray Tune trial. Pool sizes are nested random subsets of the pool
   (per seed), so the n = 300 problems are among the n = 1000 ones. Every trial is judged on the same held-out
   problems, so any two cells can be compared problem by problem. Trials run in parallel where the CPUs allow, a
   failed trial is retried (``tune.max_failures``) and then reported, never dropped, and a rerun resumes the Tune
   experiment: finished trials are read back, not computed again (each trial also caches its result on disk under a
   fingerprint of everything it depends on).
4. **Collapse loop** (``loop.rounds``): one trial per rule; in round 1 the student trains on the curated pool, in each
   later round the previous round's model generates the data, the rule curates it, and a fresh student trains on it.
5. **Report** (``pipeline.report``): error against p with confidence bands, phase heatmaps, the rule-winner map,
   the calibrated theory overlay and a verdict for each prediction of theory.md §5, in ``run_dir/report/``.

Rules (``RULE_SPECS``): ``all``, ``random``, ``keep_hard``, ``keep_easy`` train on the generator's completions whether
correct or not (the theory's label-agnostic rules; one completion per problem); ``correct_only``,
``keep_hard_correct``, ``keep_easy_correct`` train on verified-correct completions only (label-aware). At p = 1
every label-agnostic rule keeps the same rows as ``all`` and every label-aware one the same as ``correct_only``, so
those cells are computed once and shared by the curves.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator

from pipeline.config import ConfigError, RayConfig, apply_overrides, load_yaml, safe_join
from pipeline.evaluate import EvaluateConfig
from pipeline.finetune import FinetuneConfig
from stages.base import Frozen
from stages.difficulty import DifficultyConfig
from stages.sample import SampleConfig
from stages.source import SourceConfig
from stages.verify import VerifyConfig

log = logging.getLogger(__name__)

POOL_DIR = "pool"
REFERENCE_DIR = "reference"
TRIALS_DIR = "trials"
TUNE_DIR = "tune"
RESULT_FILE = "result.json"
TRIALS_FILE = "trials.json"
SCORES_FILE = "scores.parquet"

# rule name -> CurateConfig fields. Label-agnostic rules train on one completion per problem, correct or not.
RULE_SPECS: dict[str, dict[str, Any]] = {
    "all": {"rule": "all", "label_aware": False},
    "random": {"rule": "random", "label_aware": False},
    "keep_hard": {"rule": "keep_hard", "label_aware": False},
    "keep_easy": {"rule": "keep_easy", "label_aware": False},
    "correct_only": {"rule": "correct_only"},
    "keep_hard_correct": {"rule": "keep_hard_correct"},
    "keep_easy_correct": {"rule": "keep_easy_correct"},
}
LABEL_AWARE_RULES = ("correct_only", "keep_hard_correct", "keep_easy_correct")
# Rules that rank by the difficulty score: the only ones oracle noise can change.
SCORED_RULES = ("keep_hard", "keep_easy", "keep_hard_correct", "keep_easy_correct")


def family_baseline(rule: str) -> str:
    """The p = 1 cell of a rule's family: ``correct_only`` for label-aware rules, ``all`` otherwise."""
    return "correct_only" if rule in LABEL_AWARE_RULES else "all"


# -- configuration ---------------------------------------------------------------------------------------------


class GeneratorSpec(Frozen):
    """One generator of the pool (a point on the generator-quality axis)."""

    model: str = Field(description="toy:NAME, a local model directory or a hub id; it samples the pool.")
    gguf_file: str | None = Field(None, description="GGUF file inside the model directory, if it ships GGUF.")


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

    @field_validator("rules")
    @classmethod
    def _rules(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [r for r in value if r not in RULE_SPECS]
        if unknown:
            raise ValueError(f"unknown rule(s) {unknown}; valid rules: {', '.join(RULE_SPECS)}")
        return value


class ReportSettings(Frozen):
    """What the report computes."""

    tiers: dict[str, tuple[int, ...]] = Field(
        default_factory=lambda: {"seen": (1, 2, 3), "hard": (4, 5, 6)},
        description="Named groups of levels reported beside each level; 'hard' is the tier of prediction (ii).",
    )
    hard_tier: str | None = Field("hard", description="The tier that prediction (ii) checks (a key of tiers; "
                                  "null when the evaluation problems have no levels).")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples (seeds and problems) per interval.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Confidence level of every interval.")
    small_keep_fraction: float = Field(0.1, gt=0, le=1, description="Prediction (i): 'p <= this' counts as small.")
    oracle_accuracy: float | None = Field(
        None, ge=0.5, le=1, description="Oracle accuracy for the theory (rho* = cos(pi (1 - a))). None: measured as "
        "the concordance of the (noised) difficulty score with the problems' levels.",
    )
    lam: float = Field(1e-3, gt=0, description="Ridge penalty of the theory's learner.")
    tolerance: float = Field(0.01, ge=0, lt=1, description="Theory: a rule 'pays' when E(best)/E(1) < 1 - tolerance.")


class SweepConfig(Frozen):
    """A whole sweep: the shared pool, the grid of trials, fine-tuning, evaluation, Tune, the loop, the report."""

    name: str = Field("sweep", description="Sweep name; the run directory defaults to <output_root>/<name>.")
    output_root: str = Field("runs", description="Every output path stays inside this directory.")
    run_dir: str | None = Field(None, description="Run directory, relative to output_root (default: the name).")
    seed: int = Field(0, description="Seed of the pool's problems and sampling, and of the held-out draw.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Ray connection settings.")
    pool: PoolConfig = Field(description="The shared pool.")
    grid: GridConfig = Field(description="The trials.")
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig,
                                     description="Student and budget (budget: steps = compute-matched, the default; "
                                     "epochs = epoch-matched).")
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
        return self

    @property
    def resolved_run_dir(self) -> Path:
        """The run directory, checked to stay inside ``output_root``."""
        return safe_join(self.output_root, self.run_dir or self.name)

    @property
    def loop_generator(self) -> str:
        """The generator whose pool feeds round 1 of the loop."""
        return self.loop.generator or list(self.pool.generators)[-1]


def _format_errors(e: ValidationError) -> str:
    lines = []
    for err in e.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key")
        elif err["type"] == "missing":
            lines.append(f"{path}: required field is missing")
        else:
            lines.append(f"{path}: {err['msg']}".replace("Value error, ", ""))
    return "\n".join(lines)


def parse_sweep_config(data: Any) -> SweepConfig:
    """Validate a dict into a SweepConfig, raising ConfigError with one line per problem."""
    if not isinstance(data, dict):
        raise ConfigError(f"sweep config: must be a mapping at the top level, got {type(data).__name__}")
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e)) from None


def load_sweep_config(path: str | os.PathLike, overrides: list[str] | None = None) -> SweepConfig:
    """Load a sweep YAML, apply ``a.b=c`` overrides and validate it."""
    return parse_sweep_config(apply_overrides(load_yaml(path), overrides or []))


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


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _code_hash() -> str:
    """Hash of the code a trial's result depends on (curation, training, evaluation, sampling, this module)."""
    import pipeline.evaluate
    import pipeline.finetune
    import stages.rules
    import stages.curate
    import stages.difficulty
    import stages.sample
    import stages.verify

    h = hashlib.sha256()
    for module in (pipeline.evaluate, pipeline.finetune, stages.rules, stages.curate, stages.difficulty,
                   stages.sample, stages.verify):
        h.update(Path(module.__file__).read_bytes())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def _trial_config_json(cfg: SweepConfig) -> dict[str, Any]:
    """The parts of the sweep config a trial's result depends on."""
    dump = cfg.model_dump(mode="json")
    return {k: dump[k] for k in ("seed", "finetune", "evaluate")} | {
        "sample": dump["pool"]["sample"], "verify": dump["pool"]["verify"], "loop": dump["loop"],
        "source": dump["pool"]["source"],
    }


# -- pool ---------------------------------------------------------------------------------------------------------


def pool_run_config(cfg: SweepConfig, generator: str):
    """The runner config that builds one generator's pool: source -> sample -> verify -> difficulty."""
    from pipeline.config import RunConfig

    spec = cfg.pool.generators[generator]
    sample = cfg.pool.sample.model_copy(update={"model": spec.model, "gguf_file": spec.gguf_file})
    return RunConfig.model_validate({
        "name": generator, "output_root": str(cfg.resolved_run_dir), "run_dir": f"{POOL_DIR}/{generator}",
        "seed": cfg.seed, "ray": cfg.ray,
        "stages": (("source", cfg.pool.source), ("sample", sample), ("verify", cfg.pool.verify),
                   ("difficulty", cfg.pool.difficulty)),
    })


def build_pools(cfg: SweepConfig, console=None) -> dict[str, Any]:
    """Run the runner once per generator (skipped when up to date) and write ``pool/manifest.json``.

    The manifest holds, per generator, the difficulty stage's directory and fingerprint, the model, and the pool's
    trace accuracy overall and per level (the generator-quality proxy of the theory).
    """
    import numpy as np

    from pipeline import columns as C
    from pipeline import io
    from pipeline.runner import run

    manifest: dict[str, Any] = {"generators": {}}
    for name, spec in cfg.pool.generators.items():
        result = run(pool_run_config(cfg, name), console=console)
        by_stage = {s.name: s for s in result.stages}
        table = io.read_columns(by_stage["difficulty"].directory,
                                [C.PROBLEM_ID, C.LEVEL, C.CORRECT, C.PASS_RATE]).to_pandas()
        per_level = {}
        if table[C.LEVEL].notna().any():
            per_level = {str(int(k)): float(v) for k, v in table.groupby(C.LEVEL)[C.CORRECT].mean().items()}
        problems = table.drop_duplicates(C.PROBLEM_ID)
        manifest["generators"][name] = {
            "model": spec.model,
            "directory": by_stage["difficulty"].directory,
            "source_directory": by_stage["source"].directory,
            "fingerprint": by_stage["difficulty"].fingerprint,
            "problems": int(len(problems)),
            "samples": int(len(table)),
            "trace_accuracy": float(table[C.CORRECT].mean()) if len(table) else float("nan"),
            "trace_accuracy_by_level": per_level,
            "pass_rate_histogram": {f"{k:.3g}": int(v) for k, v in
                                    problems[C.PASS_RATE].round(3).value_counts().sort_index().items()},
            "solved_any": float(np.mean(problems[C.PASS_RATE] > 0)) if len(problems) else float("nan"),
            "seconds": round(sum(s.seconds for s in result.stages), 1),
        }
    path = cfg.resolved_run_dir / POOL_DIR / "manifest.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The pool manifest that ``build_pools`` wrote."""
    return json.loads((Path(run_dir) / POOL_DIR / "manifest.json").read_text())


def pool_samples(manifest: dict[str, Any], generator: str):
    """One generator's pool as a pandas table: one row per sample, with pass rates (completion text included).

    Rows are sorted by problem and sample: part files are named at random per run, and the row order decides a
    trial's training order, so without the sort two fresh runs of one sweep would train on differently ordered data.
    """
    from pipeline import columns as C
    from pipeline import io

    table = io.read_table(manifest["generators"][generator]["directory"]).to_pandas()
    return table.sort_values([C.PROBLEM_ID, C.SAMPLE_IDX], kind="stable").reset_index(drop=True)


def pool_problems(manifest: dict[str, Any]):
    """The pool's problem rows (ids and texts), which held-out problems must not share."""
    from pipeline import columns as C
    from pipeline import io

    first = next(iter(manifest["generators"].values()))
    return io.read_columns(first["source_directory"], [C.PROBLEM_ID, C.PROBLEM, C.LEVEL]).to_pandas()


def nested_subset(problem_ids, n: int, seed: int) -> list[str]:
    """The first ``n`` problems of a seeded random order: nested in n for one seed, the same for every generator."""
    import numpy as np

    from stages.rules import unit_hash

    ids = sorted(set(map(str, problem_ids)))
    order = np.argsort(unit_hash(seed, "pool_subset", ids), kind="stable")
    return [ids[i] for i in order[:n]]


# -- one trial -----------------------------------------------------------------------------------------------------


def curate_config(rule: str, keep_fraction: float, oracle_noise: float, generator_noise: float, seed: int):
    """The curate stage config of one cell (no curation report: trials write their own summary)."""
    from stages.curate import CurateConfig

    return CurateConfig(**RULE_SPECS[rule], p=keep_fraction, oracle_noise=oracle_noise,
                        generator_noise=generator_noise, seed=seed, report=False)


def curate_rows(samples, rule: str, keep_fraction: float, oracle_noise: float, generator_noise: float, seed: int):
    """Curate a sample table for one cell; returns (training rows DataFrame, summary dict)."""
    from pipeline import columns as C
    from stages.curate import plan, training_rows

    ccfg = curate_config(rule, keep_fraction, oracle_noise, generator_noise, seed)
    decisions = plan(samples, ccfg, seed)
    rows = training_rows(samples, decisions)
    dropped = decisions.loc[~decisions[C.KEPT].to_numpy(), C.DROP_REASON].value_counts()
    summary = {
        "rule_label": ccfg.rule_label,
        "pool_problems": int(samples[C.PROBLEM_ID].nunique()),
        "kept_rows": int(len(rows)),
        "kept_problems": int(rows[C.PROBLEM_ID].nunique()) if len(rows) else 0,
        "kept_trace_accuracy": float(rows[C.CORRECT].mean()) if len(rows) else float("nan"),
        "kept_mean_pass_rate": float(rows[C.PASS_RATE].mean()) if len(rows) and C.PASS_RATE in rows else float("nan"),
        "kept_by_level": ({str(int(k)): int(v) for k, v in rows[C.LEVEL].value_counts().sort_index().items()}
                          if len(rows) and C.LEVEL in rows and rows[C.LEVEL].notna().any() else {}),
        "dropped": {str(k): int(v) for k, v in dropped.items()},
        "generator_noise_rows": int(rows[C.GENERATOR_NOISE].notna().sum()) if len(rows) else 0,
        "oracle_noise_problems": int(rows.loc[rows[C.ORACLE_NOISE].astype(bool), C.PROBLEM_ID].nunique())
        if len(rows) else 0,
    }
    return rows, summary


_POOL_CACHE: dict[tuple[str, str], Any] = {}


class TrialContext:
    """What a trial needs from the driver, read from ``run_dir`` (the config, pool manifest, held-out exclusions)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.cfg = parse_sweep_config(json.loads((self.run_dir / "sweep_config.json").read_text()))
        self.manifest = read_manifest(self.run_dir)
        problems = pool_problems(self.manifest)
        self.exclude_ids = set(problems["problem_id"])
        self.exclude_texts = set(problems["problem"])

    def samples(self, generator: str):
        """The generator's pool table (cached per worker process: consecutive trials reuse it)."""
        entry = self.manifest["generators"][generator]
        key = (entry["directory"], entry["fingerprint"])
        if key not in _POOL_CACHE:
            if len(_POOL_CACHE) >= 4:
                _POOL_CACHE.clear()
            _POOL_CACHE[key] = pool_samples(self.manifest, generator)
        return _POOL_CACHE[key]

    def threads(self, configured: int | None) -> int:
        """Torch threads of a trial: the configured number, else its reserved CPUs."""
        return configured or max(1, int(self.cfg.tune.cpus_per_trial))

    def fingerprint(self, spec: dict[str, Any]) -> str:
        """Everything a trial's result depends on: the cell, the pool, the configs, the student and the code."""
        from pipeline.models import model_fingerprint, resolve_model

        if spec.get("fingerprint"):  # computed by the driver: the trial and the results table agree on it
            return spec["fingerprint"]
        pool_fp = self.manifest["generators"][spec["generator"]]["fingerprint"]
        student = model_fingerprint(resolve_model(self.cfg.finetune.student))
        cell = {k: v for k, v in spec.items() if k not in ("trial_id", "block", "fingerprint")}
        return _digest(cell, pool_fp, _trial_config_json(self.cfg), student, _code_hash())


def _cached(directory: Path, fingerprint: str) -> dict[str, Any] | None:
    path = directory / RESULT_FILE
    if path.is_file() and (directory / SCORES_FILE).is_file():
        result = json.loads(path.read_text())
        if result.get("fingerprint") == fingerprint:
            return result
    return None


def _train_and_evaluate(ctx: TrialContext, rows, out_dir: Path, seed: int,
                        keep_model: bool = False) -> tuple[dict[str, Any], Any]:
    """Fine-tune the student on ``rows`` (model in ``out_dir/finetune/model``) and evaluate it on the held-out
    problems; returns (metrics summary, per-problem scores). The model is deleted afterwards unless ``keep_model``
    or ``tune.keep_models``."""
    from pipeline import columns as C
    from pipeline import evaluate as ev
    from pipeline.finetune import finetune, read_train_stats

    cfg = ctx.cfg
    if len(rows) == 0:
        raise RuntimeError("the rule kept no training rows in this cell; it cannot be trained "
                           "(raise the pool size or keep fraction, or drop the cell from the grid)")
    fcfg = cfg.finetune.model_copy(update={"threads": ctx.threads(cfg.finetune.threads)})
    train = [{"prompt": p, "completion": c} for p, c in zip(rows[C.PROBLEM], rows[C.COMPLETION])]
    model_dir = finetune(fcfg, train, out_dir / "finetune", seed=seed, prompt_cfg=cfg.pool.sample)
    stats = read_train_stats(out_dir / "finetune")
    ecfg = cfg.evaluate.model_copy(update={"compare_base": False, "threads": ctx.threads(cfg.evaluate.threads)})
    metrics = ev.evaluate(ecfg, {"finetuned": (str(model_dir), str(model_dir))}, out_dir / "evaluate",
                          run_seed=cfg.seed, sample_cfg=cfg.pool.sample, verify_cfg=cfg.pool.verify,
                          exclude_ids=ctx.exclude_ids, exclude_texts=ctx.exclude_texts)
    scores = read_scores(out_dir / "evaluate")
    summary = {
        "train_loss": stats.get("train_loss"), "optimizer_steps": stats.get("optimizer_steps"),
        "epochs_seen": stats.get("epochs_seen"), "train_seconds": stats.get("wall_seconds"),
        "eval_seconds": metrics.get("seconds"), "heldout_problems": metrics["heldout"]["problems"],
        "metrics": metrics["models"]["finetuned"]["metrics"],
    }
    if not (keep_model or cfg.tune.keep_models):
        shutil.rmtree(model_dir, ignore_errors=True)
    return summary, scores


def read_scores(eval_dir: str | os.PathLike, model: str = "finetuned"):
    """Per held-out problem of an evaluation directory: ``problem_id``, ``level`` and ``correct`` (the greedy
    completion's verdict; without greedy decoding, the mean over the sampled completions)."""
    import pandas as pd

    from pipeline import columns as C

    eval_dir = Path(eval_dir)
    greedy = eval_dir / "samples" / f"{model}_greedy.parquet"
    sampled = eval_dir / "samples" / f"{model}_sampled.parquet"
    path = greedy if greedy.is_file() else sampled
    rows = pd.read_parquet(path, columns=[C.PROBLEM_ID, C.LEVEL, C.SAMPLE_IDX, C.CORRECT])
    if path is greedy:
        rows = rows.sort_values(C.SAMPLE_IDX).drop_duplicates(C.PROBLEM_ID)
    out = rows.groupby(C.PROBLEM_ID, sort=True).agg(level=(C.LEVEL, "first"), correct=(C.CORRECT, "mean"))
    return out.reset_index()


def run_trial(spec: dict[str, Any], run_dir: str | os.PathLike, report=None) -> dict[str, Any]:
    """Run one trial (``kind`` grid or loop) or read its cached result; returns its result dict.

    ``report(metrics)`` is called with flat metrics after each evaluation (Tune's ``tune.report`` under Tune).
    """
    ctx = TrialContext(run_dir)
    out_dir = ctx.run_dir / TRIALS_DIR / spec["trial_id"]
    out_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = ctx.fingerprint(spec)
    cached = _cached(out_dir, fingerprint)
    if cached is None:
        started = time.perf_counter()
        if spec["kind"] == "loop":
            result = _run_loop(ctx, spec, out_dir, fingerprint, report)
        else:
            result = _run_grid_trial(ctx, spec, out_dir)
        result.update(fingerprint=fingerprint, seconds=round(time.perf_counter() - started, 1),
                      computed_at=time.time(), pid=os.getpid(), load_average=os.getloadavg()[0])
        tmp = out_dir / f".{RESULT_FILE}.tmp"
        tmp.write_text(json.dumps(result, indent=1, default=float) + "\n")
        os.replace(tmp, out_dir / RESULT_FILE)
    else:
        result = cached
        result["from_cache"] = True
    if report is not None:
        report(flat_metrics(result))
    return result


def _run_grid_trial(ctx: TrialContext, spec: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    from pipeline import columns as C

    samples = ctx.samples(spec["generator"])
    subset = set(nested_subset(samples[C.PROBLEM_ID], spec["pool_size"], spec["seed"]))
    pool = samples[samples[C.PROBLEM_ID].isin(subset)].reset_index(drop=True)
    rows, curation = curate_rows(pool, spec["rule"], spec["keep_fraction"], spec["oracle_noise"],
                                 spec["generator_noise"], spec["seed"])
    summary, scores = _train_and_evaluate(ctx, rows, out_dir, spec["seed"])
    scores.to_parquet(out_dir / SCORES_FILE, index=False)
    return {"spec": spec, "curation": curation, **summary}


def _run_loop(ctx: TrialContext, spec: dict[str, Any], out_dir: Path, fingerprint: str, report) -> dict[str, Any]:
    """One collapse-loop chain: round 1 curates the pool, round t > 1 curates the round t-1 model's samples."""
    import pandas as pd

    from pipeline import columns as C

    cfg, loop = ctx.cfg, ctx.cfg.loop
    rounds: list[dict[str, Any]] = []
    previous_model: Path | None = None
    for t in range(1, spec["rounds"] + 1):
        round_dir = out_dir / f"round_{t}"
        round_fp = _digest(fingerprint, t)
        cached = _cached(round_dir, round_fp)
        model_dir = round_dir / "finetune" / "model"
        if cached is not None and (t == spec["rounds"] or model_dir.is_dir()):
            rounds.append(cached)
            previous_model = model_dir
            continue
        round_dir.mkdir(parents=True, exist_ok=True)
        seed = loop.seed * 1000 + t
        if t == 1:
            samples = ctx.samples(spec["generator"])
            subset = set(nested_subset(samples[C.PROBLEM_ID], loop.pool_size, loop.seed))
            data = samples[samples[C.PROBLEM_ID].isin(subset)].reset_index(drop=True)
            data_source = f"pool:{spec['generator']}"
        else:
            data = _student_samples(ctx, previous_model, t, seed)
            data_source = f"round {t - 1} model"
        data.drop(columns=[c for c in data.columns if c.startswith("_")]).to_parquet(round_dir / "data.parquet")
        rows, curation = curate_rows(data, spec["rule"], spec["keep_fraction"], 0.0, 0.0, seed)
        # The next round samples with this round's model.
        summary, scores = _train_and_evaluate(ctx, rows, round_dir, seed, keep_model=t < spec["rounds"])
        scores.to_parquet(round_dir / SCORES_FILE, index=False)
        entry = {"round": t, "data_source": data_source, "data_trace_accuracy": float(data[C.CORRECT].mean()),
                 "curation": curation, **summary, "fingerprint": round_fp}
        (round_dir / RESULT_FILE).write_text(json.dumps(entry, indent=1, default=float) + "\n")
        rounds.append(entry)
        previous_model = model_dir
        if report is not None and t < spec["rounds"]:
            report(flat_metrics({"spec": spec, **entry}))
    # The chain's rounds, plus the scores of its last round as the trial's scores.
    last = out_dir / f"round_{spec['rounds']}" / SCORES_FILE
    pd.read_parquet(last).to_parquet(out_dir / SCORES_FILE, index=False)
    if not cfg.tune.keep_models:
        for t in range(1, spec["rounds"] + 1):
            shutil.rmtree(out_dir / f"round_{t}" / "finetune" / "model", ignore_errors=True)
    return {"spec": spec, "rounds": rounds, **{k: v for k, v in rounds[-1].items() if k not in ("round",)}}


def _student_samples(ctx: TrialContext, model_dir: Path | None, round_index: int, seed: int):
    """Fresh problems (none of them held out) sampled k times by ``model_dir``, verified and scored."""
    import pandas as pd

    from pipeline import columns as C
    from pipeline.evaluate import HELDOUT_SEED_OFFSET, generate_and_verify, heldout_problems
    from stages.difficulty import problem_stats
    from stages.source import SourceStage
    from stages.verify import VerifyStage

    cfg, loop = ctx.cfg, ctx.cfg.loop
    if model_dir is None or not model_dir.is_dir():
        raise RuntimeError(f"loop round {round_index}: the previous round's model is missing; rerun the sweep")
    held = heldout_problems(cfg.evaluate, cfg.seed, ctx.exclude_ids, ctx.exclude_texts)
    held_ids = {r[C.PROBLEM_ID] for r in held.rows}
    source_seed = cfg.seed + HELDOUT_SEED_OFFSET * 2 + 7919 * round_index
    want = loop.pool_size
    source_cfg = cfg.pool.source.model_copy(update={"seed": source_seed, "split": f"loop_round_{round_index}"})
    if source_cfg.n is not None:
        source_cfg = source_cfg.model_copy(update={"n": max(source_cfg.n, want + len(held_ids))})
    problems = []
    for batch in SourceStage(source_cfg, seed=source_seed).read():
        for i in range(len(batch[C.PROBLEM_ID])):
            row = {k: v[i] for k, v in batch.items()}
            if row.pop(C.REJECT_REASON) is None and row[C.PROBLEM_ID] not in held_ids:
                problems.append(row)
    problems = problems[:want]
    sample_cfg = cfg.pool.sample.model_copy(update={
        "k": loop.k, "seed": seed, "threads": ctx.threads(cfg.pool.sample.threads), "rounds": None, "cache_dir": None,
    })
    rows = generate_and_verify(str(model_dir), str(model_dir), problems, sample_cfg, VerifyStage(cfg.pool.verify),
                               cfg.evaluate.batch_size, seed)
    frame = pd.DataFrame(rows)
    stats = problem_stats(frame[C.PROBLEM_ID], frame[C.MODEL_ID], frame[C.CORRECT], frame[C.FINISH_REASON],
                          cfg.pool.difficulty)
    for col in (C.PASS_RATE, C.N_SAMPLES, C.N_CORRECT, C.CI_LOW, C.CI_HIGH):
        frame[col] = [stats[(p, m)][col] for p, m in zip(frame[C.PROBLEM_ID], frame[C.MODEL_ID])]
    return frame


# -- flat metrics (Tune's table) -------------------------------------------------------------------------------------


def flat_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The scalar metrics of a trial result, as Tune's result table holds them."""
    out: dict[str, Any] = {}
    metrics = result.get("metrics") or {}
    headline = "greedy_accuracy" if "greedy_accuracy" in metrics else next(iter(metrics), None)
    if headline:
        for group, entry in metrics[headline].items():
            key = "overall" if group == "overall" else f"L{group}"
            out[f"accuracy_{key}"] = entry["value"]
            out[f"accuracy_{key}_low"] = entry["ci_low"]
            out[f"accuracy_{key}_high"] = entry["ci_high"]
    curation = result.get("curation") or {}
    for key in ("kept_rows", "kept_problems", "kept_trace_accuracy"):
        if key in curation:
            out[key] = curation[key]
    for key in ("train_loss", "epochs_seen", "seconds", "round"):
        if result.get(key) is not None:
            out[key] = result[key]
    return out


# -- Tune ------------------------------------------------------------------------------------------------------------


def tune_trainable(config: dict[str, Any]) -> None:
    """The Ray Tune function trainable: one trial, reported through ``tune.report``."""
    from ray import tune

    run_trial(config["trial"], config["run_dir"], report=tune.report)


def _trial_dirname(trial) -> str:
    return trial.config["trial"]["trial_id"]


def run_trials(cfg: SweepConfig, specs: list[dict[str, Any]], console=None):
    """Run the trials under Ray Tune, resuming the experiment when it exists; returns Tune's ResultGrid."""
    from ray import tune

    from pipeline.cluster import connect

    connect(cfg.ray)
    run_dir = cfg.resolved_run_dir
    storage = run_dir / TUNE_DIR
    name = f"trials-{_digest([s['trial_id'] for s in specs], [s.get('fingerprint') for s in specs])[:12]}"
    resources = {"cpu": cfg.tune.cpus_per_trial}
    if cfg.tune.gpus_per_trial:
        resources["gpu"] = cfg.tune.gpus_per_trial
    trainable = tune.with_resources(tune_trainable, resources)
    path = storage / name
    if tune.Tuner.can_restore(str(path)):
        if console is not None:
            console.print(f"[bold]tune[/]: resuming {path} (finished trials are read back)")
        tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(specs), "run_dir": str(run_dir)},
            tune_config=tune.TuneConfig(max_concurrent_trials=cfg.tune.max_concurrent_trials,
                                        reuse_actors=cfg.tune.reuse_actors, trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=cfg.tune.max_failures)),
        )
    return tuner.fit()


def results_table(specs: list[dict[str, Any]], grid, run_dir: str | os.PathLike,
                  errors: dict[str, str] | None = None):
    """One row per trial: its cell, status (ok / error / missing), the error text, and its flat metrics.

    ``grid`` is Tune's ResultGrid (or any iterable of objects with ``config``, ``metrics`` and ``error``; None when
    nothing ran). A trial is ``ok`` when its result file exists under the current fingerprint; trials Tune reports as
    errored keep their error, and ``errors`` (trial id -> text) adds errors known from an earlier run.
    """
    import pandas as pd

    run_dir = Path(run_dir)
    errors = dict(errors or {})
    for result in grid or ():
        config = getattr(result, "config", None) or {}
        tid = (config.get("trial") or {}).get("trial_id")
        if tid and getattr(result, "error", None) is not None:
            errors[tid] = f"{type(result.error).__name__}: {str(result.error).strip().splitlines()[-1][:400]}"
    rows = []
    for spec in specs:
        row = {k: spec.get(k) for k in ("trial_id", "kind", "block", "generator", "pool_size", "rule",
                                        "keep_fraction", "oracle_noise", "generator_noise", "seed")}
        path = run_dir / TRIALS_DIR / spec["trial_id"] / RESULT_FILE
        result = json.loads(path.read_text()) if path.is_file() else None
        if result is not None and result.get("fingerprint") == spec.get("fingerprint"):
            row.update(status="ok", error=None, **flat_metrics(result))
        else:
            row.update(status="error" if spec["trial_id"] in errors else "missing",
                       error=errors.get(spec["trial_id"], "no result: the trial did not finish"))
        rows.append(row)
    return pd.DataFrame(rows)


# -- reference evaluation (student before training, generators) ----------------------------------------------------


def reference_evaluation(cfg: SweepConfig, manifest: dict[str, Any], console=None) -> dict[str, Any]:
    """Evaluate the untouched student and every generator once on the held-out problems (cached)."""
    from pipeline import evaluate as ev
    from pipeline.models import model_fingerprint, resolve_model

    out = cfg.resolved_run_dir / REFERENCE_DIR
    models = {"student": (cfg.finetune.student, resolve_model(cfg.finetune.student))}
    gguf = {"student": cfg.finetune.gguf_file}
    for name, spec in cfg.pool.generators.items():
        models[f"generator:{name}"] = (spec.model, resolve_model(spec.model))
        gguf[f"generator:{name}"] = spec.gguf_file
    problems = pool_problems(manifest)
    fp = _digest({k: model_fingerprint(p) for k, (_, p) in models.items()}, _trial_config_json(cfg), _code_hash(),
                 sorted(problems["problem_id"]))
    marker = out / "_SUCCESS"
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == fp:
        return json.loads((out / "metrics.json").read_text())
    if console is not None:
        console.print(f"[bold cyan]reference[/]: evaluating {', '.join(models)} on the held-out problems")
    ecfg = cfg.evaluate.model_copy(update={"compare_base": False})
    metrics = ev.evaluate(ecfg, models, out, run_seed=cfg.seed, sample_cfg=cfg.pool.sample,
                          verify_cfg=cfg.pool.verify, exclude_ids=set(problems["problem_id"]),
                          exclude_texts=set(problems["problem"]), model_gguf=gguf, pairs=[])
    marker.write_text(json.dumps({"fingerprint": fp}))
    return metrics


# -- the whole sweep ---------------------------------------------------------------------------------------------


def run_sweep(cfg: SweepConfig, console=None) -> dict[str, Any]:
    """Pool -> reference evaluation -> trials under Ray Tune -> results table -> report. Returns a summary dict
    with ``run_dir``, ``report`` (the report.md path), ``trials``, ``ok``, ``failed`` and ``seconds``."""
    from rich.console import Console

    from pipeline.report import write_report

    console = console or Console(stderr=True)
    started = time.perf_counter()
    load_before = os.getloadavg()
    run_dir = cfg.resolved_run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "sweep_config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=1) + "\n")
    console.print(f"[bold]sweep[/]: {run_dir}")
    t0 = time.perf_counter()
    manifest = build_pools(cfg, console=console)
    pool_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference = reference_evaluation(cfg, manifest, console=console)
    reference_seconds = time.perf_counter() - t0
    ctx = TrialContext(run_dir)
    specs = expand_grid(cfg)
    for spec in specs:
        spec["fingerprint"] = ctx.fingerprint(spec)
    (run_dir / TRIALS_FILE).write_text(json.dumps(specs, indent=1) + "\n")
    console.print(f"[bold cyan]trials[/]: {len(specs)} ({sum(s['kind'] == 'loop' for s in specs)} loop chains) "
                  f"under Ray Tune, {cfg.tune.cpus_per_trial:g} CPU each")
    t0 = time.perf_counter()
    grid = run_trials(cfg, specs, console=console)
    trial_seconds = time.perf_counter() - t0
    table = results_table(specs, grid, run_dir)
    failed = table[table["status"] != "ok"]
    for _, row in failed.iterrows():
        console.print(f"[bold red]trial {row['trial_id']} failed[/]: {row['error']}")
    timing = {"pool_seconds": round(pool_seconds, 1), "reference_seconds": round(reference_seconds, 1),
              "trial_seconds": round(trial_seconds, 1), "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()}
    timing["total_seconds"] = round(time.perf_counter() - started, 1)  # up to the report
    t0 = time.perf_counter()
    report_path = write_report(run_dir, cfg, table, manifest, reference, timing=timing)
    timing["report_seconds"] = round(time.perf_counter() - t0, 1)
    timing["total_seconds"] = round(time.perf_counter() - started, 1)
    (run_dir / "timing.json").write_text(json.dumps(timing, indent=1) + "\n")
    console.print(f"report: {report_path} ({timing['total_seconds']:.0f}s; {len(specs) - len(failed)}/{len(specs)} "
                  f"trials ok)")
    return {"run_dir": str(run_dir), "report": str(report_path), "trials": len(specs),
            "ok": int((table["status"] == "ok").sum()), "failed": failed["trial_id"].tolist(),
            "seconds": timing["total_seconds"]}


def rewrite_report(cfg: SweepConfig, console=None) -> dict[str, Any]:
    """Rewrite ``run_dir/report/`` from the trials on disk, running nothing (e.g. with other report settings, or
    while a sweep still runs: its unfinished trials show as missing). Returns the same summary as ``run_sweep``."""
    import pandas as pd

    from pipeline.report import write_report

    run_dir = cfg.resolved_run_dir
    if not (run_dir / TRIALS_FILE).is_file() or not (run_dir / REFERENCE_DIR / "metrics.json").is_file():
        raise ConfigError(f"{run_dir}: no sweep has reached its trials here yet; run `lessmore sweep CONFIG` first")
    specs = json.loads((run_dir / TRIALS_FILE).read_text())
    previous = run_dir / "report" / "results.csv"
    errors = {}
    if previous.is_file():
        old = pd.read_csv(previous)
        errors = {r["trial_id"]: str(r["error"]) for r in old[old["status"] == "error"].to_dict("records")}
    table = results_table(specs, None, run_dir, errors=errors)
    timing_path = run_dir / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else None
    reference = json.loads((run_dir / REFERENCE_DIR / "metrics.json").read_text())
    report_path = write_report(run_dir, cfg, table, read_manifest(run_dir), reference, timing=timing)
    failed = table[table["status"] != "ok"]
    if console is not None:
        console.print(f"report: {report_path} ({len(specs) - len(failed)}/{len(specs)} trials ok)")
    return {"run_dir": str(run_dir), "report": str(report_path), "trials": len(specs),
            "ok": int((table["status"] == "ok").sum()), "failed": failed["trial_id"].tolist(),
            "seconds": timing.get("total_seconds") if timing else None}

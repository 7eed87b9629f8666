"""The theory's parameters measured on the sweep, per generator, and the regime gate.

What the theory needs (theory.md §1) and where each comes from:

- **rho** (generator): from the trial results when they carry it (a linear world sets it), else from the pool's trace
  accuracy a (times 1 - eps under generator noise) under the map of ``report.task``: ``open_ended`` counts a wrong
  answer as a coin flip on the theory's binary label, rho = cos(pi (1 - a) / 2), and a measured error e is e / 2 in
  theory units; ``binary`` (a truly binary task) has rho = cos(pi (1 - a)) and errors as they are. Both are reported.
- **rho_g** (oracle vs generator): the oracle actually used. The trial results' rho_g, else ``report.rho_g``, else 1:
  the pipeline's difficulty score is the generator's own pass rate, so the oracle *is* the generator and rho* = rho.
- **rho*** (oracle vs truth): the trials' rho_star, else fixed by geometry when rho_g = 1, else
  ``report.oracle_accuracy`` or the concordance of the difficulty score with the levels; always clipped to what three
  unit vectors with these cosines allow. Oracle noise eta is not a cosine: the prediction replaces a fraction eta of
  the difficulty scores by uniform random ones, as the curate stage does (``pipeline.sweep.predict``).
- **d_eff and lambda**, fitted together on the variant's ``random`` learning curve (``all`` is random at p = 1), which
  needs four or more training-set sizes; lambda is not fitted when the trials carry it. The fit is rejected when its
  median miss is more than twice the median interval (a systematic miss, such as a damaged student's constant
  offset), and the report says when the curve has not flattened.
- **The regime gate**: training on everything (``all``, p = 1) at the largest pool must beat the untouched student
  beyond the paired interval, or, with no untouched student (a linear world), chance (error 0.5). A generator that
  fails it is "not in regime": no verdict rests on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.sweep.measure import Measurements, bootstrap_mean, fmt_ci, named_rng

LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # the ridge penalties the learning-curve fit chooses among
MIN_CURVE_SIZES = 4
FLAT_WITHIN = 0.10  # a learning curve has flattened when its last point is within 10% of the asymptote


def binary_accuracy(accuracy: float) -> float:
    """An open-ended accuracy mapped onto the theory's binary label: a wrong answer is a coin flip."""
    return 0.5 + 0.5 * float(accuracy)


def rho_from_accuracy(accuracy: float, task: str) -> float:
    """Generator cosine from an accuracy under the ``task`` map (``open_ended`` halves, ``binary`` does not); an
    accuracy below chance on a binary task gives 0 (the theory covers non-negative cosines only)."""
    a = binary_accuracy(accuracy) if task == "open_ended" else float(accuracy)
    return float(math.cos(math.pi * (1.0 - min(max(a, 0.5), 1.0))))


def to_theory(error, task: str):
    """A measured error in the theory's units (``open_ended``: half of it, the coin-flip map)."""
    return np.asarray(error, dtype=float) / 2.0 if task == "open_ended" else np.asarray(error, dtype=float)


def from_theory(error, task: str):
    """A theory error in the measured units (inverse of :func:`to_theory`)."""
    return np.asarray(error, dtype=float) * 2.0 if task == "open_ended" else np.asarray(error, dtype=float)


def feasible_rho_star(rho: float, rho_g: float, rho_star: float) -> float:
    """rho* clipped to the cosines three unit vectors allow given rho and rho_g (and to [0, 1])."""
    a, b = math.acos(min(max(rho, -1.0), 1.0)), math.acos(min(max(rho_g, -1.0), 1.0))
    return float(min(max(rho_star, math.cos(min(a + b, math.pi)), 0.0), math.cos(abs(a - b))))


def level_concordance(scores, levels) -> float:
    """P(score_i > score_j) + P(tie)/2 over problem pairs with level_i < level_j: how well a difficulty score
    (pass rate: high = easy) orders problems by their level. 0.5 is chance, 1 a perfect oracle."""
    scores = np.asarray(scores, dtype=float)
    levels = np.asarray(levels, dtype=float)
    ok = ~np.isnan(scores) & ~np.isnan(levels)
    scores, levels = scores[ok], levels[ok]
    distinct = np.unique(levels)
    wins = pairs = 0.0
    for i, a in enumerate(distinct):
        for b in distinct[i + 1:]:
            x, y = scores[levels == a], scores[levels == b]
            wins += (x[:, None] > y[None, :]).sum() + 0.5 * (x[:, None] == y[None, :]).sum()
            pairs += x.size * y.size
    return float(wins / pairs) if pairs else float("nan")


def oracle_accuracy(samples, eta: float, seed: int, reference=None) -> float:
    """Concordance of the difficulty score the rules see under oracle noise ``eta`` with the levels, or with a
    reference difficulty (``reference``: problem_id -> reference pass rate, high = easy) on its problems."""
    from pipeline import columns as C
    from stages.curate import CurateConfig, plan

    plan_cfg = CurateConfig(rule="keep_hard", label_aware=False, oracle_noise=eta, seed=seed, report=False)
    decided = plan(samples, plan_cfg, seed)
    frame = samples[[C.PROBLEM_ID, C.LEVEL]].assign(score=decided[C.CURATION_SCORE].to_numpy())
    problems = frame.drop_duplicates(C.PROBLEM_ID)
    if reference is None:
        return level_concordance(problems["score"], problems[C.LEVEL])
    problems = problems[problems[C.PROBLEM_ID].isin(reference.index)]
    # A higher reference pass rate is an easier problem, like a lower level.
    return level_concordance(problems["score"], -problems[C.PROBLEM_ID].map(reference).to_numpy(dtype=float))


def oracle_reference(manifest, samples_of, etas, seed: int) -> tuple[dict[float, float], str | None]:
    """eta -> concordance of a separate oracle's score (as the rules see it under noise eta) with its reference
    difficulty on the audit problems, and a description of the audit; ({}, None) without a ``pool.oracle``."""
    import pandas as pd

    oracle = manifest.get("oracle")
    if not oracle or not oracle.get("audit"):
        return {}, None
    audit = oracle["audit"]
    reference = pd.read_parquet(audit["path"]).set_index("problem_id")["reference_pass_rate"]
    samples = samples_of(next(iter(manifest["generators"])))
    if samples is None:
        return {}, None
    out = {eta: oracle_accuracy(samples, eta, seed, reference) for eta in etas}
    return out, (f"{oracle['model']} at k = {oracle['k']} against itself at k = {audit['k']} (other seeds) on "
                 f"{audit['problems']} audit problems")


@dataclass
class VariantCalibration:
    """The theory's parameters for one (generator, eps) variant, where each came from, and its regime gate."""

    variant: tuple[str, float]
    trace_accuracy: float | None
    rho: float
    rho_maps: dict[str, float]  # rho under each accuracy map (the one used is Calibration.task)
    rho_source: str
    rho_star: float
    rho_star_source: str
    rho_g: float
    rho_g_source: str
    dim: float | None = None
    lam: float | None = None
    dim_source: str = "not fitted"
    fit: dict[str, Any] | None = None
    curve: list[tuple[float, float]] = field(default_factory=list)  # the random learning curve: (kept, theory error)
    world_dim: float | None = None  # d as set by a linear world (to compare the fit with)
    configured: dict[str, float] | None = None  # a linear world's cosines as its config set them (beside measured)
    verifier: str = "truth"  # what the correctness filter agrees with: "truth" (reference answers) or "oracle"
    gate: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def geometry(self, eta: float = 0.0) -> tuple[float, float, float]:
        """(rho, rho*, rho_g) of the clean oracle (oracle noise acts on the scores, see ``pipeline.sweep.predict``)."""
        return self.rho, self.rho_star, self.rho_g

    @property
    def in_regime(self) -> bool:
        """Whether the regime gate passed."""
        return self.gate.get("outcome") == "in regime"

    def unusable(self) -> str | None:
        """Why no verdict may rest on this variant's cells (None: it may)."""
        if not self.in_regime:
            gate = self.gate
            if "difference" not in gate:
                return f"{gate.get('outcome', 'gate unknown')}: {gate.get('reason', '')}".rstrip(": ")
            versus = "the untouched student" if gate["reference"] == "untouched student" else "chance (0.5)"
            return (f"{gate['outcome']}: `all` at n = {gate['pool_size']} minus {versus} is "
                    f"{fmt_ci(tuple(gate['difference']), True)} in error")
        if self.fit is not None and not self.fit["fit_ok"]:
            return ("the theory's learning curve does not fit the measured random curve (the median miss "
                    f"{self.fit['median_miss']:.3f} is more than twice the median interval): the student is not the "
                    "theory's learner here")
        return None


@dataclass
class Calibration:
    """The theory's parameters as measured on the sweep, per variant."""

    task: str  # the accuracy map in use
    variants: dict[tuple[str, float], VariantCalibration]
    oracle_concordance: dict[float, float]  # eta -> concordance of the difficulty score with the levels
    reference: str  # what the gate compares with: "untouched student" or "chance (error 0.5)"
    notes: list[str]
    # eta -> concordance of a separate oracle (pool.oracle) with its reference difficulty, and the audit as text
    oracle_reference: dict[float, float] = field(default_factory=dict)
    oracle_audit: str | None = None

    @property
    def trace_accuracy(self) -> dict[tuple[str, float], float]:
        """variant -> the pool's trace accuracy (times 1 - eps), where known."""
        return {v: c.trace_accuracy for v, c in self.variants.items() if c.trace_accuracy is not None}


def _variant_fields(meas: Measurements, variant, manifest_entry: dict) -> dict[str, float]:
    """Median over the variant's trials of each linear-world field they carry, else the pool manifest's ``linear``
    block (the geometry a linear world set for this generator)."""
    out = {}
    for name in ("rho", "rho_star", "rho_g", "lam", "d"):
        values = [c.trial_mean(name) for k, c in meas.cells.items() if k[:2] == variant]
        values = [v for v in values if not math.isnan(v)]
        if values:
            out[name] = float(np.median(values))
    world = manifest_entry.get("linear") or {}
    for name, key in (("rho", "rho"), ("rho_star", "rho_star"), ("rho_g", "rho_g"), ("d", "dim")):
        if name not in out and world.get(key) is not None:
            out[name] = float(world[key])
    return out


def calibrate(meas: Measurements, manifest, cfg, samples_of, reference_correct=None) -> Calibration:
    """Per variant: rho, rho*, rho_g (see the module docstring), d_eff and lambda from the random learning curve,
    and the regime gate against ``reference_correct`` (the untouched student's verdict per problem; None: chance)."""
    rs = cfg.report
    notes: list[str] = []
    task = rs.task
    if meas.exact and task != "binary":
        task = "binary"
        notes.append("the trials carry exact test errors (a linear world): errors and accuracies use the binary map, "
                     f"not report.task = {rs.task}")
    etas = sorted({k[5] for k in meas.cells} | {0.0})
    concordance: dict[float, float] = {}
    gens = manifest.get("generators", {})
    reference, audit = oracle_reference(manifest, samples_of, etas, cfg.grid.seeds[0])
    if rs.oracle_accuracy is None and gens and not meas.exact and not reference:
        best = max(gens, key=lambda g: gens[g].get("trace_accuracy") or 0.0)
        samples = samples_of(best)
        if samples is not None and "level" in samples and samples["level"].notna().any():
            concordance = {eta: oracle_accuracy(samples, eta, cfg.grid.seeds[0]) for eta in etas}
    variants = {}
    for variant in meas.variants():
        fields = _variant_fields(meas, variant, gens.get(variant[0], {}))
        acc = gens.get(variant[0], {}).get("trace_accuracy")
        acc = None if acc is None else float(acc) * (1.0 - variant[1])
        maps = {m: rho_from_accuracy(acc, m) for m in ("open_ended", "binary")} if acc is not None else {}
        if "rho" in fields:
            rho, rho_source = fields["rho"], "the trial results (set by the world)"
        elif acc is not None:
            rho, rho_source = maps[task], f"trace accuracy {acc:.3f} under the {task} map"
        else:
            continue
        if "rho_g" in fields:
            rho_g, g_source = fields["rho_g"], "the trial results (set by the world)"
        elif reference and rs.rho_g is None:  # a separate oracle: rho* measured, errors independent of rho's
            c = reference.get(0.0, float("nan"))
            raw = math.cos(math.pi * (1 - max(c, 0.5)))
            rho_g, g_source = rho * raw, "rho * rho*: the oracle (pool.oracle) is not the generator, errors taken as independent"
        elif rs.rho_g is not None:
            rho_g, g_source = rs.rho_g, "report.rho_g"
        else:
            rho_g, g_source = 1.0, "difficulty is the generator's own pass rate: the oracle is the generator"
        if "rho_star" in fields:
            raw, s_source = fields["rho_star"], "the trial results (set by the world)"
        elif reference and rs.oracle_accuracy is None:
            raw = math.cos(math.pi * (1 - max(reference.get(0.0, float("nan")), 0.5)))
            s_source = (f"concordance {reference.get(0.0, float('nan')):.3f} of the oracle's score with the reference "
                        f"difficulty ({audit}), as cos(pi (1 - c))")
        elif rho_g >= 1.0 - 1e-9:
            raw, s_source = rho, "= rho: the oracle is the generator"
        elif rs.oracle_accuracy is not None:
            raw, s_source = math.cos(math.pi * (1 - rs.oracle_accuracy)), "report.oracle_accuracy"
        elif 0.0 in concordance:
            raw, s_source = math.cos(math.pi * (1 - max(concordance[0.0], 0.5))), "level concordance"
        else:
            raw, s_source = rho * rho_g, "rho * rho_g (nothing measured it: errors taken as orthogonal)"
        rho_star = feasible_rho_star(rho, rho_g, raw)
        if abs(rho_star - raw) > 1e-6:
            s_source += f" ({raw:.3f}, clipped to what rho and rho_g allow)"
        vc = VariantCalibration(variant, acc, rho, maps, rho_source, rho_star, s_source, rho_g, g_source)
        if "rho" in fields:  # a linear world: measure the geometry on the pool rather than trust the config
            measured = measured_geometry(samples_of(variant[0]))
            if measured is not None:
                vc.configured = {"rho": vc.rho, "rho_star": vc.rho_star, "rho_g": vc.rho_g}
                vc.rho = measured["rho"]
                vc.rho_g = measured["rho_g"]
                vc.rho_star = feasible_rho_star(vc.rho, vc.rho_g, measured["rho_star"])
                how = f"measured on the pool ({measured['problems']} problems: cos(pi * disagreement))"
                vc.rho_source = vc.rho_star_source = vc.rho_g_source = how
        vc.world_dim = fields.get("d")
        # A linear world's oracle answers its problems, so the verifier agrees with the oracle; the toy world's
        # verifier checks the reference answer, the truth.
        vc.verifier = "oracle" if "rho_star" in fields else "truth"
        _fit_dimension(meas, vc, task, fields.get("lam"), rs.lam)
        if vc.dim is None and vc.world_dim is not None:
            vc.dim, vc.dim_source = vc.world_dim, "d set by the world (no learning curve to fit it on)"
        vc.gate = _gate(meas, variant, reference_correct)
        variants[variant] = vc
    _share_dimension(variants, notes)
    chance = reference_correct is None or meas.exact
    reference_name = "chance (error 0.5)" if chance else "the untouched student"
    if chance:
        notes.append("the regime gate compares training on everything at the largest pool with chance (error 0.5): "
                     + ("the trials carry exact errors (a linear world), whose untrained student is chance"
                        if meas.exact else "no untouched student was evaluated"))
    return Calibration(task, variants, concordance, reference_name, notes, reference, audit)


def measured_geometry(samples) -> dict[str, float] | None:
    """A linear world's cosines measured on its pool, independently of what the config set. With Gaussian features
    two sign classifiers disagree on a fraction angle / pi of the problems, so cos(pi * disagreement) estimates each
    cosine: rho (generator vs the truth w*), rho_star (the oracle's answers vs the truth), rho_g (generator vs oracle).
    None when the pool is not a linear world's."""
    from pipeline import columns as C
    from pipeline import linearworld as lw

    if samples is None or not len(samples):
        return None
    first = samples.drop_duplicates(C.PROBLEM_ID)  # one completion per problem (sample 0: the rows are sorted)
    try:
        matrix = lw.features(first[C.PROBLEM].tolist())
        generator = lw.completion_labels(first[C.COMPLETION].tolist())
    except lw.LinearWorldError:
        return None
    truth = np.where(matrix @ lw.basis(matrix.shape[1])[0] >= 0, 1.0, -1.0)
    oracle = np.array([1.0 if str(a).strip() == "1" else -1.0 for a in first[C.ANSWER]])

    def cos_of(a, b) -> float:
        return float(math.cos(math.pi * float(np.mean(a != b))))

    return {"rho": cos_of(generator, truth), "rho_star": cos_of(oracle, truth), "rho_g": cos_of(generator, oracle),
            "problems": int(len(first))}


def _curve_points(meas: Measurements, variant, task: str):
    """The random learning curve: (n, p, kept, theory error, half-width) per random/all cell at eta = 0."""
    points = []
    for key, cell in meas.cells.items():
        if key[:2] != variant or key[3] not in ("random", "all") or key[5] != 0.0:
            continue
        kept = cell.trial_mean("kept_problems")
        kept = key[2] * key[4] if math.isnan(kept) else kept
        err, lo, hi = meas.error(key)
        if kept > 0 and not math.isnan(err):
            points.append((key[2], key[4], kept, float(to_theory(err, task)), float(to_theory((hi - lo) / 2, task))))
    return sorted(points, key=lambda t: t[2])


def fit_dimension(ns, ps, errors, rho: float, lam: float) -> tuple[float, np.ndarray]:
    """Least-squares d_eff (over log d in [1, 1e8]) of the theory's random-subset error at pool n, keep fraction p
    against the measured theory-unit errors; returns (d_eff, predicted errors)."""
    from scipy import optimize

    from pipeline.theory import model as theory

    ns, ps, errors = (np.asarray(v, dtype=float) for v in (ns, ps, errors))

    def predicted(log_dim):
        return theory.asymptotic_error_array(np.exp(log_dim) / ns, rho, 0.0, 0.0, "random", ps, lam)

    def loss(log_dim):
        value = float(np.sum((predicted(log_dim) - errors) ** 2))
        return value if math.isfinite(value) else math.inf  # the formula has no value at extreme n/d: never the fit

    coarse = np.linspace(0.0, np.log(1e8), 200)
    start = coarse[int(np.argmin([loss(x) for x in coarse]))]
    step = coarse[1] - coarse[0]
    best = optimize.minimize_scalar(loss, bounds=(max(0.0, start - step), start + step), method="bounded").x
    return float(np.exp(best)), predicted(best)


def _fit_dimension(meas: Measurements, vc: VariantCalibration, task: str, world_lam, fallback_lam: float) -> None:
    """Fit d_eff (and lambda unless the world set it) on the variant's random learning curve."""
    from pipeline.theory import model as theory

    vc.lam = world_lam if world_lam is not None else fallback_lam
    points = _curve_points(meas, vc.variant, task)
    vc.curve = [(p[2], p[3]) for p in points]
    sizes = sorted({round(p[2]) for p in points})
    if len(sizes) < MIN_CURVE_SIZES:
        vc.notes.append(f"the random learning curve has {len(sizes)} training-set size(s) {sizes}; d_eff needs "
                        f"{MIN_CURVE_SIZES} or more (random at several p, or more pool sizes)")
        return
    ns, ps, kept, ys, halves = (np.array(col, dtype=float) for col in zip(*points))
    best = None
    for lam in ((world_lam,) if world_lam is not None else LAMBDAS):
        dim, predicted = fit_dimension(ns, ps, ys, vc.rho, lam)
        sse = float(np.sum((predicted - ys) ** 2))
        if best is None or sse < best[0]:
            best = (sse, dim, lam, predicted)
    _, dim, lam, predicted = best
    floor = float(np.arccos(vc.rho) / np.pi)
    last = float(theory.asymptotic_error(dim / kept.max(), vc.rho, 0.0, 0.0, "all", 1.0, lam))
    above = (last - floor) / last if last > 0 else 0.0
    # A systematic miss rejects the fit (a constant offset: a damaged student), not one point near kept = d, where
    # a single pool draw strays furthest from the theory.
    scale = np.maximum(halves, meas.resolution if meas.exact else 0.0)
    systematic = float(np.median(np.abs(predicted - ys))) > 2 * float(np.median(scale))
    vc.dim, vc.lam = dim, lam
    vc.dim_source = ("fitted on the random learning curve" +
                     (" (lambda set by the world)" if world_lam is not None else ", lambda fitted with it"))
    vc.fit = {"points": [(float(x), float(y)) for x, y in zip(kept, ys)], "sizes": sizes,
              "rmse": float(np.sqrt(np.mean((predicted - ys) ** 2))), "max_miss": float(np.max(np.abs(predicted - ys))),
              "median_miss": float(np.median(np.abs(predicted - ys))),
              "fit_ok": not systematic, "floor": floor, "flattened": bool(above <= FLAT_WITHIN),
              "above_asymptote": float(above), "below_floor": int(np.sum(ys + halves < floor))}
    if world_lam is None and lam in (LAMBDAS[0], LAMBDAS[-1]):
        tried = ", ".join(f"{x:g}" for x in LAMBDAS)
        vc.notes.append(f"lambda was fitted at the edge of the values tried ({lam:g} of {tried}): "
                        "the theory's ridge fits this learning curve only at an extreme penalty, so its predictions "
                        "away from the curve (small p, other rules) are an extrapolation")
    if not vc.fit["flattened"]:
        vc.notes.append(f"the learning curve has not flattened: at its largest size the fitted theory is "
                        f"{100 * above:.0f}% above its asymptote ({floor:.3f}); n/d_eff is identified less well")
    if vc.fit["below_floor"]:
        vc.notes.append(f"{vc.fit['below_floor']} point(s) of the learning curve lie below the generator's own "
                        "error, which the theory's learner cannot reach: the student starts from its own knowledge")


def _share_dimension(variants: dict, notes: list[str]) -> None:
    """d_eff belongs to the student and the task, not the generator: a variant without a fit borrows the best fit."""
    fitted = [v for v in variants.values() if v.dim is not None and v.fit and v.fit["fit_ok"]]
    if not fitted or all(v.dim is not None for v in variants.values()):
        return
    donor = max(fitted, key=lambda v: (len(v.fit["sizes"]), -v.fit["rmse"]))
    for vc in variants.values():
        if vc.dim is None:
            vc.dim, vc.lam = donor.dim, donor.lam
            vc.dim_source = f"borrowed from {variant_label(donor.variant)}'s learning curve"
    notes.append(f"d_eff {donor.dim:.1f} and lambda {donor.lam:g} from {variant_label(donor.variant)} serve every "
                 "generator without a learning curve of its own")


def _gate(meas: Measurements, variant, reference_correct) -> dict[str, Any]:
    """The regime gate: ``all`` at the largest pool against the untouched student (paired) or chance."""
    sizes = [k[2] for k in meas.cells if k[:2] == variant and k[3] == "all" and k[5] == 0.0]
    if not sizes:
        return {"outcome": "gate unknown", "reason": "no `all` cell (p = 1) to check that training helps"}
    key = (variant[0], variant[1], max(sizes), "all", 1.0, 0.0)
    p1 = meas.error(key)
    gate: dict[str, Any] = {"pool_size": key[2], "rule": "all", "p1_error": list(p1)}
    if reference_correct is not None and meas.cells[key].exact is None:
        diff = meas.versus(key, reference_correct)
        acc = bootstrap_mean(np.asarray(reference_correct, dtype=float)[None, :], meas.resamples, meas.confidence,
                             named_rng("untouched student"))
        student = (1.0 - acc[0], 1.0 - acc[2], 1.0 - acc[1])
        gate.update(reference="untouched student", reference_error=list(student), difference=list(diff))
        ok = diff[2] < 0
        gate["reason"] = (f"all at n = {key[2]}: error {fmt_ci(p1)} against the untouched student's "
                          f"{fmt_ci(student)} (paired difference {fmt_ci(diff, True)})")
    else:
        gate.update(reference="chance", reference_error=[0.5, 0.5, 0.5],
                    difference=[p1[0] - 0.5, p1[1] - 0.5, p1[2] - 0.5])
        ok = p1[2] < 0.5
        gate["reason"] = f"all at n = {key[2]}: error {fmt_ci(p1)} against chance (0.5)"
    gate["outcome"] = "in regime" if ok else "not in regime"
    if not ok:
        gate["reason"] += ": training on everything does not help beyond the interval"
    return gate


def quality_order(meas: Measurements, cal: Calibration) -> list[tuple[str, float]]:
    """The measured (generator, eps) variants, weakest first (by rho, then trace accuracy)."""
    def quality(v):
        vc = cal.variants.get(v)
        return (vc.rho, vc.trace_accuracy or 0.0) if vc else (-1.0, 0.0)
    return sorted(meas.variants(), key=quality)


def variant_label(variant, cal: Calibration | None = None) -> str:
    """A (generator, eps) variant as text, with its trace accuracy (or rho) when ``cal`` is given."""
    gen, eps = variant
    label = gen if not eps else f"{gen} eps={eps:g}"
    vc = cal.variants.get(tuple(variant)) if cal is not None else None
    if vc is not None:
        label += f" (acc {vc.trace_accuracy:.2f})" if vc.trace_accuracy is not None else f" (rho {vc.rho:.3f})"
    return label


def calibration_json(cal: Calibration, meas: Measurements) -> dict[str, Any]:
    """``calibration.json``: per generator the theory's parameters, their sources, the fit and the gate."""
    out: dict[str, Any] = {"task": cal.task, "gate_reference": cal.reference, "notes": cal.notes,
                           "oracle_concordance_with_levels": {f"{k:g}": v for k, v in cal.oracle_concordance.items()},
                           "oracle_concordance_with_reference": {f"{k:g}": v for k, v in cal.oracle_reference.items()},
                           "oracle_rho_star_by_eta": {f"{k:g}": math.cos(math.pi * (1 - max(v, 0.5)))
                                                      for k, v in cal.oracle_reference.items()},
                           "oracle_audit": cal.oracle_audit,
                           "generators": {}}
    for variant, vc in cal.variants.items():
        out["generators"][variant_label(variant)] = {
            "generator": variant[0], "generator_noise": variant[1], "trace_accuracy": vc.trace_accuracy,
            "rho": vc.rho, "rho_map": cal.task, "rho_by_map": vc.rho_maps, "rho_source": vc.rho_source,
            "rho_star": vc.rho_star, "rho_star_source": vc.rho_star_source,
            "rho_g": vc.rho_g, "rho_g_source": vc.rho_g_source,
            "verifier": {"oracle": "the oracle (a linear world's problems are answered by its oracle)",
                         "truth": "the reference answer (the truth)"}[vc.verifier],
            "oracle_noise_model": "a fraction eta of the difficulty scores replaced by uniform random ones (as the "
                                  "curate stage does), integrated over the kept set; rho* and rho_g stay the clean "
                                  "oracle's",
            "configured": vc.configured,
            "d_eff": vc.dim, "lam": vc.lam, "d_eff_source": vc.dim_source, "world_d": vc.world_dim,
            "learning_curve": vc.fit, "gate": vc.gate, "usable": vc.unusable() is None,
            "not_usable_because": vc.unusable(), "notes": vc.notes,
        }
    return out

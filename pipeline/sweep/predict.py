"""The calibrated theory at the sweep's cells: the predicted error of every cell in the measured units, the theory's
keep fraction of a pipeline cell, and the predicted phase map behind the overlay figure.

Label-agnostic rules (``all``, ``random``, ``keep_hard``, ``keep_easy``) are the theory's own
(``pipeline.theory.asymptotic_error``). The pipeline's label-aware rules are not quite: they keep p * n problems
*after* the correctness filter, where the theory's p is the fraction kept before it, and their filter is whatever
the verifier checks: the reference answer, which is the truth in the toy world (while difficulty is the generator's
pass rate) and the oracle's label in a linear world (whose problems the oracle answers). Their prediction
(:func:`verified_error`) evaluates theory.md §2.3 (the ridge fit profiled onto a low-dimensional subspace, any keep
rule) in the three directions (w*, w_g, w_o), with the kept-example moments integrated numerically on a fixed
quasi-random Gaussian sample, so every report gives the same numbers.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from pipeline.sweep.calibrate import Calibration, from_theory

# pipeline rule -> (theory rule, label-aware: behind the correctness filter)
THEORY_RULES = {
    "all": ("all", False), "random": ("random", False), "keep_hard": ("keep_hard", False),
    "keep_easy": ("keep_easy", False), "correct_only": ("all", True), "random_correct": ("random", True),
    "keep_hard_correct": ("keep_hard", True), "keep_easy_correct": ("keep_easy", True),
    # Ranked within each level: the theory's keep-hard / keep-easy within one skill (its learner has one).
    "keep_hard_stratified": ("keep_hard", False), "keep_easy_stratified": ("keep_easy", False),
    "keep_hard_stratified_correct": ("keep_hard", True), "keep_easy_stratified_correct": ("keep_easy", True),
}
N_OVER_D_SCAN = tuple(float(x) for x in np.geomspace(0.5, 1000.0, 40))  # where "anywhere" looks without a d_eff


@functools.lru_cache(maxsize=1)
def _points() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """2^17 scrambled-Sobol points (fixed seed: the same integrals on every run): N(0, I_3) coordinates, and two
    uniforms for oracle noise (whether a point's score is replaced, and by what)."""
    from scipy.special import ndtri
    from scipy.stats import qmc

    u = qmc.Sobol(d=5, scramble=True, seed=20240611).random_base2(17)
    return ndtri(np.clip(u[:, :3], 1e-12, 1 - 1e-12)), u[:, 3], u[:, 4]


@functools.lru_cache(maxsize=4096)
def _moments(rho: float, rho_star: float, rho_g: float, rule: str, fraction: float, filter_by: str | None,
             budget: str, eta: float = 0.0):
    """Kept-example moments in the (w*, w_g, w_o) coordinates: (kept, Sigma, c, w*, theory p)."""
    from scipy.special import ndtr

    gram = np.array([[1.0, rho, rho_star], [rho, 1.0, rho_g], [rho_star, rho_g, 1.0]])
    vals, vecs = np.linalg.eigh(gram)
    frame = vecs * np.sqrt(np.clip(vals, 0.0, None))  # rows: w*, w_g, w_o in an orthonormal basis
    z, hit, noise = _points()
    t = z @ frame.T
    # The difficulty score as the curate stage sees it: the oracle margin's quantile (uniform, small = hard), with
    # a fraction eta of the scores replaced by uniform random numbers (stages.curate.oracle_noise).
    score = np.where(hit < eta, noise, 2.0 * ndtr(np.abs(t[:, 2])) - 1.0)
    y = np.where(t[:, 1] >= 0, 1.0, -1.0)
    if filter_by is None:
        accept = np.ones(len(z), bool)
    else:
        other = t[:, 0] if filter_by == "truth" else t[:, 2]
        accept = y == np.where(other >= 0, 1.0, -1.0)
    weight = accept.astype(float)
    p_theory = 1.0
    if rule in ("keep_hard", "keep_easy"):
        order = np.argsort(score * (1.0 if rule == "keep_hard" else -1.0), kind="stable")
        if budget == "after":  # the pipeline: the first fraction * N *accepted* examples in difficulty order
            cum = np.cumsum(accept[order])
            want = fraction * len(z)
            cut = int(np.searchsorted(cum, want)) + 1 if cum[-1] > want else len(z)
        else:  # the theory: the first fraction * N examples, then the filter
            cut = int(round(fraction * len(z)))
        chosen = np.zeros(len(z), bool)
        chosen[order[:cut]] = True
        weight = weight * chosen
        p_theory = cut / len(z)
    elif rule == "random":
        # The pipeline's budget after the filter takes fraction * N of the accepted examples at random.
        share = min(1.0, fraction / max(weight.mean(), 1e-12)) if budget == "after" and filter_by else fraction
        weight = weight * share
        p_theory = share
    weight = weight / len(z)
    sigma = (z * weight[:, None]).T @ z
    c = z.T @ (weight * y)
    return float(weight.sum()), sigma, c, frame[0], p_theory


def _profiled_error(phi, lam: float, moments) -> np.ndarray:
    """theory.md §2.3: the ridge fit in the low-dimensional span plus the bulk it leaks into (vectorised over phi)."""
    from pipeline.theory import model as theory

    kept, sigma, c, target, _ = moments
    phi = np.atleast_1d(np.asarray(phi, dtype=float))
    if kept <= 1e-12:
        return np.full(phi.shape, 0.5)
    m, dm = theory.deformed_mp(phi, kept, lam)
    out = np.empty(phi.shape)
    for i, (ph, mi, dmi) in enumerate(zip(phi, m, dm)):
        kappa = 1.0 / (1.0 + ph * mi)
        a = kappa * np.linalg.solve(kappa * sigma + lam * np.eye(3), c)
        residual = kept - 2.0 * a @ c + a @ sigma @ a
        bulk = max(residual, 0.0) * ph / kept * (mi - lam * dmi)
        norm2 = a @ a + bulk
        if not norm2 > 0:  # outside where the profiled formula holds (nothing learned): no prediction, not a crash
            out[i] = math.nan
            continue
        cos = (a @ target) / math.sqrt(norm2)
        out[i] = math.acos(min(max(cos, -1.0), 1.0)) / math.pi
    return out


def verified_error(phi, rho, rho_star, rho_g, rule, fraction, lam, filter_by="truth", budget="after", eta=0.0):
    """Predicted test error (theory units) of a rule whose correctness filter is ``filter_by`` (``truth``: the
    reference answer; ``oracle``: the oracle's label, the theory's label-aware rule; None: no filter), whose budget
    keeps ``fraction`` of the pool ``after`` the filter (the pipeline) or ``before`` it (the theory's p), under
    oracle noise ``eta``. Vectorised over phi = d / n. Returns (errors, the theory's keep fraction before the
    filter)."""
    moments = _moments(round(float(rho), 9), round(float(rho_star), 9), round(float(rho_g), 9), rule,
                       round(float(fraction), 9), filter_by, budget, round(float(eta), 9))
    return _profiled_error(phi, lam, moments), moments[4]


class Predictor:
    """The calibrated theory, per variant, at any (n, rule, p, eta): errors in the measured units."""

    def __init__(self, cal: Calibration) -> None:
        self.cal = cal

    def theory_errors(self, variant, n_over_d, rule: str, p: float, eta: float = 0.0, lam: float | None = None):
        """Predicted errors in theory units over an array of n/d; NaN where the variant is not calibrated or the
        rule has no theory counterpart."""
        from pipeline.theory import model as theory

        vc = self.cal.variants.get(tuple(variant))
        phi = 1.0 / np.atleast_1d(np.asarray(n_over_d, dtype=float))
        if vc is None or rule not in THEORY_RULES:
            return np.full(phi.shape, np.nan)
        lam = lam if lam is not None else vc.lam
        rho, rho_star, rho_g = vc.geometry(eta)
        base, aware = THEORY_RULES[rule]
        p = 1.0 if base == "all" else float(p)
        eta = eta if base in ("keep_hard", "keep_easy") else 0.0  # only rules that rank see the noise
        if not aware and eta == 0:
            return np.atleast_1d(theory.asymptotic_error_array(phi, rho, rho_star, rho_g, base, p, lam))
        if not aware:
            return verified_error(phi, rho, rho_star, rho_g, base, p, lam, None, "before", eta)[0]
        return verified_error(phi, rho, rho_star, rho_g, base, p, lam, vc.verifier, "after", eta)[0]

    def error(self, variant, n: int, rule: str, p: float, eta: float = 0.0, lam: float | None = None) -> float:
        """Predicted error of a cell in the measured units (NaN without a calibrated d_eff)."""
        vc = self.cal.variants.get(tuple(variant))
        if vc is None or vc.dim is None:
            return float("nan")
        return float(from_theory(self.theory_errors(variant, n / vc.dim, rule, p, eta, lam)[0], self.cal.task))

    def key_error(self, key: tuple, lam: float | None = None) -> float:
        """Predicted error of a cell key (generator, eps, n, rule, p, eta) in the measured units."""
        return self.error(key[:2], key[2], key[3], key[4], key[5], lam)

    def p_theory(self, variant, rule: str, p: float, eta: float = 0.0) -> float:
        """The theory's keep fraction of a pipeline cell: p itself for label-agnostic rules; for label-aware ones
        the fraction kept by difficulty before the correctness filter that leaves p * n problems after it."""
        vc = self.cal.variants.get(tuple(variant))
        if rule not in THEORY_RULES:
            return float("nan")
        base, aware = THEORY_RULES[rule]
        if base == "all":
            return 1.0
        if not aware or vc is None:
            return float(p) if not aware else float("nan")
        rho, rho_star, rho_g = vc.geometry(eta)
        eta = eta if base in ("keep_hard", "keep_easy") else 0.0
        return float(verified_error([1.0], rho, rho_star, rho_g, base, p, vc.lam, vc.verifier, "after", eta)[1])

    def largest_gain(self, variant, rule: str, ps, eta: float = 0.0) -> tuple[float, float, float]:
        """Without a d_eff: the largest predicted E(1) - E(best p < 1) over n/d in N_OVER_D_SCAN, in measured units,
        with the n/d and p where it occurs."""
        ratios = []
        for p in ps:
            base = self.theory_errors(variant, N_OVER_D_SCAN, family_all(rule), 1.0, eta)
            ratios.append(base - self.theory_errors(variant, N_OVER_D_SCAN, rule, p, eta))
        gains = from_theory(np.array(ratios), self.cal.task)
        if not np.isfinite(gains).any():
            return float("nan"), float("nan"), float("nan")
        i, j = np.unravel_index(int(np.nanargmax(gains)), gains.shape)
        return float(gains[i, j]), float(N_OVER_D_SCAN[j]), float(ps[i])


def family_all(rule: str) -> str:
    """The p = 1 rule of a rule's family (``correct_only`` for label-aware rules, ``all`` otherwise)."""
    return "correct_only" if THEORY_RULES.get(rule, ("", False))[1] else "all"


@dataclass
class Overlay:
    """The calibrated theory's keep-hard map over (pool size, rho) for the overlay figure."""

    pool_sizes: np.ndarray
    rho: np.ndarray
    ratio: np.ndarray  # E(best p)/E(1)
    ratio_vs_baseline: np.ndarray  # E(best p) / min(E(1), E(best random))
    best_p: np.ndarray
    dim: float
    lam: float
    oracle: str


def overlay(cal: Calibration, sizes) -> Overlay | None:
    """keep_hard's predicted map around the measured generators and sizes, at the strongest calibrated variant's
    d_eff, lambda and oracle (the oracle is the generator when rho_g = 1, else at its rho* with orthogonal errors)."""
    from pipeline.theory import model as theory

    usable = [vc for vc in cal.variants.values() if vc.dim is not None]
    if not usable or not len(sizes):
        return None
    ref = max(usable, key=lambda vc: vc.rho)
    rhos = [vc.rho for vc in usable]
    span = max(max(rhos) - min(rhos), 0.05)
    rows = np.linspace(max(0.05, min(rhos) - 0.5 * span), min(1.0, max(rhos) + 0.5 * span), 30)
    pool = np.geomspace(min(sizes) / 2, max(sizes) * 2, 30)
    same = ref.rho_g >= 1 - 1e-9
    ratio, vs_base, best = (np.full((len(rows), len(pool)), np.nan) for _ in range(3))
    for i, rho in enumerate(rows):
        rho_star = rho if same else ref.rho_star
        rho_g = 1.0 if same else rho * rho_star
        grid = theory.phase_grid(rho_star=rho_star, lam=ref.lam, n_over_d=pool / ref.dim, rho=[rho], rho_g=[rho_g],
                                 rules=("keep_hard", "random"))
        ratio[i], best[i] = grid.ratio["keep_hard"][0], grid.best_p["keep_hard"][0]
        vs_base[i] = grid.best_error["keep_hard"][0] / np.minimum(grid.full_error[0], grid.best_error["random"][0])
    oracle = "the generator (rho_g = 1)" if same else f"rho* {ref.rho_star:.3f}, errors orthogonal"
    return Overlay(pool, rows, ratio, vs_base, best, ref.dim, ref.lam, oracle)

"""Tests of the curation theory (pipeline/theory/model.py) against Monte-Carlo simulation and against theory.md.

Simulation is the ground truth. Formulas from theory.md are transcribed here verbatim (independently of the module)
so that every place where they and the simulation part ways is recorded by a test that fails if it changes.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os

import numpy as np
import pytest
from scipy import special

from pipeline import theory
from pipeline.cli import build_parser

# Simulation runs are many small BLAS calls; multi-threaded BLAS on a busy machine makes each of them up to 100x
# slower, so the large Monte-Carlo batches run in fresh single-threaded worker processes.
_SINGLE_THREAD_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run_many(function, tasks, monkeypatch):
    """``function(*task)`` for every task, in up to two single-threaded worker processes."""
    for name, value in _SINGLE_THREAD_ENV.items():
        monkeypatch.setenv(name, value)  # inherited by the spawned workers before they import numpy
    workers = max(1, min(2, os.cpu_count() or 1))
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return np.array(pool.starmap(function, tasks, chunksize=16))


def _mean_simulated(n, d, rho, rho_star, rho_g, rule, p, lam, label_aware=False, seeds=8):
    runs = [theory.simulate_error(n, d, rho, rho_star, rho_g, rule, p, lam, label_aware, seed=s) for s in range(seeds)]
    return float(np.mean(runs)), float(np.std(runs, ddof=1) / np.sqrt(seeds))


# ---------------------------------------------------------------------------------------------------------------
# theory.md transcriptions (kept independent of the module on purpose)
# ---------------------------------------------------------------------------------------------------------------


def phi(t):
    """Standard normal density, named as in theory.md."""
    return np.exp(-t * t / 2) / np.sqrt(2 * np.pi)


def _theory_md_constants(rule, alpha, rho_g):
    """theory.md §2.1 closed forms (DP Lemmas 1-2): p, gamma, beta, beta_tilde for keep-hard / keep-easy."""
    Phi = special.ndtr  # noqa: N806 (names follow theory.md)
    tau = rho_g / np.sqrt(1 - rho_g**2)
    eps2 = 2 * Phi(tau * alpha) - 1
    if rule == "keep_hard":
        p = 2 * Phi(alpha) - 1
        eps1 = 2 * Phi(alpha / np.sqrt(1 - rho_g**2)) - 1
        beta_tilde = 2 * (rho_g * phi(0) * eps1 - phi(alpha) * eps2)
        gamma = p - 2 * alpha * phi(alpha)
    else:
        p = 2 * (1 - Phi(alpha))
        eps1 = 2 * (1 - Phi(alpha / np.sqrt(1 - rho_g**2)))
        beta_tilde = 2 * (rho_g * phi(0) * eps1 + phi(alpha) * eps2)
        gamma = p + 2 * alpha * phi(alpha)
    beta = 2 * phi(0) * np.sqrt(1 - rho_g**2) * eps1
    return p, gamma, beta, beta_tilde


def _theory_md_theorem1(phi, rho, rho_star, rho_g, moments, lam, absolute=True, printed_r=False):
    """theory.md §2.2 (Theorem 1) for a label-agnostic rule given its constants; optionally DP's printed r."""
    p, gamma, beta_tilde, beta = moments.kept, moments.sigma11, moments.c1, moments.c2
    z = -lam
    m = (p - phi - z - np.sqrt((p - phi - z) ** 2 - 4 * phi * z)) / (2 * phi * z)
    dm = (phi * m**2 + m) / ((p - phi - z) - 2 * phi * z * m)
    s = gamma / (1 + phi * m)
    mt = 1 / (s - z)
    ds = -gamma * phi * dm / (1 + phi * m) ** 2
    dmt = (1 - ds) * mt**2
    omega_t = rho_star * beta_tilde
    omega = beta * (rho - rho_g * rho_star) / np.sqrt(1 - rho_g**2)
    if printed_r:
        r, dr = omega**2 * m + omega_t**2 * mt, omega**2 * dm + omega_t**2 * dmt
    else:
        r, dr = beta**2 * m + beta_tilde**2 * mt, beta**2 * dm + beta_tilde**2 * dmt
    m0 = omega * m + omega_t * mt
    nu0 = p * phi * dm + dr - 2 * phi * dm * r / (1 + phi * m)
    cosine = np.abs(m0) / np.sqrt(nu0) if absolute else m0 / np.sqrt(nu0)
    return float(np.arccos(np.clip(cosine, -1, 1)) / np.pi)


def _theory_md_ridgeless(phi, rho, rho_star, rho_g, moments):
    """theory.md §2.4 (DP Corollary 1), ridgeless limit, label-agnostic."""
    p, gamma, beta_tilde, beta = moments.kept, moments.sigma11, moments.c1, moments.c2
    omega_t = rho_star * beta_tilde
    omega = beta * (rho - rho_g * rho_star) / np.sqrt(1 - rho_g**2)
    if phi < p:
        a = (omega + omega_t * p / gamma) / (p - phi)
        r0 = beta**2 + beta_tilde**2 * p / gamma
        r0_prime = p * (beta**2 + beta_tilde**2 * ((p - phi) * p / gamma**2 + phi / gamma))
        b = (p**2 * phi + r0_prime - 2 * phi * r0) / (p - phi) ** 3
    else:
        c0, c1 = 1 - p / phi, 1 - (p - gamma) / phi
        a = (omega + omega_t / c1) * c0
        b = (p * phi - (beta**2 + beta_tilde**2 / c1)) * c0
    return float(np.arccos(np.clip(abs(a) / np.sqrt(b), -1, 1)) / np.pi)


def _theory_md_sim(n, d, rho, rs, rg, rule, alpha, lam, aware=False, seed=0):
    """theory.md §2.7 Monte-Carlo recipe, verbatim: full n x d design, random rotation of the three vectors."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, 3)))  # noqa: N806
    e1, e2, e3 = Q.T
    s = np.sqrt(1 - rg**2)
    a2 = (rho - rg * rs) / s
    w_o, w_g = e1, rg * e1 + s * e2
    w_s = rs * e1 + a2 * e2 + np.sqrt(max(0, 1 - rs**2 - a2**2)) * e3
    X = rng.standard_normal((n, d))  # noqa: N806
    y = np.sign(X @ w_g)
    z = X @ w_o
    keep = {"KH": abs(z) <= alpha, "KE": abs(z) >= alpha, "all": np.ones(n, bool)}[rule]
    if aware:
        keep &= y == np.sign(z)
    Xk, yk = X[keep], y[keep]  # noqa: N806
    w = np.linalg.solve(Xk.T @ Xk / n + lam * np.eye(d), Xk.T @ yk / n)
    return np.arccos(np.clip(w @ w_s / np.linalg.norm(w), -1, 1)) / np.pi


# ---------------------------------------------------------------------------------------------------------------
# Curation constants
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["keep_hard", "keep_easy"])
def test_keep_threshold_keeps_fraction_p(rule):
    p = np.array([0.02, 0.3, 0.7, 0.99])
    alpha = theory.keep_threshold(rule, p)
    kept = 2 * special.ndtr(alpha) - 1 if rule == "keep_hard" else 2 * (1 - special.ndtr(alpha))
    np.testing.assert_allclose(kept, p, rtol=1e-12)


@pytest.mark.parametrize("rule", ["keep_hard", "keep_easy"])
@pytest.mark.parametrize("rho_g", [0.3, 0.81, 0.99])
def test_label_agnostic_constants_equal_theory_md_closed_forms(rule, rho_g):
    for p in (0.05, 0.3, 0.8):
        expected = _theory_md_constants(rule, theory.keep_threshold(rule, p), rho_g)
        moments = theory.kept_moments(rule, p, rho_g)
        got = (moments.kept, moments.sigma11, moments.c2, moments.c1)
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
        assert moments.sigma12 == 0 and moments.sigma22 == pytest.approx(p)


@pytest.mark.parametrize("label_aware", [False, True])
@pytest.mark.parametrize("rho_g", [0.5, 0.95, 1.0])
def test_kept_moments_match_sampled_moments(label_aware, rho_g):
    rng = np.random.default_rng(0)
    size = 1_000_000
    u = rng.standard_normal((size, 2))
    labels = np.where(rho_g * u[:, 0] + np.sqrt(1 - rho_g**2) * u[:, 1] >= 0, 1.0, -1.0)
    for rule, p in [("keep_hard", 0.3), ("keep_easy", 0.4), ("random", 0.5), ("all", 1.0)]:
        if rule == "random":
            keep = rng.random(size) < p
        elif rule == "all":
            keep = np.ones(size, bool)
        else:
            alpha = theory.keep_threshold(rule, p)
            keep = np.abs(u[:, 0]) <= alpha if rule == "keep_hard" else np.abs(u[:, 0]) >= alpha
        if label_aware:
            keep &= labels == np.sign(u[:, 0])
        k = keep.astype(float)
        sampled = [
            k.mean(), (k * u[:, 0] ** 2).mean(), (k * u[:, 0] * u[:, 1]).mean(), (k * u[:, 1] ** 2).mean(),
            (k * labels * u[:, 0]).mean(), (k * labels * u[:, 1]).mean(),
        ]
        m = theory.kept_moments(rule, p, rho_g, label_aware)
        exact = [m.kept, m.sigma11, m.sigma12, m.sigma22, m.c1, m.c2]
        np.testing.assert_allclose(np.array(exact, float), sampled, atol=5e-3, err_msg=f"{rule} aware={label_aware}")


# ---------------------------------------------------------------------------------------------------------------
# Deterministic equivalent against simulation (the acceptance grid)
# ---------------------------------------------------------------------------------------------------------------

AGREEMENT_RULES = ["keep_hard", "keep_easy", "random"]
AGREEMENT_N_OVER_D = [0.5, 2.0, 10.0]
AGREEMENT_RHO = [0.7, 0.9, 1.0]
AGREEMENT_RHO_STAR = [0.9, 0.99]
AGREEMENT_P = [0.3, 0.7]
AGREEMENT_LAM = 1e-2
AGREEMENT_DIM = 400
AGREEMENT_SEEDS = 12


def test_asymptotic_error_matches_simulation_on_grid(monkeypatch):
    """Every grid point: |theory - mean of 12 simulations at d = 400| <= 0.01 or <= 5% of the simulated error.

    Measured: max abs 0.0085, max rel 3.2%. The per-seed spread reaches 0.02 near the interpolation peak
    (n/d = 2, p = 0.7), so the simulated means carry up to about 0.006 of Monte-Carlo error themselves; with
    4 seeds at d = 200 that error alone exceeds the tolerance at some points.
    """
    configs = list(
        itertools.product(
            AGREEMENT_RULES, [False, True], AGREEMENT_N_OVER_D, AGREEMENT_RHO, AGREEMENT_RHO_STAR, AGREEMENT_P
        )
    )
    tasks = [
        (int(n_over_d * AGREEMENT_DIM), AGREEMENT_DIM, rho, rho_star, rho * rho_star, rule, p, AGREEMENT_LAM, aware,
         seed)
        for rule, aware, n_over_d, rho, rho_star, p in configs
        for seed in range(AGREEMENT_SEEDS)
    ]
    simulated = _run_many(theory.simulate_error, tasks, monkeypatch).reshape(len(configs), AGREEMENT_SEEDS).mean(axis=1)
    predicted = np.array(
        [
            theory.asymptotic_error(1 / n_over_d, rho, rho_star, rho * rho_star, rule, p, AGREEMENT_LAM, aware)
            for rule, aware, n_over_d, rho, rho_star, p in configs
        ]
    )
    abs_err = np.abs(predicted - simulated)
    rel_err = abs_err / simulated
    print(f"\nagreement over {len(configs)} points: max abs {abs_err.max():.4f}, max rel {rel_err.max():.2%}")
    for rule, aware in itertools.product(AGREEMENT_RULES, [False, True]):
        group = [i for i, cfg in enumerate(configs) if cfg[:2] == (rule, aware)]
        label = theory.rule_label(rule, aware)
        print(f"  {label:<18} max abs {abs_err[group].max():.4f}  max rel {rel_err[group].max():.2%}")
    bad = [
        f"{cfg}: theory {t:.4f} vs simulation {s:.4f}"
        for cfg, t, s, a, r in zip(configs, predicted, simulated, abs_err, rel_err)
        if a > 0.01 and r > 0.05
    ]
    assert not bad, "\n".join(bad)


def test_simulator_matches_theory_md_recipe(monkeypatch):
    """The module's simulator (bulk Gram matrices drawn from their Wishart laws) matches the plain n x d recipe."""
    d, seeds, rho, rho_star, lam = 100, 24, 0.9, 0.95, 1e-2
    cases = [(10, "KH", "keep_hard", 0.3, False), (0.5, "KE", "keep_easy", 0.5, True),
             (2, "all", "all", 1.0, False), (1.0, "KH", "keep_hard", 0.5, True)]
    recipe_tasks, module_tasks = [], []
    for n_over_d, rule, name, p, aware in cases:
        n = int(n_over_d * d)
        alpha = float(theory.keep_threshold(name, p)) if rule != "all" else 0.0
        recipe_tasks += [(n, d, rho, rho_star, rho * rho_star, rule, alpha, lam, aware, s) for s in range(seeds)]
        module_tasks += [(n, d, rho, rho_star, rho * rho_star, name, p, lam, aware, 100 + s) for s in range(seeds)]
    recipe = _run_many(_theory_md_sim, recipe_tasks, monkeypatch).reshape(len(cases), seeds)
    module = _run_many(theory.simulate_error, module_tasks, monkeypatch).reshape(len(cases), seeds)
    spread = np.sqrt(recipe.var(axis=1, ddof=1) / seeds + module.var(axis=1, ddof=1) / seeds)
    gap = np.abs(recipe.mean(axis=1) - module.mean(axis=1))
    assert np.all(gap < 4 * spread + 1e-3), (gap, spread)


def test_theorem1_and_ridgeless_corollary_of_theory_md_equal_the_general_form():
    """theory.md §2.2 (with the corrected r) and §2.4 are the same function as §2.3 where the cosine is positive."""
    for rule, phi, rho, rho_star, p, lam in itertools.product(
        ["keep_hard", "keep_easy", "random"], [0.01, 0.5, 2.0], [1.0, 0.8], [0.9, 0.99], [0.1, 0.6], [1e-3, 0.1]
    ):
        rho_g = rho * rho_star
        moments = theory.kept_moments(rule, p, rho_g)
        expected = _theory_md_theorem1(phi, rho, rho_star, rho_g, moments, lam)
        assert theory.asymptotic_error(phi, rho, rho_star, rho_g, rule, p, lam) == pytest.approx(expected, abs=1e-9)
        if abs(moments.kept - phi) > 0.05:  # the corollary is singular at the interpolation peak kept = d
            ridgeless = _theory_md_ridgeless(phi, rho, rho_star, rho_g, moments)
            small_lam = theory.asymptotic_error(phi, rho, rho_star, rho_g, rule, p, 1e-9)
            assert small_lam == pytest.approx(ridgeless, abs=1e-4)


def test_theory_md_validation_table_theory_column():
    """theory.md §2.7: theory .163 / .206 / .210 / .067 (d = 200 means phi = 200 / n)."""
    cases = [
        ((200 / 5000, 1.0, 0.9, 0.9, "keep_hard", 2 * special.ndtr(0.3) - 1, 1e-2, False), 0.163),
        ((200 / 1000, 1.0, 0.9, 0.9, "keep_easy", 2 * (1 - special.ndtr(1.0)), 1e-2, False), 0.206),
        ((200 / 5000, 0.8, 0.95, 0.76, "all", 1.0, 1e-2, False), 0.210),
        ((200 / 8000, 0.7, 0.99, 0.69, "keep_hard", 2 * special.ndtr(0.5) - 1, 1e-3, True), 0.067),
    ]
    for args, printed in cases:
        assert theory.asymptotic_error(*args) == pytest.approx(printed, abs=1.5e-3)


# ---------------------------------------------------------------------------------------------------------------
# Where theory.md and simulation disagree
# ---------------------------------------------------------------------------------------------------------------


def test_disagreement_absolute_value_in_the_arccos():
    """theory.md §2.2 takes |m0| (after DP eq 50). When the learned direction is anti-aligned with w* the simulated
    error exceeds 1/2 and only the signed cosine (used by the module) reproduces it."""
    rho, rho_star, rho_g, phi, lam = 0.5, 0.9, 0.8, 0.1, 1e-2
    moments = theory.kept_moments("keep_hard", 0.05, rho_g)
    with_abs = _theory_md_theorem1(phi, rho, rho_star, rho_g, moments, lam, absolute=True)
    signed = _theory_md_theorem1(phi, rho, rho_star, rho_g, moments, lam, absolute=False)
    simulated, se = _mean_simulated(2000, 200, rho, rho_star, rho_g, "keep_hard", 0.05, lam, seeds=6)
    assert simulated > 0.5 + 4 * se
    assert theory.asymptotic_error(phi, rho, rho_star, rho_g, "keep_hard", 0.05, lam) == pytest.approx(signed, abs=1e-9)
    assert abs(signed - simulated) < 0.01
    assert abs(with_abs - simulated) > 0.1


def test_disagreement_dp_printed_r():
    """DP's main text prints r = omega^2 m + omega_tilde^2 m_tilde (theory.md §2.2 note). With that r, training on
    all data from a generator at rho = 0.7 would reach zero error; simulation gives the generator's error and more."""
    rho, rho_star, phi, lam = 0.7, 0.9, 0.1, 1e-2
    moments = theory.kept_moments("all", 1.0, rho * rho_star)
    printed = _theory_md_theorem1(phi, rho, rho_star, rho * rho_star, moments, lam, printed_r=True)
    corrected = _theory_md_theorem1(phi, rho, rho_star, rho * rho_star, moments, lam)
    simulated, _ = _mean_simulated(2000, 200, rho, rho_star, rho * rho_star, "all", 1.0, lam, seeds=6)
    assert simulated > np.arccos(rho) / np.pi
    assert abs(corrected - simulated) < 0.01
    assert abs(printed - simulated) > 0.1


def test_disagreement_small_pool_gains_are_not_an_interpolation_peak_effect():
    """theory.md §2.6 footnote: the keep-easy gains at n/d = 0.5 "come from moving the kept count away from the
    interpolation peak" and "vanish with lambda = 0.1". With n < d no kept count can reach the peak, and both the
    formula and simulation keep the gain at lambda = 0.1: it is the small-data "keep easy" regime (Sorscher et al.).
    Random pruning, which would share any peak effect, never beats p = 1 on the §2.6 grid."""
    grid = theory.phase_grid(rho_star=0.99, lam=0.1, n_over_d=[0.5], rho=[1.0, 0.99, 0.9, 0.7])
    assert np.all(grid.ratio["keep_easy"] < 0.95)
    assert np.all(grid.ratio["random"] == 1.0)
    easy, easy_se = _mean_simulated(400, 800, 1.0, 0.99, 0.99, "keep_easy", 0.5, 0.1, seeds=8)
    full, full_se = _mean_simulated(400, 800, 1.0, 0.99, 0.99, "all", 1.0, 0.1, seeds=8)
    predicted_gain = theory.asymptotic_error(2.0, 1.0, 0.99, 0.99, "all", 1.0, 0.1) - theory.asymptotic_error(
        2.0, 1.0, 0.99, 0.99, "keep_easy", 0.5, 0.1
    )
    assert full - easy > 3 * np.hypot(easy_se, full_se)
    assert full - easy == pytest.approx(predicted_gain, abs=0.01)
    small_lam = theory.phase_grid(rho_star=0.99, lam=1e-3, n_over_d=[2, 10, 100], rho=[1.0, 0.99, 0.9, 0.7])
    assert np.all(small_lam.best_p["random"] == 1.0)


# ---------------------------------------------------------------------------------------------------------------
# Phase diagrams, Theorem 2, collapse loop
# ---------------------------------------------------------------------------------------------------------------

THEORY_MD_GRID_P = [0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0]


def test_phase_grid_reproduces_theory_md_table():
    """theory.md §2.6 table (lambda = 1e-3, rho* = 0.99): ratios E(best)/E(p=1) for KH / KE."""
    table_ratio = {  # rho -> [(KH, KE) at n/d = 0.5, 2, 10, 100]
        1.0: [(1.00, 0.93), (0.78, 1.00), (0.50, 1.00), (0.52, 1.00)],
        0.99: [(1.00, 0.92), (0.80, 1.00), (0.62, 0.94), (0.75, 0.79)],
        0.9: [(1.00, 0.90), (0.90, 0.94), (0.86, 0.68), (0.88, 0.36)],
        0.7: [(1.00, 0.91), (0.98, 0.91), (0.96, 0.87), (0.96, 0.46)],
    }
    grid = theory.phase_grid(
        rho_star=0.99, lam=1e-3, n_over_d=[0.5, 2, 10, 100], rho=list(table_ratio), keep_fractions=THEORY_MD_GRID_P
    )
    for i, ratios in enumerate(table_ratio.values()):
        for j, (hard, easy) in enumerate(ratios):
            assert grid.ratio["keep_hard"][i, j] == pytest.approx(hard, abs=0.015)
            assert grid.ratio["keep_easy"][i, j] == pytest.approx(easy, abs=0.015)
    np.testing.assert_allclose(grid.best_p["keep_hard"][0], [1.0, 0.8, 0.4, 0.2])  # rho = 1: p* falls as n/d grows


def test_theorem2_directions_at_large_n_over_d():
    """rho* -> 1, n/d large: rho = 1 -> keep-hard has best p < 1 and beats keep-easy; rho < 1 -> keep-easy wins."""
    grid = theory.phase_grid(rho_star=0.999, lam=1e-3, n_over_d=[300.0, 1000.0], rho=[1.0, 0.99, 0.9, 0.7])
    assert np.all(grid.best_p["keep_hard"][0] < 1.0)
    assert np.all(grid.best_error["keep_hard"][0] < grid.best_error["keep_easy"][0])
    assert np.all(grid.ratio["keep_hard"][0] < 0.9)
    assert np.all(grid.best_error["keep_easy"][1:] < grid.best_error["keep_hard"][1:])
    assert np.all(grid.winner()[0] == 1) and np.all(grid.winner()[1:] == -1)
    for p in (0.1, 0.3, 0.6):
        assert theory.theorem2_directions(1.0, 0.999, p)["winner"] == "keep_hard"
        for rho in (0.99, 0.9, 0.7):
            assert theory.theorem2_directions(rho, 0.999, p)["winner"] == "keep_easy"


def test_infinite_data_limit_is_the_limit_of_the_asymptotic_error():
    for rho, rule, aware in itertools.product([1.0, 0.9, 0.7], ["keep_hard", "keep_easy"], [False, True]):
        limit = theory.infinite_data_error(rho, 0.99, rho * 0.99, rule, 0.3, aware)
        near_limit = theory.asymptotic_error(1e-6, rho, 0.99, rho * 0.99, rule, 0.3, 1e-7, aware)
        assert near_limit == pytest.approx(limit, abs=1e-4)
    # Full data at infinite data recovers the generator; keep-easy with tiny p recovers the oracle.
    assert theory.infinite_data_error(0.8, 0.99, 0.792, "all", 1.0) == pytest.approx(np.arccos(0.8) / np.pi, abs=1e-9)
    oracle_error = np.arccos(0.99) / np.pi
    assert theory.infinite_data_error(0.8, 0.99, 0.792, "keep_easy", 1e-4) == pytest.approx(oracle_error, abs=2e-3)


def test_collapse_loop_formulas():
    """theory.md §2.6 collapse table: all data 0.101 -> 0.210, keep-hard+correct 0.101 -> 0.057."""
    result = theory.collapse_loop(rho=0.95, rho_star=0.99, n_over_d=10, lam=1e-3, keep_fraction=0.3, rounds=6)
    all_data, hard_correct = result.errors["all"], result.errors["keep_hard+correct"]
    assert np.all(np.diff(all_data) > 0) and all_data[-1] == pytest.approx(0.210, abs=3e-3)
    assert np.all(hard_correct[1:] <= hard_correct[0]) and hard_correct[-1] == pytest.approx(0.057, abs=3e-3)
    assert result.errors["keep_hard"][-1] == pytest.approx(0.279, abs=3e-3)
    assert result.errors["correct_only"][-1] == pytest.approx(0.099, abs=3e-3)


def test_collapse_loop_simulation():
    """The same loop simulated in d = 200: all data degrades, keep-hard AND correct does not."""
    result = theory.collapse_loop(
        rho=0.95, rho_star=0.99, n_over_d=10, lam=1e-3, keep_fraction=0.3, rounds=4,
        rules=(("all", False), ("keep_hard", True)), method="simulation", dim=200, seeds=3,
    )
    all_data, hard_correct = result.errors["all"], result.errors["keep_hard+correct"]
    assert all_data[-1] > all_data[0] + 0.04
    assert np.all(np.diff(all_data) > -0.005)
    assert np.all(hard_correct[1:] < hard_correct[0])


# ---------------------------------------------------------------------------------------------------------------
# Calibration helpers
# ---------------------------------------------------------------------------------------------------------------


def test_accuracy_cosine_mapping_round_trips():
    accuracy = np.array([0.5, 0.75, 0.9, 1.0])
    np.testing.assert_allclose(
        theory.cosine_from_accuracy(accuracy), [0.0, np.cos(np.pi / 4), np.cos(0.1 * np.pi), 1.0], atol=1e-12
    )
    np.testing.assert_allclose(theory.accuracy_from_cosine(theory.cosine_from_accuracy(accuracy)), accuracy)
    with pytest.raises(ValueError, match="fraction of correct answers"):
        theory.cosine_from_accuracy(83)


def test_advise_follows_the_phases():
    strong = theory.advise(pool_size=100_000, generator_accuracy=0.995, oracle_accuracy=0.995, dim=1000)
    assert strong.rule == "keep_hard" and strong.keep_fraction < 0.5 and strong.gain > 0.3
    weak = theory.advise(pool_size=100_000, generator_accuracy=0.85, oracle_accuracy=0.995, dim=1000,
                         allow_label_aware=False)
    assert weak.rule == "keep_easy" and not weak.label_aware and weak.gain > 0.3
    scarce = theory.advise(pool_size=500, generator_accuracy=0.9, oracle_accuracy=0.95, dim=1000,
                           allow_label_aware=False)
    assert scarce.rule != "keep_hard"
    assert scarce.predicted_error <= scarce.all_data_error
    assert all(label == scarce.label or "+correct" not in label for label, _, _ in scarce.candidates)
    assert strong.kept_examples == round(strong.keep_fraction * 100_000)


def test_predicted_boundary_moves_to_smaller_pools_for_better_generators():
    boundary = theory.predicted_boundary([0.75, 0.9, 0.99], oracle_accuracy=0.99, dim=1000, rule="keep_hard")
    assert boundary.ratio.shape == (3, 60) and np.all(boundary.ratio <= 1.0 + 1e-12)
    assert np.all(np.isfinite(boundary.min_pool_size))
    assert boundary.min_pool_size[2] <= boundary.min_pool_size[1] <= boundary.min_pool_size[0]
    easy = theory.predicted_boundary([0.99, 0.999], oracle_accuracy=0.99, dim=1000, rule="keep_easy")
    assert np.isnan(easy.min_pool_size[-1])  # keep-easy never pays for a generator better than the oracle


def test_fit_effective_dim_recovers_the_dimension():
    sizes = np.array([1_000, 3_000, 10_000, 30_000, 100_000])
    rho = theory.cosine_from_accuracy(0.9)
    errors = theory.asymptotic_error_array(700 / sizes, rho, 0.0, 0.0, "all", 1.0, 1e-3)
    assert theory.fit_effective_dim(sizes, errors, generator_accuracy=0.9) == pytest.approx(700, rel=1e-3)


def test_invalid_inputs_say_what_to_change():
    with pytest.raises(ValueError, match="choose one of"):
        theory.asymptotic_error(0.1, 0.9, 0.9, 0.81, "keep_medium", 0.5, 1e-3)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        theory.simulate_error(100, 10, 0.9, 0.9, 0.81, "keep_hard", 1.5, 1e-3)
    with pytest.raises(ValueError, match="rho_g must lie within"):
        theory.asymptotic_error(0.1, 0.9, 0.9, 0.1, "keep_hard", 0.5, 1e-3)
    with pytest.raises(ValueError, match="ridgeless"):
        theory.asymptotic_error(0.1, 0.9, 0.9, 0.81, "keep_hard", 0.5, 0.0)
    with pytest.raises(ValueError, match="three directions"):
        theory.simulate_error(100, 2, 0.9, 0.9, 0.81, "keep_hard", 0.5, 1e-3)


# ---------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------


def _parse(argv):
    return build_parser().parse_args(argv)


def test_cli_phase_writes_csv_and_heatmaps(tmp_path, capsys):
    args = _parse(["theory", "phase", "--rho-star", "0.99", "--lam", "1e-3", "--out", str(tmp_path),
                   "--grid", "6", "--num-p", "5"])
    assert args.func(args) == 0
    lines = (tmp_path / "phase.csv").read_text().splitlines()
    assert lines[0].split(",") == [
        "label_aware", "rule", "rho", "n_over_d", "best_p", "best_error", "full_error", "ratio", "hard_beats_easy"
    ]
    assert len(lines) == 1 + 2 * 3 * 6 * 6
    rows = [line.split(",") for line in lines[1:]]
    assert all(0 < float(row[4]) <= 1 and float(row[7]) <= 1 + 1e-9 for row in rows)
    for name in ("phase_label_agnostic.png", "phase_label_aware.png", "phase_winner.png", "infinite_data_limit.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "rho=1: keep_hard has the lower F(q)" in out and "rho=0.7: keep_hard has the lower F(q) at" in out


def test_cli_advise_prints_rule_and_gain(capsys):
    args = _parse(["theory", "advise", "--pool-size", "100000", "--generator-accuracy", "0.995",
                   "--oracle-accuracy", "0.995", "--dim", "1000", "--no-label-aware"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "recommended: keep_hard, keep fraction p = " in out
    assert "gain" in out and "+correct" not in out

    bad = _parse(["theory", "advise", "--pool-size", "1000", "--generator-accuracy", "90", "--oracle-accuracy", "0.9"])
    assert bad.func(bad) == 2
    assert "fraction of correct answers" in capsys.readouterr().err


def test_cli_collapse_writes_png(tmp_path, capsys):
    args = _parse(["theory", "collapse", "--rounds", "3", "--out", str(tmp_path)])
    assert args.func(args) == 0
    assert (tmp_path / "collapse.png").read_bytes()[:4] == b"\x89PNG"
    header, *rows = (tmp_path / "collapse.csv").read_text().splitlines()
    assert header.startswith("round,all,keep_hard") and len(rows) == 4
    assert "keep_hard+correct" in capsys.readouterr().out

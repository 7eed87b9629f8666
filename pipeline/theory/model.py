"""Teacher-student theory of data curation ("Why Less is More (Sometimes)", theory.md).

A ridge classifier is trained on Gaussian inputs labelled by a *generator* ``w_g`` and curated with an
*oracle* ``w_o``; it is tested against the ground truth ``w*``. Three cosines describe the geometry:

- ``rho = cos(w_g, w*)``: generator quality (test error of the generator itself is ``arccos(rho)/pi``),
- ``rho_star = cos(w_o, w*)``: oracle quality,
- ``rho_g = cos(w_o, w_g)``: generator-oracle agreement (``rho * rho_star`` when their errors are orthogonal).

Curation rules keep a fraction ``p`` of the examples by the oracle margin ``|x . w_o|``:

- ``keep_hard``: keep ``|x . w_o| <= alpha`` with ``p = 2 Phi(alpha) - 1``,
- ``keep_easy``: keep ``|x . w_o| >= alpha`` with ``p = 2 (1 - Phi(alpha))``,
- ``random``: keep each example with probability ``p``,
- ``all``: keep everything (``p`` is ignored).

``label_aware=True`` additionally drops every example whose generated label disagrees with the oracle's label
``sign(x . w_o)`` (the "keep hard *and* correct" rules). For label-aware rules ``p`` is the fraction kept by the
difficulty rule before that correctness filter, so ``p = 1`` is the correctness filter alone and the examples
actually used are ``p`` times the oracle's acceptance rate among them.

Two independent computations of the test error are provided:

- :func:`simulate_error`: a finite-dimensional Monte-Carlo run of the estimator (the ground truth),
- :func:`asymptotic_error`: its deterministic equivalent as ``n, d -> inf`` with ``d / n = phi``
  (theory.md section 2.3, derived by profiling the ``d - 2`` isotropic directions out of the ridge objective).

Everything else (phase diagrams, the infinite-data limit of Theorem 2, the self-training collapse loop, the advice
for a real pool) is built on the vectorised form of the deterministic equivalent.

Where theory.md and simulation part ways (each pinned by a test in ``tests/test_theory.py``):

- The ``|.|`` in the arccos of theory.md §2.2 (after the precursor paper's eq 50) is wrong whenever the learned
  direction is anti-aligned with ``w*`` (e.g. rho=0.5, rho_star=0.9, rho_g=0.8, keep_hard p=0.05, n/d=10):
  simulation gives 0.56 > 1/2, the ``|.|`` form 0.44. The signed cosine is used here.
- The precursor paper's printed ``r = omega^2 m + omega_tilde^2 m_tilde`` (flagged in theory.md §2.2) predicts zero
  error for all data from a rho = 0.7 generator; simulation gives 0.26. §2.2 with ``r = beta^2 m + beta_tilde^2
  m_tilde`` matches simulation and equals the §2.3 form used here to 1e-9.
- The footnote of theory.md §2.6 attributes the keep-easy gains at n/d = 0.5 to the interpolation peak and says they
  vanish at lambda = 0.1. With n < d no kept count can reach the peak (kept = d), and both this module and
  simulation keep the gain at lambda = 0.1 (0.313 vs 0.333 at rho = 1, rho_star = 0.99, p = 0.5): it is the
  small-data "keep easy" regime. Random pruning never beats p = 1 on that grid.

Everything else checked there agrees with simulation or with theory.md's own numbers: the §2.1 constants, §2.2 with
the corrected r, the §2.4 ridgeless corollary (away from kept = d), the §2.6 phase table and collapse loop, and the
theory column of the §2.7 validation table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import special

RULES = ("keep_hard", "keep_easy", "random", "all")
"""Names of the curation rules accepted by every function in this module."""

DEFAULT_KEEP_FRACTIONS = tuple(float(p) for p in np.geomspace(0.02, 1.0, 20))
"""Keep fractions swept by the phase diagrams and the advice (log-spaced, ending at 1)."""

DEFAULT_DIM = 1000
"""Effective dimension used by :func:`advise` when none was measured (see :func:`fit_effective_dim`)."""

_SQRT_2PI = math.sqrt(2.0 * math.pi)
_TINY = 1e-12


# --------------------------------------------------------------------------------------------------------------
# Geometry and curation constants
# --------------------------------------------------------------------------------------------------------------


def cosine_from_accuracy(accuracy):
    """Map an accuracy in [0.5, 1] to a cosine by ``rho = cos(pi * (1 - accuracy))`` (inverse of arccos(rho)/pi).

    Works elementwise on arrays. Accuracies below 1/2 are rejected: the model is then worse than chance and its
    cosine would be negative, which the curation rules here do not cover.
    """
    accuracy = np.asarray(accuracy, dtype=float)
    if np.any(~np.isfinite(accuracy)) or np.any((accuracy < 0.5) | (accuracy > 1.0)):
        raise ValueError(
            f"accuracy must lie in [0.5, 1] (got {accuracy.tolist()}); pass the fraction of correct answers, "
            "e.g. 0.83 rather than 83, and flip a worse-than-chance scorer before using it as an oracle"
        )
    rho = np.cos(np.pi * (1.0 - accuracy))
    return float(rho) if rho.ndim == 0 else rho


def accuracy_from_cosine(rho):
    """Inverse of :func:`cosine_from_accuracy`: the accuracy ``1 - arccos(rho)/pi`` of a direction at cosine rho."""
    rho = np.clip(np.asarray(rho, dtype=float), -1.0, 1.0)
    accuracy = 1.0 - np.arccos(rho) / np.pi
    return float(accuracy) if accuracy.ndim == 0 else accuracy


def default_rho_g(rho, rho_star):
    """Generator-oracle cosine when their errors are orthogonal to each other: ``rho * rho_star``."""
    return np.asarray(rho, dtype=float) * np.asarray(rho_star, dtype=float)


def keep_threshold(rule: str, p):
    """Oracle-margin threshold alpha that makes ``rule`` keep a fraction ``p`` of Gaussian examples (theory.md §1).

    ``keep_hard``: ``p = 2 Phi(alpha) - 1``; ``keep_easy``: ``p = 2 (1 - Phi(alpha))``. Other rules have no threshold.
    """
    p = np.asarray(p, dtype=float)
    if rule == "keep_hard":
        return special.ndtri((1.0 + p) / 2.0)
    if rule == "keep_easy":
        return -special.ndtri(p / 2.0)  # = Phi^-1(1 - p/2), accurate for small p
    raise ValueError(f"rule {rule!r} has no margin threshold; only 'keep_hard' and 'keep_easy' do")


def _check_rule(rule: str) -> None:
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")


def _check_keep_fraction(p) -> None:
    p = np.asarray(p, dtype=float)
    if np.any(~np.isfinite(p)) or np.any((p <= 0.0) | (p > 1.0)):
        raise ValueError(f"keep fraction p must lie in (0, 1] (got {p.tolist()}); p = 1 keeps everything")


def _check_geometry(rho, rho_star, rho_g) -> None:
    """Reject cosine triples that no three unit vectors can have (the Gram matrix must be PSD)."""
    rho, rho_star, rho_g = (np.asarray(v, dtype=float) for v in (rho, rho_star, rho_g))
    for name, value in (("rho", rho), ("rho_star", rho_star), ("rho_g", rho_g)):
        if np.any(~np.isfinite(value)) or np.any((value < 0.0) | (value > 1.0)):
            raise ValueError(f"{name} must be a cosine in [0, 1] (got {value.tolist()})")
    gram_det = 1.0 + 2.0 * rho * rho_star * rho_g - rho**2 - rho_star**2 - rho_g**2
    if np.any(gram_det < -1e-9):
        raise ValueError(
            "no three unit vectors have cosines "
            f"rho={rho.tolist()}, rho_star={rho_star.tolist()}, rho_g={rho_g.tolist()}; "
            "rho_g must lie within rho*rho_star +- sqrt((1-rho^2)(1-rho_star^2)) (rho*rho_star is the usual choice)"
        )


def _target_in_plane(rho, rho_star, rho_g):
    """Components of w* along (w_o, v), with v the unit part of w_g orthogonal to w_o; plus sqrt(1 - rho_g^2)."""
    orth = np.sqrt(np.maximum(1.0 - rho_g**2, 0.0))
    safe = np.maximum(orth, _TINY)
    # When w_g = w_o the plane degenerates; rho = rho_star then and v carries no weight.
    along_v = np.where(orth > 1e-9, (rho - rho_g * rho_star) / safe, 0.0)
    return rho_star, along_v, orth


@dataclass(frozen=True)
class KeptMoments:
    """Population moments of the kept examples in the plane spanned by the oracle w_o and the generator.

    With ``u = (x . w_o, x . v)`` and keep indicator ``k``: ``kept = E[k]``, ``sigma = E[k u u^T]`` (entries 11, 12, 22)
    and ``c = E[k y u]`` (entries 1, 2). The remaining directions are isotropic and independent of ``(u, y, k)``.
    """

    kept: np.ndarray
    sigma11: np.ndarray
    sigma12: np.ndarray
    sigma22: np.ndarray
    c1: np.ndarray
    c2: np.ndarray


def _phi(x):
    return np.exp(-0.5 * x * x) / _SQRT_2PI


def _upper_tails(h, rho_g):
    """Integrals of the kept-moment integrands over |G| >= h (both signs of G), for a generator at cosine rho_g.

    Returns a dict of closed forms (Owen's T for the agreement probability); every label-agnostic and label-aware
    moment of a threshold rule is a difference of these at the region ends. Products with tau are formed
    analytically so that rho_g = 1 (tau infinite) stays finite.
    """
    h = np.asarray(h, dtype=float)
    at_infinity = np.isinf(h)
    h = np.where(at_infinity, 0.0, h)
    finite = np.where(at_infinity, 0.0, 1.0)  # every tail vanishes at h = inf
    orth = np.sqrt(np.maximum(1.0 - rho_g**2, 0.0))
    safe = np.maximum(orth, _TINY)
    tau = rho_g / safe
    tail = special.ndtr(-h)  # P(G >= h)
    dens = _phi(h)
    agree_at_h = special.ndtr(tau * h)
    beyond = special.ndtr(-h / safe)
    # P(|G| >= h, generator label = oracle label) = 2 int_h^inf phi(g) Phi(tau g) dg
    agree = tail + 2.0 * special.owens_t(h, tau)
    phi_phi = 2.0 * orth / _SQRT_2PI * beyond  # 2 int_h^inf phi(g) phi(tau g) dg
    g_phi_phi = orth**2 / np.pi * np.exp(-0.5 * (h / safe) ** 2)  # 2 int_h^inf g phi(g) phi(tau g) dg
    tau_phi_phi = 2.0 * rho_g / _SQRT_2PI * beyond
    tau_g_phi_phi = rho_g * orth / np.pi * np.exp(-0.5 * (h / safe) ** 2)
    tails = {
        "kept": 2.0 * tail,
        "g2": 2.0 * (h * dens + tail),
        "abs_g": 2.0 * dens,
        "agree": agree,
        "g_agree": 2.0 * dens * agree_at_h + tau_phi_phi,  # E[|G| 1(agree)], by parts
        "g2_agree": 2.0 * h * dens * agree_at_h + agree + tau_g_phi_phi,  # E[G^2 1(agree)], by parts
        "phi_phi": phi_phi,
        "g_phi_phi": g_phi_phi,
        "tau_g_phi_phi": tau_g_phi_phi,
    }
    return {key: finite * value for key, value in tails.items()}


def kept_moments(rule: str, p, rho_g, label_aware: bool = False) -> KeptMoments:
    """Moments of the kept examples for ``rule`` at keep fraction ``p`` (vectorised over p and rho_g).

    Label-agnostic threshold rules reproduce the constants of theory.md §2.1: ``sigma = diag(gamma, p)`` and
    ``c = (beta_tilde, beta)``. Label-aware rules use the closed forms of the §2.3 integrals.
    """
    _check_rule(rule)
    rho_g = np.asarray(rho_g, dtype=float)
    if rule in ("all", "random"):
        fraction = np.ones_like(np.asarray(p, dtype=float)) if rule == "all" else np.asarray(p, dtype=float)
        lo = _upper_tails(np.zeros_like(rho_g), rho_g)
        hi = {key: 0.0 for key in lo}
        scale = fraction
    else:
        alpha = keep_threshold(rule, p)
        at_alpha = _upper_tails(alpha, rho_g)
        at_zero = _upper_tails(np.zeros_like(alpha), rho_g)
        if rule == "keep_hard":  # region |G| in [0, alpha]
            lo, hi = at_zero, at_alpha
        else:  # region |G| >= alpha
            lo, hi = at_alpha, {key: 0.0 for key in at_alpha}
        scale = 1.0

    def region(key):
        return scale * (lo[key] - hi[key])

    if label_aware:
        kept = region("agree")
        return KeptMoments(
            kept=kept,
            sigma11=region("g2_agree"),
            sigma12=region("g_phi_phi"),  # E[q |G| phi(tau G)]
            sigma22=kept - region("tau_g_phi_phi"),  # E[q (Phi(tau|G|) - tau |G| phi(tau G))]
            c1=region("g_agree"),  # E[q |G| Phi(tau|G|)]
            c2=region("phi_phi"),  # E[q phi(tau G)]
        )
    kept = region("kept")
    return KeptMoments(
        kept=kept,
        sigma11=region("g2"),  # gamma
        sigma12=np.zeros_like(kept),
        sigma22=kept,
        c1=2.0 * region("g_agree") - region("abs_g"),  # beta_tilde = E[q |G| (2 Phi(tau|G|) - 1)]
        c2=2.0 * region("phi_phi"),  # beta = 2 E[q phi(tau G)]
    )


# --------------------------------------------------------------------------------------------------------------
# Deterministic equivalent
# --------------------------------------------------------------------------------------------------------------


def deformed_mp(phi, kept, lam):
    """Stieltjes transform m(-lam) of the kept Gram matrix X^T K X / n and its derivative m'(-lam).

    ``kept`` is the kept fraction; ``phi = d / n``. Uses the root of ``phi z m^2 - (kept - phi - z) m + 1 = 0`` at
    ``z = -lam`` in the numerically stable form for either sign of ``kept - phi``.
    """
    phi, kept, lam = (np.asarray(v, dtype=float) for v in (phi, kept, lam))
    b = kept - phi + lam
    root = np.sqrt(b * b + 4.0 * phi * lam)
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(b >= 0.0, 2.0 / (b + root), (root - b) / (2.0 * phi * lam))
    dm = (phi * m * m + m) / root
    return m, dm


def _plane_fit(phi, moments: KeptMoments, lam):
    """Ridge solution (a1, a2) in the (w_o, v) plane and its squared norm in the other directions (theory.md §2.3)."""
    kept = np.maximum(moments.kept, _TINY)
    m, dm = deformed_mp(phi, kept, lam)
    kappa = 1.0 / (1.0 + phi * m)
    s11 = kappa * moments.sigma11 + lam
    s22 = kappa * moments.sigma22 + lam
    s12 = kappa * moments.sigma12
    det = s11 * s22 - s12 * s12
    a1 = kappa * (s22 * moments.c1 - s12 * moments.c2) / det
    a2 = kappa * (s11 * moments.c2 - s12 * moments.c1) / det
    residual = (
        moments.kept
        - 2.0 * (a1 * moments.c1 + a2 * moments.c2)
        + a1 * a1 * moments.sigma11
        + 2.0 * a1 * a2 * moments.sigma12
        + a2 * a2 * moments.sigma22
    )
    bulk = np.maximum(residual, 0.0) * phi / kept * (m - lam * dm)
    return a1, a2, bulk


def _learned_cosines(phi, rho, rho_star, rho_g, rule, p, lam, label_aware):
    """Cosines of the learned direction with w* and with w_o, in the proportional limit (vectorised)."""
    _check_rule(rule)
    moments = kept_moments(rule, p, rho_g, label_aware)
    a1, a2, bulk = _plane_fit(phi, moments, lam)
    target1, target2, _ = _target_in_plane(rho, rho_star, rho_g)
    norm = np.sqrt(a1 * a1 + a2 * a2 + bulk)
    empty = (moments.kept <= _TINY) | (norm <= 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos_target = np.where(empty, 0.0, (a1 * target1 + a2 * target2) / norm)
        cos_oracle = np.where(empty, 0.0, a1 / norm)
    return np.clip(cos_target, -1.0, 1.0), np.clip(cos_oracle, -1.0, 1.0)


def _check_common(rho, rho_star, rho_g, rule, p, lam) -> None:
    _check_rule(rule)
    _check_keep_fraction(p)
    _check_geometry(rho, rho_star, rho_g)
    lam = np.asarray(lam, dtype=float)
    if np.any(~(lam > 0.0)):
        raise ValueError(
            f"ridge lam must be > 0 (got {lam.tolist()}); use a small value such as 1e-4 for the ridgeless limit"
        )


def asymptotic_error_array(phi, rho, rho_star, rho_g, rule, p, lam, label_aware=False) -> np.ndarray:
    """Vectorised :func:`asymptotic_error`: every numeric argument broadcasts (numpy rules)."""
    phi = np.asarray(phi, dtype=float)
    if np.any(~(phi > 0.0)):
        raise ValueError(f"phi = d/n must be > 0 (got {phi.tolist()})")
    _check_common(rho, rho_star, rho_g, rule, p, lam)
    cos_target, _ = _learned_cosines(phi, rho, rho_star, rho_g, rule, p, lam, label_aware)
    return np.arccos(cos_target) / np.pi


def asymptotic_error(phi, rho, rho_star, rho_g, rule, p, lam, label_aware=False) -> float:
    """Deterministic equivalent of the test error of the curated ridge classifier, with ``phi = d / n``.

    Args:
        phi: dimension over pool size, ``d / n`` (> 0); the pool is ``n`` before curation.
        rho: cosine of the generator with the ground truth.
        rho_star: cosine of the oracle with the ground truth.
        rho_g: cosine of the oracle with the generator (must be compatible with rho and rho_star).
        rule: one of ``keep_hard``, ``keep_easy``, ``random``, ``all``.
        p: fraction kept by the rule, in (0, 1]; ignored by ``all``.
        lam: ridge penalty (> 0), applied to the loss averaged over the whole pool (1/n, not 1/kept).
        label_aware: also drop examples whose label disagrees with the oracle.

    Returns:
        The limiting probability that the learned classifier disagrees with the ground truth on a fresh example.
    """
    return float(asymptotic_error_array(phi, rho, rho_star, rho_g, rule, p, lam, label_aware))


def infinite_data_error(rho, rho_star, rho_g, rule, p, label_aware=False):
    """The infinite-data, ridgeless limit ``F(q)`` of Theorem 2 (theory.md §2.5), vectorised.

    As ``phi -> 0`` then ``lam -> 0`` the learned direction is ``sigma^-1 c`` in the (w_o, v) plane; for label-agnostic
    rules that is ``(beta_tilde / gamma, beta / p)``, the closed form of theory.md §2.5.
    """
    _check_common(rho, rho_star, rho_g, rule, p, 1.0)
    moments = kept_moments(rule, p, rho_g, label_aware)
    det = moments.sigma11 * moments.sigma22 - moments.sigma12**2
    a1 = (moments.sigma22 * moments.c1 - moments.sigma12 * moments.c2) / det
    a2 = (moments.sigma11 * moments.c2 - moments.sigma12 * moments.c1) / det
    rho, rho_star, rho_g = (np.asarray(v, dtype=float) for v in (rho, rho_star, rho_g))
    target1, target2, _ = _target_in_plane(rho, rho_star, rho_g)
    cos = np.clip((a1 * target1 + a2 * target2) / np.sqrt(a1 * a1 + a2 * a2), -1.0, 1.0)
    error = np.arccos(cos) / np.pi
    return float(error) if np.ndim(error) == 0 else error


# --------------------------------------------------------------------------------------------------------------
# Monte-Carlo simulation (ground truth)
# --------------------------------------------------------------------------------------------------------------


def _wishart(dim, dof, rng):
    """A draw of Z^T Z for a (dof x dim) matrix Z of iid N(0, 1), by the Bartlett decomposition (dof >= dim)."""
    factor = np.tril(rng.standard_normal((dim, dim)), -1)
    factor[np.diag_indices(dim)] = np.sqrt(rng.chisquare(dof - np.arange(dim)))
    return factor @ factor.T


def _fit_kept(head, labels, n, d, lam, rng):
    """Ridge fit on kept rows whose first 3 coordinates are ``head``; the other d - 3 are iid N(0, 1), drawn here.

    Returns the learned weights' first three coordinates and their full norm. Only Gram matrices of the bulk
    coordinates enter the fit, so they are drawn exactly from their (Wishart and Gaussian) laws given the head and
    the labels instead of through the ``kept x (d - 3)`` matrix: the cost is O(min(kept, d)^3), not O(kept d^2).
    """
    kept, bulk_dim = head.shape[0], d - 3
    if kept >= d + 1:
        # Primal. Write the bulk block Z = Q A + (I - Q Q^T) Z with [head, labels] = Q R: A = Q^T Z is iid Gaussian
        # and Z^T (I - Q Q^T) Z is an independent Wishart with kept - 4 degrees of freedom.
        basis, tri = np.linalg.qr(np.column_stack([head, labels]))
        del basis  # only R is needed: Z^T [head, labels] = A^T R
        projected = rng.standard_normal((4, bulk_dim))
        gram = np.empty((d, d))
        gram[:3, :3] = head.T @ head
        gram[:3, 3:] = tri[:, :3].T @ projected
        gram[3:, :3] = gram[:3, 3:].T
        gram[3:, 3:] = projected.T @ projected + _wishart(bulk_dim, kept - 4, rng)
        rhs = np.concatenate([head.T @ labels, projected.T @ tri[:, 3]])
        gram /= n
        gram[np.diag_indices(d)] += lam
        weights = np.linalg.solve(gram, rhs / n)
        return weights[:3], float(np.linalg.norm(weights))
    if kept <= bulk_dim:
        # Dual. The bulk enters only through Z Z^T, a Wishart with d - 3 degrees of freedom independent of the head.
        outer = head @ head.T + _wishart(kept, bulk_dim, rng)
        system = outer / n
        system[np.diag_indices(kept)] += lam
        dual = np.linalg.solve(system, labels / n)
        return head.T @ dual, float(np.sqrt(max(dual @ outer @ dual, 0.0)))
    # kept within 3 of d: neither Wishart exists, draw the bulk coordinates themselves.
    features = np.column_stack([head, rng.standard_normal((kept, bulk_dim))])
    gram = features.T @ features / n
    gram[np.diag_indices(d)] += lam
    weights = np.linalg.solve(gram, features.T @ labels / n)
    return weights[:3], float(np.linalg.norm(weights))


def _simulate_cosines(n, d, rho, rho_star, rho_g, rule, p, lam, label_aware, rng):
    """One finite-size run; returns the cosines of the learned weights with w* and with w_o.

    By rotational invariance of the isotropic inputs the three vectors sit in the first three coordinates:
    ``w_o = e1``, ``w_g = rho_g e1 + sqrt(1 - rho_g^2) e2`` and ``w*`` in span(e1, e2, e3). The other d - 3
    coordinates are independent of the labels and of the keep decision; :func:`_fit_kept` draws what the ridge fit
    needs of them for the kept rows only.
    """
    target1, target2, orth = _target_in_plane(rho, rho_star, rho_g)
    target3 = math.sqrt(max(0.0, 1.0 - target1**2 - target2**2))
    head = rng.standard_normal((n, 3))
    oracle_margin = head[:, 0]
    labels = np.where(rho_g * oracle_margin + orth * head[:, 1] >= 0.0, 1.0, -1.0)
    if rule == "all":
        keep = np.ones(n, dtype=bool)
    elif rule == "random":
        keep = rng.random(n) < p
    elif rule == "keep_hard":
        keep = np.abs(oracle_margin) <= keep_threshold(rule, p)
    else:
        keep = np.abs(oracle_margin) >= keep_threshold(rule, p)
    if label_aware:
        keep &= labels == np.where(oracle_margin >= 0.0, 1.0, -1.0)
    if not keep.any():
        return 0.0, 0.0
    # The loss is averaged over the whole pool (1/n), as in the estimator of theory.md §1.
    weights, norm = _fit_kept(head[keep], labels[keep], n, d, lam, rng)
    if norm == 0.0:
        return 0.0, 0.0
    cos_target = (weights[0] * target1 + weights[1] * target2 + weights[2] * target3) / norm
    return float(np.clip(cos_target, -1.0, 1.0)), float(np.clip(weights[0] / norm, -1.0, 1.0))


def _check_simulation_size(n, d) -> None:
    if int(n) != n or n < 1:
        raise ValueError(f"pool size n must be a positive integer (got {n})")
    if int(d) != d or d < 3:
        raise ValueError(f"dimension d must be an integer >= 3 (got {d}); w_o, w_g and w* need three directions")


def simulate_error(n, d, rho, rho_star, rho_g, rule, p, lam, label_aware=False, seed=0) -> float:
    """Monte-Carlo test error of the curated ridge classifier in dimension ``d`` with a pool of ``n`` examples.

    Draws ``x ~ N(0, I_d)``, labels ``sign(x . w_g)``, curates with the oracle ``w_o`` (see the module docstring for
    the rules), fits ``w = argmin (1/n) sum_kept (x.w - y)^2 / 2 + lam |w|^2 / 2`` and returns the exact test error
    ``arccos(cos(w, w*)) / pi`` of that ``w`` against ``y = sign(x . w*)``. An empty kept set gives 1/2.
    Arguments as in :func:`asymptotic_error`; ``seed`` makes the run reproducible.
    """
    _check_simulation_size(n, d)
    _check_common(rho, rho_star, rho_g, rule, p, lam)
    rng = np.random.default_rng(seed)
    cos_target, _ = _simulate_cosines(int(n), int(d), rho, rho_star, rho_g, rule, p, lam, label_aware, rng)
    return float(np.arccos(cos_target) / np.pi)


# --------------------------------------------------------------------------------------------------------------
# Phase diagrams
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseDiagram:
    """Predicted test errors over a grid of (generator quality rho, data abundance n/d, keep fraction p).

    Every array indexed by a rule has shape ``(len(rho), len(n_over_d))`` except ``errors`` (one more axis, p).
    ``full_error`` is the error at p = 1: all data, or the correctness filter alone when ``label_aware``.
    ``ratio = best_error / full_error``; below 1 means "less is more".
    """

    rho_star: float
    lam: float
    label_aware: bool
    rho: np.ndarray
    n_over_d: np.ndarray
    keep_fractions: np.ndarray
    rules: tuple[str, ...]
    errors: dict[str, np.ndarray] = field(repr=False)
    full_error: np.ndarray = field(repr=False)
    best_p: dict[str, np.ndarray] = field(repr=False)
    best_error: dict[str, np.ndarray] = field(repr=False)
    ratio: dict[str, np.ndarray] = field(repr=False)

    def winner(self, first: str = "keep_hard", second: str = "keep_easy") -> np.ndarray:
        """+1 where ``first`` (at its best p) has a lower error than ``second`` (at its best p), -1 where higher."""
        diff = self.best_error[second] - self.best_error[first]
        return np.where(np.abs(diff) <= 1e-12, 0, np.sign(diff)).astype(int)


def phase_grid(
    rho_star: float = 0.99,
    lam: float = 1e-3,
    n_over_d=None,
    rho=None,
    keep_fractions=DEFAULT_KEEP_FRACTIONS,
    rules=("keep_hard", "keep_easy", "random"),
    label_aware: bool = False,
    rho_g=None,
) -> PhaseDiagram:
    """Best keep fraction and its gain for each rule over a (rho, n/d) grid, in one vectorised evaluation.

    Args:
        rho_star: oracle cosine.
        lam: ridge penalty.
        n_over_d: pool size over dimension, the columns (default: 40 log-spaced values from 0.5 to 200).
        rho: generator cosines, the rows (default: 40 values from 0.6 to 1).
        keep_fractions: the p grid; 1 is always added so the ratio is at most 1.
        rules: rules among ``keep_hard``, ``keep_easy``, ``random``.
        label_aware: evaluate the label-aware versions ("... and correct").
        rho_g: generator-oracle cosine; default ``rho * rho_star`` (orthogonal errors) for every row.
    """
    rho = np.linspace(0.6, 1.0, 40) if rho is None else np.atleast_1d(np.asarray(rho, dtype=float))
    n_over_d = np.geomspace(0.5, 200.0, 40) if n_over_d is None else np.atleast_1d(np.asarray(n_over_d, float))
    if np.any(~(n_over_d > 0.0)):
        raise ValueError(f"n_over_d must be > 0 (got {n_over_d.tolist()})")
    keep = np.unique(np.append(np.asarray(keep_fractions, dtype=float), 1.0))
    _check_keep_fraction(keep)
    for rule in rules:
        if rule not in ("keep_hard", "keep_easy", "random"):
            raise ValueError(f"phase_grid rules must be among keep_hard, keep_easy, random (got {rule!r})")
    rho_g_rows = default_rho_g(rho, rho_star) if rho_g is None else np.broadcast_to(np.asarray(rho_g, float), rho.shape)
    _check_common(rho, rho_star, rho_g_rows, "all", 1.0, lam)

    r = rho[:, None, None]
    rg = rho_g_rows[:, None, None]
    phi = 1.0 / n_over_d[None, :, None]
    ps = keep[None, None, :]
    full = asymptotic_error_array(phi[..., 0], r[..., 0], rho_star, rg[..., 0], "all", 1.0, lam, label_aware)
    errors, best_p, best_error, ratio = {}, {}, {}, {}
    for rule in rules:
        err = asymptotic_error_array(phi, r, rho_star, rg, rule, ps, lam, label_aware)
        # p = 1 is the same estimator for every rule; pin it to the shared value so ties resolve exactly.
        err = np.where(ps == 1.0, full[..., None], err)
        idx = np.argmin(err, axis=-1)
        errors[rule] = err
        best_p[rule] = keep[idx]
        best_error[rule] = np.take_along_axis(err, idx[..., None], axis=-1)[..., 0]
        ratio[rule] = best_error[rule] / full
    return PhaseDiagram(
        rho_star=float(rho_star),
        lam=float(lam),
        label_aware=bool(label_aware),
        rho=rho,
        n_over_d=n_over_d,
        keep_fractions=keep,
        rules=tuple(rules),
        errors=errors,
        full_error=full,
        best_p=best_p,
        best_error=best_error,
        ratio=ratio,
    )


def theorem2_directions(rho, rho_star=0.999, p=0.3, rho_g=None, label_aware=False) -> dict[str, float | str]:
    """Infinite-data errors F(q) of keep-hard and keep-easy at keep fraction p (Theorem 2, theory.md §2.5).

    Returns ``{"keep_hard": F_KH, "keep_easy": F_KE, "all": F_all, "winner": "keep_hard" | "keep_easy"}``.
    Theorem 2 predicts keep-hard for ``rho -> 1`` and keep-easy for ``rho < 1`` when ``rho_star -> 1``.
    """
    rho_g = float(default_rho_g(rho, rho_star)) if rho_g is None else float(rho_g)
    hard = infinite_data_error(rho, rho_star, rho_g, "keep_hard", p, label_aware)
    easy = infinite_data_error(rho, rho_star, rho_g, "keep_easy", p, label_aware)
    full = infinite_data_error(rho, rho_star, rho_g, "all", 1.0, label_aware)
    return {"keep_hard": hard, "keep_easy": easy, "all": full, "winner": "keep_hard" if hard < easy else "keep_easy"}


# --------------------------------------------------------------------------------------------------------------
# Calibration on measurements and advice
# --------------------------------------------------------------------------------------------------------------


def rule_label(rule: str, label_aware: bool) -> str:
    """Human-readable name of a rule: ``keep_hard``, ``keep_hard+correct``, ``correct_only`` (= all + filter)."""
    if label_aware:
        return "correct_only" if rule == "all" else f"{rule}+correct"
    return rule


@dataclass(frozen=True)
class Advice:
    """The rule and keep fraction the theory recommends for one pool, with the predicted errors.

    ``gain = 1 - predicted_error / all_data_error`` (relative error reduction over training on the whole pool).
    ``candidates`` lists ``(label, best keep fraction, predicted error)`` for every rule considered, best first.
    """

    rule: str
    label_aware: bool
    keep_fraction: float
    predicted_error: float
    all_data_error: float
    gain: float
    rho: float
    rho_star: float
    rho_g: float
    pool_size: int
    dim: float
    candidates: tuple[tuple[str, float, float], ...]

    @property
    def label(self) -> str:
        """Readable name of the recommended rule (see :func:`rule_label`)."""
        return rule_label(self.rule, self.label_aware)

    @property
    def n_over_d(self) -> float:
        """Data abundance: pool size over effective dimension."""
        return self.pool_size / self.dim

    @property
    def kept_examples(self) -> int:
        """Pool examples the difficulty rule keeps, before any correctness filter (``keep_fraction * pool_size``)."""
        return int(round(self.keep_fraction * self.pool_size))


def advise(
    pool_size: int,
    generator_accuracy: float,
    oracle_accuracy: float,
    dim: float = DEFAULT_DIM,
    lam: float = 1e-3,
    allow_label_aware: bool = True,
    keep_fractions=DEFAULT_KEEP_FRACTIONS,
    min_gain: float = 0.01,
    rho_g: float | None = None,
) -> Advice:
    """Recommend a curation rule and keep fraction for a pool, from measured accuracies.

    Accuracies map to cosines by ``rho = cos(pi * (1 - accuracy))``: ``generator_accuracy`` is the fraction of the
    pool's labels (traces) that are correct, ``oracle_accuracy`` the agreement of the difficulty/correctness scorer
    with the ground truth. ``dim`` is the effective dimension (see :func:`fit_effective_dim`).
    A curation rule is recommended only when it beats keeping everything by at least ``min_gain`` (relative);
    otherwise the advice is ``all`` at p = 1.
    """
    if int(pool_size) != pool_size or pool_size < 1:
        raise ValueError(f"pool_size must be a positive integer (got {pool_size})")
    if not dim > 0:
        raise ValueError(f"dim (effective dimension) must be > 0 (got {dim})")
    rho = cosine_from_accuracy(generator_accuracy)
    rho_star = cosine_from_accuracy(oracle_accuracy)
    rho_g = float(default_rho_g(rho, rho_star)) if rho_g is None else float(rho_g)
    n_over_d = float(pool_size) / float(dim)
    phi = 1.0 / n_over_d
    keep = np.unique(np.append(np.asarray(keep_fractions, dtype=float), 1.0))
    _check_keep_fraction(keep)
    _check_common(rho, rho_star, rho_g, "all", 1.0, lam)
    all_data = asymptotic_error(phi, rho, rho_star, rho_g, "all", 1.0, lam)
    candidates = [("all", False, 1.0, all_data)]
    families = (False, True) if allow_label_aware else (False,)
    for label_aware in families:
        if label_aware:
            candidates.append(("all", True, 1.0, asymptotic_error(phi, rho, rho_star, rho_g, "all", 1.0, lam, True)))
        for rule in ("keep_hard", "keep_easy", "random"):
            err = asymptotic_error_array(phi, rho, rho_star, rho_g, rule, keep[keep < 1.0], lam, label_aware)
            i = int(np.argmin(err))
            candidates.append((rule, label_aware, float(keep[keep < 1.0][i]), float(err[i])))
    candidates.sort(key=lambda c: c[3])
    best = candidates[0]
    if best[3] > all_data * (1.0 - min_gain):
        best = ("all", False, 1.0, all_data)
    return Advice(
        rule=best[0],
        label_aware=best[1],
        keep_fraction=best[2],
        predicted_error=best[3],
        all_data_error=all_data,
        gain=1.0 - best[3] / all_data,
        rho=rho,
        rho_star=rho_star,
        rho_g=rho_g,
        pool_size=int(pool_size),
        dim=float(dim),
        candidates=tuple((rule_label(r, a), p, e) for r, a, p, e in candidates),
    )


@dataclass(frozen=True)
class Boundary:
    """Predicted phase boundary over (pool size, generator accuracy) for one rule.

    Arrays are indexed ``[i, j]`` by ``generator_accuracy[i]`` and ``pool_sizes[j]``:
    ``ratio`` is ``E(best p) / E(p = 1)``; ``ratio_vs_baseline`` divides instead by the better of p = 1 and the best
    *random* subsample, so that gains which random pruning also gets (moving the kept count off the interpolation
    peak at kept = d) do not count as curation; ``best_p`` is the best keep fraction; ``hard_beats_easy`` says
    whether keep-hard (at its best p) beats keep-easy (at its best p).
    ``min_pool_size[i]`` is the smallest pool size on the grid from which on the rule beats the baseline by
    ``tolerance`` at every larger size (NaN where it does not pay at the largest size).
    """

    generator_accuracy: np.ndarray
    pool_sizes: np.ndarray
    ratio: np.ndarray
    ratio_vs_baseline: np.ndarray
    best_p: np.ndarray
    min_pool_size: np.ndarray
    hard_beats_easy: np.ndarray
    rule: str
    label_aware: bool
    tolerance: float


def predicted_boundary(
    generator_accuracies,
    oracle_accuracy: float,
    dim: float,
    pool_sizes=None,
    lam: float = 1e-3,
    rule: str = "keep_hard",
    label_aware: bool = False,
    tolerance: float = 0.01,
    keep_fractions=DEFAULT_KEEP_FRACTIONS,
) -> Boundary:
    """Where curation starts to pay off ("less is more"), for measured accuracies and an effective dimension.

    Accuracies map to cosines as in :func:`advise`. Draw ``ratio_vs_baseline`` (or its ``1 - tolerance`` contour)
    over (log pool size, generator accuracy) and compare with the measured sweep, or plot ``min_pool_size``
    against the accuracy. ``pool_sizes`` defaults to 60 log-spaced sizes from ``dim / 2`` to ``500 dim``.
    """
    if not dim > 0:
        raise ValueError(f"dim (effective dimension) must be > 0 (got {dim})")
    if rule not in ("keep_hard", "keep_easy", "random"):
        raise ValueError(f"rule must be keep_hard, keep_easy or random (got {rule!r})")
    accuracy = np.atleast_1d(np.asarray(generator_accuracies, dtype=float))
    rho = np.atleast_1d(cosine_from_accuracy(accuracy))
    rho_star = cosine_from_accuracy(oracle_accuracy)
    if pool_sizes is None:
        sizes = np.geomspace(dim / 2.0, 500.0 * dim, 60)
    else:
        sizes = np.atleast_1d(np.asarray(pool_sizes, dtype=float))
    if np.any(~(sizes > 0)):
        raise ValueError(f"pool sizes must be > 0 (got {sizes.tolist()})")
    grid = phase_grid(
        rho_star=rho_star,
        lam=lam,
        n_over_d=sizes / float(dim),
        rho=rho,
        keep_fractions=keep_fractions,
        rules=tuple(dict.fromkeys((rule, "keep_hard", "keep_easy", "random"))),
        label_aware=label_aware,
    )
    baseline = np.minimum(grid.full_error, grid.best_error["random"])
    ratio_vs_baseline = grid.best_error[rule] / baseline
    pays = ratio_vs_baseline < 1.0 - tolerance
    # First index from which the rule pays at every larger pool size.
    pays_from_here_on = np.flip(np.logical_and.accumulate(np.flip(pays, axis=1), axis=1), axis=1)
    first = np.argmax(pays_from_here_on, axis=1)
    min_pool = np.where(pays_from_here_on.any(axis=1), sizes[first], np.nan)
    return Boundary(
        generator_accuracy=accuracy,
        pool_sizes=sizes,
        ratio=grid.ratio[rule],
        ratio_vs_baseline=ratio_vs_baseline,
        best_p=grid.best_p[rule],
        min_pool_size=min_pool,
        hard_beats_easy=grid.winner() > 0,
        rule=rule,
        label_aware=label_aware,
        tolerance=tolerance,
    )


def fit_effective_dim(pool_sizes, errors, generator_accuracy: float, lam: float = 1e-3, bounds=(1.0, 1e8)) -> float:
    """Fit the effective dimension d so that training on all data reproduces a measured learning curve E(n).

    ``pool_sizes`` and ``errors`` are the measured (random-pruning or full-data) curve; ``generator_accuracy`` fixes
    rho. Least squares in the errors, searched over log d within ``bounds``. The measured errors must exceed the
    generator's own error ``1 - generator_accuracy``, which is the infinite-data floor of this curve.
    """
    sizes = np.asarray(pool_sizes, dtype=float)
    measured = np.asarray(errors, dtype=float)
    if sizes.shape != measured.shape or sizes.size < 2:
        raise ValueError("pool_sizes and errors must be two sequences of the same length (at least 2 points)")
    if np.any(~(sizes > 0)):
        raise ValueError(f"pool sizes must be > 0 (got {sizes.tolist()})")
    rho = cosine_from_accuracy(generator_accuracy)

    def loss(log_dim):
        # Only the generator matters without curation; place the (unused) oracle orthogonally to it.
        predicted = asymptotic_error_array(np.exp(log_dim) / sizes, rho, 0.0, 0.0, "all", 1.0, lam)
        return float(np.sum((predicted - measured) ** 2))

    from scipy import optimize  # only needed here; keeps importing this module light

    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    coarse = np.linspace(lo, hi, 200)
    start = coarse[int(np.argmin([loss(x) for x in coarse]))]
    step = coarse[1] - coarse[0]
    result = optimize.minimize_scalar(loss, bounds=(max(lo, start - step), min(hi, start + step)), method="bounded")
    return float(np.exp(result.x))


# --------------------------------------------------------------------------------------------------------------
# Self-training collapse loop
# --------------------------------------------------------------------------------------------------------------

DEFAULT_COLLAPSE_RULES = (
    ("all", False),
    ("keep_hard", False),
    ("keep_easy", False),
    ("all", True),
    ("keep_hard", True),
    ("keep_easy", True),
)
"""(rule, label_aware) pairs compared by :func:`collapse_loop`: all data, label-agnostic and label-aware rules."""


@dataclass(frozen=True)
class CollapseResult:
    """Test error per round of the self-training loop; ``errors[label][0]`` is the initial generator's error."""

    rounds: int
    keep_fraction: float
    n_over_d: float
    rho: float
    rho_star: float
    lam: float
    method: str
    errors: dict[str, np.ndarray]


def collapse_loop(
    rho: float = 0.95,
    rho_star: float = 0.99,
    n_over_d: float = 10.0,
    lam: float = 1e-3,
    keep_fraction: float = 0.3,
    rounds: int = 6,
    rho_g: float | None = None,
    rules=DEFAULT_COLLAPSE_RULES,
    method: str = "theory",
    dim: int = 200,
    seeds: int = 4,
) -> CollapseResult:
    """Iterated relabelling: each round trains on a fresh pool labelled by the previous round's model.

    Round 0 is the initial generator (cosine ``rho`` with w*, ``rho_g`` with the oracle). In round t >= 1 a new pool
    of ``n = n_over_d * d`` inputs is labelled by the model of round t - 1, curated with the fixed oracle, and a new
    model is fitted; it labels the next round. ``method="theory"`` iterates the deterministic equivalent (the pair of
    cosines with w* and w_o is all the next round needs); ``method="simulation"`` runs the finite-size loop in
    dimension ``dim`` and averages the errors over ``seeds`` independent chains.
    """
    if method not in ("theory", "simulation"):
        raise ValueError(f"method must be 'theory' or 'simulation' (got {method!r})")
    if int(rounds) != rounds or rounds < 1:
        raise ValueError(f"rounds must be a positive integer (got {rounds})")
    rho_g = float(default_rho_g(rho, rho_star)) if rho_g is None else float(rho_g)
    _check_common(rho, rho_star, rho_g, "all", keep_fraction, lam)
    if not n_over_d > 0:
        raise ValueError(f"n_over_d must be > 0 (got {n_over_d})")
    chains = 1 if method == "theory" else int(seeds)
    if method == "simulation":
        _check_simulation_size(max(1, round(n_over_d * dim)), dim)
    errors = {}
    for rule, label_aware in rules:
        _check_rule(rule)
        per_chain = np.empty((chains, rounds + 1))
        for chain in range(chains):
            rng = np.random.default_rng(chain)
            cos_target, cos_oracle = float(rho), rho_g
            per_chain[chain, 0] = np.arccos(cos_target) / np.pi
            for t in range(1, rounds + 1):
                if method == "theory":
                    new_target, new_oracle = _learned_cosines(
                        1.0 / n_over_d, cos_target, rho_star, cos_oracle, rule, keep_fraction, lam, label_aware
                    )
                    cos_target, cos_oracle = float(new_target), float(new_oracle)
                else:
                    cos_target, cos_oracle = _simulate_cosines(
                        max(1, round(n_over_d * dim)), dim, cos_target, rho_star, cos_oracle, rule, keep_fraction,
                        lam, label_aware, rng,
                    )
                per_chain[chain, t] = np.arccos(cos_target) / np.pi
        errors[rule_label(rule, label_aware)] = per_chain.mean(axis=0)
    return CollapseResult(
        rounds=int(rounds),
        keep_fraction=float(keep_fraction),
        n_over_d=float(n_over_d),
        rho=float(rho),
        rho_star=float(rho_star),
        lam=float(lam),
        method=method,
        errors=errors,
    )

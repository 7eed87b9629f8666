"""The linear teacher-student world: the curation theory's own model (theory.md §1), run through the pipeline.

It calibrates the sweep as an instrument (instrument.md §3a): here the theory is exact, so every measured cell can
be held against ``pipeline.theory``. Each piece of the LLM pipeline has a linear counterpart:

- **A problem** is a feature vector ``x ~ N(0, I_d)``. Its text names it, ``"x17 ~ N(0, I_100) from seed 0"``, and
  :func:`features` draws it again from that name (in seeded chunks of rows), so a problem needs no stored vector
  and the same text always means the same x.
- **Three directions** sit in one seeded orthonormal basis ``e1, e2, e3`` of R^d, the same for every run in
  dimension d: the truth ``w* = e1``, a generator ``w_g = rho e1 + sqrt(1 - rho^2) e2`` and an oracle
  ``w_o = rho* e1 + a e2 + b e3``, with a and b chosen so that the three cosines are exactly the ones set
  (:class:`Geometry`).
- **A generator model** ``linear:rho=R[,sigma=S]`` answers ``\\boxed{1}`` or ``\\boxed{-1}``, the sign of
  ``x . w_g + S xi``; the noise xi comes from the row's seed, so k samples give pass rates. A directory saved by
  the ridge student (:func:`save_model`) labels with its weights the same way: the collapse loop's next generator.
- **The oracle's** label ``sign(x . w_o)`` is a problem's reference answer, so "verified correct" means "agrees
  with the oracle", the theory's label-aware rule; its margin ``|x . w_o|`` is the problem's difficulty. Held-out
  problems are labelled by the truth ``w*``.
- **The student** is ridge regression on the kept ``(x, y)`` with the loss averaged over the whole pool, as in
  ``pipeline.theory.simulate_error`` (:func:`ridge_fit`), and its test error is exact (:func:`exact_error`).

A problem's ``level`` is the quintile of its true margin ``|x . w*|``: level 1 holds the easiest fifth (largest
margins), level 5 the hardest, so a report's tiers and its concordance of difficulty with level mean what they say.

Only numpy and scipy: the stages (source, sample, difficulty) and the sweep both read this module.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PREFIX = "linear:"
MODEL_TYPE = "lessmore-linear"  # config.json `model_type` of a directory saved by the ridge student
SOURCE_NAME = "linear"
LEVELS = 5
BASIS_SEED = 2511_03492  # the theory paper's arXiv number: one fixed world per dimension
_CHUNK_ROWS = 1024
_FEATURE_TAG = 0x11EA  # keeps the feature streams apart from any other use of the same seed
_PROBLEM = re.compile(r"^x(\d+) ~ N\(0, I_(\d+)\) from seed (\d+)$")
_BOXED_LABEL = re.compile(r"\\boxed\{\s*([+-]?1)\s*\}")
_SPEC_KEYS = ("rho", "sigma")


class LinearWorldError(ValueError):
    """A linear-world reference or geometry that cannot exist; the message says what to change."""


# -- problems ------------------------------------------------------------------------------------------------------


def problem_text(index: int, dim: int, seed: int) -> str:
    """The text that names problem ``index`` of ``seed`` in dimension ``dim`` (its features are drawn from it)."""
    return f"x{index} ~ N(0, I_{dim}) from seed {seed}"


def parse_problem(text: str) -> tuple[int, int, int]:
    """(index, dim, seed) of a problem text written by :func:`problem_text`."""
    match = _PROBLEM.match(text.strip())
    if match is None:
        raise LinearWorldError(f"{text[:80]!r} is not a linear-world problem; the linear backend needs problems "
                               "from a `kind: linear` source")
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


@functools.lru_cache(maxsize=48)
def _feature_chunk(dim: int, seed: int, chunk: int) -> np.ndarray:
    return np.random.default_rng([_FEATURE_TAG, seed, chunk]).standard_normal((_CHUNK_ROWS, dim))


def features(texts) -> np.ndarray:
    """The feature matrix (rows x d) of problem texts; every text must be in the same dimension."""
    parsed = [parse_problem(t) for t in texts]
    dims = {d for _, d, _ in parsed}
    if len(dims) > 1:
        raise LinearWorldError(f"problems of several dimensions {sorted(dims)} in one batch; use one `dim`")
    if not parsed:
        return np.zeros((0, 0))
    dim = dims.pop()
    out = np.empty((len(parsed), dim))
    for row, (index, _, seed) in enumerate(parsed):
        out[row] = _feature_chunk(dim, seed, index // _CHUNK_ROWS)[index % _CHUNK_ROWS]
    return out


def problem_features(count: int, dim: int, seed: int) -> tuple[list[str], np.ndarray]:
    """The texts and features of problems 0 .. count - 1 of ``seed``."""
    if seed < 0:
        raise LinearWorldError(f"seed {seed}: linear-world seeds must be >= 0")
    texts = [problem_text(i, dim, seed) for i in range(count)]
    chunks = [_feature_chunk(dim, seed, c) for c in range(math.ceil(count / _CHUNK_ROWS))]
    matrix = np.concatenate(chunks)[:count] if chunks else np.zeros((0, dim))
    return texts, matrix


def margin_level(true_margin) -> np.ndarray:
    """Level 1 (easiest fifth of |x . w*|, the largest margins) to 5 (the smallest), by the half-normal quintiles."""
    from scipy import special

    cuts = special.ndtri((1.0 + np.arange(1, LEVELS) / LEVELS) / 2.0)
    return LEVELS - np.searchsorted(cuts, np.abs(np.asarray(true_margin, dtype=float)))


def margin_quantile(margin) -> np.ndarray:
    """``P(|G| <= margin)`` for G ~ N(0, 1), i.e. ``2 Phi(margin) - 1``: an oracle margin as a uniform score in
    [0, 1], increasing with the margin (0: on the boundary, the hardest)."""
    from scipy import special

    return special.erf(np.abs(np.asarray(margin, dtype=float)) / math.sqrt(2.0))


def make_problems(count: int, dim: int, seed: int, geometry: "Geometry | None") -> list[dict]:
    """Problem records (problem, answer, level, metadata) for a ``kind: linear`` source.

    The answer is the oracle's label ``sign(x . w_o)`` as ``1`` / ``-1`` (the truth's when ``geometry`` is None);
    ``metadata`` holds ``oracle_margin`` = ``|x . w_o|`` and ``true_margin`` = ``|x . w*|``."""
    texts, matrix = problem_features(count, dim, seed)
    truth = matrix @ basis(dim)[0]
    oracle = truth if geometry is None else matrix @ geometry.oracle(dim)
    levels = margin_level(truth)
    return [{"problem": text, "answer": label_text(o), "level": int(level),
             "metadata": json.dumps({"oracle_margin": float(abs(o)), "true_margin": float(abs(t))})}
            for text, o, t, level in zip(texts, oracle, truth, levels)]


# -- geometry ------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def basis(dim: int) -> np.ndarray:
    """Three orthonormal rows e1, e2, e3 in R^dim, seeded once per dimension: e1 = w*."""
    if int(dim) != dim or dim < 3:
        raise LinearWorldError(f"dim {dim}: the linear world needs an integer dimension >= 3 (w*, w_g, w_o)")
    q, _ = np.linalg.qr(np.random.default_rng(BASIS_SEED).standard_normal((int(dim), 3)))
    q.setflags(write=False)
    return q.T


@dataclass(frozen=True)
class Geometry:
    """Generator and oracle of one pool: cos(w_g, w*) = rho, cos(w_o, w*) = rho_star, cos(w_o, w_g) = rho_g.

    ``rho_g`` None means ``rho * rho_star``: an oracle whose error is independent of the generator's (its error
    direction e3 is orthogonal to the generator's e2). Impossible triples raise :class:`LinearWorldError`.
    """

    rho: float
    rho_star: float
    rho_g: float | None = None

    def __post_init__(self) -> None:
        for name in ("rho", "rho_star", "rho_g"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise LinearWorldError(f"{name} = {value}: a cosine of the linear world must lie in [0, 1]")
        self.oracle_coefficients()  # rejects impossible geometries at once

    @property
    def resolved_rho_g(self) -> float:
        """``rho_g``, or ``rho * rho_star`` when it was left unset."""
        return self.rho * self.rho_star if self.rho_g is None else self.rho_g

    def generator_coefficients(self) -> np.ndarray:
        """w_g in the basis (e1, e2, e3)."""
        return np.array([self.rho, math.sqrt(max(0.0, 1.0 - self.rho**2)), 0.0])

    def oracle_coefficients(self) -> np.ndarray:
        """w_o in the basis (e1, e2, e3): (rho*, a, b) with rho* rho + a sqrt(1 - rho^2) = rho_g and |w_o| = 1."""
        rho, rho_star, rho_g = self.rho, self.rho_star, self.resolved_rho_g
        spread = math.sqrt(max(0.0, (1.0 - rho**2) * (1.0 - rho_star**2)))
        if abs(rho_g - rho * rho_star) > spread + 1e-9:
            raise LinearWorldError(
                f"no oracle has cos(w_o, w*) = {rho_star:g} and cos(w_o, w_g) = {rho_g:g} when cos(w_g, w*) = "
                f"{rho:g}: set rho_g within [{max(0.0, rho * rho_star - spread):.6g}, "
                f"{min(1.0, rho * rho_star + spread):.6g}] "
                "(or leave it unset: rho * rho_star)")
        orth = math.sqrt(max(0.0, 1.0 - rho**2))
        along_e2 = (rho_g - rho * rho_star) / orth if orth > 1e-12 else 0.0
        return np.array([rho_star, along_e2, math.sqrt(max(0.0, 1.0 - rho_star**2 - along_e2**2))])

    def target(self, dim: int) -> np.ndarray:
        """w* = e1."""
        return basis(dim)[0].copy()

    def generator(self, dim: int) -> np.ndarray:
        """w_g = rho e1 + sqrt(1 - rho^2) e2."""
        return self.generator_coefficients() @ basis(dim)

    def oracle(self, dim: int) -> np.ndarray:
        """w_o = rho* e1 + a e2 + b e3."""
        return self.oracle_coefficients() @ basis(dim)


# -- models: generator specs and saved students --------------------------------------------------------------------


@dataclass(frozen=True)
class LinearModel:
    """A labeller: ``sign(x . w + sigma xi)``. ``rho`` for a ``linear:`` spec (w = w_g of that rho), ``weights``
    for a directory saved by the ridge student."""

    sigma: float = 0.0
    rho: float | None = None
    weights: tuple[float, ...] | None = None

    @property
    def canonical(self) -> str:
        """One text per distinct model (its fingerprint): the spec, or a digest of the weights."""
        if self.rho is not None:
            return f"{PREFIX}rho={self.rho!r},sigma={self.sigma!r}"
        import hashlib

        return "linear-weights:" + hashlib.sha256(np.asarray(self.weights).tobytes()).hexdigest()[:16]

    def direction(self, dim: int) -> np.ndarray:
        """The weight vector w in dimension ``dim``."""
        if self.weights is None:
            return Geometry(self.rho, 1.0).generator(dim)
        if len(self.weights) != dim:
            raise LinearWorldError(f"a saved linear model of dimension {len(self.weights)} cannot label problems of "
                                   f"dimension {dim}; sample problems from a source with dim: {len(self.weights)}")
        return np.asarray(self.weights, dtype=float)

    def labels(self, matrix: np.ndarray, seeds, noisy: bool = True) -> np.ndarray:
        """+1 / -1 per row of ``matrix``: the sign of ``x . w`` plus, when ``noisy``, sigma times a standard normal
        drawn from each row's seed (batch-independent). A zero margin counts as +1."""
        margin = matrix @ self.direction(matrix.shape[1]) if len(matrix) else np.zeros(0)
        if noisy and self.sigma > 0:
            margin = margin + self.sigma * row_normals(seeds)
        return np.where(margin >= 0.0, 1, -1)


def row_normals(seeds) -> np.ndarray:
    """One standard normal per row seed (the same seed gives the same number, whatever the batch)."""
    return np.array([np.random.default_rng(int(s)).standard_normal() for s in seeds])


def parse_spec(ref: str) -> LinearModel:
    """A ``linear:rho=R[,sigma=S]`` generator spec."""
    body = ref[len(PREFIX):] if ref.startswith(PREFIX) else None
    hint = "write linear:rho=R[,sigma=S], e.g. linear:rho=0.99 or linear:rho=0.99,sigma=0.5"
    if not body:
        raise LinearWorldError(f"model {ref!r}: {hint}")
    values: dict[str, float] = {}
    for part in body.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in _SPEC_KEYS or key in values:
            raise LinearWorldError(f"model {ref!r}: {part.strip()!r} is not one of {', '.join(_SPEC_KEYS)} once; {hint}")
        try:
            values[key] = float(value)
        except ValueError:
            raise LinearWorldError(f"model {ref!r}: {key} = {value.strip()!r} is not a number; {hint}") from None
    if "rho" not in values:
        raise LinearWorldError(f"model {ref!r}: rho (the generator's cosine with w*) is required; {hint}")
    if not 0.0 <= values["rho"] <= 1.0 or values.get("sigma", 0.0) < 0.0:
        raise LinearWorldError(f"model {ref!r}: rho must lie in [0, 1] and sigma be >= 0; {hint}")
    return LinearModel(sigma=values.get("sigma", 0.0), rho=values["rho"])


def is_saved_model(path: str | Path) -> bool:
    """Whether ``path`` is a directory saved by the ridge student (:func:`save_model`)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == MODEL_TYPE
    except (OSError, ValueError):
        return False


def is_linear_model(ref: str) -> bool:
    """Whether ``ref`` is a ``linear:`` spec or a directory saved by the ridge student."""
    return ref.startswith(PREFIX) or is_saved_model(ref)


def load_model(ref: str) -> LinearModel:
    """The labeller a ``linear:`` spec or a saved student directory stands for."""
    if ref.startswith(PREFIX):
        return parse_spec(ref)
    if not is_saved_model(ref):
        raise LinearWorldError(f"model {ref!r} is neither a linear:rho=R spec nor a directory saved by the linear "
                               "student; the linear backend labels with nothing else")
    config = json.loads((Path(ref) / "config.json").read_text())
    return LinearModel(sigma=float(config.get("sigma", 0.0)), weights=tuple(float(w) for w in config["weights"]))


def save_model(directory: str | Path, weights: np.ndarray, **info) -> Path:
    """Save a weight vector as a model directory (``config.json``) that the linear backend loads like a spec."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_type": MODEL_TYPE, "dim": int(len(weights)), "sigma": 0.0,
              "weights": [float(w) for w in weights], **info}
    tmp = directory / ".config.json.tmp"
    tmp.write_text(json.dumps(config) + "\n")
    tmp.replace(directory / "config.json")
    return directory


# -- completions ---------------------------------------------------------------------------------------------------


def label_text(value: float) -> str:
    """The answer text of a label: ``1`` for a non-negative value, ``-1`` otherwise."""
    return "1" if value >= 0 else "-1"


def completion_text(label: int) -> str:
    """A generator's completion for a label: ``\\boxed{1}`` or ``\\boxed{-1}``."""
    return f"\\boxed{{{label_text(label)}}}"


def completion_labels(completions) -> np.ndarray:
    """+1 / -1 from each completion's last ``\\boxed{1}`` / ``\\boxed{-1}`` (what the student trains on)."""
    out = np.empty(len(completions))
    for i, text in enumerate(completions):
        found = _BOXED_LABEL.findall(text or "")
        if not found:
            raise LinearWorldError(f"completion {str(text)[:60]!r} has no \\boxed{{1}} or \\boxed{{-1}}; the linear "
                                   "student trains only on completions of linear generators")
        out[i] = float(found[-1])
    return out


# -- the student ---------------------------------------------------------------------------------------------------


def ridge_fit(matrix: np.ndarray, labels: np.ndarray, pool_size: int, lam: float) -> np.ndarray:
    """``argmin_w (1/n) sum_kept (x.w - y)^2 / 2 + lam |w|^2 / 2`` with n = ``pool_size``, the pool before curation
    (theory.md §1; ``pipeline.theory`` normalises the same way): ``(X^T X / n + lam I)^-1 X^T y / n``."""
    from scipy import linalg

    if not lam > 0:
        raise LinearWorldError(f"lam = {lam}: the ridge penalty must be > 0 (e.g. 1e-3)")
    if pool_size < 1:
        raise LinearWorldError(f"pool_size = {pool_size}: the ridge loss averages over at least one problem")
    dim = matrix.shape[1]
    gram = matrix.T @ matrix / pool_size
    gram[np.diag_indices(dim)] += lam
    return linalg.solve(gram, matrix.T @ np.asarray(labels, dtype=float) / pool_size, assume_a="pos")


def cosine(w: np.ndarray, v: np.ndarray) -> float:
    """cos(w, v); 0 when either is the zero vector."""
    norms = float(np.linalg.norm(w) * np.linalg.norm(v))
    return float(np.clip(w @ v / norms, -1.0, 1.0)) if norms > 0 else 0.0


def exact_error(w: np.ndarray) -> float:
    """The exact test error ``arccos(cos(w, w*)) / pi`` of ``sign(x . w)`` against ``sign(x . w*)`` (1/2 for w = 0)."""
    return float(np.arccos(cosine(w, basis(len(w))[0])) / np.pi)


"""The teacher-student theory of data curation: the model (:mod:`pipeline.theory.model`, theory.md) and its
``lessmore theory`` commands (:mod:`pipeline.theory.commands`).

``from pipeline import theory; theory.asymptotic_error(...)`` reaches the model's public names. They are loaded on
first use: the CLI parser imports :mod:`pipeline.theory.commands`, and with it this package, so an eager import of the
model would put numpy and scipy on every ``lessmore --help``.
"""

from __future__ import annotations

__all__ = [
    "RULES", "DEFAULT_KEEP_FRACTIONS", "DEFAULT_DIM", "DEFAULT_COLLAPSE_RULES",
    "cosine_from_accuracy", "accuracy_from_cosine", "default_rho_g", "keep_threshold",
    "KeptMoments", "kept_moments", "deformed_mp",
    "asymptotic_error_array", "asymptotic_error", "infinite_data_error", "simulate_error",
    "PhaseDiagram", "phase_grid", "theorem2_directions", "rule_label",
    "Advice", "advise", "Boundary", "predicted_boundary", "fit_effective_dim",
    "CollapseResult", "collapse_loop",
]


def __getattr__(name: str):
    if name in __all__:
        from pipeline.theory import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

"""The sweep's names on disk, under its run directory:

    sweep_config.json            the validated config (trials read it back in their worker processes)
    pool/<generator>/            the runner's stage directories of each generator's pool
    pool/manifest.json           per generator: the difficulty stage's directory, fingerprint, trace accuracy
    reference/                   the untouched student and the generators on the held-out problems
    trials.json                  every trial's spec and fingerprint
    trials/<trial_id>/           result.json, scores.parquet (per held-out problem), finetune/, evaluate/ (a
                                 linear student writes finetune/model only when kept: a loop round's next generator);
                                 a loop chain has one round_<t>/ directory per round, laid out the same way
    tune/                        the Ray Tune experiment (resumed by a rerun)
    timing.json                  seconds per phase
    report/                      the report (pipeline.sweep.report)
"""

from __future__ import annotations

CONFIG_FILE = "sweep_config.json"
POOL_DIR = "pool"
MANIFEST_FILE = "manifest.json"
REFERENCE_DIR = "reference"
TRIALS_DIR = "trials"
TUNE_DIR = "tune"
RESULT_FILE = "result.json"
TRIALS_FILE = "trials.json"
SCORES_FILE = "scores.parquet"
TIMING_FILE = "timing.json"
REPORT_DIR = "report"


def round_dirname(t: int) -> str:
    """The directory of round ``t`` of a collapse-loop chain, inside its trial directory."""
    return f"round_{t}"

"""sweep: measure the size x quality phase transition of data curation on ONE shared pool, under Ray Tune.

    lessmore sweep configs/phase_tiny.yaml

1. **Pool.** For each generator, the runner samples k completions per problem, verifies them and scores difficulty
   (source -> sample -> verify -> difficulty into ``run_dir/pool/<generator>/``, resumable). No trial samples again.
2. **Reference.** The untouched student and every generator are evaluated once on the held-out problems.
3. **Trials.** Each grid cell (generator, pool size n, keep fraction p, rule, oracle noise eta, generator noise eps,
   seed) runs curate -> train -> evaluate as one Ray Tune trial, whatever the student is (``student.kind``: a TRL
   fine-tune, or the linear world's ridge regression, which also records its exact test error). Pool sizes are nested random subsets of the pool
   (per seed), so the n = 300 problems are among the n = 1000 ones. Every trial is judged on the same held-out
   problems, so any two cells can be compared problem by problem. Trials run in parallel where the CPUs allow, a
   failed trial is retried (``tune.max_failures``) and then reported, never dropped, and a rerun resumes the Tune
   experiment: finished trials are read back, not computed again (each trial also caches its result on disk under a
   fingerprint of everything it depends on).
4. **Collapse loop** (``loop.rounds``): one trial per rule; in round 1 the student trains on the curated pool, in each
   later round the previous round's model generates the data, the rule curates it, and a fresh student trains on it.
5. **Report** (``pipeline.sweep.report``): error against p with confidence bands, phase heatmaps, the rule-winner map,
   the theory calibrated per generator (rho, rho*, rho_g of the oracle actually used, d_eff and lambda from the
   ``random`` learning curve), a regime gate, every cell's measured error beside the predicted one, and a verdict
   for each prediction of theory.md §5 (consistent / inconsistent / untestable, judged only where the calibrated
   theory predicts an effect the cells resolve), in ``run_dir/report/`` (``report.md`` and the machine-readable
   ``results.csv``, ``cells.csv``, ``calibration.json``, ``verdicts.json``).

Rules (``RULE_SPECS``): ``all``, ``random``, ``keep_hard``, ``keep_easy`` train on the generator's completions whether
correct or not (the theory's label-agnostic rules; one completion per problem); ``correct_only``,
``keep_hard_correct``, ``keep_easy_correct``, ``random_correct`` train on verified-correct completions only
(label-aware); ``keep_hard_stratified``, ``keep_easy_stratified`` and their ``_correct`` forms rank within each
level, keeping the pool's level mix. At p = 1
every label-agnostic rule keeps the same rows as ``all`` and every label-aware one the same as ``correct_only``, so
those cells are computed once and shared by the curves.

Modules, each one job (a module imports only those listed before it):

- ``layout``: the names on disk under the run directory;
- ``config``: SweepConfig and its blocks, the grid, the rule sets, what a trial's fingerprint covers;
- ``pool``: building and reading the shared pools, nested pool subsets, the reference evaluation;
- ``student``: a trial's train -> evaluate step, for the TRL student and the linear world's ridge student;
- ``callbacks``: Ray Tune callbacks: a line per finished trial and a summary, and the trackers of ``tune.callbacks``;
- ``trials``: one trial, the collapse loop, Ray Tune, the results table;
- ``measure``, ``calibrate``, ``predict``, ``verdicts``, ``plots``, ``markdown``, ``report``: the report (cells and
  intervals, the theory's calibration and gate, the calibrated theory at the cells, the verdicts, the figures,
  ``report.md``, the report's files);
- ``run``: ``run_sweep`` and ``rewrite_report``; ``commands``: the ``lessmore sweep`` arguments and command.

The linear world (``pipeline.linearworld``, ``configs/phase_linear.yaml``) is the theory's own teacher-student model
behind these same steps: ``linear:rho=R`` generators, an oracle per pool (``pool.generators.<name>.oracle``) whose
margin is the difficulty, and ``student: {kind: linear, lam: ...}``; there the theory is exact, so it calibrates the
sweep as an instrument (instrument.md §3a).

Importing this package imports none of them (the CLI parser imports ``commands``).
"""

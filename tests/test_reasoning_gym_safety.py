"""The reasoning_gym verifier never runs model output or data as code.

- Only tasks in ``SAFE_TASKS`` can be configured (options, ``lessmore validate``); a reference cannot pick the task.
- Every allowed task's scorer, and every reasoning-gym function it reaches, is read here and must contain no
  eval/exec/compile/parse_expr/sympify and touch no module outside a short list (no sympy, no numpy).
- Workers of sandboxed verifiers run without root, files, new processes or core dumps (``verifiers.pool.sandbox``).
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import resource
import textwrap
import time
import types

import pytest

from pipeline import columns as C
from verifiers import Verdict, Verifier, build_verifier
from verifiers.reasoning_gym import SAFE_TASKS, reference_for

# Code that evaluates text: what a scorer must never do with an answer or a reference.
FORBIDDEN = re.compile(
    r"\b(eval|exec|compile)\s*\(|literal_eval|parse_expr|sympify|sympy|__import__|importlib|subprocess|os\.system"
    r"|pickle|marshal|getattr\(|globals\(|vars\("
)
# Modules a reached function may use (through names it refers to). Anything else fails the scan.
SAFE_MODULES = {"builtins", "typing", "re", "math", "decimal", "fractions"}
# Scorers that do evaluate text: the scan must flag each of them (proof that it can see what it looks for).
KNOWN_UNSAFE = ["countdown", "number_sorting", "polynomial_multiplication", "puzzle24", "spiral_matrix"]


def _function(obj):
    if isinstance(obj, (staticmethod, classmethod)):
        obj = obj.__func__
    if isinstance(obj, property):
        obj = obj.fget
    return inspect.unwrap(obj) if isinstance(obj, types.FunctionType) else None


def scorer_reach(task: str) -> tuple[dict[str, str], set[str]]:
    """Sources of the task's ``score_answer`` and of every reasoning-gym function it reaches, and the other modules
    it refers to.

    Reached: methods named through ``self``/``cls`` (resolved on the dataset class), module-level names (functions;
    for reasoning-gym classes, all their methods), and ``module.attr`` references, followed transitively.
    """
    from reasoning_gym.factory import DATASETS

    cls = DATASETS[task][0]
    stack = [_function(inspect.getattr_static(cls, "score_answer"))]
    seen: dict[types.FunctionType, str] = {}
    modules: set[str] = set()

    def refer(obj) -> None:
        function = _function(obj)
        module = getattr(function or obj, "__module__", None) or "builtins"
        if isinstance(obj, types.ModuleType):
            if not obj.__name__.startswith("reasoning_gym"):  # its attributes used are followed one by one below
                modules.add(obj.__name__)
        elif function is not None and module.startswith("reasoning_gym"):
            stack.append(function)
        elif isinstance(obj, type) and module.startswith("reasoning_gym"):
            stack.extend(f for f in map(_function, vars(obj).values()) if f is not None)
        elif callable(obj):
            modules.add(module)

    while stack:
        function = stack.pop()
        # dataclass-generated methods (no file of their own) are the standard library's, not the task's
        if function in seen or function.__code__.co_filename.startswith("<"):
            continue
        seen[function] = inspect.getsource(function)
        namespace = function.__globals__
        for node in ast.walk(ast.parse(textwrap.dedent(seen[function]))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id in ("self", "cls"):
                    try:
                        refer(inspect.getattr_static(cls, node.attr))
                    except AttributeError:
                        pass  # an instance attribute (self.config): data, not code
                elif isinstance(namespace.get(node.value.id), types.ModuleType):
                    module = namespace[node.value.id]
                    target = getattr(module, node.attr, None)
                    if _function(target) is not None and target.__module__.startswith("reasoning_gym"):
                        stack.append(_function(target))
                    else:
                        modules.add(module.__name__)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in namespace:
                refer(namespace[node.id])
    return {f"{f.__module__}.{f.__qualname__}": source for f, source in seen.items()}, modules


def scan(task: str) -> list[str]:
    """What makes the task's scorer unsafe: forbidden code in a reached function, or a module off SAFE_MODULES."""
    sources, modules = scorer_reach(task)
    problems = [f"{name}: {m.group(0)!r}" for name, source in sources.items() for m in FORBIDDEN.finditer(source)]
    problems += [f"uses module {m}" for m in sorted(modules - SAFE_MODULES)]
    return problems


# -- the allow-list ---------------------------------------------------------------------------------------------
def test_allowed_tasks_exist_and_the_projects_tasks_are_allowed():
    from reasoning_gym.factory import DATASETS

    assert SAFE_TASKS <= set(DATASETS)
    assert {"basic_arithmetic", "gsm_symbolic"} <= SAFE_TASKS
    assert not SAFE_TASKS & {*KNOWN_UNSAFE, "composite"}


@pytest.mark.parametrize("task", sorted(SAFE_TASKS))
def test_allowed_scorer_never_evaluates_text(task):
    assert scan(task) == []


@pytest.mark.parametrize("task", KNOWN_UNSAFE)
def test_the_scan_flags_scorers_that_evaluate_text(task):
    assert any(re.search(r"eval\(|parse_expr|sympy", p) for p in scan(task)), scan(task)


# -- config time: unsafe tasks are refused ----------------------------------------------------------------------
@pytest.mark.parametrize("options", [{"task": "countdown"}, {"tasks": ["basic_arithmetic", "spiral_matrix"]}])
def test_unsafe_task_is_refused_when_building(options):
    with pytest.raises(ValueError, match=r"is not an allowed reasoning-gym task.*set tasks? to one of: .*basic_arith"):
        build_verifier("reasoning_gym", **options)


@pytest.mark.parametrize("verify", [
    {"verifier": "reasoning_gym", "options": {"task": "countdown"}},
    {"verifier": "ensemble", "options": {"members": ["math", {"name": "reasoning_gym", "task": "countdown"}]}},
])
def test_lessmore_validate_exits_2_naming_the_field(verify, tmp_path, capsys):
    import yaml

    from pipeline.cli import main

    config = tmp_path / "rg.yaml"
    config.write_text(yaml.safe_dump({"stages": {
        "source": {"kind": "reasoning_gym", "task": "basic_arithmetic", "n": 4}, "sample": {}, "verify": verify}}))
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: stages.verify.options.") and err.count("\n") == 1
    assert "task: 'countdown' is not an allowed reasoning-gym task" in err and "set task to one of" in err


# -- run time: the reference never picks the task ---------------------------------------------------------------
def _payload(target) -> str:
    """Python that creates ``target`` when evaluated (the path hex-encoded: answer extraction strips markdown ``_``)."""
    return f"open(bytes.fromhex('{str(target).encode().hex()}').decode(), 'w').write('x')"


def test_code_in_an_answer_is_never_run(tmp_path):
    """spiral_matrix's scorer evals the answer; a reference naming it must not get that scorer to run."""
    target = tmp_path / "pwned"
    reference = json.dumps({"task": "spiral_matrix", "entry": {"question": "", "answer": "1 2", "metadata": {}}})
    with build_verifier("reasoning_gym", task="basic_arithmetic", timeout_s=10) as verifier:
        verdict = verifier(f"<answer>{_payload(target)}</answer>", reference)
    assert verdict.reason == "error" and not verdict.correct
    assert not target.exists()


@pytest.mark.parametrize("form", ["task", "source_dataset"])
def test_code_in_a_reference_is_never_run(form, tmp_path):
    """number_sorting's scorer evals the reference; a reference naming it, either way, is refused."""
    target = tmp_path / "pwned"
    entry = {"question": "", "answer": _payload(target), "metadata": {}}
    if form == "task":
        reference = {"task": "number_sorting", "entry": entry}
    else:
        reference = {**entry, "metadata": {"source_dataset": "number_sorting"}}
    with build_verifier("reasoning_gym", task="basic_arithmetic", timeout_s=10) as verifier:
        verdict = verifier("<answer>['1']</answer>", json.dumps(reference))
    assert verdict.reason == "error"
    assert not target.exists()


@pytest.mark.parametrize("reference", [
    {"task": "gcd", "entry": {"question": "", "answer": "7", "metadata": {}}},
    {"question": "", "answer": "7", "metadata": {"source_dataset": "gcd"}},
    {"task": "basic_arithmetic", "entry": {"question": "", "answer": "7", "metadata": {"source_dataset": "gcd"}}},
    {"task": ["basic_arithmetic"], "entry": {"question": "", "answer": "7", "metadata": {}}},
    {"task": "basic_arithmetic", "entry": {"question": "", "answer": "7", "metadata": "not a mapping"}},
])
def test_a_reference_naming_another_task_is_refused_without_scoring(reference, monkeypatch):
    verifier = build_verifier("reasoning_gym", task="basic_arithmetic")
    monkeypatch.setattr(verifier, "_scorer", lambda task: pytest.fail(f"the {task} scorer ran"))
    assert verifier.check("<answer>7</answer>", json.dumps(reference)).reason == "error"


def test_configured_tasks_score_references_that_name_them():
    verifier = build_verifier("reasoning_gym", tasks=["basic_arithmetic", "gcd"])
    for task in ("basic_arithmetic", "gcd"):
        assert verifier.check("<answer>7</answer>", reference_for(task, {"question": "", "answer": "7"})).correct
    assert verifier.check("<answer>7</answer>", reference_for("lcm", {"question": "", "answer": "7"})).reason == "error"


def test_every_allowed_task_scores_its_own_answers_in_sandboxed_workers():
    """The sandbox leaves the scorers working: each allowed task's generated answers are correct."""
    import reasoning_gym

    references, responses = [], []
    for task in sorted(SAFE_TASKS):
        for entry in reasoning_gym.create_dataset(task, seed=5, size=2):
            references.append(reference_for(task, entry))
            responses.append(f"<answer>{entry['answer']}</answer>")
    with build_verifier("reasoning_gym", tasks=sorted(SAFE_TASKS), timeout_s=30, workers=2) as verifier:
        verdicts = verifier.batch(responses, references)
    assert [v.reason for v in verdicts] == ["ok"] * len(references)


def test_reasoning_gym_source_to_verify_stage():
    from stages.source import SourceConfig, SourceStage
    from stages.verify import VerifyConfig, VerifyStage

    rows = {k: [] for k in C.PROBLEM_COLUMNS}
    for batch in SourceStage(SourceConfig(kind="reasoning_gym", task="basic_arithmetic", n=4), seed=3).read():
        for key in rows:
            rows[key] += batch[key]
    completions = [f"<answer>{a}</answer>" for a in rows[C.ANSWER][:3]] + ["<answer>-0.123</answer>"]
    batch = {**rows, C.COMPLETION: completions, C.FINISH_REASON: ["stop"] * 4}
    stage = VerifyStage(VerifyConfig(verifier="reasoning_gym", options={"task": "basic_arithmetic", "timeout_s": 10}))
    try:
        out = stage(batch)
    finally:
        stage.verifier.close()
    assert out[C.VERDICT_REASON] == ["ok", "ok", "ok", "mismatch"]
    # the same rows under another configured task: refused, not scored by the task the data names
    other = VerifyStage(VerifyConfig(verifier="reasoning_gym", options={"task": "gsm_symbolic", "timeout_s": 10}))
    try:
        assert other(batch)[C.VERDICT_REASON] == ["error"] * 4
    finally:
        other.verifier.close()


# -- least privilege in the workers -----------------------------------------------------------------------------
class _ProbeVerifier(Verifier):
    """Reports, from inside a sandboxed worker, what it may do; the reference is a file path to try to write."""

    name = "probe"
    sandboxed = True

    def check(self, response: str, reference: str) -> Verdict:
        if response == "sleep":
            time.sleep(60)
        facts: dict = {"uid": os.getuid(), "euid": os.geteuid()}
        for limit in ("RLIMIT_CORE", "RLIMIT_FSIZE", "RLIMIT_NPROC"):
            facts[limit] = list(resource.getrlimit(getattr(resource, limit)))
        try:
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
            facts["fork"] = "allowed"
        except OSError as e:
            facts["fork"] = type(e).__name__
        try:
            with open(reference, "w") as f:
                f.write("x")
            facts["write"] = "allowed"
        except OSError as e:
            facts["write"] = type(e).__name__
        try:
            facts["root_listing"] = os.listdir("/")
        except OSError as e:
            facts["root_listing"] = type(e).__name__
        return self._verdict(True, json.dumps(facts), "ok")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="worker pools need POSIX")
def test_sandboxed_workers_lose_privileges_and_the_pool_still_works(tmp_path):
    target = tmp_path / "written"
    with _ProbeVerifier(workers=1, timeout_s=2) as verifier:
        first = json.loads(verifier("probe", str(target)).extracted)
        assert verifier("sleep", str(target)).reason == "timeout"  # the stuck worker is killed and replaced
        verdicts = verifier.batch(["probe"] * 3, [str(target)] * 3)
    assert [v.reason for v in verdicts] == ["ok"] * 3
    assert first["RLIMIT_CORE"] == [0, 0] and first["RLIMIT_FSIZE"] == [0, 0]
    assert first["write"] != "allowed" and (not target.exists() or target.stat().st_size == 0)
    assert first["fork"] != "allowed" and first["RLIMIT_NPROC"] == [0, 0]
    if os.geteuid() == 0:  # root gives up root and the filesystem
        assert first["uid"] != 0 and first["euid"] != 0
        assert first["root_listing"] != os.listdir("/")
    assert json.loads(verdicts[-1].extracted) == first  # the replacement worker is sandboxed the same way


def test_verifiers_that_run_no_third_party_code_are_not_sandboxed():
    from verifiers import VERIFIERS

    assert [name for name, cls in VERIFIERS.items() if cls.sandboxed] == ["reasoning_gym"]

"""Driver memory against pool size: the driver streams blocks to part files, so its RSS must not grow with the pool.

Runs the same small pipeline (source -> sample -> verify -> difficulty -> curate -> export, the toy 'test' model,
short completions) at each pool size as `python -m pipeline.cli run` on an embedded local Ray, samples the driver
process's RSS every 0.1 s (the driver only: Ray's own processes are separate) and reads its peak (VmHWM) from /proc.
Prints peak RSS per pool size and the ratio of the largest to the smallest.

    .venv/bin/python bench/driver_memory.py                 # pools of 500 and 5,000 problems
    .venv/bin/python bench/driver_memory.py --pools 500 5000 --k 1 --max-tokens 8
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def peak_hwm_mb(pid: int) -> float | None:
    """The process's peak resident set size so far (VmHWM), in MB; None when /proc does not say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def config_for(pool: int, out: Path, model: str, k: int, max_tokens: int) -> dict:
    data = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    data.update(name=f"pool{pool}", output_root=str(out), ray={"num_cpus": 2, "progress_bars": False})
    data["stages"]["source"].update(n=pool, levels=[1, 2, 3])
    data["stages"]["sample"].update(model=model, k=k, max_tokens=max_tokens, threads=1)
    data["stages"]["sample"]["resources"] = {"num_cpus": 1, "concurrency": 1, "batch_size": 250}
    data["stages"]["verify"]["resources"] = {"num_cpus": 1, "concurrency": 1, "batch_size": 500}
    return data


def measure(pool: int, out: Path, model: str, k: int, max_tokens: int, interval: float) -> dict:
    """Runs one pool size; returns its driver's RSS figures."""
    import psutil

    cfg_path = out / f"pool{pool}.yaml"
    cfg_path.write_text(yaml.safe_dump(config_for(pool, out, model, k, max_tokens), sort_keys=False))
    env = {**os.environ, "RAY_ADDRESS": "", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(cfg_path)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    driver = psutil.Process(proc.pid)
    samples: list[float] = []
    hwm = 0.0
    while proc.poll() is None:
        try:
            samples.append(driver.memory_info().rss / 2**20)
            hwm = max(hwm, peak_hwm_mb(proc.pid) or 0.0)
        except psutil.Error:
            break
        time.sleep(interval)
    log = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"pool {pool}: the run failed (exit {proc.returncode}):\n{log[-3000:]}")
    parts = sum(1 for _ in (out / f"pool{pool}" / "01_sample").glob("part-*.parquet"))
    return {"pool": pool, "seconds": time.perf_counter() - t0, "peak_mb": max([hwm, *samples]),
            "median_mb": sorted(samples)[len(samples) // 2] if samples else float("nan"), "parts": parts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pools", type=int, nargs="+", default=[500, 5000], help="pool sizes (problems)")
    parser.add_argument("--k", type=int, default=1, help="completions per problem")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per completion (short: a fast run)")
    parser.add_argument("--model", default=None, help="model directory (default: the toy 'test' model)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between RSS samples")
    parser.add_argument("--keep", type=Path, default=None, help="write runs here and keep them (default: a temp dir)")
    args = parser.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.model is None:
        from pipeline.toymodel import ensure_toy_model

        args.model = str(ensure_toy_model("test", progress=False))
    out = args.keep or Path(tempfile.mkdtemp(prefix="lm-drivermem-"))
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for pool in args.pools:
        r = measure(pool, out, args.model, args.k, args.max_tokens, args.interval)
        results.append(r)
        print(f"pool {r['pool']:>7,} problems ({r['pool'] * args.k:,} completions): driver peak RSS "
              f"{r['peak_mb']:7.1f} MB, median {r['median_mb']:7.1f} MB, {r['parts']} sample part files, "
              f"{r['seconds']:.0f}s", flush=True)
    small, large = results[0], results[-1]
    ratio = large["peak_mb"] / small["peak_mb"]
    print(f"pool x{large['pool'] / small['pool']:g}: driver peak RSS x{ratio:.3f} "
          f"({'within' if abs(ratio - 1) <= 0.2 else 'OUTSIDE'} +-20%)")
    if args.keep is None:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

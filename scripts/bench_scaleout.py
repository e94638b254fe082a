"""Speed-up of sharded evaluation: the same 2-shard multirun with the joblib launcher, 1 worker vs 2 workers.

Both runs are the real CLI (``python -m pipeline.run -m hydra/launcher=joblib hydra.launcher.n_jobs=N
dataset.num_shards=2 dataset.shard=0,1 ...``), each into a fresh output folder (nothing resumed), and
include everything: process start, model loading, explaining, scoring, and the merge at the end
(publishing is off, so the tracking store does not enter the timing). Every process runs one torch thread
(``OMP_NUM_THREADS=1``), so the comparison is one core against two. Note that joblib runs ``n_jobs=1`` inside
the launching process (no worker to start), while ``n_jobs=2`` first starts two workers that import torch. For context, the same config unsharded
in one process with 2 torch threads (intra-op parallelism instead of shards) is timed too.

Repeats alternate the variants; the table shows the minimum wall time of each (the least disturbed by other
processes on a shared machine) and the speed-ups against 1 worker. The load average printed with each timing
says how many other runnable processes competed for the 2 cores: a speed-up needs them idle.

    python scripts/bench_scaleout.py [--repeats 2] [--method lrp] [--limit 360] [--batch-size 30]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_run(overrides: list[str], threads: int) -> float:
    """Wall seconds of one CLI call in a fresh output folder."""
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory() as out:
        tracking = [f"tracking.uri=sqlite:///{out}/mlflow.db", "tracking.publish=false"]  # (a sweep's parent run)
        command = [sys.executable, "-m", "pipeline.run", *overrides, f"output_root={out}/outputs", *tracking]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=out, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
        if "dataset.num_shards=2" in overrides and not list(Path(out).rglob("merged-2-shards/COMPLETE")):
            sys.exit("the shards were not merged")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--method", default="lrp")
    parser.add_argument("--limit", type=int, default=360, help="digits to explain (360 = the whole test split)")
    parser.add_argument("--batch-size", type=int, default=30)
    args = parser.parse_args()

    config = [f"method={args.method}", f"dataset.limit={args.limit}", f"batch_size={args.batch_size}"]
    sharded = ["-m", "hydra/launcher=joblib", *config, "dataset.num_shards=2", "dataset.shard=0,1"]
    variants = {
        "2 shards, joblib n_jobs=1 (1 thread)": (sharded + ["hydra.launcher.n_jobs=1"], 1),
        "2 shards, joblib n_jobs=2 (1 thread each)": (sharded + ["hydra.launcher.n_jobs=2"], 1),
        "unsharded, 1 process, 2 torch threads": (config, 2),
    }
    print(f"config: {' '.join(config)}; {os.cpu_count()} CPUs; {args.repeats} repeats, minimum shown")
    best = {name: float("inf") for name in variants}
    for repeat in range(args.repeats):
        for name, (overrides, threads) in variants.items():
            wall = timed_run(overrides, threads)
            best[name] = min(best[name], wall)
            load = os.getloadavg()[0]  # other processes on the machine take cores from the workers
            print(f"  repeat {repeat + 1}: {name}: {wall:.1f} s (1-min load average after: {load:.1f})", flush=True)
    one = best["2 shards, joblib n_jobs=1 (1 thread)"]
    print(f"\n{'variant':45s} {'wall s':>8s} {'speed-up vs 1 worker':>21s}")
    for name, wall in best.items():
        print(f"{name:45s} {wall:8.1f} {one / wall:20.2f}x")


if __name__ == "__main__":
    main()

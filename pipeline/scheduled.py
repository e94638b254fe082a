"""``python -m pipeline.scheduled``: the nightly evaluation, for cron, systemd timers and Kubernetes CronJobs.

1. Takes a non-blocking lock (``flock``): while a run holds it, another exits at once with 75, so
   scheduled runs never overlap. The sweep inherits the lock: while it lives, even after ``kill -9`` of this
   wrapper, the next scheduled run exits 75.
2. Runs the ``experiment=nightly`` sweep (extra Hydra overrides after ``--``) into a fresh folder
   ``<output root>/<experiment>/<timestamp>``: one MLflow parent run, one child per config.
3. Runs the regression check (``pipeline.regression``) on that sweep's children.

Exit codes (``pipeline.exit_codes.ExitCode``): 0 ok, 1 the sweep or a job in it failed, 2 a regression
(SRG dropped beyond ``--threshold``), 64 bad usage, 75 locked. A failed job wins over a regression.
"""
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Optional

from pipeline.exit_codes import ExitCode, UsageParser
from pipeline.locks import exclusive_lock, holder

def sweep_command(uri: str, experiment: str, sweep_dir: Path, overrides: list[str]) -> list[str]:
    """The Hydra multirun of the nightly preset (the same command works by hand)."""
    return [sys.executable, "-m", "pipeline.run", "experiment=nightly", f"tracking.experiment={experiment}",
            f"tracking.uri={uri}", f"hydra.sweep.dir={sweep_dir}", *overrides]


def parent_of_sweep(sweep_dir: Path) -> Optional[str]:
    from pipeline.stages.results import read_json
    from pipeline.tracking.sweep_runs import SWEEP_FILE

    path = sweep_dir / SWEEP_FILE
    return read_json(path)["parent_run_id"] if path.exists() else None


def main(argv: Optional[list[str]] = None) -> int:
    parser = UsageParser(prog="python -m pipeline.scheduled", description=__doc__.splitlines()[0],
                         epilog="Exit codes: 0 ok, 1 job failed, 2 regression, 64 usage, 75 locked.")
    parser.add_argument("--lock", help="lock file (default <output root>/<experiment>.lock: outputs/nightly.lock)")
    parser.add_argument("--experiment", default="nightly")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument("--output-root", default="outputs", help="sweeps go to <this>/<experiment>/<timestamp>")
    parser.add_argument("--threshold", type=float, default=0.05, help="largest allowed SRG drop (absolute)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for the sweep (after --)")
    args = parser.parse_args(argv)
    if args.threshold < 0:
        parser.error(f"--threshold must be >= 0, got {args.threshold}")

    lock = Path(args.lock or Path(args.output_root) / f"{args.experiment}.lock")
    with exclusive_lock(lock) as held:
        if held is None:
            print(f"another scheduled run ({holder(lock)}) holds {lock}: not starting", file=sys.stderr)
            return ExitCode.LOCKED
        return _run(args, held)


def _run(args, lock: IO) -> ExitCode:
    from pipeline.regression import check, report
    from pipeline.tracking.store import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    sweep_dir = Path(args.output_root).resolve() / args.experiment / time.strftime("%Y-%m-%d_%H-%M-%S")
    command = sweep_command(uri, args.experiment, sweep_dir, args.overrides)
    print("running:", " ".join(command), flush=True)
    # the sweep holds the lock with us (it inherits the descriptor): killing this wrapper leaves no lock-free sweep
    sweep_failed = subprocess.run(command, pass_fds=[lock.fileno()]).returncode != 0
    parent = parent_of_sweep(sweep_dir)
    if parent is None:
        print(f"the sweep made no parent run (see its output above; folder {sweep_dir})", file=sys.stderr)
        return ExitCode.JOB_FAILED
    verdict = report(check(uri, args.experiment, args.threshold, parent=parent))
    if sweep_failed:
        print("the sweep failed (see the job errors above)", file=sys.stderr)
        return ExitCode.JOB_FAILED
    return verdict


if __name__ == "__main__":
    sys.exit(main())

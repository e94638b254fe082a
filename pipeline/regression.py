"""``python -m pipeline.regression --experiment nightly --threshold 0.05``: flag configs whose SRG dropped.

For each config (tag ``config_hash``: everything that decides the results, so a changed preset starts a new
series) the newest scheduled run is compared with the previous scheduled run of the same config. A drop of
``faithfulness/srg`` by more than ``threshold`` (absolute; SRG lies in [-1, 1]) tags the new run
``regression=true`` with the details and makes the exit code 2; otherwise the run is tagged
``regression=false``. The first run of a config passes. ``--parent`` checks the children of one sweep (what
``pipeline.scheduled`` does), so a config that failed tonight is not judged on last night's run again.
"""
import sys
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from pipeline.compare import search_runs
from pipeline.exit_codes import ExitCode, UsageParser
from pipeline.tracking.store import resolve_tracking_uri

SRG = "metrics.faithfulness/srg"
CONFIG = "tags.config_hash"
DEFAULT_THRESHOLD = 0.05


@dataclass(frozen=True)
class Verdict:
    run_id: str
    run_name: str
    config_hash: str
    srg: float
    previous_run_id: Optional[str]  # None: the first scheduled run of this config
    previous_srg: Optional[float]
    threshold: float

    @property
    def drop(self) -> Optional[float]:
        return None if self.previous_srg is None else self.previous_srg - self.srg

    @property
    def regressed(self) -> bool:
        return self.drop is not None and self.drop > self.threshold

    def describe(self) -> str:
        if self.previous_run_id is None:
            return f"{self.run_name} [{self.config_hash}]: SRG {self.srg:.4f}, first scheduled run: pass"
        verdict = "REGRESSION" if self.regressed else "pass"
        return (f"{self.run_name} [{self.config_hash}]: SRG {self.srg:.4f} vs {self.previous_srg:.4f} "
                f"(run {self.previous_run_id}), drop {self.drop:+.4f}, threshold {self.threshold}: {verdict}")


def scheduled_runs(uri: str, experiment: str, schedule: str) -> pd.DataFrame:
    """Finished runs tagged ``schedule=<schedule>`` that carry an SRG and a config hash, newest first."""
    from pipeline.tracking.store import tracking_client

    if tracking_client(uri).get_experiment_by_name(experiment) is None:
        raise ValueError(f"no experiment named {experiment!r} at {uri}: check --experiment and --tracking-uri")
    runs = search_runs(
        uri,
        experiment_names=[experiment],
        filter_string=f"attributes.status = 'FINISHED' and tags.schedule = '{schedule}'",
        order_by=["attributes.start_time DESC"],
    )
    if runs.empty or SRG not in runs or CONFIG not in runs:
        return runs.iloc[0:0]
    return runs[runs[SRG].notna() & runs[CONFIG].notna()].reset_index(drop=True)


def judge(runs: pd.DataFrame, threshold: float, parent: Optional[str] = None) -> list[Verdict]:
    """Compare the newest run of each config (or each child of ``parent``) with the config's previous run."""
    if parent is not None:
        parent_column = runs.get("tags.mlflow.parentRunId", pd.Series(None, index=runs.index))
        candidates = runs[parent_column == parent]
    else:
        candidates = runs.drop_duplicates(CONFIG)  # newest first: the first row of each config
    verdicts = []
    for _, run in candidates.iterrows():
        earlier = runs[(runs[CONFIG] == run[CONFIG]) & (runs["start_time"] < run["start_time"])]
        previous = earlier.iloc[0] if len(earlier) else None
        verdicts.append(Verdict(
            run_id=run["run_id"],
            run_name=str(run.get("tags.mlflow.runName", run["run_id"])),
            config_hash=run[CONFIG],
            srg=float(run[SRG]),
            previous_run_id=None if previous is None else previous["run_id"],
            previous_srg=None if previous is None else float(previous[SRG]),
            threshold=threshold,
        ))
    return verdicts


def tag_verdicts(uri: str, verdicts: list[Verdict]) -> None:
    """Record each verdict on its run, so the MLflow UI can filter ``tags.regression = 'true'``."""
    from pipeline.tracking.store import tracking_client

    client = tracking_client(uri)
    for v in verdicts:
        client.set_tag(v.run_id, "regression", str(v.regressed).lower())
        client.set_tag(v.run_id, "regression.threshold", str(v.threshold))
        if v.previous_run_id is not None:
            client.set_tag(v.run_id, "regression.previous_run_id", v.previous_run_id)
            client.set_tag(v.run_id, "regression.previous_srg", f"{v.previous_srg:.6f}")
            client.set_tag(v.run_id, "regression.srg_drop", f"{v.drop:.6f}")


def check(uri: str, experiment: str, threshold: float = DEFAULT_THRESHOLD, schedule: str = "nightly",
          parent: Optional[str] = None) -> list[Verdict]:
    """Judge and tag the newest scheduled runs (see the module docstring)."""
    verdicts = judge(scheduled_runs(uri, experiment, schedule), threshold, parent)
    tag_verdicts(uri, verdicts)
    return verdicts


def report(verdicts: list[Verdict]) -> ExitCode:
    """Print one line per config; ``REGRESSION`` when any regressed."""
    for v in verdicts:
        print(v.describe())
    regressed = [v for v in verdicts if v.regressed]
    if not verdicts:
        print("no scheduled runs to check")
    print(f"regression check: {len(regressed)} of {len(verdicts)} config(s) regressed")
    return ExitCode.REGRESSION if regressed else ExitCode.OK


def main(argv: Optional[list[str]] = None) -> int:
    parser = UsageParser(prog="python -m pipeline.regression", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="nightly")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD, help="largest allowed SRG drop (absolute)")
    parser.add_argument("--schedule", default="nightly", help="compare runs tagged schedule=<this> (default nightly)")
    parser.add_argument("--parent", help="check the children of this sweep parent run (default: newest run per config)")
    args = parser.parse_args(argv)
    if args.threshold < 0:
        parser.error(f"--threshold must be >= 0, got {args.threshold}")
    try:
        verdicts = check(resolve_tracking_uri(args.tracking_uri), args.experiment, args.threshold, args.schedule, args.parent)
    except ValueError as error:
        parser.error(str(error))
    return report(verdicts)


if __name__ == "__main__":
    sys.exit(main())

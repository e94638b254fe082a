"""``python -m pipeline.gate --model NAME --champion ALIAS --challenger ALIAS``: champion vs challenger, for CI/CD.

1. Resolves both aliases of the registered model (``pipeline.tracking.registry``) before anything is computed.
2. Runs the same pipeline config on both as one sweep (``python -m pipeline.run -m model=mlflow
   model.uri=models:/NAME@champion,models:/NAME@challenger ...`` plus any Hydra overrides after ``--``): a child run
   per alias and the sweep's parent as the comparison run, with the ranking and report of the two.
3. Passes when, on every ``--metric`` (default ``faithfulness/srg``), the challenger is not worse than the champion
   by more than ``--margin`` (absolute, in the metric's own direction), and its accuracy is at least
   ``--min-accuracy``. The verdict and each comparison are tags of the comparison run (``gate.*``).
4. ``--promote`` then points the champion alias at the challenger's version.

Exit codes: 0 the challenger passes, 2 it does not, 1 the gate could not decide (a model, alias or server that is
not there, a failed run), 64 a bad command line.
"""
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pipeline.exit_codes import UsageParser

PASS, WORSE, FAILED = 0, 2, 1
ACCURACY = "model/accuracy"


@dataclass
class Comparison:
    metric: str
    champion: float
    challenger: float
    higher_is_better: bool
    margin: float

    @property
    def passes(self) -> bool:
        """Not worse than the champion by more than the margin (a missing value never passes)."""
        drop = self.champion - self.challenger if self.higher_is_better else self.challenger - self.champion
        return drop <= self.margin

    def line(self) -> str:
        sign = "higher" if self.higher_is_better else "lower"
        return (f"{self.metric} ({sign} is better): champion {self.champion:.4f}, challenger {self.challenger:.4f}"
                f" -> {'ok' if self.passes else f'worse by more than {self.margin}'}")


def compare(champion: dict[str, float], challenger: dict[str, float], metrics: list[str],
            margin: float) -> list[Comparison]:
    """One comparison per metric; a metric that one of the runs lacks is an error naming what was logged."""
    from pipeline.stages.metrics import higher_is_better

    found = []
    for metric in metrics:
        missing = [who for who, values in (("champion", champion), ("challenger", challenger)) if metric not in values]
        if missing:
            logged = ", ".join(sorted(k for k in champion if "/" in k))
            raise ValueError(f"--metric {metric}: the {' and '.join(missing)} run logged no such metric; add it to "
                             f"evaluation.metrics (after --), or choose one that was logged: {logged}")
        found.append(Comparison(metric, champion[metric], challenger[metric], higher_is_better(metric), margin))
    return found


def sweep_command(name: str, aliases: tuple[str, str], uri: str, experiment: str, sweep_dir: Path,
                  overrides: list[str]) -> list[str]:
    """The Hydra multirun of one config over both aliases (the same command works by hand)."""
    uris = ",".join(f"models:/{name}@{alias}" for alias in aliases)
    return [sys.executable, "-m", "pipeline.run", "-m", "model=mlflow", f"model.uri={uris}", f"tracking.uri={uri}",
            f"tracking.experiment={experiment}", f"hydra.sweep.dir={sweep_dir}", "+tracking.tags.trigger=gate",
            *overrides]


def main(argv: Optional[list[str]] = None) -> int:
    parser = UsageParser(prog="python -m pipeline.gate", description=__doc__.splitlines()[0],
                         epilog="Exit codes: 0 pass, 2 the challenger is worse, 1 failure, 64 usage.")
    parser.add_argument("--model", required=True, help="the registered model's name")
    parser.add_argument("--champion", default="champion", help="alias of the model in production")
    parser.add_argument("--challenger", default="challenger", help="alias of the candidate")
    parser.add_argument("--metric", action="append", help="metric key to compare (repeatable; default "
                        "faithfulness/srg)")
    parser.add_argument("--margin", type=float, default=0.02, help="how much worse the challenger may be (absolute)")
    parser.add_argument("--min-accuracy", type=float, default=0.0, help="the challenger's least accuracy, 0..1")
    parser.add_argument("--promote", action="store_true", help="on a pass, point the champion alias at the "
                        "challenger's version")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument("--experiment", default="xai-pipeline", help="the MLflow experiment of the runs")
    parser.add_argument("--output-root", default="outputs", help="the sweep goes to <this>/<experiment>/gate-<time>")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both runs (after --), e.g. "
                        "method=lrp composite=epsilon_plus dataset.limit=64")
    args = parser.parse_args(argv)
    if args.margin < 0:
        parser.error(f"--margin must be >= 0, got {args.margin}")
    if not 0 <= args.min_accuracy <= 1:
        parser.error(f"--min-accuracy must be in 0..1, got {args.min_accuracy}")
    if args.champion == args.challenger:
        parser.error(f"--champion and --challenger are both {args.champion!r}: give two aliases")
    try:
        return _gate(args, args.metric or ["faithfulness/srg"])
    except (ValueError, TypeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return FAILED


def _gate(args, metrics: list[str]) -> int:
    from pipeline.stages.metrics import higher_is_better
    from pipeline.tracking.registry import resolve
    from pipeline.scheduled import parent_of_sweep
    from pipeline.tracking.store import resolve_tracking_uri, tracking_client

    for metric in metrics:
        higher_is_better(metric)  # an unknown key fails before any work
    uri = resolve_tracking_uri(args.tracking_uri)
    models = {alias: resolve(f"models:/{args.model}@{alias}", uri) for alias in (args.champion, args.challenger)}
    for alias, model in models.items():
        print(f"{alias}: {args.model} version {model.version} (run {model.run_id})")
    sweep_dir = Path(args.output_root).resolve() / args.experiment / f"gate-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    command = sweep_command(args.model, (args.champion, args.challenger), uri, args.experiment, sweep_dir,
                            args.overrides)
    print("running:", " ".join(command), flush=True)
    failed = subprocess.run(command).returncode != 0
    parent = parent_of_sweep(sweep_dir)
    client = tracking_client(uri)
    runs = _runs_by_alias(client, args.experiment, parent) if parent else {}
    if failed or set(runs) != set(models):
        print(f"the runs did not finish (see their output above; folder {sweep_dir})", file=sys.stderr)
        return FAILED
    champion, challenger = (runs[a].data.metrics for a in (args.champion, args.challenger))
    comparisons = compare(champion, challenger, metrics, args.margin)
    accurate = challenger.get(ACCURACY, 0.0) >= args.min_accuracy
    verdict = PASS if accurate and all(c.passes for c in comparisons) else WORSE
    for comparison in comparisons:
        print(comparison.line())
    print(f"{ACCURACY}: challenger {challenger.get(ACCURACY, float('nan')):.4f} (at least {args.min_accuracy}) -> "
          f"{'ok' if accurate else 'too low'}")
    _tag_verdict(client, parent, args, models, comparisons, verdict)
    if verdict == PASS and args.promote:
        version = models[args.challenger].version
        client.set_registered_model_alias(args.model, args.champion, version)
        print(f"promoted: {args.model}@{args.champion} is now version {version}")
    print("challenger passes" if verdict == PASS else "challenger is worse than the champion: not promoted")
    return verdict


def _runs_by_alias(client, experiment: str, parent: str) -> dict:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    children = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}' and "
                                  "attributes.status = 'FINISHED'")
    return {run.data.tags.get("model.registry.alias"): run for run in children}


def _tag_verdict(client, parent: str, args, models: dict, comparisons: list[Comparison], verdict: int) -> None:
    tags = {"gate.verdict": "pass" if verdict == PASS else "worse", "gate.model": args.model,
            "gate.champion": f"{args.champion} (version {models[args.champion].version})",
            "gate.challenger": f"{args.challenger} (version {models[args.challenger].version})",
            "gate.margin": str(args.margin), "gate.min_accuracy": str(args.min_accuracy),
            **{f"gate.{c.metric}": c.line() for c in comparisons}}
    for key, value in tags.items():
        client.set_tag(parent, key, value[:5000])


if __name__ == "__main__":
    sys.exit(main())

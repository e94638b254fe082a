"""``python -m pipeline.publish <output_dir>``: publish a finished run folder to MLflow (idempotent).

Use it when a run could not reach the tracking server; publishing the same folder again finds the
run it made before instead of making a second one.
"""
import argparse
import logging
import sys

from omegaconf import OmegaConf

from pipeline.stages.results import RunFolder
from pipeline.tracking.publishing import publish
from pipeline.tracking.store import resolve_tracking_uri


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.publish", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="the run's output folder (holds manifest.json and COMPLETE)")
    parser.add_argument("--tracking-uri", help="default: the run's tracking.uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument("--experiment", help="default: the run's tracking.experiment")
    parser.add_argument("--timeout-s", type=float, help="give up after about this long (default: the run's "
                        "tracking.timeout_s, else 30)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    folder = RunFolder(args.output_dir)
    if not folder.config_file.exists():
        parser.error(f"{folder.path} is not a pipeline output folder (no config.yaml)")
    tracking = OmegaConf.load(folder.config_file).tracking
    uri = args.tracking_uri or resolve_tracking_uri(tracking.uri)
    experiment = args.experiment or tracking.experiment
    try:
        timeout_s = args.timeout_s or tracking.get("timeout_s", 30.0)
        run_id = publish(folder, uri, experiment, dict(tracking.tags), timeout_s=timeout_s)
    except Exception as error:  # incomplete folder, server down or not answering: say so, no traceback
        print(f"not published: {error}", file=sys.stderr)
        return 1
    print(f"published {folder.path} to {uri}, experiment {experiment}: run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time the default pipeline run against the explain + evaluate compute it wraps, side by side in one run.

"Compute alone" is LRP(EpsilonGammaBox) + MoRF/LeRF pixel flipping on the same samples, batches, model and
settings as the default run, called directly. "Wall" is ``pipeline.job.run_job`` on the default config:
data and model loading, the same compute, batch files, summary and figures, and publishing to MLflow
(SQLite in a temporary folder). Repeats alternate the two; a warm-up first imports everything and
creates the MLflow database, whose costs are printed separately (they are paid once per process / DB).
The overhead ratio is median wall / median compute alone (floor: <= 1.2). On a shared, loaded machine the
two timings drift apart between repeats; the table also shows each run's wall time over its own explain +
evaluate time (``runtime/*`` metrics), which is measured inside the same run and so drifts less.

    python scripts/bench_pipeline.py [--repeats 3] [overrides ...]   e.g. dataset.limit=64
"""
import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from pipeline.config import CONF_DIR
from pipeline.job import run_job
from pipeline.stages.data import batch_plan, iterate_batches, load_dataset, select_samples
from pipeline.stages.evaluate import Faithfulness
from pipeline.stages.explain import build_analyzer
from pipeline.stages.models import load_model, resolve_device

FLOOR = 1.2


def make_cfg(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def compute_alone(cfg) -> float:
    """Explain + evaluate every batch of the default run, nothing else (loading is not timed)."""
    data = load_dataset(cfg.dataset)
    batches = batch_plan(select_samples(len(data), cfg.dataset.limit), cfg.batch_size)
    loaded = list(iterate_batches(data, batches))
    model = load_model(cfg.model, resolve_device(cfg.device))
    faithfulness = Faithfulness(cfg.evaluation)
    start = time.perf_counter()
    for index, batch in enumerate(loaded):
        explanation = build_analyzer(model, cfg.method, cfg.composite, seed=cfg.seed + index)(batch.x)
        faithfulness(model, batch.x, explanation.attribution, explanation.target, seed=cfg.seed + index)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides on top of the default config")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    warnings.filterwarnings("ignore")

    with tempfile.TemporaryDirectory() as tmp:
        overrides = [*args.overrides, f"tracking.uri=sqlite:///{Path(tmp) / 'mlflow.db'}", "tracking.experiment=bench"]
        cfg = make_cfg(overrides)
        print(f"default run: method={cfg.method.name} composite={cfg.composite.name} dataset={cfg.dataset.name} "
              f"limit={cfg.dataset.limit} batch_size={cfg.batch_size} "
              f"features_in_step={cfg.evaluation.features_in_step}; torch threads={torch.get_num_threads()}")
        start = time.perf_counter()
        run_job(cfg, Path(tmp) / "warmup")
        cold = time.perf_counter() - start

        walls, computes, inside = [], [], []
        for repeat in range(args.repeats):
            runs = [("compute", lambda: computes.append(compute_alone(cfg)))]
            runs.append(("wall", lambda r=repeat: walls.append(timed_run(cfg, Path(tmp) / f"run{r}", inside))))
            for _, run in runs if repeat % 2 == 0 else runs[::-1]:
                run()

    wall, compute = statistics.median(walls), statistics.median(computes)
    print(f"first run in this process (imports, MLflow DB creation): {cold:8.2f} s")
    print(f"{'repeat':>8} {'wall (s)':>10} {'compute alone (s)':>18} {'ratio':>7} {'compute in run (s)':>19} {'ratio':>7}")
    for i, (w, c, r) in enumerate(zip(walls, computes, inside)):
        print(f"{i:>8} {w:10.2f} {c:18.2f} {w / c:7.3f} {r:19.2f} {w / r:7.3f}")
    ratio = wall / compute
    print(f"median wall {wall:.2f} s, median compute alone {compute:.2f} s, overhead = wall / compute = {ratio:.3f} "
          f"({'within' if ratio <= FLOOR else 'ABOVE'} the floor {FLOOR})")
    sys.exit(0 if ratio <= FLOOR else 1)


def timed_run(cfg, output_dir: Path, inside: list[float]) -> float:
    """Wall time of one whole run; appends the run's own explain + evaluate seconds to ``inside``."""
    start = time.perf_counter()
    folder = run_job(cfg, output_dir)
    wall = time.perf_counter() - start
    metrics = json.loads((folder.results / "metrics.json").read_text())
    inside.append(metrics["runtime/explain_seconds"] + metrics["runtime/evaluate_seconds"])
    return wall


if __name__ == "__main__":
    main()

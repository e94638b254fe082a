"""Sweeps as one MLflow parent run with a child run per job (a Hydra callback, registered in ``conf/config.yaml``).

``on_multirun_start`` runs once, before any launcher starts a job: it creates the experiment and the
parent run (status RUNNING) up front, so parallel jobs writing to one SQLite file do not race to
create them. The callback object is pickled to the jobs with Hydra's context (joblib, submitit and ray
workers get its ``parent_run_id``); ``on_job_start`` writes the parent into the job's output folder
(``sweep_parent.json``), where ``pipeline.tracking.publishing.publish`` reads it, so a run published later with
``python -m pipeline.publish`` still lands under its parent. ``on_multirun_end`` logs the ranking of
the children into the parent and finishes it; a sweep that fails leaves the parent FAILED, and one whose driver
was killed is marked KILLED by the next sweep or publish in that experiment (``end_orphaned_sweeps``).
"""
import atexit
import logging
import time
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from pipeline.locks import this_process
from pipeline.stages.results import write_json
from pipeline.tracking.sweep_runs import DRIVER_TAG, PARENT_FILE, SWEEP_FILE, SWEEP_TAG, end_orphaned_sweeps

log = logging.getLogger(__name__)


class MlflowSweep(Callback):
    """Parent run per multirun; see the module docstring."""

    def __init__(self, tracking_uri: Optional[str], experiment: str, tags: Optional[dict[str, str]] = None):
        from pipeline.tracking.store import resolve_tracking_uri

        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.tags = dict(tags or {})
        self.parent_run_id: Optional[str] = None
        self._ended = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        try:
            self.parent_run_id = self._create_parent(config, sweep_dir)
        except Exception as error:  # tracking down: the jobs still run and keep their results locally
            log.warning("could not create the sweep's parent run in MLflow (%s); jobs publish without a parent", error)
            return
        write_json(sweep_dir / SWEEP_FILE, self._record())
        atexit.register(self._fail_if_unfinished)
        log.info("sweep parent run %s (experiment %s, %s)", self.parent_run_id, self.experiment, self.tracking_uri)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Runs in the job's process: record (or, outside a sweep, forget) the parent in the output folder."""
        path = Path(str(config.hydra.runtime.output_dir)) / PARENT_FILE
        if self.parent_run_id:
            write_json(path, self._record())  # shard folders too: pipeline.merge hands it on to the merged run
        else:
            path.unlink(missing_ok=True)  # a single run reusing a sweep's folder publishes without that parent

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.parent_run_id:
            return
        from pipeline.compare import find_runs, log_comparison
        from pipeline.tracking.store import tracking_client

        client = tracking_client(self.tracking_uri)
        try:
            children = find_runs(self.tracking_uri, self.experiment, parent=self.parent_run_id)
            if len(children):
                log_comparison(client, self.parent_run_id, children)
        except Exception as error:  # the summary is a convenience; the children are what counts
            log.warning("could not log the sweep summary into run %s: %s", self.parent_run_id, error)
        client.set_terminated(self.parent_run_id, "FINISHED")
        self._ended = True

    def _create_parent(self, config: DictConfig, sweep_dir: Path) -> str:
        from pipeline.tracking.store import get_or_create_experiment, tracking_client

        client = tracking_client(self.tracking_uri)
        experiment_id = get_or_create_experiment(client, self.experiment)
        end_orphaned_sweeps(client, experiment_id)
        params = config.hydra.sweeper.get("params") or {}
        overrides = " ".join(config.hydra.overrides.task)
        sweep = " ".join(f"{k}={v}" for k, v in params.items())  # sweeps set in config (experiment=nightly)
        tags = {
            SWEEP_TAG: "true",
            "sweep_dir": str(sweep_dir),
            "launcher": str(config.hydra.launcher._target_).rsplit(".", 1)[-1],
            DRIVER_TAG: this_process(),
            "overrides": " ".join(filter(None, (overrides, sweep)))[:8000],
            **self.tags,
        }
        name = f"sweep-{time.strftime('%Y-%m-%d_%H-%M-%S')}"
        run = client.create_run(experiment_id, run_name=name, tags=tags)
        return run.info.run_id

    def _record(self) -> dict[str, str]:
        return {"parent_run_id": self.parent_run_id, "tracking_uri": self.tracking_uri, "experiment": self.experiment}

    def _fail_if_unfinished(self) -> None:
        """Hydra skips ``on_multirun_end`` when a job fails: mark the parent FAILED instead of leaving it RUNNING."""
        if self._ended:
            return
        from pipeline.tracking.store import tracking_client

        try:
            tracking_client(self.tracking_uri).set_terminated(self.parent_run_id, "FAILED")
        except Exception as error:
            log.warning("could not mark sweep parent run %s FAILED: %s", self.parent_run_id, error)

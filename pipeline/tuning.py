"""Metric-driven tuning of a composite's parameters (``experiment=tune_lrp``): the best trial as a composite file.

``hydra/sweeper=optuna`` runs one job per trial (each a child of the sweep's MLflow parent,
``pipeline.scaleout.sweep``) and
maximises what ``pipeline.run.main`` returns, the run's SRG. When the sweep ends, ``TunedComposite`` writes the best
parameters, on top of the tuned composite's own config, as ``<conf_dir>/composite/tuned/<name>.yaml``, and logs them on
the parent run (params and metric ``best/...``, the file as an artifact). The file lives outside the package (an
installed package's ``conf/`` is not the user's to write), in a folder the user puts on Hydra's search path::

    python -m pipeline.run 'hydra.searchpath=[file://<conf_dir>]' composite=tuned/<name>

Only ``composite.*`` keys can be tuned: anything else would not be part of the file. The tuned file keeps the
composite's ``name`` (it selects the rules: ``pipeline.stages.explain.COMPOSITES``), so its runs differ from the
preset's by
their ``composite.*`` params and config hash, not by their run name.
"""
import logging
import sys
import time
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from pipeline.cli import USAGE_ERROR
from pipeline.config import safe_path_part
from pipeline.locks import this_process
from pipeline.stages.results import atomic_write, read_json
from pipeline.tracking.sweep_runs import DRIVER_TAG, SWEEP_FILE

log = logging.getLogger(__name__)

#: What hydra-optuna-sweeper writes into the sweep folder when the study ends: best_params, best_value.
RESULTS_FILE = "optimization_results.yaml"
OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
PREFIX = "composite."
BEST = "best/"
ARTIFACT_DIR = "tuned"
#: Where conf/config.yaml's hydra.searchpath looks (relative to the working folder): <default output_root>/conf.
DEFAULT_CONF_DIR = "outputs/conf"


def schema_of(composite: DictConfig) -> str:
    """The ConfigStore schema (``schema/composite/<name>``) a composite config was built from, for its defaults."""
    store = ConfigStore.instance()
    wanted = OmegaConf.get_type(composite)
    for option in store.list("schema/composite"):
        if OmegaConf.get_type(store.load(f"schema/composite/{option}").node) is wanted:
            return f"/schema/composite/{option.removesuffix('.yaml')}"
    raise ValueError(f"composite={composite.name} was not built from a schema/composite schema (its type is "
                     f"{wanted}): start its file with defaults: [/schema/composite/<schema>@_here_, _self_]")


def tuned_composite_yaml(composite: DictConfig, best_params: dict[str, Any], header: str) -> str:
    """The composite's own config (interpolations such as ZBox's bounds kept) with the tuned values in it."""
    values = OmegaConf.to_container(composite, resolve=False)
    for key, value in best_params.items():
        values[key.removeprefix(PREFIX)] = value
    body = OmegaConf.to_yaml({"defaults": [f"{schema_of(composite)}@_here_", "_self_"], **values})
    return "".join(f"# {line}\n" for line in header.splitlines()) + body


class TunedComposite(Callback):
    """Writes and logs the best trial of an optuna sweep over ``composite.*`` (see the module docstring)."""

    def __init__(self, conf_dir: str, name: str):
        self.conf_dir = Path(conf_dir).expanduser().resolve()  # for Hydra's search path: <conf_dir>/composite/tuned
        self.name = safe_path_part(name, "hydra.callbacks.tuned_composite.name")
        self.path = self.conf_dir / "composite" / "tuned" / f"{self.name}.yaml"
        self.started: Optional[float] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Refuse, before any trial runs, a sweep whose best parameters could not become a composite file (an exit:
        Hydra turns a callback's exception into a warning and would run every trial all the same)."""
        problem = self._problem(config.hydra.sweeper)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(USAGE_ERROR)
        self.started = time.time()

    @staticmethod
    def _problem(sweeper: DictConfig) -> Optional[str]:
        if sweeper._target_ != OPTUNA_SWEEPER:
            return (f"the tuned_composite callback needs hydra/sweeper=optuna (got {sweeper._target_}): use "
                    "experiment=tune_lrp, or remove hydra.callbacks.tuned_composite")
        others = [str(key) for key in sweeper.params or {} if not str(key).startswith(PREFIX)]
        if others or not sweeper.params:
            return (f"hydra.sweeper.params may search only {PREFIX}* keys for a tuned composite (got "
                    f"{', '.join(others) or 'none'}): e.g. hydra.sweeper.params.composite.gamma='tag(log, "
                    "interval(0.01, 1))'")
        return None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from pipeline.run import OBJECTIVE

        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        results_file = sweep_dir / RESULTS_FILE
        if not results_file.exists() or results_file.stat().st_mtime < (self.started or 0):
            raise FileNotFoundError(f"{results_file} was not written by this sweep: the optuna sweeper did not finish")
        results = OmegaConf.to_container(OmegaConf.load(results_file))
        best_params, best_value = results["best_params"], float(results["best_value"])
        parent = self._parent_run(sweep_dir)
        found_by_default = self.conf_dir == (Path.cwd() / DEFAULT_CONF_DIR).resolve()  # conf/config.yaml's searchpath
        searchpath = "" if found_by_default else f"'hydra.searchpath=[file://{self.conf_dir}]' "
        use = f"python -m pipeline.run {searchpath}composite=tuned/{self.name}"
        header = (f"Written by pipeline.tuning (experiment=tune_lrp): the best {PREFIX}* of "
                  f"{config.hydra.sweeper.n_trials} optuna trials,\n{OBJECTIVE} = {best_value:.4f} on "
                  f"model={config.model.name} dataset={config.dataset.name} split={config.dataset.split} "
                  f"(MLflow parent run {parent[1] if parent else 'none'}).\nUse it: {use}")
        text = tuned_composite_yaml(config.composite, best_params, header)
        atomic_write(self.path, lambda f: f.write(text.encode()))
        log.info("best %s = %.4f with %s: written to %s; run it with:\n  %s", OBJECTIVE, best_value, best_params,
                 self.path, use)
        if parent:
            self._log_best(*parent, best_params, {f"{BEST}{OBJECTIVE}": best_value})

    def _parent_run(self, sweep_dir: Path) -> Optional[tuple[str, str]]:
        """This sweep's MLflow (tracking URI, parent run id), as ``pipeline.scaleout.sweep.MlflowSweep`` recorded it;
        None
        when that record is an earlier sweep's (MLflow was down when this one started) or MLflow is down now."""
        from pipeline.tracking.store import tracking_client

        record_file = sweep_dir / SWEEP_FILE
        if not record_file.exists():
            return None
        record = read_json(record_file)
        try:
            run = tracking_client(record["tracking_uri"]).get_run(record["parent_run_id"])
        except Exception as error:  # tracking down: the file is written all the same
            log.warning("could not read the sweep's parent run (%s): the best parameters are not logged", error)
            return None
        if run.data.tags.get(DRIVER_TAG) != this_process() or run.info.status != "RUNNING":
            return None
        return record["tracking_uri"], record["parent_run_id"]

    def _log_best(self, uri: str, parent: str, best_params: dict[str, Any], metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        from pipeline.tracking.store import tracking_client

        client = tracking_client(uri)
        now = int(time.time() * 1000)
        client.log_batch(
            parent,
            metrics=[Metric(key, value, now, 0) for key, value in metrics.items()],
            params=[Param(f"{BEST}{key}", str(value)) for key, value in best_params.items()],
            tags=[RunTag(f"{BEST}composite", f"tuned/{self.name}"), RunTag(f"{BEST}file", str(self.path))],
        )
        client.log_artifact(parent, str(self.path), ARTIFACT_DIR)

"""Publish a finished output folder to MLflow, idempotently.

The folder's run key (``manifest.json``) is stored as the run tag ``run_key``. Publishing first looks
for a finished run with that tag and stops there: publishing twice never makes a second run. A run
left unfinished by an interrupted publish (its publisher is gone) is deleted and published again from the folder.
One publisher of a folder at a time: a lock in the folder (``.publish.lock``) covers the search and the logging.
"""
import logging
import shlex
import time
from typing import Any, Optional

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from PIL import Image

from pipeline.locks import exclusive_lock, process_alive, this_process
from pipeline.stages.report import heatmap_key
from pipeline.stages.results import RunFolder, read_json, write_json
from pipeline.tracking.store import bounded_requests, get_or_create_experiment, sqlite_path, tracking_client
from pipeline.tracking.sweep_runs import end_orphaned_sweeps, parent_run_of

log = logging.getLogger(__name__)

RUN_KEY_TAG = "run_key"
PUBLISHER_TAG = "publisher"  # <host>:<pid> of the process that logs the run
#: In a results folder: held while publishing it, so that one publisher at a time searches and creates its run.
PUBLISH_LOCK = ".publish.lock"


def publish_command(folder: RunFolder, uri: str, experiment: str) -> str:
    """The one command that publishes ``folder`` later (paths made absolute, so it works from any directory)."""
    store = sqlite_path(uri)
    if store is not None and not store.is_absolute():
        uri = f"sqlite:///{store.resolve()}"
    args = ["python", "-m", "pipeline.publish", str(folder.path.resolve()), "--tracking-uri", uri, "--experiment", experiment]
    return " ".join(shlex.quote(a) for a in args)


def run_url(uri: str, run_id: str) -> str:
    """Where a run is seen in the MLflow UI: the server's page, or for a local store the page ``mlflow ui`` serves."""
    experiment_id = tracking_client(uri).get_run(run_id).info.experiment_id
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{page}"
    return f"http://127.0.0.1:5000/{page} (start the UI with: mlflow ui --backend-store-uri {uri})"


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"dataset.limit": "64", "dataset.transforms.0._target_": ...}`` (MLflow does not flatten)."""
    if not (isinstance(tree, (dict, list)) and tree):
        return {prefix: str(tree)}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    flat: dict[str, str] = {}
    for key, value in items:
        flat |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return flat


def publish(folder: RunFolder, uri: str, experiment: str, extra_tags: Optional[dict[str, str]] = None,
            timeout_s: float = 30.0) -> str:
    """Log a complete output folder as one MLflow run (or find the one already logged); returns its run id.

    One publisher of a folder at a time (a lock in the folder): the search for the folder's run and its creation
    never interleave with another's. Each request to an HTTP server is bounded by ``timeout_s``.
    """
    if not folder.is_complete:
        raise ValueError(f"{folder.path} is not complete (no COMPLETE marker): rerun the pipeline command to finish it")
    with exclusive_lock(folder.path / PUBLISH_LOCK, wait_s=None), bounded_requests(timeout_s):
        return _publish_holding_the_lock(folder, tracking_client(uri, min(5.0, timeout_s)), uri, experiment, extra_tags)


def _publish_holding_the_lock(folder: RunFolder, client, uri: str, experiment: str,
                              extra_tags: Optional[dict[str, str]]) -> str:
    from mlflow.entities import RunStatus

    experiment_id = get_or_create_experiment(client, experiment)
    end_orphaned_sweeps(client, experiment_id)
    manifest = folder.manifest
    parent = parent_run_of(folder, uri, experiment)
    query = f"tags.{RUN_KEY_TAG} = '{manifest['run_key']}'"
    if parent:  # a sweep's child: the same folder reused by another sweep is another run, under that sweep
        query += f" and tags.mlflow.parentRunId = '{parent}'"
    found = client.search_runs([experiment_id], query)
    for run in found:
        if run.info.status == RunStatus.to_string(RunStatus.FINISHED):
            _record(folder, uri, experiment, run.info.run_id)
            return run.info.run_id
    if parent:
        _say_if_published_before(client, experiment_id, manifest["run_key"], parent)
    for run in found:
        publisher = run.data.tags.get(PUBLISHER_TAG, "")
        if publisher == this_process() or not process_alive(publisher):
            client.delete_run(run.info.run_id)  # an interrupted publish (ours or a dead one's): start over

    tags = {
        RUN_KEY_TAG: manifest["run_key"],
        "method": manifest["method"],
        "composite": manifest["composite"],
        "model": manifest["model"],
        "dataset": manifest["dataset"]["name"],
        "git_commit": manifest["git_commit"],
        "mlflow.source.git.commit": manifest["git_commit"],
        "config_hash": manifest["config_hash"],
        **manifest.get("inputs", {}),  # checkpoint_sha256 (or model_version), data_digest, code_version
        **manifest.get("registry", {}),  # model=mlflow: model.uri, model.registry.{name,version,alias,run_id}
        "output_dir": str(folder.path.resolve()),
        PUBLISHER_TAG: this_process(),
        **({"mlflow.parentRunId": parent} if parent else {}),
        **(extra_tags or {}),
    }
    run = client.create_run(experiment_id, run_name=manifest["run_name"], tags=tags)
    _log_results(client, run.info.run_id, folder)
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
    _record(folder, uri, experiment, run.info.run_id)
    return run.info.run_id


def _say_if_published_before(client, experiment_id: str, run_key: str, parent: str) -> None:
    """A rerun sweep logs its own copy of a config published before (its parent ranks its own children): say so."""
    earlier = client.search_runs([experiment_id], f"tags.{RUN_KEY_TAG} = '{run_key}' and "
                                 "attributes.status = 'FINISHED'", max_results=1)
    if earlier:
        log.info("these results were published before as run %s; logging a copy under this sweep's parent run %s",
                 earlier[0].info.run_id, parent)


def _log_results(client, run_id: str, folder: RunFolder) -> None:
    from mlflow.entities import Param

    config = OmegaConf.to_container(OmegaConf.load(folder.config_file))
    params = [Param(k, v[:6000]) for k, v in flatten(config).items()]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])
    log_outputs(client, run_id, folder)
    _log_dataset(client, run_id, folder.manifest)
    if folder.manifest.get("model_id"):  # MLflow 3: the run shows the logged model it explained, and vice versa
        from mlflow.entities import LoggedModelInput

        client.log_inputs(run_id, models=[LoggedModelInput(folder.manifest["model_id"])])


def log_outputs(client, run_id: str, folder: RunFolder) -> None:
    """Log a results folder's metrics, curves, heatmap images, tables and figures into a run (no params, no
    dataset: also into a run that is not the pipeline's, e.g. the ``xai`` MLflow evaluator's)."""
    from mlflow.entities import Metric

    results = folder.results
    now = int(time.time() * 1000)
    metrics = [Metric(k, v, now, 0) for k, v in read_json(results / "metrics.json").items()]
    for order, curve in read_json(results / "curves.json").items():
        metrics += [Metric(f"curve/{order}", value, now, step) for step, value in enumerate(curve)]
    for start in range(0, len(metrics), 100):
        client.log_batch(run_id, metrics=metrics[start : start + 100])

    for path in sorted((results / "heatmaps").glob("*.png")):
        sample_id = int(path.stem.split("_")[-1])
        with Image.open(path) as image:
            client.log_image(run_id, np.asarray(image.convert("RGB")), key=heatmap_key(sample_id), step=0, synchronous=True)
    client.log_table(run_id, pd.read_csv(results / "per_sample.csv"), "per_sample.json")
    for name in ("per_sample.csv", "skipped.csv", "metrics.json", "curves.json"):
        client.log_artifact(run_id, str(results / name), "results")
    for name in ("gallery.png", "curves.png"):
        if (results / name).exists():
            client.log_artifact(run_id, str(results / name), "figures")
    if (results / "report.html").exists():  # runs finished before the report existed have none
        client.log_artifact(run_id, str(results / "report.html"))
    if (folder.path / "patterns.pt").exists():  # PatternNet's fitted patterns (pipeline.stages.patterns)
        client.log_artifact(run_id, str(folder.path / "patterns.pt"), "results")
    client.log_artifact(run_id, str(folder.config_file), "config")
    if (folder.path / ".hydra").is_dir():
        client.log_artifacts(run_id, str(folder.path / ".hydra"), "hydra")


def _log_dataset(client, run_id: str, manifest: dict[str, Any]) -> None:
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    info = manifest["dataset"]
    dataset = MetaDataset(LocalArtifactDatasetSource(info["source"]), name=info["name"], digest=info["digest"])
    tags = [InputTag("mlflow.data.context", "evaluation"), InputTag("samples", str(len(manifest["sample_ids"])))]
    client.log_inputs(run_id, [DatasetInput(dataset._to_mlflow_entity(), tags)])


def _record(folder: RunFolder, uri: str, experiment: str, run_id: str) -> None:
    records = read_json(folder.published_file) if folder.published_file.exists() else []
    entry = {"tracking_uri": uri, "experiment": experiment, "run_id": run_id}
    if entry not in records:
        write_json(folder.published_file, records + [entry])

"""One pipeline job, data -> model -> explain -> evaluate -> results folder -> MLflow, each stage with one job.

``explain_and_score`` computes per-sample results for given batches of sample ids and writes each batch
to the output folder as soon as it is done; ``run_job`` plans the batches, skips the finished ones
(resume), summarises and publishes.
"""
import hashlib
import json
import logging
import os
import random
import signal
from pathlib import Path
from time import perf_counter, sleep
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from pipeline.config import ModelKind, TargetChoice, config_hash, run_name, validate
from pipeline.stages.data import (batch_plan, dataset_source, iterate_batches, load_dataset, load_images, plan_index,
                                  select_samples)
from pipeline.stages.evaluate import COMPLEXITY_METRICS, METRICS, Faithfulness, complexity_scores
from pipeline.stages.explain import (PATTERN_METHODS, background_ids, build_analyzer, build_composite,
                                     effective_composite)
from pipeline.stages.input_range import check_input_range, input_bounds
from pipeline.stages.metrics import MetricSuite
from pipeline.stages.models import load_model, resolve_device
from pipeline.stages.patterns import run_patterns
from pipeline.stages.report import summarize
from pipeline.stages.results import RunFolder
from pipeline.tracking.identity import changes, code_version, input_identity
from pipeline.tracking.publishing import publish, publish_command, run_url
from pipeline.tracking.registry import MlflowModel, resolve
from pipeline.tracking.store import TrackingUnavailable, resolve_tracking_uri
from xai.errors import UnsupportedModelError
from xai.model_guard import model_device
from xai.validation import check_model_input

log = logging.getLogger(__name__)

#: Fault injection for the resume tests: SIGKILL this process after writing that many batches.
KILL_AFTER_BATCHES_ENV = "PIPELINE_KILL_AFTER_BATCHES"


def explain_and_score(
    model: nn.Module,
    data: torch.utils.data.Dataset,
    batches: dict[int, list[int]],
    cfg: DictConfig,
    folder: RunFolder,
    heatmap_ids: set[int],
    suite: MetricSuite,
) -> None:
    """Explain and score the samples of each batch (index -> sample ids) and write one result file per batch."""
    device = model_device(model)
    faithfulness = Faithfulness(cfg.evaluation)
    ids = background_ids(cfg.method, len(data), cfg.seed)  # the same background in every batch and shard
    background = load_images(data, ids).to(device) if ids else None
    patterns = run_patterns(model, cfg, folder.path) if cfg.method.name in PATTERN_METHODS else None
    kill_after = int(os.environ.get(KILL_AFTER_BATCHES_ENV, 0))
    loaded = iterate_batches(data, list(batches.values()), cfg.dataset.on_corrupt, cfg.dataset.num_workers)
    progress = tqdm(zip(batches, loaded), total=len(batches), desc="explain + evaluate", unit="batch")
    first_batch = True
    for done, (index, batch) in enumerate(progress, start=1):
        if len(batch.ids) and first_batch:  # once per run, before any work: the cost, and ZBox's bounds
            samples = sum(len(ids) for ids in batches.values())
            check_data_fits_model(model, batch.x, cfg)
            log.info(faithfulness.plan(tuple(batch.x.shape[1:]), samples))
            check_input_range(batch.x, cfg.dataset.input_low, cfg.dataset.input_high)
            first_batch = False
        for path, sample_id in zip(batch.skipped, batch.skipped_ids):
            log.warning("skipped unreadable image %s (sample %d): %s", path.path, sample_id, path.reason)
        arrays = _skipped_arrays(batch, suite.names)
        if len(batch.ids):
            seed = cfg.seed + plan_index(index, cfg.dataset.num_shards, cfg.dataset.shard)  # shard-independent
            arrays |= _explain_and_score_batch(model, batch, cfg, faithfulness, suite, seed=seed, device=device,
                                               background=background, patterns=patterns)
        keep = np.isin(batch.ids.numpy(), sorted(heatmap_ids))
        arrays["heatmap_ids"] = batch.ids.numpy()[keep]
        arrays["heatmap_attribution"] = arrays.pop("attribution")[keep]
        arrays["heatmap_x"] = batch.x.numpy()[keep]
        folder.write_batch(index, arrays)
        if done == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)


def check_data_fits_model(model: nn.Module, x: torch.Tensor, cfg: DictConfig) -> None:
    """The first batch against the model's first layer (channels, dtype), naming the config that fixes it."""
    try:
        check_model_input(model, x)
    except (ValueError, TypeError) as error:
        raise type(error)(f"dataset={cfg.dataset.name} does not fit model={cfg.model.name}: {error}; change "
                          "dataset.transforms (e.g. add {_target_: torchvision.transforms.Grayscale, "
                          "num_output_channels: <the model's channels>}) or the model") from error


def _explain_and_score_batch(model, batch, cfg, faithfulness, suite, seed: int, device,
                             background=None, patterns=None) -> dict[str, np.ndarray]:
    x = batch.x.to(device)
    target = batch.labels.to(device) if cfg.target == TargetChoice.label else None
    analyzer = lambda m: build_analyzer(m, cfg.method, cfg.composite, seed=seed, background=background,  # noqa: E731
                                        patterns=patterns)
    start = perf_counter()
    try:
        explanation = analyzer(model)(x, target)
    except UnsupportedModelError as error:  # the first batch, before any result is written
        raise ValueError(f"{error}\nIn the pipeline: method={cfg.method.name} composite={cfg.composite.name} "
                         f"cannot explain model={cfg.model.name}; choose another composite (a transformer: "
                         "composite=attn_lrp or composite=cp_lrp) or method (method=gradient, "
                         "method=integrated_gradients)") from error
    explained = perf_counter()
    scores = faithfulness(model, x, explanation.attribution, explanation.target, seed=seed)
    mask = batch.masks.to(device) if batch.masks is not None else None
    more = suite(model, x, explanation.attribution, explanation.target, seed=seed, analyzer=analyzer, mask=mask)
    evaluated = perf_counter()
    numpy = lambda t: t.detach().cpu().numpy()  # noqa: E731
    return {
        "sample_id": batch.ids.numpy(),
        "label": batch.labels.numpy(),
        "prediction": numpy(explanation.output.argmax(dim=1)),
        "target": numpy(explanation.target),
        "curve_morf": numpy(scores.curve_morf),
        "curve_lerf": numpy(scores.curve_lerf),
        **{m: numpy(getattr(scores, m)) for m in METRICS},
        **{m: numpy(value) for m, value in complexity_scores(explanation.attribution).items()},
        **{m: numpy(value) for m, value in more.items()},
        "attribution": numpy(explanation.attribution).astype(np.float32),
        "explain_seconds": np.array([explained - start]),
        "evaluate_seconds": np.array([evaluated - explained]),
    }


def _skipped_arrays(batch, metrics: list[str]) -> dict[str, np.ndarray]:
    empty = np.zeros(0)
    return {
        **{k: empty for k in ("sample_id", "label", "prediction", "target", "curve_morf", "curve_lerf", *METRICS,
                              *COMPLEXITY_METRICS, *metrics)},
        "attribution": empty,
        "explain_seconds": np.zeros(1),
        "evaluate_seconds": np.zeros(1),
        "skipped_ids": np.array(batch.skipped_ids, dtype=np.int64),
        "skipped_paths": np.array([s.path for s in batch.skipped], dtype=str),
    }


def manifest_for(
    cfg: DictConfig, composite: str, ids: list[int], batches: list[list[int]], heatmap_ids: list[int],
    registered: MlflowModel | None = None,
) -> dict[str, Any]:
    """What the folder holds: the samples, their batches, and the labels the run is tagged with."""
    return {
        "config_hash": config_hash(cfg),
        "run_name": f"{run_name(cfg.method.name, cfg.composite.name)} ({cfg.model.name} on {cfg.dataset.name})",
        "method": cfg.method.name,
        "composite": composite,
        "model": cfg.model.name,
        "dataset": {
            "name": cfg.dataset.name,
            "split": cfg.dataset.split,
            "source": dataset_source(cfg.dataset),
            "digest": dataset_digest(cfg.dataset, ids),
        },
        "sample_ids": ids,
        "batches": batches,
        "heatmap_ids": heatmap_ids,
        "git_commit": code_version().split("+")[0],
        "inputs": input_identity(cfg, registered),  # the version resolved once, the one that is loaded
        **({"registry": registered.tags(), "model_id": registered.model_id} if registered else {}),
    }


def dataset_digest(dataset: DictConfig, ids: list[int]) -> str:
    """Names the exact samples a run covers (the same for a merged sharded run and the unsharded one)."""
    return hashlib.sha256(json.dumps([dataset.name, dataset.path, dataset.split, ids]).encode()).hexdigest()[:32]


def check_explainer(cfg: DictConfig) -> str:
    """Fail before any work on bad input bounds, a method without its composite or bad rule parameters; returns
    the composite the run uses (``none`` for methods that take none)."""
    input_bounds(cfg.dataset.input_low, cfg.dataset.input_high)
    composite = effective_composite(cfg.method, cfg.composite)  # method=lrp composite=none fails here
    if composite != "none":
        build_composite(cfg.composite)
    return composite


def plan_samples(cfg: DictConfig, total: int) -> tuple[list[int], list[int], list[list[int]]]:
    """The sample ids of this job (of ``total``), the heatmap samples among them and the batch plan."""
    ids = select_samples(total, cfg.dataset.limit, cfg.dataset.num_shards, cfg.dataset.shard, cfg.batch_size)
    first = select_samples(total, cfg.dataset.limit)[: cfg.heatmaps]  # the same heatmap samples in every shard
    heatmap_ids = [i for i in first if i in set(ids)]
    return ids, heatmap_ids, batch_plan(ids, cfg.batch_size)


def run_job(cfg: DictConfig, output_dir: str | Path) -> RunFolder:
    """Run (or resume) one config into ``output_dir``, then publish it unless ``tracking.publish=false``."""
    validate(cfg)
    device = resolve_device(cfg.device)  # no such device fails before any work
    composite = check_explainer(cfg)
    tracking_uri = resolve_tracking_uri(cfg.tracking.uri)
    registered = resolve(cfg.model.uri, tracking_uri) if cfg.model.kind == ModelKind.mlflow else None
    start = perf_counter()
    folder = RunFolder(output_dir)
    torch.manual_seed(cfg.seed)

    data = load_dataset(cfg.dataset)
    suite = MetricSuite(cfg.evaluation, has_masks=getattr(data, "has_masks", False))  # bad metrics fail here
    ids, heatmap_ids, batches = plan_samples(cfg, len(data))
    config_yaml = OmegaConf.to_yaml({k: cfg[k] for k in cfg if k != "hydra"}, resolve=True)
    classes = {"classes": list(getattr(data, "classes", None) or [])}  # for the titles of a later shard merge
    wanted = manifest_for(cfg, composite, ids, batches, heatmap_ids, registered) | classes
    if not folder.manifest_file.exists():
        _say_why_afresh(folder, cfg, wanted)
    folder.start(wanted, config_yaml)

    if folder.is_complete:
        log.info("%s is complete already: nothing to compute", folder.path)
    else:
        finished = folder.finished_batches()
        todo = {i: b for i, b in enumerate(batches) if i not in finished}
        if finished:
            log.info("resuming %s: %d of %d batches done", folder.path, len(finished), len(batches))
        if todo:
            model = load_model(cfg.model, device, registered)
            explain_and_score(model, data, todo, cfg, folder, set(heatmap_ids), suite)
        wall = {"runtime/wall_seconds": perf_counter() - start}  # this attempt: loading, explaining, scoring
        metrics = summarize(folder, list(getattr(data, "classes", None) or []), extra=wall)
        log.info("wall time %.1f s; %s", perf_counter() - start, _headline(metrics))
        folder.mark_complete()

    if cfg.dataset.num_shards > 1:  # a part: `python -m pipeline.merge` publishes the whole when all parts are done
        log.info("shard %d of %d done; merge the shards with: python -m pipeline.merge %s",
                 cfg.dataset.shard, cfg.dataset.num_shards, folder.path.parent)
    elif cfg.tracking.publish:
        run_id = publish_or_explain(folder, tracking_uri, cfg.tracking.experiment, dict(cfg.tracking.tags),
                                    cfg.tracking.timeout_s)
        if run_id:
            log.info("MLflow run: %s", run_url(tracking_uri, run_id))
    log.info("results: %s", folder.path.resolve())
    return folder


#: Publishing attempts before giving up: parallel jobs on one SQLite store can hit "database is locked".
PUBLISH_ATTEMPTS = 4


def _say_why_afresh(folder: RunFolder, cfg: DictConfig, manifest: dict[str, Any]) -> None:
    """A new folder for a config run before: name what changed (checkpoint, data files, code) since the latest one."""
    config_folder = folder.path.parent if cfg.dataset.num_shards > 1 else folder.path
    earlier = [p for p in config_folder.parent.glob(f"{manifest['config_hash']}-*/**/manifest.json")
               if config_folder.name not in p.parts]
    if not earlier:
        return
    latest = max(earlier, key=lambda p: p.stat().st_mtime)
    previous = json.loads(latest.read_text()).get("inputs", {})
    what = "; ".join(changes(previous, manifest["inputs"])) or "the inputs changed"
    log.info("%s since %s: computing afresh in %s", what, latest.parent, folder.path)


def publish_or_explain(folder: RunFolder, uri: str, experiment: str, tags: dict[str, str],
                       timeout_s: float = 30.0) -> str | None:
    """Publish; when the tracking server fails, keep the local results and say how to publish them later.

    A transient failure (a locked SQLite file under parallel jobs) is retried: publishing is idempotent, so a
    half-logged run from a failed attempt is replaced, never duplicated. An unreachable server is not retried, and
    no attempt starts after ``timeout_s``: a server that stops answering mid-publish costs about ``timeout_s``.
    """
    deadline = perf_counter() + timeout_s
    for attempt in range(1, PUBLISH_ATTEMPTS + 1):
        try:
            run_id = publish(folder, uri, experiment, tags, timeout_s=max(1.0, deadline - perf_counter()))
            break
        except Exception as error:  # any tracking failure (server down, DB locked, ...) keeps the local results
            retry = not isinstance(error, TrackingUnavailable) and perf_counter() < deadline - 1.0
            if attempt < PUBLISH_ATTEMPTS and retry:
                log.info("publishing attempt %d failed (%s); retrying", attempt, error)
                sleep(0.5 * 2**attempt + random.random())
                continue
            log.warning(
                "could not publish to MLflow (%s). The results are safe in %s; publish them later with:\n  %s",
                error, folder.path, publish_command(folder, uri, experiment),
            )
            return None
    log.info("published to %s, experiment %s, run %s", uri, experiment, run_id)
    return run_id


def _headline(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k}={metrics[k]:.4f}" for k in ("faithfulness/srg", "faithfulness/auc_morf", "faithfulness/auc_lerf"))

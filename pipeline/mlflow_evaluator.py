"""The MLflow evaluator plugin ``xai``: ``mlflow.models.evaluate(..., evaluators="xai")`` explains and scores a
logged PyTorch classifier with the pipeline's own code and logs the pipeline's metrics, heatmaps and figures.

Registered under the entry point group ``mlflow.model_evaluator`` (``pyproject.toml``). The config is the
pipeline's (``conf/``, composed with Hydra): ``evaluator_config`` picks ``method``, ``composite`` and ``metrics``
and may add pipeline override strings; only the config sections that apply to a given model and data are
accepted (see ``OVERRIDABLE``). The data reaches the evaluator as MLflow's ``EvaluationDataset``: a 2-D array of
flattened images (``N x C*H*W``, reshaped by ``input_shape`` or by the model's tensor signature) or a DataFrame
with one column of per-image arrays. The model is the torch module of a model logged with
``mlflow.pytorch.log_model`` in either format: ``pickle`` loads the module itself, ``pt2`` (MLflow 3's default) a
torch.export graph, rebuilt as modules by ``xai.from_exported``.
"""
import tempfile
from pathlib import Path
from time import perf_counter
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.models.evaluation import EvaluationResult, ModelEvaluator
from mlflow.models.evaluation.artifacts import CsvEvaluationArtifact, ImageEvaluationArtifact, JsonEvaluationArtifact
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pipeline.config import CONF_DIR, run_name, validate
from pipeline.job import check_explainer, explain_and_score, plan_samples
from pipeline.stages.data import TensorImages
from pipeline.stages.explain import PATTERN_METHODS
from pipeline.stages.metrics import MetricSuite
from pipeline.stages.report import summarize
from pipeline.stages.results import RunFolder
from pipeline.tracking.publishing import log_outputs
from pipeline.tracking.registry import rebuilt_if_exported

#: evaluator_config keys and what each must be.
CONFIG_KEYS = {
    "method": "a method of conf/method, e.g. lrp",
    "composite": "a composite of conf/composite, e.g. epsilon_gamma_box",
    "metrics": "a list of metric names (evaluation.metrics), e.g. [srg, road]",
    "overrides": 'a list of pipeline override strings, e.g. ["evaluation.features_in_step=64"]',
    "input_shape": "the (C, H, W) of one image, e.g. [1, 32, 32], for data of flattened images",
}
#: The config sections (and dataset keys) that decide an evaluator run, logged as config/config.yaml. The rest of
#: the config (model, dataset source, sharding, tracking) is the model, data and run of mlflow.models.evaluate.
SECTIONS = ("method", "composite", "evaluation", "seed", "batch_size", "target", "heatmaps")
DATASET_KEYS = ("limit", "input_low", "input_high")
#: What ``overrides`` may set (``explainer`` picks a method and composite in one).
OVERRIDABLE = (*SECTIONS, "explainer", *(f"dataset.{k}" for k in DATASET_KEYS))
#: Result files returned in ``EvaluationResult.artifacts``: name -> (path in the run, artifact class).
RESULT_ARTIFACTS = {
    "gallery": ("figures/gallery.png", ImageEvaluationArtifact),
    "curves": ("figures/curves.png", ImageEvaluationArtifact),
    "per_sample": ("results/per_sample.csv", CsvEvaluationArtifact),
    "metrics": ("results/metrics.json", JsonEvaluationArtifact),
    "pixel_flipping_curves": ("results/curves.json", JsonEvaluationArtifact),
}


class XaiEvaluator(ModelEvaluator):
    """Explains a PyTorch image classifier on the evaluation data and scores the explanations' faithfulness."""

    @classmethod
    def can_evaluate(cls, *, model_type: str, evaluator_config: dict[str, Any], **kwargs) -> bool:
        """Classifiers only; MLflow does not show this method the model, so ``evaluate`` says when it is no torch
        image classifier."""
        return model_type == "classifier"

    def evaluate(self, *, model_type: str, dataset, run_id: str, evaluator_config: dict[str, Any], model=None,
                 **kwargs) -> EvaluationResult:
        """Compose the pipeline config, explain and score ``dataset`` with the model's torch module, log into
        ``run_id`` what a pipeline run logs (metrics, curves, heatmaps, tables, figures) and return it."""
        check_evaluator_config(evaluator_config)
        cfg = compose_config(evaluator_config)
        module = torch_module(model)
        images, labels = images_and_labels(dataset, evaluator_config.get("input_shape"), model)
        with tempfile.TemporaryDirectory(prefix="xai-evaluate-") as tmp:
            folder, metrics = explain_into_folder(module, images, labels, cfg, Path(tmp))
            client = MlflowClient()
            log_outputs(client, run_id, folder)
            artifacts = result_artifacts(folder, client.get_run(run_id).info.artifact_uri)
        return EvaluationResult(metrics=metrics, artifacts=artifacts, run_id=run_id)


def check_evaluator_config(config: dict[str, Any]) -> None:
    """Name the unknown key or the bad value, and what is valid, before any work."""
    valid = "; ".join(f"{k}: {v}" for k, v in CONFIG_KEYS.items())
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"evaluator_config key(s) {', '.join(map(repr, unknown))} unknown to the xai evaluator; "
                         f"valid keys: {valid}")
    for key, group in (("method", "method"), ("composite", "composite")):
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        if key in config and config[key] not in options:
            raise ValueError(f"evaluator_config {key}={config[key]!r} is not one of {', '.join(options)}")
    for key in ("metrics", "overrides"):
        value = config.get(key, [])
        if not (isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"evaluator_config {key}={value!r} must be {CONFIG_KEYS[key]}")
    for override in config.get("overrides", []):
        key = override.lstrip("+~").split("=", 1)[0]
        if not any(key == k or key.startswith(f"{k}.") for k in OVERRIDABLE):
            raise ValueError(f"evaluator_config overrides: {override!r} sets {key}, which the xai evaluator does not "
                             f"take (the model, data and run are mlflow.models.evaluate's); overridable: "
                             f"{', '.join(OVERRIDABLE)}")
    shape = config.get("input_shape")
    if shape is not None and not (isinstance(shape, (list, tuple)) and len(shape) == 3
                                  and all(isinstance(n, int) and n >= 1 for n in shape)):
        raise ValueError(f"evaluator_config input_shape={shape!r} must be {CONFIG_KEYS['input_shape']}")


def compose_config(config: dict[str, Any]) -> DictConfig:
    """The pipeline's config for ``evaluator_config``: all of the data (``dataset.limit=null``) unless an override
    says otherwise, then ``method``, ``composite``, ``metrics`` and the ``overrides`` in that order."""
    from hydra import compose, initialize_config_dir

    overrides = ["dataset.limit=null"]
    overrides += [f"{key}={config[key]}" for key in ("method", "composite") if key in config]
    if "metrics" in config:
        overrides.append(f"evaluation.metrics=[{','.join(config['metrics'])}]")
    overrides += list(config.get("overrides", []))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    validate(cfg)
    if cfg.method.name in PATTERN_METHODS:
        raise ValueError(f"method={cfg.method.name} fits its patterns on the pipeline's dataset (method.fit_split), "
                         "which the xai evaluator does not have: run it with python -m pipeline.run")
    return cfg


def torch_module(model) -> nn.Module:
    """The torch module inside the pyfunc model MLflow loaded (a ``pt2`` graph rebuilt as modules, as
    ``model=mlflow`` does), or an error saying how to log one."""
    raw = model.get_raw_model() if model is not None and hasattr(model, "get_raw_model") else None
    if not isinstance(raw, nn.Module):
        flavors = sorted(getattr(getattr(model, "metadata", None), "flavors", None) or [])
        raise TypeError(f"the xai evaluator explains PyTorch models, got {type(raw or model).__name__} (flavors: "
                        f"{', '.join(flavors) or 'none'}): log the classifier with mlflow.pytorch.log_model and "
                        "pass its model URI")
    return rebuilt_if_exported(raw)


def images_and_labels(dataset, input_shape: Optional[list[int]], model) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation data as (N, C, H, W) float32 images and int64 labels.

    Features are a 2-D array (or DataFrame) of flattened images, reshaped to ``input_shape`` (else to the shape
    of the model's tensor signature), or a DataFrame with one column holding one array per image.
    """
    features = dataset.features_data
    one_column = isinstance(features, pd.DataFrame) and features.shape[1] == 1 and len(features)
    if one_column and isinstance(features.iloc[0, 0], (np.ndarray, list)):
        images = np.stack([np.asarray(cell, dtype=np.float32) for cell in features.iloc[:, 0]])
    else:
        images = np.asarray(features, dtype=np.float32)
    shape = list(input_shape) if input_shape else _signature_shape(model)
    if images.ndim == 2 or shape is not None:
        if shape is None:
            raise ValueError(f"data holds {images.shape[1]} features per row, flattened images of unknown shape: "
                             "give evaluator_config input_shape=[C, H, W], or log the model with a signature "
                             "(mlflow.models.infer_signature on (N, C, H, W) inputs)")
        if int(np.prod(images.shape[1:])) != int(np.prod(shape)):
            source = "evaluator_config input_shape" if input_shape else "the model's input signature"
            raise ValueError(f"data has {int(np.prod(images.shape[1:]))} values per image, {source} {shape} needs "
                             f"{int(np.prod(shape))}: pass the images' (C, H, W) as evaluator_config input_shape")
        images = images.reshape(len(images), *shape)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got {images.shape}: give evaluator_config input_shape=[C, H, W]")
    labels = torch.as_tensor(np.asarray(dataset.labels_data), dtype=torch.long)  # classifiers have targets
    return torch.from_numpy(np.ascontiguousarray(images)), labels


def _signature_shape(model) -> Optional[list[int]]:
    """(C, H, W) of the model's tensor input signature, when it was logged with one."""
    schema = model.metadata.get_input_schema() if getattr(model, "metadata", None) is not None else None
    if schema is None or not schema.is_tensor_spec() or len(schema.inputs) != 1:
        return None
    shape = list(schema.inputs[0].shape)[1:]
    return shape if len(shape) == 3 and all(n > 0 for n in shape) else None


def explain_into_folder(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: DictConfig,
                        path: Path) -> tuple[RunFolder, dict[str, float]]:
    """What ``run_job`` computes, on in-memory data: a run folder's batch files and ``results/``, and the metrics."""
    composite = check_explainer(cfg)
    start = perf_counter()
    torch.manual_seed(cfg.seed)
    data = TensorImages(images, labels, classes=(), transform=None)  # no class names: titles show the indices
    suite = MetricSuite(cfg.evaluation, has_masks=False)
    ids, heatmap_ids, batches = plan_samples(cfg, len(data))
    sections = {k: cfg[k] for k in SECTIONS} | {"dataset": {k: cfg.dataset[k] for k in DATASET_KEYS}}
    folder = RunFolder(path)
    folder.start({"run_name": run_name(cfg.method.name, composite), "method": cfg.method.name,
                  "composite": composite, "sample_ids": ids, "batches": batches, "heatmap_ids": heatmap_ids},
                 OmegaConf.to_yaml(sections, resolve=True))
    explain_and_score(model, data, dict(enumerate(batches)), cfg, folder, set(heatmap_ids), suite)
    return folder, summarize(folder, extra={"runtime/wall_seconds": perf_counter() - start})


def result_artifacts(folder: RunFolder, artifact_uri: str) -> dict[str, Any]:
    """The logged result files as evaluation artifacts, their content loaded from the folder."""
    artifacts = {}
    for name, (run_path, kind) in RESULT_ARTIFACTS.items():
        local = folder.results / Path(run_path).name
        if local.exists():
            artifacts[name] = kind(uri=f"{artifact_uri}/{run_path}")
            artifacts[name]._load(str(local))
    return artifacts

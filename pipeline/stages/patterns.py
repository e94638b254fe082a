"""The fit step of ``method=pattern_net`` / ``pattern_attribution``: the patterns of the model, fitted once.

PatternNet's patterns depend on the model and on the data they are fitted on (``method.fit_split`` of the run's
dataset, its first ``method.fit_limit`` samples), not on the samples a run explains. So they are fitted once and
cached as ``<output_root>/patterns/<digest>.pt``, the digest covering the model's parameters and buffers and the fit
data: every run, shard, resume and sweep child on the same model and data reuses one fit. The file is written
atomically (a killed fit leaves nothing that looks whole); each run copies it into its folder, and publishing logs
it as the MLflow artifact ``results/patterns.pt``.
"""
import hashlib
import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pipeline.stages.data import iterate_batches, load_dataset, select_samples
from pipeline.stages.results import atomic_write
from xai.model_guard import model_device

log = logging.getLogger(__name__)

def model_digest(model: nn.Module) -> str:
    """A digest of every parameter and buffer (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fit_data_config(cfg: DictConfig) -> DictConfig:
    """The dataset config of the fit: the run's dataset on ``method.fit_split``."""
    return OmegaConf.merge(cfg.dataset, {"split": cfg.method.fit_split})


def patterns_file(model: nn.Module, cfg: DictConfig) -> Path:
    """The cached patterns of ``model`` for this config's fit data, fitted (and cached) first when missing."""
    import xai

    data_cfg = fit_data_config(cfg)
    fit_data = [data_cfg.name, data_cfg.path, data_cfg.split, cfg.method.fit_limit]
    key = hashlib.sha256(json.dumps([model_digest(model), fit_data]).encode()).hexdigest()[:24]
    path = Path(cfg.output_root) / "patterns" / f"{key}.pt"
    if path.exists():
        log.info("patterns: reusing %s", path)
        return path
    data = load_dataset(data_cfg)
    ids = select_samples(len(data), cfg.method.fit_limit)
    batches = [ids[i:i + cfg.method.batch_size] for i in range(0, len(ids), cfg.method.batch_size)]
    device = model_device(model)
    loaded = (batch.x.to(device) for batch in iterate_batches(data, batches, cfg.dataset.on_corrupt))
    log.info("patterns: fitting on %d samples of dataset=%s split=%s", len(ids), data_cfg.name, data_cfg.split)
    patterns = xai.fit_patterns(model, loaded)
    atomic_write(path, patterns.save)
    return path


def run_patterns(model: nn.Module, cfg: DictConfig, run_folder: Path):
    """The patterns a run explains with (``xai.Patterns``), copied into ``run_folder`` for publishing."""
    import xai

    cached = patterns_file(model, cfg)
    copy = run_folder / "patterns.pt"
    if not copy.exists():
        atomic_write(copy, lambda f: f.write(cached.read_bytes()))
    return xai.Patterns.load(copy, model)

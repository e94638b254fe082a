"""The model stage: the bundled default, a torchvision architecture by name, or the user's own module.

Weights always come from local files loaded with ``weights_only=True``; nothing is downloaded.
"""
from pathlib import Path
from typing import Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from pipeline.config import ModelKind
from pipeline.tracking.registry import MlflowModel


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cpu``, ``cuda``, ``cuda:<i>``, ``mps`` are checked to exist."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device} is not a device: use device=auto (CUDA when present, else the CPU), "
                         "cpu, cuda or cuda:<index>") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(chosen.type, False):
        have = ", ".join(name for name, ok in available.items() if ok)
        raise ValueError(f"device={device}: this machine has no {chosen.type.upper()} device (available: {have}); "
                         "use device=auto to take CUDA only when present")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ValueError(f"device={device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return chosen


def load_model(cfg: DictConfig, device: torch.device, registered: Optional[MlflowModel] = None) -> nn.Module:
    """The configured classifier in eval mode on ``device``, with a trailing softmax removed (logits).

    ``registered``: for ``model.kind=mlflow``, the model its URI names (``pipeline.tracking.registry.resolve``),
    resolved once
    by the caller so that the loaded version is the one the run's folder and tags name.
    """
    if cfg.kind == ModelKind.bundled:
        from pipeline.bundled import load_default_model

        model = load_default_model(name=cfg.arch or "digits_cnn")
    elif cfg.kind == ModelKind.torchvision:
        model = _torchvision_model(cfg)
    elif cfg.kind == ModelKind.mlflow:
        from pipeline.tracking.registry import load

        if registered is None:
            raise ValueError("model.kind=mlflow: resolve model.uri first (pipeline.tracking.registry.resolve)")
        model = load(registered)
    elif cfg.kind == ModelKind.custom:
        if not cfg.module or "_target_" not in cfg.module:
            raise ValueError("model.kind=custom needs model.module._target_=<package.module.ClassName>")
        model = instantiate(OmegaConf.to_container(cfg.module, resolve=True))
        if not isinstance(model, nn.Module):
            raise TypeError(f"model.module._target_={cfg.module._target_} built a {type(model).__name__}, not an nn.Module")
        _load_checkpoint(model, cfg.checkpoint, "model.checkpoint")
    else:
        raise ValueError(f"unknown model.kind={cfg.kind}")
    if cfg.strip_softmax:
        from xai import strip_softmax

        strip_softmax(model)
    return model.to(device).eval()


def _torchvision_model(cfg: DictConfig) -> nn.Module:
    from torchvision import models

    available = models.list_models()
    if cfg.arch not in available:
        raise ValueError(f"model.arch={cfg.arch} is not a torchvision model; available: {', '.join(available)}")
    if cfg.checkpoint and cfg.weights:
        raise ValueError("give model.checkpoint or model.weights, not both")
    kwargs = {} if cfg.num_classes is None else {"num_classes": cfg.num_classes}
    model = models.get_model(cfg.arch, weights=None, **kwargs)
    if cfg.checkpoint:
        _load_checkpoint(model, cfg.checkpoint, "model.checkpoint")
    elif cfg.weights:
        _load_checkpoint(model, _cached_weights(cfg.weights), "model.weights")
    else:
        raise ValueError(
            f"model.arch={cfg.arch} has no weights: set model.checkpoint=<state_dict file> or "
            f"model.weights=<torchvision weights name already in torch's cache>"
        )
    return model


def _cached_weights(name: str) -> str:
    """The file of a torchvision weights name in torch's hub cache; never downloads."""
    from torchvision.models import get_weight

    try:
        url = get_weight(name).url
    except (ValueError, KeyError, AttributeError) as error:
        raise ValueError(f"model.weights={name} is not a torchvision weights name (e.g. ResNet18_Weights.IMAGENET1K_V1)") from error
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if not path.exists():
        raise FileNotFoundError(
            f"model.weights={name} is not in torch's cache ({path}); the pipeline never downloads: "
            f"copy the file there, or pass a local file with model.checkpoint=<path>"
        )
    return str(path)


def _load_checkpoint(model: nn.Module, path: Optional[str], key: str) -> None:
    if not path:
        raise ValueError(f"{key} is not set: give the path of a state_dict saved with torch.save")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{key}={path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"{key}={path} is an empty file (0 bytes): an interrupted copy or save? Save the weights "
                         "again with torch.save(model.state_dict(), path)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused or unreadable file
        raise ValueError(
            f"{key}={path} cannot be loaded with weights_only=True (it is not a plain file of tensors: "
            f"{str(error).strip().splitlines()[-1][:300]}); save a plain state_dict: torch.save(model.state_dict(), path)"
        ) from error
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{key}={path} holds a {type(state).__name__}, not a state_dict; save one with "
                         "torch.save(model.state_dict(), path)")
    _check_state_dict(model, state, f"{key}={path}")
    model.load_state_dict(state)


def _check_state_dict(model: nn.Module, state: dict, source: str) -> None:
    """One line first that says the checkpoint belongs to another model, before torch's list of every key."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    resized = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
               if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or resized):
        return
    found = [f"{len(missing)} missing (first: {', '.join(missing[:3])})" if missing else "",
             f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})" if unexpected else "",
             f"{len(resized)} of another shape (checkpoint vs model; first: {', '.join(resized[:2])})" if resized else ""]
    raise ValueError(f"{source} does not fit the model {type(model).__name__}: keys {'; '.join(f for f in found if f)}. "
                     "Is it for another architecture or number of classes (model.arch, model.num_classes)?")

"""What decides a run's results besides its config: the checkpoint file, the data files and the code.

The config hash (``pipeline.config.config_hash``, MLflow tag ``config_hash``) covers only the config, so that
runs of one config line up across nights and code versions (what the regression check compares). The
output folder must change whenever the results could, so its name also carries a digest of these inputs:
a rerun after a checkpoint is overwritten, an image is replaced or the code changes computes afresh into a
new folder instead of reusing the old results.
"""
import hashlib
import json
import os
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf


if TYPE_CHECKING:
    from pipeline.tracking.registry import MlflowModel

REPO = Path(__file__).resolve().parents[2]
#: The folders whose code computes results: a change to them (committed or not) is a new code version.
CODE_DIRS = ("xai", "evaluation", "pipeline", "conf")
BUNDLED_CHECKPOINT = REPO / "pipeline" / "digits_cnn.pt"


def _kind(model: DictConfig) -> str:
    """The model's kind as its name: a ``ModelKind`` in a validated config, a string in a plain one. (Read by value,
    so that this module does not import ``pipeline.config``, whose resolvers use it.)"""
    return getattr(model.kind, "value", model.kind)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit, with ``+dirty.<digest>`` for uncommitted changes to the code; else the package version."""
    commit = (_git("rev-parse", "HEAD") or "").strip()
    if not commit:
        try:
            return f"xai-pipeline {metadata.version('xai-pipeline')}"
        except metadata.PackageNotFoundError:
            return "unknown"
    diff = _git("diff", "HEAD", "--", *CODE_DIRS) or ""
    untracked = _git("ls-files", "--others", "--exclude-standard", "--", *CODE_DIRS) or ""
    if not (diff or untracked):
        return commit
    digest = hashlib.sha256(diff.encode())
    for name in sorted(untracked.split()):
        digest.update(name.encode() + (REPO / name).read_bytes())
    return f"{commit}+dirty.{digest.hexdigest()[:12]}"


@lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, cached per (path, size, mtime) within a process; ``missing`` when there is no file."""
    path = Path(path).expanduser()
    try:
        stat = path.stat()
    except OSError:
        return "missing"
    if not path.is_file():
        return "missing"
    return _file_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def checkpoint_sha256(model: DictConfig) -> str:
    """The digest of the weights file the model loads (the bundled one when ``checkpoint`` is null)."""
    if OmegaConf.is_missing(model, "checkpoint"):
        return "none"
    if model.checkpoint:
        return file_sha256(model.checkpoint)
    if _kind(model) != "bundled":
        return "none"  # torchvision weights: by name
    from pipeline.bundled import BUNDLED_MODELS

    bundled = BUNDLED_MODELS.get(model.arch or "digits_cnn")
    return file_sha256(bundled[1]) if bundled else "missing"


def data_digest(dataset: DictConfig) -> str:
    """A digest of the data files: names, sizes and mtimes below ``dataset.path`` (symlinked folders not
    followed); for the bundled digits, the scikit-learn version that ships them."""
    if OmegaConf.is_missing(dataset, "path") or dataset.path is None:
        try:
            return f"scikit-learn {metadata.version('scikit-learn')}"
        except metadata.PackageNotFoundError:
            return "unknown"
    digest = _folder_digest(Path(str(dataset.path)).expanduser())
    mask_path = dataset.get("mask_path")
    return f"{digest}+masks {_folder_digest(Path(str(mask_path)).expanduser())}" if mask_path else digest


def _folder_digest(root: Path) -> str:
    """Names, sizes and mtimes of the files below ``root`` (symlinked folders not followed), or ``missing``."""
    if not root.exists():
        return "missing"
    entries: list[Any] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            try:
                stat = path.stat()
            except OSError:
                continue  # a broken symlink: the loader reports it
            entries.append([str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:32]


def input_identity(cfg: DictConfig, registered: "MlflowModel | None" = None) -> dict[str, str]:
    """The parts of a run's identity that are not its config (for a model from MLflow: the version its URI names
    now, ``registered`` when the caller resolved it already, else asked from the server)."""
    if _kind(cfg.model) == "mlflow":
        from pipeline.tracking.registry import resolve
        from pipeline.tracking.store import resolve_tracking_uri

        model = registered or resolve(cfg.model.uri, resolve_tracking_uri(cfg.tracking.uri))
        weights = {"model_version": f"{model.fixed_uri} {model.model_id or ''}".strip()}
    else:
        weights = {"checkpoint_sha256": checkpoint_sha256(cfg.model)}
    return {
        **weights,
        "data_digest": data_digest(cfg.dataset),
        "code_version": code_version(),
    }


def identity_digest(config_hash: str, inputs: dict[str, str]) -> str:
    """``<config hash>-<8 hex digits of the inputs>``: the output folder's name."""
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:8]
    return f"{config_hash}-{digest}"


def changes(previous: dict[str, str], current: dict[str, str]) -> list[str]:
    """What differs between two input identities, in words (``model.checkpoint changed (sha256 ab.. -> cd..)``)."""
    names = {"checkpoint_sha256": "model.checkpoint", "model_version": "the model that model.uri names",
             "data_digest": "the dataset's files", "code_version": "the code"}
    shown = lambda key, value: str(value) if key == "model_version" else str(value)[:12]  # noqa: E731 (a URI)
    return [f"{names[key]} changed ({shown(key, previous.get(key))} -> {shown(key, current[key])})"
            for key in names if key in current and previous.get(key) != current[key]]

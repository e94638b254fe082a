"""The run's output folder: everything is written here first, and only then published.

Layout::

    <output_dir>/
      manifest.json        run key, sample ids, batch plan, dataset, git commit (written once, at the start)
      config.yaml          the resolved config
      batches/00007.npz    per-batch results, each written atomically (tmp file + os.replace)
      results/             per_sample.csv, metrics.json, curves.json, heatmaps/*.png, gallery.png, curves.png
      COMPLETE             written last: the results are whole and can be published
      published.json       where the results were published (tracking URI, experiment, run id)

A rerun of the same config lands in the same folder, skips the finished batches and computes the rest.
"""
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np


def atomic_write(path: Path, write: Callable[[io.BufferedWriter], None]) -> None:
    """Write via a temporary file and ``os.replace``, so a killed run never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=True).encode()))


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


class RunFolder:
    """One config's output folder (see the module docstring for its layout)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.batches = self.path / "batches"
        self.results = self.path / "results"
        self.manifest_file = self.path / "manifest.json"
        self.config_file = self.path / "config.yaml"
        self.complete_file = self.path / "COMPLETE"
        self.published_file = self.path / "published.json"

    def start(self, manifest: dict[str, Any], config_yaml: str) -> dict[str, Any]:
        """Begin or resume: a new folder gets a fresh run key; an existing one must hold the same work."""
        if self.manifest_file.exists():
            previous = read_json(self.manifest_file)
            for key in ("sample_ids", "batches", "config_hash", "inputs"):
                if previous.get(key) != manifest.get(key):
                    raise ValueError(
                        f"{self.path} holds results of a different run ({key} differs: "
                        f"{str(previous.get(key))[:80]} vs {str(manifest.get(key))[:80]}); "
                        f"delete the folder or choose another hydra.run.dir"
                    )
            return previous
        manifest = {**manifest, "run_key": uuid.uuid4().hex}
        atomic_write(self.config_file, lambda f: f.write(config_yaml.encode()))
        write_json(self.manifest_file, manifest)
        return manifest

    @property
    def manifest(self) -> dict[str, Any]:
        if not self.manifest_file.exists():
            raise FileNotFoundError(f"{self.path} is not a pipeline output folder (no manifest.json)")
        return read_json(self.manifest_file)

    def batch_file(self, index: int) -> Path:
        return self.batches / f"{index:05d}.npz"

    def finished_batches(self) -> set[int]:
        return {int(p.stem) for p in self.batches.glob("*.npz")} if self.batches.exists() else set()

    def write_batch(self, index: int, arrays: dict[str, np.ndarray]) -> None:
        atomic_write(self.batch_file(index), lambda f: np.savez(f, **arrays))

    def read_batches(self) -> dict[str, np.ndarray]:
        """All batch results concatenated in batch order (= sample order)."""
        count = len(self.manifest["batches"])
        missing = [i for i in range(count) if not self.batch_file(i).exists()]
        if missing:
            raise FileNotFoundError(f"{self.path}: batches {missing} are not finished; rerun the same command to resume")
        parts = []
        for i in range(count):
            with np.load(self.batch_file(i)) as data:
                parts.append({k: data[k] for k in data.files})
        return {k: _concatenate([p[k] for p in parts]) for k in parts[0]}

    @property
    def is_complete(self) -> bool:
        return self.complete_file.exists()

    def mark_complete(self) -> None:
        atomic_write(self.complete_file, lambda f: f.write(b"results complete\n"))


def _concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate along samples; a batch whose images were all unreadable has empty arrays of any shape."""
    filled = [a for a in arrays if a.size] or arrays[:1]
    return np.concatenate(filled)

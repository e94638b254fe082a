"""The data stage: which samples a run covers, and loading them in batches.

Sources: the bundled digits, a folder of ``<class>/<image>`` files (``pipeline.stages.images``: unreadable images
skipped or fatal, by config) and CIFAR-10 from a local folder. Every per-sample selection goes through ``select_samples``.
"""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from pipeline.config import DatasetKind, OnCorrupt
from pipeline.stages.images import CheckedImageFolder, MaskedImageFolder, Unreadable

#: With ground-truth masks, a transform is applied to the mask too when it moves pixels (Resize with nearest
#: interpolation, so a mask stays a mask) and skipped when it changes values only.
MOVES_PIXELS = ("Resize", "CenterCrop", "Pad")
CHANGES_VALUES_ONLY = ("ToTensor", "PILToTensor", "ConvertImageDtype", "Normalize", "Grayscale")


@dataclass
class Batch:
    ids: Tensor  # (n,) dataset indices of the samples that loaded
    x: Tensor
    labels: Tensor
    skipped: list[Unreadable] = field(default_factory=list)
    skipped_ids: list[int] = field(default_factory=list)
    masks: Optional[Tensor] = None  # (n, H, W) bool ground truth (True = object), for datasets that have masks


class TensorImages(Dataset):
    """Images already in memory (the bundled digits), with ground-truth masks when given (then items are
    (image, label, mask))."""

    def __init__(self, images: Tensor, labels: Tensor, classes: tuple[str, ...], transform: Optional[Callable],
                 masks: Optional[Tensor] = None):
        self.images, self.labels, self.classes, self.transform = images, labels, classes, transform
        self.masks = masks
        self.has_masks = masks is not None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.images[index]
        item = (self.transform(image) if self.transform else image), int(self.labels[index])
        return (*item, self.masks[index]) if self.has_masks else item


def build_transform(specs: list[Any]) -> Optional[Callable]:
    """Compose the configured torchvision transforms (``_target_`` nodes), or None when there are none."""
    if not specs:
        return None
    from torchvision.transforms import Compose

    return Compose([instantiate(spec) for spec in specs])


def build_mask_transform(specs: list[Any]) -> Optional[Callable]:
    """The configured transforms that move pixels, for the masks (see MOVES_PIXELS), or an error naming the one
    whose effect on a mask is unknown (a random crop or flip would move image and mask apart)."""
    from torchvision.transforms import Compose, InterpolationMode

    kept = []
    for spec in specs:
        kind = str(spec.get("_target_", "")).rsplit(".", 1)[-1]
        if kind in MOVES_PIXELS:
            extra = {"interpolation": InterpolationMode.NEAREST} if kind == "Resize" else {}
            kept.append(instantiate(spec, **extra))
        elif kind not in CHANGES_VALUES_ONLY:
            raise ValueError(f"dataset.transforms has {spec.get('_target_')}, which dataset.mask_path cannot apply to "
                             f"the masks: with masks use only {', '.join(MOVES_PIXELS)} (applied to both) and "
                             f"{', '.join(CHANGES_VALUES_ONLY)} (images only)")
    return Compose(kept) if kept else None


def load_dataset(cfg: DictConfig) -> Dataset:
    """The whole configured dataset (selection happens in ``select_samples``); nothing is downloaded."""
    transform = build_transform(list(cfg.transforms))
    if cfg.kind == DatasetKind.digits:
        from pipeline.bundled import CLASSES, digits_split

        images, labels = digits_split(cfg.split)
        return TensorImages(images, labels, CLASSES, transform)
    if cfg.kind == DatasetKind.digits_localisation:
        from pipeline.bundled import CLASSES, digits_localisation_split

        if transform is not None:
            raise ValueError("dataset=digits_localisation takes no dataset.transforms: they would move the images "
                             "away from their masks")
        images, labels, masks = digits_localisation_split(cfg.split)
        return TensorImages(images, labels, CLASSES, None, masks=masks)
    path = Path(cfg.path).expanduser()
    if cfg.kind == DatasetKind.image_folder:
        if not path.is_dir():
            raise FileNotFoundError(f"dataset.path={cfg.path} is not a folder: give a folder of <class>/<image> files")
        if cfg.mask_path:
            masks = Path(cfg.mask_path).expanduser()
            if not masks.is_dir():
                raise FileNotFoundError(f"dataset.mask_path={cfg.mask_path} is not a folder: give a folder of "
                                        "<class>/<stem>.png masks mirroring dataset.path")
            return MaskedImageFolder(str(path), str(masks), transform, build_mask_transform(list(cfg.transforms)),
                                     cfg.max_pixels)
        return CheckedImageFolder(str(path), transform, cfg.max_pixels)
    if cfg.kind == DatasetKind.cifar10:
        from torchvision.datasets import CIFAR10

        if cfg.split not in ("train", "test"):
            raise ValueError(f"dataset.split={cfg.split} is not a CIFAR-10 split: use train or test")
        try:
            data = CIFAR10(str(path), train=cfg.split == "train", transform=transform, download=False)
        except RuntimeError as error:
            raise FileNotFoundError(
                f"CIFAR-10 not found or corrupted under dataset.path={cfg.path} ({error}): put the python version "
                f"(folder cifar-10-batches-py from https://www.cs.toronto.edu/~kriz/cifar.html) there; "
                f"the pipeline never downloads"
            ) from error
        data.classes = tuple(data.classes)
        return data
    raise ValueError(f"unknown dataset.kind={cfg.kind}")


def dataset_source(cfg: DictConfig) -> str:
    """Where the images come from, for the run's dataset record."""
    if cfg.kind in (DatasetKind.digits, DatasetKind.digits_localisation):
        import sklearn.datasets

        return str(Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz")
    return str(Path(cfg.path).expanduser().resolve())


def select_samples(
    total: int, limit: Optional[int] = None, num_shards: int = 1, shard: int = 0, batch_size: int = 1
) -> list[int]:
    """The dataset indices a run covers: the first ``limit`` samples, then the ``shard``-th of ``num_shards``.

    Shards are made of whole batches of the unsharded batch plan (batches ``shard``, ``shard + num_shards``,
    ...), so they are disjoint, deterministic, cover the selection exactly once, and every batch holds the
    same samples (and gets the same seed, see ``plan_index``) as in the unsharded run.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"dataset.limit={limit} must be >= 1 (or null for all {total} samples)")
    if num_shards < 1:
        raise ValueError(f"dataset.num_shards={num_shards} must be >= 1 (1: no sharding)")
    if not 0 <= shard < num_shards:
        raise ValueError(f"dataset.shard={shard} must be in 0..{num_shards - 1} (dataset.num_shards={num_shards})")
    batches = batch_plan(list(range(min(total, limit) if limit is not None else total)), batch_size)
    if num_shards > max(len(batches), 1):
        raise ValueError(
            f"dataset.num_shards={num_shards} is more than the {len(batches)} batches of batch_size={batch_size}: "
            f"shards are made of whole batches, so use at most dataset.num_shards={len(batches)} or a smaller batch_size"
        )
    return [i for batch in batches[shard::num_shards] for i in batch]


def plan_index(local_index: int, num_shards: int = 1, shard: int = 0) -> int:
    """The index in the unsharded batch plan of a shard's ``local_index``-th batch (see ``select_samples``)."""
    return shard + local_index * num_shards


def batch_plan(ids: list[int], batch_size: int) -> list[list[int]]:
    """Fixed batches of sample ids: resuming relies on batch ``k`` always holding the same samples."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    return [ids[i : i + batch_size] for i in range(0, len(ids), batch_size)]


def _collate(items: list[tuple[int, tuple[Any, ...]]]) -> Batch:
    """Items are (image, label) or, from datasets with masks, (image, label, mask)."""
    loaded = [(i, item) for i, item in items if not isinstance(item[0], Unreadable)]
    broken = [(i, item[0]) for i, item in items if isinstance(item[0], Unreadable)]
    masks = None
    if loaded:
        ids = torch.tensor([i for i, _ in loaded])
        x = _stack_images(tuple(item[0] for _, item in loaded))
        labels = torch.tensor([item[1] for _, item in loaded])
        if len(loaded[0][1]) > 2:
            masks = torch.stack([torch.as_tensor(item[2]).bool() for _, item in loaded])
    else:
        ids, x, labels = torch.zeros(0, dtype=torch.long), torch.zeros(0), torch.zeros(0, dtype=torch.long)
    return Batch(ids, x, labels, skipped=[b for _, b in broken], skipped_ids=[i for i, _ in broken], masks=masks)


def _stack_images(xs: tuple[Any, ...]) -> Tensor:
    """One (N, C, H, W) tensor, or an error that says which transform is missing."""
    if not all(isinstance(x, Tensor) for x in xs):
        kind = type(next(x for x in xs if not isinstance(x, Tensor))).__name__
        raise TypeError(
            f"the dataset gave {kind} images, not tensors: end dataset.transforms with "
            f"{{_target_: torchvision.transforms.ToTensor}}"
        )
    shapes = sorted({tuple(x.shape) for x in xs})
    if len(shapes) > 1 or len(shapes[0]) != 3:
        raise ValueError(
            f"images must all be (C, H, W) of one size to form a batch, got shapes {shapes}: add "
            f"torchvision.transforms.Resize and CenterCrop to dataset.transforms"
        )
    return torch.stack(xs)


class _Indexed(Dataset):
    def __init__(self, data: Dataset):
        self.data = data

    def __getitem__(self, index: int):
        return index, self.data[index]


def iterate_batches(
    data: Dataset, batches: list[list[int]], on_corrupt: OnCorrupt = OnCorrupt.skip, num_workers: int = 0
) -> Iterator[Batch]:
    """Load the given batches in order; unreadable images are skipped (reported by path) or fail the run."""
    loader = DataLoader(_Indexed(data), batch_sampler=batches, collate_fn=_collate, num_workers=num_workers)
    for batch in loader:
        if batch.skipped and on_corrupt == OnCorrupt.fail:
            first = batch.skipped[0]
            raise ValueError(
                f"unreadable image {first.path} ({first.reason}): fix or remove the file, "
                f"or set dataset.on_corrupt=skip to skip (and count) unreadable images"
            )
        yield batch


def load_images(data: Dataset, ids: list[int]) -> Tensor:
    """The images of ``ids`` as one (n, C, H, W) tensor (e.g. a background set); an unreadable one is an error."""
    images = []
    for i in ids:
        image = data[i][0]
        if isinstance(image, Unreadable):
            raise ValueError(f"image {image.path} ({image.reason}) was drawn as a baseline: fix or remove the file")
        images.append(image)
    return _stack_images(tuple(images))

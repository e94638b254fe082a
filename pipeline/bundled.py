"""The bundled default: scikit-learn's handwritten digits (shipped with scikit-learn) and a small VGG-style CNN.

Nothing is downloaded: the images come from the scikit-learn package, the trained weights from this folder.
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHTS = Path(__file__).with_name("digits_cnn.pt")
IMAGE_SIZE = 32
CLASSES = tuple(str(d) for d in range(10))
TEST_FRACTION = 0.2
SPLIT_SEED = 0


class DigitsCNN(nn.Sequential):
    """VGG-style: two Conv-BN-ReLU pairs per stage, MaxPool, then a dense head.

    BatchNorm is there on purpose: LRP must merge it into the convolution before it.
    """

    def __init__(self, classes: int = 10):
        def stage(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2),
            ]

        super().__init__(
            nn.Sequential(*stage(1, 16), *stage(16, 32)),
            nn.Sequential(
                nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, classes)
            ),
        )


def load_default_model(device: str | torch.device = "cpu") -> DigitsCNN:
    """The trained bundled model, in eval mode (weights loaded with ``weights_only=True``)."""
    if not WEIGHTS.exists():
        raise FileNotFoundError(f"{WEIGHTS} is missing: run `python scripts/train_default_model.py` to create it")
    model = DigitsCNN()
    model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    return model.to(device).eval()


def digits_images() -> tuple[Tensor, Tensor]:
    """All 1797 digits as (N, 1, 32, 32) float images in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return images.clamp(0.0, 1.0), torch.tensor(digits.target, dtype=torch.long)


def digits_split(split: str) -> tuple[Tensor, Tensor]:
    """The deterministic stratified ``"train"`` or ``"test"`` part of the digits."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    from sklearn.model_selection import train_test_split

    images, labels = digits_images()
    index = torch.arange(len(labels))
    train_idx, test_idx = train_test_split(
        index.numpy(), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels.numpy()
    )
    chosen = torch.as_tensor(train_idx if split == "train" else test_idx)
    return images[chosen], labels[chosen]

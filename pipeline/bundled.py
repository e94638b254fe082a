"""The bundled default: scikit-learn's handwritten digits (shipped with scikit-learn) and a small VGG-style CNN; a
small Vision Transformer on the same digits; and a localisation set made from them (each digit at a random place on
a larger canvas among distractor strokes, with the digit's pixels as ground-truth mask) with a CNN trained on it.

Nothing is downloaded: the images come from the scikit-learn package, the trained weights from this folder.
"""
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.vision_transformer import VisionTransformer

WEIGHTS = Path(__file__).with_name("digits_cnn.pt")
IMAGE_SIZE = 32
VIT_WEIGHTS = Path(__file__).with_name("digits_vit.pt")
LOCALISATION_WEIGHTS = Path(__file__).with_name("digits_localisation_cnn.pt")
CANVAS_SIZE = 64
CLASSES = tuple(str(d) for d in range(10))
TEST_FRACTION = 0.2
#: The part of ``train`` that is the validation split (``digits_split``).
VALIDATION_FRACTION = 0.2
SPLITS = ("train", "validation", "test")
SPLIT_SEED = 0


def vgg_stage(cin: int, cout: int) -> list[nn.Module]:
    """Two Conv-BN-ReLU pairs and a MaxPool. BatchNorm is there on purpose: LRP must merge it into the conv before."""
    return [
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
        nn.MaxPool2d(2),
    ]


class DigitsCNN(nn.Sequential):
    """VGG-style: two stages, then a dense head on the 8x8 feature maps."""

    def __init__(self, classes: int = 10):
        super().__init__(
            nn.Sequential(*vgg_stage(1, 16), *vgg_stage(16, 32)),
            nn.Sequential(nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, classes)),
        )


class CanvasDigitsCNN(nn.Sequential):
    """For digits anywhere on a canvas: three stages and a global average pool, so the head does not depend on
    where the digit is."""

    def __init__(self, classes: int = 10):
        super().__init__(
            nn.Sequential(*vgg_stage(1, 16), *vgg_stage(16, 32), *vgg_stage(32, 64)),
            nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(64, classes)),
        )


class DigitsViT(VisionTransformer):
    """torchvision's VisionTransformer, small, on the 1x32x32 digits: 4x4 patches (64 tokens and the class token),
    3 encoder blocks of width 64 with 4 heads. It is torchvision's class with torchvision's blocks
    (nn.MultiheadAttention, nn.LayerNorm, GELU), so what works on torchvision ViTs (the attention-aware LRP
    composites) works on it; only the patch embedding is replaced, as torchvision's takes 3 channels."""

    def __init__(self, classes: int = 10):
        super().__init__(image_size=IMAGE_SIZE, patch_size=4, num_layers=3, num_heads=4, hidden_dim=64, mlp_dim=128,
                         num_classes=classes)
        self.conv_proj = nn.Conv2d(1, self.hidden_dim, kernel_size=self.patch_size, stride=self.patch_size)
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / self.patch_size**2))  # torchvision's init
        nn.init.zeros_(self.conv_proj.bias)


#: model.arch of ``model.kind=bundled`` -> (architecture, weights file)
BUNDLED_MODELS = {"digits_cnn": (DigitsCNN, WEIGHTS), "digits_vit": (DigitsViT, VIT_WEIGHTS),
                  "digits_localisation_cnn": (CanvasDigitsCNN, LOCALISATION_WEIGHTS)}


def load_default_model(device: str | torch.device = "cpu", name: str = "digits_cnn") -> nn.Module:
    """A trained bundled model (``BUNDLED_MODELS``), in eval mode (weights loaded with ``weights_only=True``)."""
    if name not in BUNDLED_MODELS:
        raise ValueError(f"model.arch={name} is not a bundled model; bundled: {', '.join(BUNDLED_MODELS)}")
    architecture, weights = BUNDLED_MODELS[name]
    if not weights.exists():
        raise FileNotFoundError(f"{weights} is missing: run `python scripts/train_default_model.py --model {name}`")
    model = architecture()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.to(device).eval()


def digits_images() -> tuple[Tensor, Tensor]:
    """All 1797 digits as (N, 1, 32, 32) float images in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return images.clamp(0.0, 1.0), torch.tensor(digits.target, dtype=torch.long)


def digits_split(split: str) -> tuple[Tensor, Tensor]:
    """The deterministic stratified ``"train"`` or ``"test"`` part of the digits, or ``"validation"``.

    ``validation`` is a stratified VALIDATION_FRACTION of ``train`` (seeded): disjoint from ``test``, but the bundled
    model was trained on it. It is for choosing what is not a trained weight (the LRP parameters of
    ``experiment=tune_lrp``), with the result reported on ``test``; ``train`` and ``test`` stay as the shipped
    model and the regression baselines were made with.
    """
    if split not in SPLITS:
        raise ValueError(f"dataset.split={split} is not a split of the bundled digits; available: {', '.join(SPLITS)}")
    from sklearn.model_selection import train_test_split

    images, labels = digits_images()
    index = torch.arange(len(labels))
    train_idx, test_idx = train_test_split(
        index.numpy(), test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=labels.numpy()
    )
    if split == "validation":
        _, train_idx = train_test_split(
            train_idx, test_size=VALIDATION_FRACTION, random_state=SPLIT_SEED, stratify=labels[train_idx].numpy()
        )
    chosen = torch.as_tensor(test_idx if split == "test" else train_idx)
    return images[chosen], labels[chosen]


def digits_localisation_split(split: str) -> tuple[Tensor, Tensor, Tensor]:
    """The digits of ``digits_split(split)``, each pasted at a seeded random place on a CANVAS_SIZE canvas with three
    distractor strokes (short bright bars, kept off the digit's square): (N, 1, 64, 64) images in [0, 1], labels,
    and (N, 64, 64) bool masks of the digit's pixels (value > 0.25)."""
    digits, labels = digits_split(split)
    generator = torch.Generator().manual_seed({"train": 1, "test": 2, "validation": 3}[split])
    n, free = len(labels), CANVAS_SIZE - IMAGE_SIZE
    canvas = torch.zeros(n, 1, CANVAS_SIZE, CANVAS_SIZE)
    masks = torch.zeros(n, CANVAS_SIZE, CANVAS_SIZE, dtype=torch.bool)
    corners = torch.randint(0, free + 1, (n, 2), generator=generator)
    for i, (top, left) in enumerate(corners.tolist()):
        canvas[i, 0, top : top + IMAGE_SIZE, left : left + IMAGE_SIZE] = digits[i, 0]
        masks[i, top : top + IMAGE_SIZE, left : left + IMAGE_SIZE] = digits[i, 0] > 0.25
        drawn = 0
        while drawn < 3:  # a bar of 2 x 6..14 pixels, horizontal or vertical, outside the digit's square
            length = int(torch.randint(6, 15, (1,), generator=generator))
            long_side, short_side = (length, 2) if torch.rand(1, generator=generator) < 0.5 else (2, length)
            y = int(torch.randint(0, CANVAS_SIZE - long_side + 1, (1,), generator=generator))
            x = int(torch.randint(0, CANVAS_SIZE - short_side + 1, (1,), generator=generator))
            overlaps = y < top + IMAGE_SIZE and top < y + long_side and x < left + IMAGE_SIZE and left < x + short_side
            if not overlaps:
                canvas[i, 0, y : y + long_side, x : x + short_side] = 0.5 + 0.5 * torch.rand(1, generator=generator)
                drawn += 1
    return canvas, labels, masks

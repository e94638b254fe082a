"""Train a bundled model deterministically and write its weights into pipeline/.

Run: python scripts/train_default_model.py [--model digits_cnn]   (about a minute on 2 CPU cores)
     python scripts/train_default_model.py --model digits_vit   (the Vision Transformer: ~2 minutes on one core)
     python scripts/train_default_model.py --model digits_localisation_cnn   (digits on a 64x64 canvas: ~5 minutes)
"""
import argparse
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from pipeline.bundled import BUNDLED_MODELS, digits_localisation_split, digits_split

BATCH = 64
SEED = 0


@dataclass(frozen=True)
class Recipe:
    """How one bundled model is trained. The CNNs keep the recipe their shipped weights were made with."""

    epochs: int = 25
    lr: float = 1e-3
    weight_decay: float = 1e-4
    shift: int = 0  # each batch rolled by up to this many pixels (0: none; the canvas already has random places)
    transformer: bool = False  # AdamW with a one-cycle schedule: a ViT on 1437 images does not learn with plain Adam
    threads: Optional[int] = None  # fixed, so the result does not depend on the machine's core count (None: torch's)


RECIPES = {
    "digits_cnn": Recipe(shift=2),
    "digits_localisation_cnn": Recipe(),
    "digits_vit": Recipe(epochs=40, lr=3e-3, weight_decay=0.05, shift=2, transformer=True, threads=1),
}


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


def split(name: str, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    return digits_localisation_split(part)[:2] if name == "digits_localisation_cnn" else digits_split(part)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(BUNDLED_MODELS), default="digits_cnn")
    name = parser.parse_args().model
    architecture, weights = BUNDLED_MODELS[name]
    recipe = RECIPES[name]
    if recipe.threads is not None:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    train_x, train_y = split(name, "train")
    test_x, test_y = split(name, "test")
    model = architecture()
    if recipe.transformer:
        optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=recipe.lr, total_steps=recipe.epochs * math.ceil(len(train_y) / BATCH), pct_start=0.1)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        schedule = None
    generator = torch.Generator().manual_seed(SEED)
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(train_y), generator=generator)
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            # small random shifts make the model rely on strokes, not positions
            shift = torch.randint(-recipe.shift, recipe.shift + 1, (2,), generator=generator).tolist() if recipe.shift \
                else [0, 0]
            batch = torch.roll(train_x[idx], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(batch), train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
        print(f"epoch {epoch + 1:2d}  loss {loss.item():.4f}  test accuracy {accuracy(model, test_x, test_y):.4f}")
    acc = accuracy(model, test_x, test_y)
    torch.save(model.state_dict(), weights)
    print(f"saved {weights}  test accuracy {acc:.4f} on {len(test_y)} held-out digits")


if __name__ == "__main__":
    main()

"""Train a bundled model deterministically and write its weights into pipeline/.

Run: python scripts/train_default_model.py [--model digits_cnn]   (about a minute on 2 CPU cores)
     python scripts/train_default_model.py --model digits_localisation_cnn   (digits on a 64x64 canvas: ~5 minutes)
"""
import argparse

import torch
import torch.nn.functional as F

from pipeline.bundled import BUNDLED_MODELS, digits_localisation_split, digits_split

EPOCHS = 25
BATCH = 64
SEED = 0


def accuracy(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


def split(name: str, part: str) -> tuple[torch.Tensor, torch.Tensor]:
    return digits_split(part) if name == "digits_cnn" else digits_localisation_split(part)[:2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(BUNDLED_MODELS), default="digits_cnn")
    name = parser.parse_args().model
    architecture, weights = BUNDLED_MODELS[name]
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    train_x, train_y = split(name, "train")
    test_x, test_y = split(name, "test")
    model = architecture()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(train_y), generator=generator)
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            # small random shifts make the model rely on strokes, not positions (the canvas has random places)
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist() if name == "digits_cnn" else [0, 0]
            batch = torch.roll(train_x[idx], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(batch), train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1:2d}  loss {loss.item():.4f}  test accuracy {accuracy(model, test_x, test_y):.4f}")
    acc = accuracy(model, test_x, test_y)
    torch.save(model.state_dict(), weights)
    print(f"saved {weights}  test accuracy {acc:.4f} on {len(test_y)} held-out digits")


if __name__ == "__main__":
    main()

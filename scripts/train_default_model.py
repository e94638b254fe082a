"""Train the bundled digits CNN deterministically and write pipeline/digits_cnn.pt.

Run: python scripts/train_default_model.py   (about a minute on 2 CPU cores)
"""
import torch
import torch.nn.functional as F

from pipeline.bundled import WEIGHTS, DigitsCNN, digits_split

EPOCHS = 25
BATCH = 64
SEED = 0


def accuracy(model: DigitsCNN, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(images).argmax(1) == labels).float().mean().item()


def main() -> None:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    train_x, train_y = digits_split("train")
    test_x, test_y = digits_split("test")
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(SEED)
    for epoch in range(EPOCHS):
        model.train()
        order = torch.randperm(len(train_y), generator=generator)
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            # small random shifts make the model rely on strokes, not positions
            shift = torch.randint(-2, 3, (2,), generator=generator).tolist()
            batch = torch.roll(train_x[idx], shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(model(batch), train_y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        print(f"epoch {epoch + 1:2d}  loss {loss.item():.4f}  test accuracy {accuracy(model, test_x, test_y):.4f}")
    acc = accuracy(model, test_x, test_y)
    torch.save(model.state_dict(), WEIGHTS)
    print(f"saved {WEIGHTS}  test accuracy {acc:.4f} on {len(test_y)} held-out digits")


if __name__ == "__main__":
    main()

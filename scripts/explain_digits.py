"""Explain a few bundled digits with the gradient methods and save a heatmap gallery.

Rows: the input, Gradient, Input x Gradient, SmoothGrad, Integrated Gradients; columns: digits
(labelled "label -> explained class"). Red = evidence for the class, blue = against, white = none.

    python scripts/explain_digits.py [--count 6] [--out docs/gallery_gradients.png]
"""
import argparse
from pathlib import Path

from pipeline.bundled import CLASSES, digits_split, load_default_model
from xai import Gradient, InputTimesGradient, IntegratedGradients, SmoothGrad, heatmap, heatmap_grid
from xai.heatmap import input_images

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=6, help="number of held-out digits to explain")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "gallery_gradients.png")
    args = parser.parse_args()

    model = load_default_model()
    images, labels = digits_split("test")
    x, y = images[: args.count], labels[: args.count]
    analyzers = {
        "Gradient": Gradient(model),
        "Input x Gradient": InputTimesGradient(model),
        "SmoothGrad": SmoothGrad(model, samples=50, noise_level=0.1, seed=0),
        "Integrated Gradients": IntegratedGradients(model, steps=50),
    }
    rows = {"input": input_images(x)}
    for name, analyzer in analyzers.items():
        expl = analyzer(x)
        rows[name] = heatmap(expl)
    columns = [f"{CLASSES[label]} -> {CLASSES[target]}" for label, target in zip(y.tolist(), expl.target.tolist())]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    heatmap_grid(rows, column_labels=columns).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

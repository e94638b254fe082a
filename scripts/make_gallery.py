"""Render docs/gallery.png: every method on the bundled model, for two classes of the same digit.

Like ExplainableAI.jl's README table: rows are methods (Gradient, InputTimesGradient, SmoothGrad, Integrated
Gradients, DeepLIFT, the Shapley estimators, LIME, PatternNet/PatternAttribution (patterns fitted on the training
split), Occlusion, the four CAMs, LRP with each preset composite), columns the explained class. Red = positive relevance for the class,
blue = negative, white = 0 (each heatmap scaled to its own largest magnitude).

Usage: ``python scripts/make_gallery.py [--out docs/gallery.png] [--index 0] [--other-class 8]``
"""
import argparse
from pathlib import Path

import torch
from tqdm import tqdm

import xai.lrp.composites as xc
from pipeline.bundled import digits_split, load_default_model
from xai import (
    LIME, LRP, DeepLIFT, DeepLIFTShap, ExpectedGradients, GradCAM, GradCAMPlusPlus, Gradient, GradientSHAP,
    InputTimesGradient, IntegratedGradients, KernelSHAP, LayerCAM, Occlusion, PatternAttribution, PatternNet,
    ScoreCAM, SmoothGrad, fit_patterns, heatmap, heatmap_grid,
)
from xai.heatmap import input_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "gallery.png")
    parser.add_argument("--index", type=int, default=0, help="which held-out digit to explain")
    parser.add_argument("--other-class", type=int, default=None, help="second class (default: runner-up logit)")
    args = parser.parse_args()

    model = load_default_model()
    images, labels = digits_split("test")
    x = images[args.index:args.index + 1]
    with torch.no_grad():
        ranked = model(x)[0].argsort(descending=True)
    first = int(ranked[0])
    second = args.other_class if args.other_class is not None else int(ranked[1])
    batch, targets = x.expand(2, -1, -1, -1), torch.tensor([first, second])
    background = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:8]]
    patterns = fit_patterns(model, digits_split("train")[0].split(256), progress=False)

    analyzers = {
        "Gradient": Gradient(model),
        "Input x\nGradient": InputTimesGradient(model),
        "SmoothGrad": SmoothGrad(model, seed=0),
        "Integrated\nGradients": IntegratedGradients(model),
        "DeepLIFT": DeepLIFT(model),
        "DeepLIFT\nShap": DeepLIFTShap(model, background),
        "Gradient\nSHAP": GradientSHAP(model, background, samples=64, seed=0),
        "Expected\nGradients": ExpectedGradients(model, background, samples=64, seed=0),
        "KernelSHAP\n(grid)": KernelSHAP(model, features="grid", samples=256, seed=0),
        "LIME\n(grid)": LIME(model, features="grid", samples=256, seed=0),
        "PatternNet": PatternNet(model, patterns),
        "Pattern\nAttribution": PatternAttribution(model, patterns),
        "Occlusion\n(8/4)": Occlusion(model, window=8, stride=4),
        "GradCAM": GradCAM(model),
        "GradCAM++": GradCAMPlusPlus(model),
        "LayerCAM": LayerCAM(model),
        "ScoreCAM": ScoreCAM(model),
        "LRP\nEpsilonGammaBox": LRP(model, xc.EpsilonGammaBox(low=0.0, high=1.0)),  # digits lie in [0, 1]
        "LRP\nEpsilonPlus": LRP(model, xc.EpsilonPlus()),
        "LRP\nEpsilonPlusFlat": LRP(model, xc.EpsilonPlusFlat()),
        "LRP\nEpsilonAlpha2Beta1": LRP(model, xc.EpsilonAlpha2Beta1()),
        "LRP\nEpsilonAlpha2Beta1Flat": LRP(model, xc.EpsilonAlpha2Beta1Flat()),
    }
    rows = {"input": input_images(batch)}
    for name, analyzer in tqdm(analyzers.items(), desc="methods"):
        rows[name] = heatmap(analyzer(batch, target=targets))
    grid = heatmap_grid(rows, column_labels=[f"class {first}", f"class {second}"], cell_inches=1.9, dpi=90)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(args.out)
    print(f"digit {int(labels[args.index])} (test index {args.index}), classes {first} and {second} -> {args.out}")


if __name__ == "__main__":
    main()

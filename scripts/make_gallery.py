"""Render docs/gallery.png (or gallery_vit.png): every method on a bundled model, for two classes of the same digit.

``--model digits_vit``: the methods that apply to the bundled Vision Transformer, LRP with CPLRP and AttnLRP.

Like ExplainableAI.jl's README table: rows are methods (Gradient, InputTimesGradient, SmoothGrad, Integrated
Gradients, DeepLIFT, the Shapley estimators, LIME, PatternNet/PatternAttribution (patterns fitted on the training
split), Occlusion, the four CAMs, LRP with each preset composite), columns the explained class. Red = positive relevance for the class,
blue = negative, white = 0 (each heatmap scaled to its own largest magnitude).

Usage: ``python scripts/make_gallery.py [--model digits_cnn|digits_vit] [--out docs/gallery.png] [--index 0]
[--other-class 8]``
"""
import argparse
from functools import cache
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


DOCS = Path(__file__).resolve().parents[1] / "docs"
#: Rows each bundled model leaves out. The CNN: the transformer composites (on a CNN they are just Gamma and
#: Epsilon). The ViT: DeepLIFT (no rule for LayerNorm and attention), the CAMs (its only convolution is the patch
#: embedding, not a late feature map), PatternNet (patterns assume ReLU networks), the CNN composites (they refuse
#: attention).
LEFT_OUT = {
    "digits_cnn": {"LRP\nCPLRP", "LRP\nAttnLRP"},
    "digits_vit": {"DeepLIFT", "DeepLIFT\nShap", "PatternNet", "Pattern\nAttribution", "GradCAM", "GradCAM++",
                   "LayerCAM", "ScoreCAM", "LRP\nEpsilonGammaBox", "LRP\nEpsilonPlus", "LRP\nEpsilonPlusFlat",
                   "LRP\nEpsilonAlpha2Beta1", "LRP\nEpsilonAlpha2Beta1Flat"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(LEFT_OUT), default="digits_cnn")
    parser.add_argument("--out", type=Path, default=None, help="default docs/gallery.png, docs/gallery_vit.png")
    parser.add_argument("--index", type=int, default=0, help="which held-out digit to explain")
    parser.add_argument("--other-class", type=int, default=None, help="second class (default: runner-up logit)")
    args = parser.parse_args()
    out = args.out or DOCS / ("gallery_vit.png" if args.model == "digits_vit" else "gallery.png")

    model = load_default_model(name=args.model)
    images, labels = digits_split("test")
    x = images[args.index:args.index + 1]
    with torch.no_grad():
        ranked = model(x)[0].argsort(descending=True)
    first = int(ranked[0])
    second = args.other_class if args.other_class is not None else int(ranked[1])
    batch, targets = x.expand(2, -1, -1, -1), torch.tensor([first, second])
    background = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:8]]

    @cache
    def patterns():
        return fit_patterns(model, digits_split("train")[0].split(256), progress=False)

    factories = {
        "Gradient": lambda: Gradient(model),
        "Input x\nGradient": lambda: InputTimesGradient(model),
        "SmoothGrad": lambda: SmoothGrad(model, seed=0),
        "Integrated\nGradients": lambda: IntegratedGradients(model),
        "DeepLIFT": lambda: DeepLIFT(model),
        "DeepLIFT\nShap": lambda: DeepLIFTShap(model, background),
        "Gradient\nSHAP": lambda: GradientSHAP(model, background, samples=64, seed=0),
        "Expected\nGradients": lambda: ExpectedGradients(model, background, samples=64, seed=0),
        "KernelSHAP\n(grid)": lambda: KernelSHAP(model, features="grid", samples=256, seed=0),
        "LIME\n(grid)": lambda: LIME(model, features="grid", samples=256, seed=0),
        "PatternNet": lambda: PatternNet(model, patterns()),
        "Pattern\nAttribution": lambda: PatternAttribution(model, patterns()),
        "Occlusion\n(8/4)": lambda: Occlusion(model, window=8, stride=4),
        "GradCAM": lambda: GradCAM(model),
        "GradCAM++": lambda: GradCAMPlusPlus(model),
        "LayerCAM": lambda: LayerCAM(model),
        "ScoreCAM": lambda: ScoreCAM(model),
        "LRP\nEpsilonGammaBox": lambda: LRP(model, xc.EpsilonGammaBox(low=0.0, high=1.0)),  # digits lie in [0, 1]
        "LRP\nEpsilonPlus": lambda: LRP(model, xc.EpsilonPlus()),
        "LRP\nEpsilonPlusFlat": lambda: LRP(model, xc.EpsilonPlusFlat()),
        "LRP\nEpsilonAlpha2Beta1": lambda: LRP(model, xc.EpsilonAlpha2Beta1()),
        "LRP\nEpsilonAlpha2Beta1Flat": lambda: LRP(model, xc.EpsilonAlpha2Beta1Flat()),
        "LRP\nCPLRP": lambda: LRP(model, xc.CPLRP()),
        "LRP\nAttnLRP": lambda: LRP(model, xc.AttnLRP()),
    }
    analyzers = {name: build for name, build in factories.items() if name not in LEFT_OUT[args.model]}
    rows = {"input": input_images(batch)}
    for name, build in tqdm(analyzers.items(), desc="methods"):
        rows[name] = heatmap(build()(batch, target=targets))
    grid = heatmap_grid(rows, column_labels=[f"class {first}", f"class {second}"], cell_inches=1.9, dpi=90)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    print(f"{args.model}: digit {int(labels[args.index])} (test index {args.index}), classes {first} and {second} "
          f"-> {out}")


if __name__ == "__main__":
    main()

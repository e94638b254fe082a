"""Time Occlusion and the CAMs against their references and against the bare passes they need, side by side on CPU.

ResNet18 (random weights), one image, the same target and the same inputs per forward pass on every side:
- Occlusion(window, stride) vs Captum's Occlusion (``perturbations_per_eval`` = our ``batch_size``) vs the bare
  forward passes over the same covered images, built beforehand;
- GradCAM / GradCAM++ / LayerCAM vs pytorch-grad-cam's vs a plain gradient (``xai.Gradient``);
- ScoreCAM vs pytorch-grad-cam's (``batch_size`` equal) vs the bare forward passes over the masked images;
- DeepLIFT (zero baseline) vs Captum's DeepLift vs a plain gradient of the same images, for one image and for 8,
  with a new analyzer per call (DeepLIFT adds one gradient-free forward pass of the shared baseline to a gradient)
  and with one analyzer reused across calls (it keeps the baseline's pass). Captum fails on
  torchvision's BasicBlock, which calls one ReLU twice, so it gets a copy with one ReLU per use (the same
  computation);
- GradientSHAP (``--shap-samples`` draws from 8 random baselines) vs Captum's GradientShap vs a plain gradient
  of as many images.
- PatternNet / PatternAttribution vs a plain gradient (no PyTorch reference exists: iNNvestigate is Keras), with
  patterns fitted beforehand on ``--batch-size`` random images (the fit's time is printed once);
- KernelSHAP / LIME (an 8 x 8 grid of features, ``--samples`` coalitions) vs Captum's KernelShap / Lime
  (``perturbations_per_eval`` = our ``batch_size``, the same mask) vs the bare forward passes over the image and
  the same number of switched images, built beforehand.
Repeats alternate the order; the table shows median wall-clock and process CPU times and their ratios.

    python scripts/bench_methods.py [--size 224] [--repeats 3] [--batch-size 32] [--shap-samples 16] [--samples 128]
        [--only NAME,..]
"""
import argparse
import copy
import statistics
import time
import types
import warnings

import torch
from captum.attr import DeepLift as CaptumDeepLift
from captum.attr import GradientShap as CaptumGradientShap
from captum.attr import KernelShap as CaptumKernelShap
from captum.attr import Lime as CaptumLime
from captum.attr import Occlusion as CaptumOcclusion
from pytorch_grad_cam import GradCAM as RefGradCAM
from pytorch_grad_cam import GradCAMPlusPlus as RefGradCAMPlusPlus
from pytorch_grad_cam import LayerCAM as RefLayerCAM
from pytorch_grad_cam import ScoreCAM as RefScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock

from xai import (LIME, DeepLIFT, GradCAM, GradCAMPlusPlus, Gradient, GradientSHAP, KernelSHAP, LayerCAM, Occlusion,
                 PatternAttribution, PatternNet, ScoreCAM, fit_patterns)
from xai.perturbation.features import grid_segments
from xai.perturbation.occlusion import window_masks, window_starts


def timed(run) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def bare_forwards(model, inputs: torch.Tensor, batch: int):
    def run():
        with torch.no_grad():
            for i in range(0, len(inputs), batch):
                model(inputs[i : i + batch])
    return run


def _basic_block_forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    return self.relu_out(self.bn2(self.conv2(out)) + identity)


def one_relu_per_use(model: nn.Module) -> nn.Module:
    """A copy whose BasicBlocks use a second ReLU module for their output (Captum's DeepLift needs that)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, BasicBlock):
            module.relu_out = nn.ReLU(inplace=True)
            module.forward = types.MethodType(_basic_block_forward, module)
    return model


def build_cases(args) -> dict[str, dict[str, callable]]:
    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    x = torch.randn(1, 3, args.size, args.size)
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    batch, window, stride = args.batch_size, args.size // 7, args.size // 14
    starts = window_starts(args.size, window, stride)
    masks = window_masks(starts.repeat(len(starts)), starts.repeat_interleave(len(starts)), args.size, args.size,
                         window, x)[:, None]
    covered = torch.cat([x, x * (1 - masks)])  # what Occlusion runs: the image, then every covered copy

    cases = {f"Occlusion({window}/{stride}, {len(masks)} windows)": {
        "ours": lambda: Occlusion(model, window=window, stride=stride, batch_size=batch)(x, target=target),
        "reference": lambda: CaptumOcclusion(model).attribute(
            x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride), baselines=0.0, target=target,
            perturbations_per_eval=batch),
        "bare": bare_forwards(model, covered, batch),
    }}
    layer = model.layer4[1]
    for name, ours, reference in (("GradCAM", GradCAM, RefGradCAM), ("GradCAMPlusPlus", GradCAMPlusPlus,
                                                                      RefGradCAMPlusPlus),
                                  ("LayerCAM", LayerCAM, RefLayerCAM)):
        cases[name] = {
            "ours": lambda ours=ours: ours(model, layer="layer4.1")(x, target=target),
            "reference": lambda reference=reference: reference(model=model, target_layers=[layer])(
                input_tensor=x, targets=[ClassifierOutputTarget(int(target))]),
            "bare": lambda: Gradient(model)(x, target=target),
        }
    score_layer = model.layer3[1]
    with torch.no_grad():
        maps = []
        handle = score_layer.register_forward_hook(lambda m, i, o: maps.append(o))
        model(x)
        handle.remove()
    upsampled = torch.nn.functional.interpolate(maps[0], size=x.shape[2:], mode="bilinear", align_corners=True)
    masked = torch.cat([x, x * upsampled[0][:, None]])

    def reference_score_cam():
        cam = RefScoreCAM(model=model, target_layers=[score_layer])
        cam.batch_size = batch
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(int(target))])

    cases[f"ScoreCAM(layer3.1, {maps[0].shape[1]} maps)"] = {
        "ours": lambda: ScoreCAM(model, layer="layer3.1", batch_size=batch)(x, target=target),
        "reference": reference_score_cam,
        "bare": bare_forwards(model, masked, batch),
    }
    captum_model = one_relu_per_use(model)
    reused = DeepLIFT(model)
    for images in (x, x.repeat(8, 1, 1, 1)):
        goal = target.expand(len(images))
        for kind, analyzer in (("new analyzer", lambda: DeepLIFT(model)), ("reused analyzer", lambda: reused)):
            cases[f"DeepLIFT ({len(images)} image{'s' * (len(images) > 1)}, {kind}) vs gradient"] = {
                "ours": lambda images=images, goal=goal, analyzer=analyzer: analyzer()(images, target=goal),
                "reference": lambda images=images, goal=goal: CaptumDeepLift(captum_model).attribute(
                    images, baselines=0.0, target=goal),
                "bare": lambda images=images, goal=goal: Gradient(model)(images, target=goal),
            }
    samples = args.shap_samples
    baselines = torch.randn(8, 3, args.size, args.size)
    points = torch.randn(samples, 3, args.size, args.size)
    cases[f"GradientSHAP({samples} samples)"] = {
        "ours": lambda: GradientSHAP(model, baselines, samples=samples, batch_size=batch)(x, target=target),
        "reference": lambda: CaptumGradientShap(model).attribute(
            x, baselines=baselines, n_samples=samples, target=target),
        "bare": lambda: Gradient(model)(points, target=target.expand(samples)),
    }
    patterns = []  # filled by the timed fit
    fit_time, _ = timed(lambda: patterns.append(fit_patterns(model, [torch.randn(batch, 3, args.size, args.size)],
                                                             progress=False)))
    print(f"fit_patterns on {batch} images {args.size}x{args.size}: {fit_time:.2f} s")
    for name, analyzer in (("PatternNet", PatternNet), ("PatternAttribution", PatternAttribution)):
        cases[name] = {
            "ours": lambda analyzer=analyzer: analyzer(model, patterns[0])(x, target=target),
            "bare": lambda: Gradient(model)(x, target=target),
        }
    segments = grid_segments(x)
    switched = torch.rand((args.samples, 64), generator=torch.Generator().manual_seed(0)) < 0.5
    keep = switched.gather(1, segments.flatten(1).expand(args.samples, -1)).view(args.samples, 1, *x.shape[2:])
    switched_inputs = torch.cat([x, x * keep])  # what both run: the image, then one input per coalition
    for name, ours, reference in (("KernelSHAP", KernelSHAP, CaptumKernelShap), ("LIME", LIME, CaptumLime)):
        cases[f"{name}(64 cells, {args.samples} samples)"] = {
            "ours": lambda ours=ours: ours(model, features=segments, samples=args.samples, batch_size=batch,
                                           seed=0)(x, target=target),
            "reference": lambda reference=reference: reference(model).attribute(
                x, baselines=0.0, target=target, feature_mask=segments[:, None], n_samples=args.samples,
                perturbations_per_eval=batch),
            "bare": bare_forwards(model, switched_inputs, batch),
        }
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shap-samples", type=int, default=16)
    parser.add_argument("--samples", type=int, default=128, help="KernelSHAP / LIME coalitions")
    parser.add_argument("--only", default="", help="comma-separated parts of method names to time (default: all)")
    args = parser.parse_args()
    for noise in ("Setting forward, backward hooks", "Input Tensor 0 did not already require gradients"):
        warnings.filterwarnings("ignore", message=noise)  # Captum warns on every call
    cases = build_cases(args)
    if args.only:
        cases = {name: sides for name, sides in cases.items() if any(part in name for part in args.only.split(","))}
    print(f"ResNet18, 1 image {args.size}x{args.size}, {args.batch_size} inputs per forward pass, "
          f"{args.repeats} repeats, torch threads={torch.get_num_threads()}")
    print(f"{'method':50s} {'ours s':>8s} {'ref s':>8s} {'bare s':>8s} {'ours/ref':>9s} {'ours/bare':>10s}"
          f" {'cpu ours/ref':>13s} {'cpu ours/bare':>14s}")
    for name, sides in cases.items():
        times = {side: [] for side in sides}
        for repeat in range(args.repeats):
            order = list(sides) if repeat % 2 == 0 else list(reversed(sides))
            for side in order:
                times[side].append(timed(sides[side]))
        wall = {side: statistics.median(t[0] for t in values) for side, values in times.items()}
        cpu = {side: statistics.median(t[1] for t in values) for side, values in times.items()}
        if "reference" not in sides:  # no reference implementation: dashes in its columns
            wall["reference"] = cpu["reference"] = float("nan")
        print(f"{name:50s} {wall['ours']:8.3f} {wall['reference']:8.3f} {wall['bare']:8.3f} "
              f"{wall['ours'] / wall['reference']:9.2f} {wall['ours'] / wall['bare']:10.2f} "
              f"{cpu['ours'] / cpu['reference']:13.2f} {cpu['ours'] / cpu['bare']:14.2f}".replace("nan", "  -"))


if __name__ == "__main__":
    main()

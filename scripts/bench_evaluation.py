"""Time our PixelFlipping against the bare forward passes it needs, and Quantus's PixelFlipping against ours.

Side by side in one run on CPU, for the bundled digits CNN (16 digits, 1x32x32) and a random-weight ResNet18
(8 images, 3x224x224), both with ``unit="channel"`` (Quantus's semantics) and a numeric baseline:

- bare: the same forward calls on the same perturbed inputs, prebuilt before the clock starts, same batch size,
  under ``torch.inference_mode`` (the floor no implementation can beat);
- ours: ``PixelFlipping(...)(model, x, attribution, target)``, everything included (checks, ranking, building
  the perturbed inputs, softmax, gathering the scores);
- quantus: ``quantus.PixelFlipping(...)`` on the same numpy arrays, best of the repeats that fit in 60 s;
- overhead: ours with a model that costs nothing (returns zeros), i.e. our own work beside the forward passes; its
  ratio to bare is a steadier estimate of ours / bare - 1 when other processes disturb the wall times.

Repeats alternate which of bare and ours goes first; the table shows the minimum wall time of each (the least
disturbed by other processes on a shared machine), the ratios ours / bare (floor: <= 1.05) and quantus / ours of
those minima, and "paired": the median over repeats of ours / bare of the two runs made back to back. On a busy machine,
``--threads 1 --clock cpu`` measures the CPU time of this process instead, which waiting for a core does not inflate.

Then the faithfulness metrics (ROAD, Deletion, Insertion, FaithfulnessCorrelation, Infidelity) on the digits CNN,
each against the reference doing the same work (grad-cam's ROADCombined over the same 9 fractions, Quantus's
PixelFlipping with one-channel digits and a 0 baseline (= Deletion's work), Quantus's FaithfulnessCorrelation,
Captum's infidelity with Gaussian noise) and against its bare forward passes: the inputs of its forward calls,
recorded during a warm-up run, replayed. ROAD's overhead is mostly the imputation (sparse solves on the CPU).

Then the metrics that need no forward pass (Sparseness, Complexity, and the localisation metrics on the bundled
localisation digits with their masks), ours against Quantus's on the same attributions: the floor is 20x.

Last, the metrics that re-explain (MPRT, RandomLogit, Max/AvgSensitivity, LocalLipschitzEstimate) with
``Gradient`` on the digits CNN against Quantus's, which get the same explainer through ``explain_func_for``, the
same number of noisy copies (20) and randomised layers.

    python scripts/bench_evaluation.py [--repeats 3] [--batch-size 64] [--skip-quantus]
                                      [--only digits|resnet|faithfulness|attribution|explainer] [--threads T] [--clock wall|cpu]
"""
import argparse
import statistics
import time
import warnings

import quantus
import torch
from captum.metrics import infidelity
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn
from torchvision.models import resnet18

from evaluation import (
    ROAD, AttributionLocalisation, AvgSensitivity, Complexity, Deletion, FaithfulnessCorrelation, Infidelity,
    Insertion, LocalLipschitzEstimate, MaxSensitivity, ModelParameterRandomisation, PixelFlipping, PointingGame,
    RandomLogit, RelevanceMassAccuracy, RelevanceRankAccuracy, Sparseness,
)
from evaluation.common.ordering import flip_step, step_of_rank
from evaluation.quantus_adapter import explain_func_for
from pipeline.bundled import digits_localisation_split, digits_split, load_default_model
from xai import Gradient

QUANTUS_BUDGET_S = 60.0  # repeat Quantus only while its runs add up to less than this


def cases(only: str | None):
    if only in ("faithfulness", "attribution", "explainer"):
        return
    if only != "resnet":
        images, labels = digits_split("test")
        # 1024 / 32 = 32 steps; a run takes ~0.1 s, so 10x the repeats to see through other processes' noise
        yield "digits CNN", load_default_model(), images[:16], labels[:16], 32, 10
    if only != "digits":
        torch.manual_seed(0)
        resnet = resnet18(weights=None).eval()
        rgb = torch.rand(8, 3, 224, 224)
        with torch.no_grad():
            target = resnet(rgb).argmax(1)
        yield "ResNet18", resnet, rgb, target, 6272, 1  # 3 * 50176 / 6272 = 24 steps; 6272 divides H*W (Quantus)


def prebuilt_chunks(x, attribution, features_in_step, baseline, batch_size):
    """Exactly the inputs of our forward calls: the unperturbed batch, then (sample, step) rows in chunks."""
    n = x.shape[0]
    step_of = step_of_rank(x[0].numel(), features_in_step, None, "channel values")
    flips = flip_step(attribution.reshape(n, -1), "morf", step_of).view(x.shape)
    steps = int(step_of[-1])
    perturbed = torch.stack([torch.where(flips <= s, torch.full_like(x, baseline), x) for s in range(1, steps + 1)], 1)
    perturbed = perturbed.reshape(n * steps, *x.shape[1:])
    return [x[i : i + batch_size] for i in range(0, n, batch_size)] + list(perturbed.split(batch_size)), steps


class Recorder(nn.Module):
    """The model, keeping a copy of every input batch it is called on."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.clone())
        return self.model(x)


class Stub(nn.Module):
    """A model that costs nothing: ours on it is our own overhead (ranking, building inputs, scores)."""

    def __init__(self, classes: int):
        super().__init__()
        self.classes = classes

    def forward(self, x):
        return x.new_zeros(x.shape[0], self.classes)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def time_bare(model, chunks):
    start = clock()
    with torch.inference_mode():
        for chunk in chunks:
            model(chunk)
    return clock() - start


def time_call(fn):
    start = clock()
    fn()
    return clock() - start


def alternating_runs(metric, model, stub, x, attribution, target, chunks, repeats):
    """Wall (or CPU) times of bare, ours and ours on the stub; bare and ours alternate which goes first."""
    bare, ours, overhead = [], [], []
    for repeat in range(repeats):
        if repeat % 2:
            ours.append(time_call(lambda: metric(model, x, attribution, target)))
        bare.append(time_bare(model, chunks))
        if not repeat % 2:
            ours.append(time_call(lambda: metric(model, x, attribution, target)))
        overhead.append(time_call(lambda: metric(stub, x, attribution, target)))
    return bare, ours, overhead


def best_of(fn, repeats: int) -> float:
    """The least time of up to ``repeats`` runs of a reference, repeated only while they add up to the budget."""
    runs = []
    while len(runs) < repeats and sum(runs) < QUANTUS_BUDGET_S:
        runs.append(time_call(fn))
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--skip-quantus", action="store_true")
    parser.add_argument("--only", choices=["digits", "resnet", "faithfulness", "attribution", "explainer"],
                        help="run one of the two PixelFlipping models, or only the faithfulness metrics, or only "
                             "the re-explaining (randomisation, robustness) metrics")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or this process's CPU time (steady on a busy machine with --threads 1)")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    baseline = 0.0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, quantus {quantus.__version__}, "
          f"batch_size {args.batch_size}, best of {args.repeats} (digits: {10 * args.repeats}), {args.clock} clock")
    print(f"{'model':<11} {'input':<14} {'steps':>5} {'forwards':>8} {'bare s':>8} {'ours s':>8} {'quantus s':>9} "
          f"{'ours/bare':>9} {'paired':>6} {'quantus/ours':>12} {'overhead s':>10} {'overhead/bare':>13}")
    for name, model, x, target, k, repeat_factor in cases(args.only):
        attribution = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        metric = PixelFlipping(features_in_step=k, baseline=baseline, unit="channel", batch_size=args.batch_size,
                               progress=False)
        chunks, steps = prebuilt_chunks(x, attribution, k, baseline, args.batch_size)
        ours_result = metric(model, x, attribution, target)  # warm-up, and the check below
        with torch.inference_mode():
            bare_last = torch.softmax(model(chunks[-1]), 1)[:, target[-1]][-1]
        assert torch.allclose(bare_last, ours_result.curve[-1, -1], atol=1e-5), "bare inputs differ from ours"
        with torch.no_grad():
            stub = Stub(model(x[:1]).shape[1])
        bare, ours, overhead = alternating_runs(metric, model, stub, x, attribution, target, chunks,
                                                args.repeats * repeat_factor)
        bare_s, ours_s, overhead_s = min(bare), min(ours), min(overhead)
        paired = statistics.median(o / b for o, b in zip(ours, bare))  # each pair ran back to back
        quantus_s = float("nan")
        if not args.skip_quantus:
            pf = quantus.PixelFlipping(features_in_step=k, perturb_baseline=baseline, disable_warnings=True,
                                       display_progressbar=False)
            quantus_s = best_of(lambda: pf(model=model, x_batch=x.numpy(), y_batch=target.numpy(),
                                           a_batch=attribution.numpy(), channel_first=True, device="cpu",
                                           batch_size=args.batch_size), args.repeats * repeat_factor)
        shape = "x".join(map(str, x.shape))
        print(f"{name:<11} {shape:<14} {steps:>5} {len(chunks):>8} {bare_s:>8.3f} {ours_s:>8.3f} {quantus_s:>9.3f} "
              f"{ours_s / bare_s:>9.3f} {paired:>6.3f} {quantus_s / ours_s:>12.2f} {overhead_s:>10.3f} "
              f"{overhead_s / bare_s:>13.3f}", flush=True)
    if args.only in (None, "faithfulness"):
        faithfulness_metrics(args)
    if args.only in (None, "attribution"):
        attribution_metrics(args)
    if args.only in (None, "explainer"):
        explainer_metrics(args)


def faithfulness_metrics(args) -> None:
    """Each new metric on 16 digits: bare, ours, the reference, our overhead (see the module docstring)."""
    images, labels = digits_split("test")
    model, x, target = load_default_model(), images[:16], labels[:16]
    attribution = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    b = args.batch_size
    noise = 0.003

    def gaussian(inputs):
        perturbation = noise * torch.randn_like(inputs)
        return perturbation, inputs - perturbation

    references = {
        "ROAD": ("grad-cam", lambda: ROADCombined(percentiles=list(range(10, 100, 10)))(
            x, attribution[:, 0].numpy(), [ClassifierOutputSoftmaxTarget(int(t)) for t in target], model)),
        "Deletion": ("quantus", lambda: quantus.PixelFlipping(
            features_in_step=32, perturb_baseline=0.0, disable_warnings=True, display_progressbar=False)(
            model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=attribution.numpy(), channel_first=True,
            device="cpu", batch_size=b)),
        "FaithfulnessCorrelation": ("quantus", lambda: quantus.FaithfulnessCorrelation(
            perturb_baseline=0.0, return_aggregate=False, disable_warnings=True, display_progressbar=False)(
            model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=attribution.numpy(), channel_first=True,
            device="cpu", batch_size=b)),
        "Infidelity": ("captum", lambda: infidelity(model, gaussian, x, attribution, target=target,
                                                    n_perturb_samples=10, max_examples_per_batch=b)),
    }
    metrics = [
        ROAD(percentages=tuple(p / 10 for p in range(10)), batch_size=b, seed=0, progress=False),
        Deletion(pixels_in_step=32, batch_size=b, progress=False),
        Insertion(pixels_in_step=32, batch_size=b, progress=False),
        FaithfulnessCorrelation(batch_size=b, seed=0, progress=False),
        Infidelity(n_perturb_samples=10, noise_std=noise, batch_size=b, seed=0, progress=False),
    ]
    with torch.no_grad():
        stub = Stub(model(x[:1]).shape[1])
    print(f"\n{'metric':<24} {'inputs':>8} {'bare s':>8} {'ours s':>8} {'reference':>9} {'ref s':>8} "
          f"{'ours/bare':>9} {'ref/ours':>8} {'overhead s':>10}")
    for metric in metrics:
        name = type(metric).__name__
        recorder = Recorder(model)
        metric(recorder, x, attribution, target)
        chunks = recorder.inputs
        bare, ours, overhead = alternating_runs(metric, model, stub, x, attribution, target, chunks, 3 * args.repeats)
        reference, run_reference = references.get(name, ("-", None))
        reference_s = float("nan")
        if run_reference is not None and not args.skip_quantus:
            reference_s = best_of(run_reference, args.repeats)
        bare_s, ours_s = min(bare), min(ours)
        inputs = sum(len(c) for c in chunks)
        print(f"{name:<24} {inputs:>8} {bare_s:>8.3f} {ours_s:>8.3f} {reference:>9} {reference_s:>8.3f} "
              f"{ours_s / bare_s:>9.3f} {reference_s / ours_s:>8.2f} {min(overhead):>10.3f}", flush=True)


def attribution_metrics(args) -> None:
    """The metrics that read only the attribution (and a mask): 16 localisation digits, ours vs Quantus 0.6.0."""
    images, labels, masks = digits_localisation_split("test")
    x, target, mask = images[:16], labels[:16], masks[:16, None]
    model = load_default_model("cpu", "digits_localisation_cnn")
    attribution = Gradient(model)(x, target).attribution
    arrays = dict(model=model, x_batch=x.numpy(), y_batch=target.numpy(), channel_first=True)
    pairs = [
        (Sparseness(), quantus.Sparseness, {}), (Complexity(), quantus.Complexity, {}),
        (PointingGame(), quantus.PointingGame, {"mask": mask}),
        (RelevanceMassAccuracy(), quantus.RelevanceMassAccuracy, {"mask": mask}),
        (RelevanceRankAccuracy(), quantus.RelevanceRankAccuracy, {"mask": mask}),
        (AttributionLocalisation(), quantus.AttributionLocalisation, {"mask": mask}),
    ]
    print(f"\n{'metric':<30} {'ours s':>8} {'quantus s':>9} {'quantus/ours':>12}")
    for ours, reference, extra in pairs:
        ours_s = best_of(lambda: ours(model, x, attribution, target, **extra), 10 * args.repeats)
        quantus_s = float("nan")
        if not args.skip_quantus:
            s_batch = {"s_batch": mask.numpy().astype(float)} if extra else {}
            quantus_s = best_of(lambda: reference(disable_warnings=True)(
                **arrays, a_batch=attribution.numpy().copy(), **s_batch), 10 * args.repeats)
        print(f"{type(ours).__name__:<30} {ours_s:>8.4f} {quantus_s:>9.4f} {quantus_s / ours_s:>12.1f}", flush=True)


def explainer_metrics(args) -> None:
    """The re-explaining metrics on 16 digits with Gradient: ours vs Quantus 0.6.0 on the same work."""
    images, labels = digits_split("test")
    model, x, target = load_default_model(), images[:16], labels[:16]
    explainer = Gradient(model)
    attribution = explainer(x, target).attribution
    copies, b = 20, args.batch_size
    pairs = [
        (ModelParameterRandomisation(explainer, progress=False), quantus.MPRT(disable_warnings=True)),
        (RandomLogit(explainer, num_classes=10), quantus.RandomLogit(num_classes=10, disable_warnings=True)),
        (MaxSensitivity(explainer, nr_samples=copies, batch_size=b, progress=False),
         quantus.MaxSensitivity(nr_samples=copies, disable_warnings=True)),
        (AvgSensitivity(explainer, nr_samples=copies, batch_size=b, progress=False),
         quantus.AvgSensitivity(nr_samples=copies, disable_warnings=True)),
        (LocalLipschitzEstimate(explainer, nr_samples=copies, batch_size=b, progress=False),
         quantus.LocalLipschitzEstimate(nr_samples=copies, disable_warnings=True)),
    ]
    print(f"\n{'metric':<30} {'ours s':>8} {'quantus s':>9} {'quantus/ours':>12}")
    for ours, reference in pairs:
        ours_s = best_of(lambda: ours(model, x, attribution, target), args.repeats)
        quantus_s = float("nan")
        if not args.skip_quantus:
            quantus_s = best_of(lambda: reference(
                model=model, x_batch=x.numpy(), y_batch=target.numpy(), a_batch=attribution.numpy().copy(),
                explain_func=explain_func_for(Gradient), channel_first=True, device="cpu", batch_size=b), args.repeats)
        print(f"{type(ours).__name__:<30} {ours_s:>8.3f} {quantus_s:>9.3f} {quantus_s / ours_s:>12.2f}", flush=True)


if __name__ == "__main__":
    main()

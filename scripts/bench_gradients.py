"""Time SmoothGrad and Integrated Gradients: ours / Captum's, side by side in one run on CPU.

Both get the same model (ResNet18, random weights), the same input and target, and the same number of
inputs per forward/backward (our ``batch_size`` = Captum's ``internal_batch_size`` for IG and
``nt_samples_batch_size`` x N for NoiseTunnel). Repeats alternate which implementation goes first;
the table shows median wall-clock times and median CPU times of this process (``time.process_time``,
less disturbed by other processes on a shared machine) and their ratios (below 1 = ours is faster).

    python scripts/bench_gradients.py [--size 224] [--n 1] [--batch-size 10] [--repeats 5]
"""
import argparse
import statistics
import time
import warnings

import torch
from captum.attr import IntegratedGradients as CaptumIG
from captum.attr import NoiseTunnel, Saliency
from torchvision.models import resnet18

from xai import IntegratedGradients, SmoothGrad
from xai.gradient.smoothgrad import noise_sigma

warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")


def build_cases(args) -> dict[str, dict[str, callable]]:
    torch.manual_seed(0)
    model = resnet18(weights=None).eval()
    x = torch.randn(args.n, 3, args.size, args.size)
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    samples, steps, noise_level, batch = 50, 50, 0.1, args.batch_size
    if batch % args.n:
        raise SystemExit("--batch-size must be a multiple of --n so that both sides run the same chunks")
    sigma = noise_sigma(x, noise_level).flatten().unique()
    if sigma.numel() != 1:
        raise SystemExit("Captum's NoiseTunnel takes one sigma for the batch: use --n 1 or equal-range inputs")

    ours_sg = SmoothGrad(model, samples=samples, noise_level=noise_level, seed=0, batch_size=batch)
    ours_ig = IntegratedGradients(model, steps=steps, scheme="riemann_trapezoid", batch_size=batch)
    captum_sg, captum_ig = NoiseTunnel(Saliency(model)), CaptumIG(model)
    return {
        "SmoothGrad(samples=50)": {
            "ours": lambda: ours_sg(x, target=target).attribution,
            "captum": lambda: captum_sg.attribute(
                x, nt_type="smoothgrad", nt_samples=samples, nt_samples_batch_size=batch // args.n,
                stdevs=sigma.item(), target=target, abs=False,
            ),
        },
        "IntegratedGradients(steps=50)": {
            "ours": lambda: ours_ig(x, target=target).attribution,
            "captum": lambda: captum_ig.attribute(
                x, target=target, n_steps=steps, method="riemann_trapezoid", internal_batch_size=batch
            ),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    parser.add_argument("--n", type=int, default=1, help="samples in the batch")
    parser.add_argument("--batch-size", type=int, default=10, help="inputs per forward/backward (both sides)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per implementation (after a warm-up)")
    args = parser.parse_args()
    cases = build_cases(args)
    print(
        f"ResNet18 (random weights), input {args.n}x3x{args.size}x{args.size}, {args.batch_size} inputs per "
        f"forward/backward, {torch.get_num_threads()} threads, median of {args.repeats} alternating repeats"
    )
    print(
        f"{'method':30s} {'wall ours':>10s} {'wall captum':>12s} {'wall ratio':>11s}"
        f" {'cpu ours':>9s} {'cpu captum':>11s} {'cpu ratio':>10s}"
    )
    for name, impls in cases.items():
        wall: dict[str, list[float]] = {impl: [] for impl in impls}
        cpu: dict[str, list[float]] = {impl: [] for impl in impls}
        for run in impls.values():  # warm-up
            run()
        for repeat in range(args.repeats):
            order = list(impls) if repeat % 2 == 0 else list(reversed(impls))
            for impl in order:
                wall_start, cpu_start = time.perf_counter(), time.process_time()
                impls[impl]()
                wall[impl].append(time.perf_counter() - wall_start)
                cpu[impl].append(time.process_time() - cpu_start)
        w_ours, w_captum = statistics.median(wall["ours"]), statistics.median(wall["captum"])
        c_ours, c_captum = statistics.median(cpu["ours"]), statistics.median(cpu["captum"])
        print(
            f"{name:30s} {w_ours:10.3f} {w_captum:12.3f} {w_ours / w_captum:11.3f}"
            f" {c_ours:9.3f} {c_captum:11.3f} {c_ours / c_captum:10.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""LRP on a Vision Transformer, side by side in one run: ours (CPLRP, AttnLRP) vs the plain gradient vs LXT 2.1.

torchvision ViT-B/16 (random weights, the zero-initialised head randomised), a batch of random 224x224 images, CPU.
Phase 1 alternates the gradient with our two composites; phase 2 applies LXT's torchvision-ViT recipe (``cp_LRP``
monkey-patched into ``torchvision.models.vision_transformer``, ``monkey_patch_zennit``, Zennit's Gamma on Conv2d and
Linear with the same gammas, Gradient x Input) and alternates it with the gradient again: LXT patches classes
globally, so it cannot share phase 1. Each figure is a median over repeats; LXT / ours is the ratio of the two
phases' ratios to the gradient measured beside them, so a load change between the phases does not enter it.
Peak memory: each configuration in a fresh subprocess (``VmHWM`` after ``clear_refs``, as scripts/bench_lrp.py).

Usage: ``python scripts/bench_lrp_transformers.py [--batch 4] [--size 224] [--repeats 5] [--gamma-linear 0]``
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torchvision
from torch import nn

from bench_lrp import _status_kb

TARGET = 1


def build(batch: int, size: int) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None, image_size=size).eval()
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision starts the head at zero: no relevance at all
    return model, torch.randn(batch, 3, size, size)


def ours(model: nn.Module, name: str, gamma_linear: float, gamma_conv: float):
    from xai import LRP, Gradient
    from xai.composites import AttnLRP, CPLRP

    if name == "gradient":
        analyzer = Gradient(model)
    else:
        composite = {"CPLRP": CPLRP, "AttnLRP": AttnLRP}[name](gamma_linear=gamma_linear, gamma_conv=gamma_conv)
        analyzer = LRP(model, composite=composite)
    return lambda x: analyzer(x, TARGET).attribution


def lxt(model: nn.Module, gamma_linear: float, gamma_conv: float):
    """LXT's own ViT recipe (lxt.efficient.models.vit_torch.cp_LRP with Zennit's Gamma), as its example runs it."""
    import zennit.rules
    from lxt.efficient import monkey_patch, monkey_patch_zennit
    from lxt.efficient.models.vit_torch import cp_LRP
    from torchvision.models import vision_transformer
    from zennit.composites import LayerMapComposite

    monkey_patch(vision_transformer, cp_LRP)
    monkey_patch_zennit()
    rule = lambda gamma: zennit.rules.Gamma(gamma) if gamma else zennit.rules.Epsilon(1e-6)  # noqa: E731
    composite = LayerMapComposite([(nn.Conv2d, rule(gamma_conv)), (nn.Linear, rule(gamma_linear))])

    def run(x):
        x = x.clone().requires_grad_(True)
        with composite.context(model) as modified:
            modified(x)[:, TARGET].sum().backward()
        return x * x.grad

    for p in model.parameters():
        p.requires_grad_(False)
    return run


def medians(runners: dict, x: torch.Tensor, repeats: int) -> dict[str, float]:
    for run in runners.values():
        run(x)  # warm-up: ours caches modified weights, the first call pays for the model check
    times = {name: [] for name in runners}
    for r in range(repeats):
        for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
            start = time.perf_counter()
            runners[name](x)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def memory_child(method: str, args) -> None:
    model, x = build(args.batch, args.size)
    run = (lxt(model, args.gamma_linear, args.gamma_conv) if method == "LXT"
           else ours(model, method, args.gamma_linear, args.gamma_conv))
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = _status_kb("VmRSS")
    run(x)
    print(json.dumps({"mb": (_status_kb("VmHWM") - before) / 1024}))


def memory(method: str, args) -> float:
    command = [sys.executable, __file__, "--memory-child", method, "--batch", str(args.batch), "--size",
               str(args.size), "--gamma-linear", str(args.gamma_linear), "--gamma-conv", str(args.gamma_conv)]
    out = subprocess.run(command, check=True, capture_output=True, text=True,
                         env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)})
    return json.loads(out.stdout.strip().splitlines()[-1])["mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--gamma-linear", type=float, default=0.0)
    parser.add_argument("--gamma-conv", type=float, default=0.25)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child, args)

    model, x = build(args.batch, args.size)
    first = medians({name: ours(model, name, args.gamma_linear, args.gamma_conv)
                     for name in ("gradient", "CPLRP", "AttnLRP")}, x, args.repeats)
    second = medians({"gradient": ours(model, "gradient", 0, 0), "LXT": lxt(model, args.gamma_linear,
                                                                          args.gamma_conv)}, x, args.repeats)
    mem = {} if args.no_memory else {m: memory(m, args) for m in ("gradient", "CPLRP", "AttnLRP", "LXT")}
    print(f"ViT-B/16, batch {args.batch} x 3x{args.size}x{args.size}, gamma_linear {args.gamma_linear}, gamma_conv "
          f"{args.gamma_conv}, {args.repeats} repeats, torch threads {torch.get_num_threads()}")
    print(f"{'method':10} {'seconds':>8} {'/ gradient':>11} {'LXT / ours':>11} {'peak MB':>8} {'mem / gradient':>15}")
    lxt_ratio = second["LXT"] / second["gradient"]
    for name, seconds, ratio in [(n, first[n], first[n] / first["gradient"]) for n in first] + \
                                [("LXT", second["LXT"], lxt_ratio)]:
        versus = f"{lxt_ratio / ratio:11.2f}" if name in ("CPLRP", "AttnLRP") else f"{'':11}"
        peak = mem.get(name, float("nan"))
        print(f"{name:10} {seconds:8.3f} {ratio:11.2f} {versus} {peak:8.0f} {peak / mem.get('gradient', 1.0):15.2f}")


if __name__ == "__main__":
    main()

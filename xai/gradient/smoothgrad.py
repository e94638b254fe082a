"""SmoothGrad (Smilkov et al. 2017): the gradient averaged over noisy copies of the input."""
import torch
from torch import Tensor, nn

from xai.analyzer import Analyzer, predict
from xai.gradient.batched import weighted_gradient_sum
from xai.validation import check_batch_size, check_seed, finite_number, positive_int


class NoiseDraws:
    """Standard normal noise of one sample's shape, drawn step by step from a seeded CPU generator.

    Every sample of a batch gets the same draws (scaled by its own sigma), so a sample's
    explanation does not depend on the batch it came in, the batch size or the device.
    """

    def __init__(self, sample_shape: torch.Size, seed: int, dtype: torch.dtype, device: torch.device):
        self.sample_shape, self.dtype, self.device = sample_shape, dtype, device
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.drawn: dict[int, Tensor] = {}
        self.next_step = 0

    def steps(self, first: int, stop: int) -> Tensor:
        """The draws of steps first..stop-1, shape (stop - first, *sample_shape); steps must not go back."""
        if first < min(self.drawn, default=self.next_step):
            raise RuntimeError("noise steps must be requested in increasing order")
        while self.next_step < stop:
            noise = torch.randn(self.sample_shape, generator=self.generator, dtype=self.dtype)
            self.drawn[self.next_step] = noise.to(self.device)
            self.next_step += 1
        for step in [s for s in self.drawn if s < first]:
            del self.drawn[step]
        return torch.stack([self.drawn[s] for s in range(first, stop)])


def smoothgrad_noise(
    sample_shape: tuple[int, ...], samples: int, seed: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """All standard normal draws SmoothGrad uses for this seed, shape (samples, *sample_shape) (for checks)."""
    return NoiseDraws(torch.Size(sample_shape), seed, dtype, torch.device("cpu")).steps(0, samples)


def noise_sigma(x: Tensor, noise_level: float) -> Tensor:
    """sigma = noise_level * (max(x) - min(x)) per sample, shaped to broadcast over the sample."""
    flat = x.flatten(1)
    spread = flat.max(dim=1).values - flat.min(dim=1).values
    return (noise_level * spread).view(-1, *([1] * (x.dim() - 1)))


class SmoothGrad(Analyzer):
    """Mean gradient of the target logit over ``samples`` copies x + N(0, sigma^2).

    sigma = noise_level * (max(x) - min(x)) per sample. The noise is seeded (``seed=None`` draws a seed
    from torch's global generator, so ``torch.manual_seed`` makes it reproducible). At most
    ``batch_size`` noisy inputs go through the model at once. ``fold_batchnorm=True`` runs a copy with
    BatchNorm folded into the convolutions (see ``xai.batchnorm_folding``): equal up to rounding, which can
    break a ReLU/MaxPool tie the other way, so it is off by default and the result is the model's own.
    """

    def __init__(
        self,
        model: nn.Module,
        samples: int = 50,
        noise_level: float = 0.1,
        seed: int | None = None,
        batch_size: int = 32,
        fold_batchnorm: bool = False,
    ):
        super().__init__(model)
        positive_int(samples, "samples", "number of noisy copies")
        noise_level = finite_number(noise_level, "noise_level (a fraction of the input's range)", minimum=0)
        self.samples, self.noise_level, self.seed = samples, noise_level, check_seed(seed)
        self.batch_size = check_batch_size(batch_size)
        self.fold_batchnorm = bool(fold_batchnorm)

    def _attribute(self, x, target):
        output, resolved = predict(self.model, x, target)
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()).item())
        noise = NoiseDraws(x.shape[1:], seed, x.dtype, x.device)
        sigma = noise_sigma(x, self.noise_level)

        def noisy(step: Tensor, sample: Tensor) -> Tensor:
            first = int(step[0])
            return x[sample] + sigma[sample] * noise.steps(first, int(step[-1]) + 1)[step - first]

        weights = torch.full((self.samples,), 1.0 / self.samples, dtype=torch.float64)
        grad = weighted_gradient_sum(
            self.model, noisy, weights, resolved, self.batch_size, desc="SmoothGrad", fold=self.fold_batchnorm
        )
        return grad, output, resolved

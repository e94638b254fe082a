"""Local linear surrogates (the frame of KernelSHAP and LIME, as Captum's ``LimeBase``): switch feature groups on and
off, run the switched inputs through the model, fit a weighted linear model of the target logit on the switches.

For sample n with K_n features (``xai.perturbation.features``) and draws s = 1..S of a coalition z_s in {0, 1}^K_n:
    input_s = x where z_s[segment of the pixel] = 1, else ``baseline``        (all channels of a pixel together)
    y_s     = model(input_s)[target]
    coef    = the weighted linear fit of y_s on z_s with intercept, weights pi_s (defined by the method)
and every pixel (and channel) of feature k gets coef[k]. The draws come from a CPU generator seeded once per call:
every sample with the same K_n gets the same draws, so a sample's explanation does not depend on its batch, the
batch size or the device. All S x N inputs go through the model ``batch_size`` at a time, built per chunk. The fits
run in float64, batched over samples with torch.linalg (features a sample lacks are all-zero columns: coefficient 0):
- least squares (Captum's ``SkLearnLinearRegression``, scikit-learn's ``LinearRegression(sample_weight=pi)``):
  weighted centring, then the minimum-norm solution of sqrt(pi) (Z - mean) c = sqrt(pi) (y - mean) (pseudo-inverse);
- Lasso (Captum's ``SkLearnLasso(alpha)``, scikit-learn's ``Lasso(alpha).fit(sample_weight=pi)``): the minimiser of
  1/2 sum_s p_s (y_s - b - z_s c)^2 + alpha |c|_1 with p = pi / sum(pi), found by FISTA with adaptive restart
  (O'Donoghue & Candes 2015) on the weighted Gram matrix until the iterates stop moving (to float64 rounding).
  scikit-learn stops coordinate descent earlier (tol=1e-4 on the duality gap), so its default answer is this
  minimiser to about 1e-4.
"""
from abc import abstractmethod

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from xai.analyzer import Analyzer, predict
from xai.perturbation.features import Features, check_features, feature_counts, segments_for
from xai.validation import check_batch_size, check_seed, finite_number, positive_int

#: FISTA stops when no coefficient moved by more than this fraction of the largest one in a step.
LASSO_STEP_TOLERANCE = 1e-13
LASSO_MAX_STEPS = 100_000


def check_samples(samples: int) -> int:
    """The number of coalitions drawn per sample: an int >= 2 (a line through fewer points is not determined)."""
    return positive_int(samples, "samples", "coalitions drawn per sample, each one forward input", minimum=2)


def padded_coalitions(counts: Tensor, samples: int, seed: int, draw) -> Tensor:
    """(N, S, max K_n) bool: ``draw(K_n, S, generator)`` for each sample, the same draws for the same K_n (each drawn
    from a CPU generator seeded with ``seed``), False for the features a sample does not have."""
    widest = int(counts.max())
    coalitions = torch.zeros((len(counts), samples, widest), dtype=torch.bool)
    for count in counts.unique().tolist():
        drawn = draw(count, samples, torch.Generator(device="cpu").manual_seed(seed))
        coalitions[(counts == count).cpu(), :, :count] = drawn
    return coalitions.to(counts.device)


def switched_scores(model: nn.Module, x: Tensor, segments: Tensor, coalitions: Tensor, target: Tensor,
                    baseline: float, batch_size: int, desc: str) -> Tensor:
    """(N, S): model(x_n with the features off in coalition s set to ``baseline``)[target_n], ``batch_size`` inputs
    per forward pass, each chunk's inputs built just before its pass."""
    n, samples = coalitions.shape[:2]
    flat_segments = segments.flatten(1)
    fill = torch.tensor(baseline, dtype=x.dtype, device=x.device)
    scores = torch.empty((n, samples), dtype=x.dtype, device=x.device)
    jobs = n * samples  # job j: coalition j % S of sample j // S
    starts = range(0, jobs, batch_size)
    with torch.no_grad():
        for start in tqdm(starts, desc=desc, leave=False, disable=None if len(starts) > 1 else True):
            job = torch.arange(start, min(start + batch_size, jobs), device=x.device)
            sample, draw = job // samples, job % samples
            keep = coalitions[sample, draw].gather(1, flat_segments[sample]).view(len(job), 1, *x.shape[2:])
            inputs = torch.where(keep, x[sample], fill)
            scores.view(-1)[job] = model(inputs).gather(1, target[sample][:, None])[:, 0]
    return scores


def feature_sums(values: Tensor, segments: Tensor, features: int) -> Tensor:
    """(N, features): the sum of ``values`` (N, C, H, W) over all channels of each feature's pixels."""
    flat = values.sum(1).flatten(1)
    return torch.zeros((values.shape[0], features), dtype=values.dtype, device=values.device).scatter_add_(
        1, segments.flatten(1), flat)


def cosine_to_switched(x: Tensor, segments: Tensor, coalitions: Tensor, baseline: float) -> Tensor:
    """(N, S): the cosine similarity of x_n and its switched input for coalition s (torch's ``cosine_similarity``,
    eps 1e-8 on each norm), from per-feature sums, without building the switched inputs again."""
    features = coalitions.shape[2]
    on = coalitions.to(x.dtype)
    squares = feature_sums(x * x, segments, features)[:, None]  # (N, 1, K)
    sums = feature_sums(x, segments, features)[:, None]
    sizes = feature_sums(torch.ones_like(x), segments, features)[:, None]
    dot = (on * squares + (1 - on) * baseline * sums).sum(2)
    switched_norm = (on * squares + (1 - on) * baseline ** 2 * sizes).sum(2).sqrt()
    x_norm = squares.sum(2).sqrt()
    return dot / (x_norm.clamp_min(1e-8) * switched_norm.clamp_min(1e-8))


def weighted_centred(coalitions: Tensor, scores: Tensor, weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Z - weighted mean, y - weighted mean (float64) and the weights normalised to sum 1 per sample."""
    z, y = coalitions.double(), scores.double()
    p = weights.double() / weights.double().sum(1, keepdim=True)
    z_centred = z - (p[:, :, None] * z).sum(1, keepdim=True)
    y_centred = y - (p * y).sum(1, keepdim=True)
    return z_centred, y_centred, p


def weighted_least_squares(coalitions: Tensor, scores: Tensor, weights: Tensor) -> Tensor:
    """(N, K) float64 coefficients of the weighted least-squares fit with intercept (minimum norm if not unique)."""
    z_centred, y_centred, p = weighted_centred(coalitions, scores, weights)
    root = p.sqrt()
    design = root[:, :, None] * z_centred
    return (torch.linalg.pinv(design) @ (root * y_centred)[:, :, None])[:, :, 0]


def weighted_lasso(coalitions: Tensor, scores: Tensor, weights: Tensor, alpha: float) -> Tensor:
    """(N, K) float64 minimisers of 1/2 sum_s p_s (y_s - b - z_s c)^2 + alpha |c|_1 (p: weights summing to 1)."""
    z_centred, y_centred, p = weighted_centred(coalitions, scores, weights)
    gram = z_centred.transpose(1, 2) @ (p[:, :, None] * z_centred)  # (N, K, K)
    moment = (z_centred.transpose(1, 2) @ (p * y_centred)[:, :, None])[:, :, 0]  # (N, K)
    step = 1 / torch.linalg.eigvalsh(gram)[:, -1:].clamp_min(1e-300)  # 1 / Lipschitz constant, (N, 1)
    coef = torch.zeros_like(moment)
    ahead, momentum = coef, torch.ones_like(step)
    for _ in range(LASSO_MAX_STEPS):
        gradient = (gram @ ahead[:, :, None])[:, :, 0] - moment
        moved = ahead - step * gradient
        new = moved.sign() * (moved.abs() - step * alpha).clamp_min(0)
        change = new - coef
        restart = ((ahead - new) * change).sum(1, keepdim=True) > 0  # momentum pointing uphill: drop it
        momentum = torch.where(restart, torch.ones_like(momentum), momentum)
        next_momentum = (1 + (1 + 4 * momentum ** 2).sqrt()) / 2
        ahead = torch.where(restart, new, new + (momentum - 1) / next_momentum * change)
        coef, momentum = new, next_momentum
        if change.abs().max() <= LASSO_STEP_TOLERANCE * coef.abs().max().clamp_min(1e-300):
            break
    return coef


class Surrogate(Analyzer):
    """The shared frame of KernelSHAP and LIME (see the module docstring); subclasses say how coalitions are drawn,
    weighted and fitted."""

    def __init__(self, model: nn.Module, features: Features, samples: int, baseline: float, seed: int | None,
                 batch_size: int):
        super().__init__(model)
        self.features = check_features(features)
        self.samples = check_samples(samples)
        self.baseline = finite_number(baseline, "baseline")
        self.seed = check_seed(seed)
        self.batch_size = check_batch_size(batch_size)

    @abstractmethod
    def draw(self, features: int, samples: int, generator: torch.Generator) -> Tensor:
        """(samples, features) bool coalitions for a sample with ``features`` features."""

    @abstractmethod
    def similarities(self, x: Tensor, segments: Tensor, coalitions: Tensor, counts: Tensor) -> Tensor:
        """(N, S) weights of the coalitions in the fit."""

    @abstractmethod
    def fit(self, coalitions: Tensor, scores: Tensor, weights: Tensor) -> Tensor:
        """(N, K) coefficients of the surrogate."""

    def _check_counts(self, counts: Tensor) -> None:
        """Refuse segmentations the method cannot explain."""

    def _attribute(self, x, target):
        if x.dim() != 4:
            raise ValueError(f"{self.method} needs images (N, C, H, W), got shape {tuple(x.shape)}")
        segments = segments_for(self.features, x)
        counts = feature_counts(segments)
        self._check_counts(counts)
        output, resolved = predict(self.model, x, target)
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**62, ()).item())
        coalitions = padded_coalitions(counts, self.samples, seed, self.draw)
        scores = switched_scores(self.model, x, segments, coalitions, resolved, self.baseline, self.batch_size,
                                 desc=self.method)
        coef = self.fit(coalitions, scores, self.similarities(x, segments, coalitions, counts)).to(x.dtype)
        attribution = coef.gather(1, segments.flatten(1)).view(x.shape[0], 1, *x.shape[2:])
        return attribution.expand_as(x).contiguous(), output, resolved

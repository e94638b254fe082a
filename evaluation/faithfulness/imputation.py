"""Noisy linear imputation (Rong, Leemann et al. 2022, ROAD): fill removed pixels from their neighbours.

Each removed pixel u is the weighted mean of its 8 neighbours v, weight 1/6 for the 4 direct and 1/12 for the 4
diagonal ones (neighbours outside the image are left out, and so is their weight):

    (sum_{v in image} w_uv) x_u - sum_{v removed} w_uv x_v = sum_{v known} w_uv x_v

one equation per removed pixel, the removed pixels the unknowns, the known neighbours on the right-hand side, one
right-hand side per channel. Then x_u += noise * N(0, 1) (per channel). Known pixels are returned untouched.

This is the system of ``pytorch_grad_cam.metrics.road.NoisyLinearImputer`` (taken from the ROAD authors' code). The
systems of a whole batch are assembled at once with numpy (no per-pixel Python loop) into one block-diagonal sparse
matrix and solved in float64 on the CPU: the blocks do not interact, so this is one system per image. The matrix is
symmetric positive definite (weights are symmetric, every hole touches a known pixel); numbered in raster order, the
unknowns couple only within a band about one image row wide, so small images (band <= BANDED_UP_TO) are solved by
banded Cholesky (``scipy.linalg.solveh_banded``, several times faster there), larger ones by
``scipy.sparse.linalg.spsolve`` (SuperLU, whose fill-reducing ordering wins on wide bands). Inputs on another
device are copied to the CPU and the result back.
"""
import numpy as np
import torch
from scipy.linalg import solveh_banded
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve
from torch import Tensor

from evaluation.faithfulness.baselines import cpu_generator
from xai.validation import finite_number

# (row offset, column offset, weight); the weights sum to 1
NEIGHBOUR_WEIGHTS = (
    (-1, -1, 1 / 12), (-1, 0, 1 / 6), (-1, 1, 1 / 12),
    (0, -1, 1 / 6), (0, 1, 1 / 6),
    (1, -1, 1 / 12), (1, 0, 1 / 6), (1, 1, 1 / 12),
)
BANDED_UP_TO = 64  # band width (in unknowns) up to which banded Cholesky beats SuperLU (measured on 2 CPU cores)


def noisy_linear_imputation(
    x: Tensor, removed: Tensor, noise: float = 0.0, seed: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``x`` (N, C, H, W) with the pixels where ``removed`` (bool, (N, H, W)) is True imputed (module docstring).

    The noise is drawn on the CPU, one (H * W, C) standard normal draw per image in order (pixel-major), from ``generator`` when given (ROAD passes
    one generator through all its chunks), else from a generator seeded with ``seed`` (None: a fresh seed).
    Every image must keep at least one known pixel (otherwise its system has no unique solution).
    """
    check_removed(x, removed)
    noise = finite_number(noise, "noise", minimum=0.0)
    n, c, h, w = x.shape
    mask = removed.detach().cpu().numpy().reshape(n, h * w)
    if mask.all(axis=1).any():
        raise ValueError("removed covers every pixel of some image: keep at least one known pixel per image")
    values = x.detach().cpu().to(torch.float64).permute(0, 2, 3, 1).reshape(n * h * w, c).numpy()
    unknown = np.flatnonzero(mask)  # flat index image * H * W + row * W + column of each removed pixel
    imputed = x.detach().clone()
    if unknown.size == 0:
        return imputed
    solution = torch.from_numpy(_solve(unknown, mask.reshape(-1), values, h, w))
    if noise > 0:
        if generator is None:
            generator = cpu_generator(seed)
        draws = torch.stack([torch.randn((h * w, c), generator=generator, dtype=torch.float64) for _ in range(n)])
        solution += noise * draws.reshape(n * h * w, c)[torch.from_numpy(unknown)]
    flat = imputed.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a copy unless x is channels-last
    flat[torch.from_numpy(unknown).to(x.device)] = solution.to(device=x.device, dtype=x.dtype)
    return flat.reshape(n, h, w, c).permute(0, 3, 1, 2).contiguous()


def check_removed(x: Tensor, removed: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.dtype.is_floating_point:
        raise ValueError(f"x must be a floating-point batch of images (N, C, H, W), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if not isinstance(removed, Tensor) or removed.dtype != torch.bool:
        raise TypeError("removed must be a bool tensor (N, H, W), True where a pixel is imputed")
    n, _, h, w = x.shape
    if removed.shape != (n, h, w):
        raise ValueError(f"removed has shape {tuple(removed.shape)}, the images need ({n}, {h}, {w}): one flag per "
                         "pixel, shared by the channels")


def _solve(unknown: np.ndarray, mask: np.ndarray, values: np.ndarray, h: int, w: int) -> np.ndarray:
    """The imputed values (unknowns, C) of the block-diagonal system of all images."""
    count = unknown.size
    variable = np.full(mask.size, -1, dtype=np.int64)
    variable[unknown] = np.arange(count)
    row, column = (unknown // w) % h, unknown % w
    diagonal = np.zeros(count)
    rhs = np.zeros((count, values.shape[1]))
    rows, cols, weights = [], [], []
    for dr, dc, weight in NEIGHBOUR_WEIGHTS:
        inside = (row + dr >= 0) & (row + dr < h) & (column + dc >= 0) & (column + dc < w)
        equation = np.flatnonzero(inside)
        neighbour = unknown[equation] + dr * w + dc  # same image: the neighbour is inside it
        diagonal[equation] += weight
        free = mask[neighbour]
        rows.append(equation[free])
        cols.append(variable[neighbour[free]])
        weights.append(np.full(int(free.sum()), -weight))
        rhs[equation[~free]] += weight * values[neighbour[~free]]
    rows, cols, weights = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    band = int((rows - cols).max(initial=0))
    if band <= BANDED_UP_TO:
        lower = np.zeros((band + 1, count))  # lower[d, j] = A[j + d, j]
        lower[0] = diagonal
        below = rows > cols
        lower[rows[below] - cols[below], cols[below]] = weights[below]
        return solveh_banded(lower, rhs, lower=True, check_finite=False).reshape(count, -1)
    matrix = coo_matrix((np.concatenate([weights, diagonal]),
                         (np.concatenate([rows, np.arange(count)]), np.concatenate([cols, np.arange(count)]))),
                        shape=(count, count)).tocsc()
    return np.asarray(spsolve(matrix, rhs)).reshape(count, -1)

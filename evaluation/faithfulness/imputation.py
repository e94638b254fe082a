"""Noisy linear imputation (Rong, Leemann et al. 2022, ROAD): fill removed pixels from their neighbours.

Each removed pixel u is the weighted mean of its 8 neighbours v, weight 1/6 for the 4 direct and 1/12 for the 4
diagonal ones (neighbours outside the image are left out, and so is their weight):

    (sum_{v in image} w_uv) x_u - sum_{v removed} w_uv x_v = sum_{v known} w_uv x_v

one equation per removed pixel, the removed pixels the unknowns, the known neighbours on the right-hand side, one
right-hand side per channel. Then x_u += noise * N(0, 1) (per channel). Known pixels are returned untouched.

This is the system of ``pytorch_grad_cam.metrics.road.NoisyLinearImputer`` (taken from the ROAD authors' code). The
systems of a whole batch are assembled at once with numpy on whole images (shifted views, no per-pixel Python loop)
into one block-diagonal sparse matrix and solved in float64 on the CPU: the blocks do not interact, so this is one
system per image. The matrix is symmetric positive definite (weights are symmetric, every hole touches a known
pixel); numbered in raster order, the unknowns couple only within a band about one image row wide, so small images
(band <= BANDED_UP_TO) are solved by banded Cholesky (``scipy.linalg.solveh_banded``, several times faster there),
larger ones by ``scipy.sparse.linalg.spsolve`` (SuperLU, whose fill-reducing ordering wins on wide bands). Inputs on
another device are copied to the CPU and the result back.
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

    The noise is drawn on the CPU, one (H * W, C) standard normal draw per image in order (pixel-major), from
    ``generator`` when given (ROAD passes one generator through all its chunks), else from a generator seeded with
    ``seed`` (None: a fresh seed).
    Every image must keep at least one known pixel (otherwise its system has no unique solution).
    """
    check_removed(x, removed)
    noise = finite_number(noise, "noise", minimum=0.0)
    n, c, h, w = x.shape
    mask = removed.detach().cpu().numpy().reshape(n, h * w)
    if mask.all(axis=1).any():
        raise ValueError("removed covers every pixel of some image: keep at least one known pixel per image")
    unknown = np.flatnonzero(mask)  # flat index image * H * W + row * W + column of each removed pixel
    imputed = x.detach().clone()
    if unknown.size == 0:
        return imputed
    values = x.detach().cpu().to(torch.float64).permute(0, 2, 3, 1).numpy()
    solution = torch.from_numpy(_solve(mask.reshape(n, h, w), values))
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


def _solve(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The imputed values (removed pixels in raster order over the batch, C) of the block-diagonal system.

    Assembled on whole images with shifted views: the right-hand side and the diagonal are 8 shifted sums, and
    each removed pair (u, u + d) for the 4 neighbours d after u in raster order is one entry of the lower
    triangle, at row number(u + d) and column number(u).
    """
    n, h, w = mask.shape
    known_values = np.pad(np.where(mask[..., None], 0.0, values), ((0, 0), (1, 1), (1, 1), (0, 0)))
    inside = np.pad(np.ones((1, h, w)), ((0, 0), (1, 1), (1, 1)))
    rhs, diagonal = np.zeros_like(values), np.zeros((1, h, w))
    for dr, dc, weight in NEIGHBOUR_WEIGHTS:
        rhs += weight * _shifted(known_values, dr, dc, h, w)
        diagonal += weight * _shifted(inside, dr, dc, h, w)
    rhs, diagonal = rhs[mask], np.broadcast_to(diagonal, mask.shape)[mask]
    count = rhs.shape[0]
    number = np.cumsum(mask.reshape(-1)) - 1  # each removed pixel's unknown, raster order over the batch
    padded_mask = np.pad(mask, ((0, 0), (1, 1), (1, 1)))
    rows, cols, weights = [], [], []
    for dr, dc, weight in NEIGHBOUR_WEIGHTS:
        if (dr, dc) > (0, 0):  # after u in raster order
            pair = np.flatnonzero(mask & _shifted(padded_mask, dr, dc, h, w))
            rows.append(number[pair + dr * w + dc])
            cols.append(number[pair])
            weights.append(np.full(pair.size, -weight))
    rows, cols, weights = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    band = int((rows - cols).max(initial=0))
    if band <= BANDED_UP_TO:
        lower = np.zeros((band + 1, count), order="F")  # lower[d, j] = A[j + d, j], in LAPACK's layout
        lower[0] = diagonal
        lower[rows - cols, cols] = weights
        return solveh_banded(lower, rhs, lower=True, check_finite=False, overwrite_ab=True, overwrite_b=True)
    index = np.arange(count)
    matrix = coo_matrix((np.concatenate([weights, weights, diagonal]),
                         (np.concatenate([rows, cols, index]), np.concatenate([cols, rows, index]))),
                        shape=(count, count)).tocsc()
    return np.asarray(spsolve(matrix, rhs)).reshape(count, -1)


def _shifted(padded: np.ndarray, dr: int, dc: int, h: int, w: int) -> np.ndarray:
    """The view of a batch padded by one pixel (N, H + 2, W + 2, ...) that holds each pixel's (dr, dc) neighbour."""
    return padded[:, 1 + dr : 1 + dr + h, 1 + dc : 1 + dc + w]

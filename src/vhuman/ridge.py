"""Ridge-regularised linear lines y ~ x, with the ridge chosen by cross-validation.

The latent directions are such lines in W (512 dimensions). Too little ridge on a few thousand faces fits noise:
the line then points mostly along dimensions the picture barely shows, its coefficient is long, and the least-norm
edit that moves its reading is too short to change the face (docs/method.md: on MobileStyleGAN-FFHQ's gender
line, the fixed ridge 0.01 turned 1 of 44 male faces female, the cross-validated one all 44). The held-out error
of the fit itself finds that ridge without any other model.
"""

from __future__ import annotations

import numpy as np

# Ridge strengths tried, relative to the sample count (the penalty is ridge * N * |coef|^2).
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def ridge_line(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, float]:
    """coef, bias minimising |y - x coef - bias|^2 + ridge * N * |coef|^2."""
    x_mean, y_mean = x.mean(0), y.mean()
    xc = x - x_mean
    coef = np.linalg.solve(xc.T @ xc + ridge * len(x) * np.eye(x.shape[1]), xc.T @ (y - y_mean))
    return coef, float(y_mean - coef @ x_mean)


def _held_out_errors(x: np.ndarray, y: np.ndarray, train: np.ndarray, ridges) -> np.ndarray:
    """Squared error on the rows outside ``train`` for every ridge, from one eigendecomposition."""
    x_mean, y_mean = x[train].mean(0), y[train].mean()
    xc = x[train] - x_mean
    values, vectors = np.linalg.eigh(xc.T @ xc)
    projected = vectors.T @ (xc.T @ (y[train] - y_mean))
    held = ~train
    errors = []
    for ridge in ridges:
        coef = vectors @ (projected / (values + ridge * train.sum()))
        errors.append(np.sum((y[held] - y_mean - (x[held] - x_mean) @ coef) ** 2))
    return np.array(errors)


def cross_validated_ridge_line(
    x: np.ndarray, y: np.ndarray, ridges=RIDGE_GRID, folds: int = 5, seed: int = 0
) -> tuple[np.ndarray, float, float]:
    """The ridge line on all rows with the ridge of least ``folds``-fold held-out squared error (the smaller one
    on a tie); returns coef, bias and that ridge. With fewer rows than folds the middle of the grid is taken."""
    if len(x) < 2 * folds:
        ridge = ridges[len(ridges) // 2]
        return (*ridge_line(x, y, ridge), ridge)
    fold_of = np.random.default_rng(seed).permutation(len(x)) % folds
    errors = sum(_held_out_errors(x, y, fold_of != k, ridges) for k in range(folds))
    ridge = ridges[int(np.argmin(errors))]
    return (*ridge_line(x, y, ridge), ridge)

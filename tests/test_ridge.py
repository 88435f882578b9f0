"""Ridge lines with the ridge chosen on held-out rows."""

import numpy as np

from vhuman.ridge import RIDGE_GRID, _held_out_errors, cross_validated_ridge_line, ridge_line


def noisy_line(rows: int, dims: int = 512, seed: int = 0):
    """A property carried by one direction of 512 that varies more than the others (as a face's attributes do in
    W), with a noise a few hundred rows cannot average out."""
    rng = np.random.default_rng(seed)
    truth = np.zeros(dims)
    truth[0] = 1.0
    x = rng.normal(size=(rows, dims))
    x[:, 0] *= 3
    return x, x @ truth + rng.normal(scale=1.0, size=rows), truth


def test_the_held_out_errors_match_refitting_at_each_ridge():
    x, y, _ = noisy_line(60, dims=8)
    train = np.arange(60) % 3 != 0
    want = []
    for ridge in RIDGE_GRID:
        coef, bias = ridge_line(x[train], y[train], ridge)
        want.append(np.sum((y[~train] - x[~train] @ coef - bias) ** 2))
    np.testing.assert_allclose(_held_out_errors(x, y, train, RIDGE_GRID), want, rtol=1e-9)


def test_few_rows_in_many_dimensions_get_more_ridge_and_a_line_along_the_truth():
    x, y, truth = noisy_line(400)
    coef, _, ridge = cross_validated_ridge_line(x, y)
    loose, _ = ridge_line(x, y, 1e-3)
    cosine = lambda a: a @ truth / np.linalg.norm(a)  # noqa: E731
    assert ridge > 1e-2
    assert cosine(coef) > 0.8 > 0.5 > cosine(loose)
    # Many rows need little: the choice follows the data, not a fixed strength.
    x, y, _ = noisy_line(20000, dims=16)
    assert cross_validated_ridge_line(x, y)[2] <= 1e-2


def test_too_few_rows_for_the_folds_take_the_middle_of_the_grid():
    x, y, _ = noisy_line(6, dims=3)
    assert cross_validated_ridge_line(x, y)[2] == RIDGE_GRID[len(RIDGE_GRID) // 2]

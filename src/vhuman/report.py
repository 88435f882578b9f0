"""Pictures for the Snakemake report."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vhuman.io import load_image, save_png


def image_grid(images: list[np.ndarray], rows: int, cols: int, pad: int = 2) -> np.ndarray:
    """Tile equally sized [H, W, 3] uint8 images row by row on a white canvas."""
    if not images:
        raise ValueError("no images to put in a grid")
    h, w = images[0].shape[:2]
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for k, img in enumerate(images[: rows * cols]):
        r, c = divmod(k, cols)
        canvas[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = img
    return canvas


def image_grid_from_dir(images_dir: str | Path, out_path: str | Path, rows: int, cols: int) -> None:
    """Grid of the first rows x cols PNGs of a folder, in image_id order."""
    paths = sorted(Path(images_dir).glob("*.png"))[: rows * cols]
    save_png(image_grid([load_image(p) for p in paths], rows, cols), out_path)

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


def mask_overlay_grid(
    images_dir: str | Path, masks_dir: str | Path, image_ids: list[str], out_path: str | Path, alpha: float = 0.55
) -> None:
    """Images (top row) and their masks blended over them (bottom row), at the mask size."""
    from PIL import Image

    from vhuman.io import load_label_map
    from vhuman.synthetic import LABEL_PALETTE

    tops, bottoms = [], []
    for i in image_ids:
        mask = load_label_map(Path(masks_dir) / f"{i}.png")
        size = mask.shape[::-1]
        img = np.asarray(Image.fromarray(load_image(Path(images_dir) / f"{i}.png")).resize(size, Image.NEAREST))
        tops.append(img)
        bottoms.append((img * (1 - alpha) + LABEL_PALETTE[mask] * alpha).astype(np.uint8))
    save_png(image_grid(tops + bottoms, 2, len(image_ids)), out_path)


def _text(draw, xy, text, fill=(0, 0, 0)):
    draw.text(xy, text, fill=fill)


def property_histograms(table, out_path: str | Path, bins: int = 20) -> None:
    """One histogram per property and the properties' correlation matrix, drawn with PIL (no plotting stack)."""
    from PIL import Image, ImageDraw

    from vhuman.synthetic import PROPERTY_NAMES

    cell_w, cell_h, pad = 220, 150, 24
    n = len(PROPERTY_NAMES)
    corr_size = 40 * n + 140
    canvas = Image.new("RGB", (4 * cell_w, 2 * cell_h + corr_size + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for k, name in enumerate(PROPERTY_NAMES):
        x0, y0 = (k % 4) * cell_w, (k // 4) * cell_h
        values = table.loc[table[f"{name}_valid"].astype(bool), name].to_numpy()
        lo = -1.0 if name == "face_pose" else 0.0
        counts, _ = np.histogram(values, bins=bins, range=(lo, 1.0))
        top = max(counts.max(), 1)
        bar_w = (cell_w - 2 * pad) / bins
        for b, c in enumerate(counts):
            h = (cell_h - 2 * pad) * c / top
            draw.rectangle(
                [x0 + pad + b * bar_w, y0 + cell_h - pad - h, x0 + pad + (b + 1) * bar_w - 1, y0 + cell_h - pad],
                fill=(70, 110, 180),
            )
        _text(draw, (x0 + pad, y0 + 4), f"{name} (n={len(values)})")
        _text(draw, (x0 + pad, y0 + cell_h - pad + 4), f"{lo:g}")
        _text(draw, (x0 + cell_w - pad - 8, y0 + cell_h - pad + 4), "1")
    corr = table[list(PROPERTY_NAMES)].corr().to_numpy()
    y0, x0 = 2 * cell_h + pad, 130
    _text(draw, (pad, y0 - 18), "correlation between properties (blue -1 ... red +1)")
    for i, name in enumerate(PROPERTY_NAMES):
        _text(draw, (pad, y0 + 40 * i + 14), name[:16])
        _text(draw, (x0 + 40 * i + 2, y0 + 40 * n + 4), name[:6])
        for j in range(n):
            r = 0.0 if np.isnan(corr[i, j]) else corr[i, j]
            colour = (
                (255, int(255 * (1 - r)), int(255 * (1 - r)))
                if r >= 0
                else (int(255 * (1 + r)), int(255 * (1 + r)), 255)
            )
            draw.rectangle([x0 + 40 * j, y0 + 40 * i, x0 + 40 * j + 38, y0 + 40 * i + 38], fill=colour)
            _text(draw, (x0 + 40 * j + 6, y0 + 40 * i + 14), f"{r:+.2f}")
    save_png(np.asarray(canvas), out_path)

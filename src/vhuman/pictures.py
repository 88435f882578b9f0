"""Stage 7: pictures of control: faces drawn for requested values, sweeps of one property, and animations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vhuman.io import atomic_path, to_uint8
from vhuman.latents import latent_for_seed
from vhuman.report import image_grid
from vhuman.vocabulary import PROPERTY_NAMES, RANGES


def draw_conditions(values: dict[str, float], rows: np.ndarray, n: int, seed: int) -> torch.Tensor:
    """n property vectors: the given values, the rest taken from random rows of the data."""
    rng = np.random.default_rng(seed)
    out = rows[rng.integers(0, len(rows), n)].copy()
    for name, value in values.items():
        if name not in PROPERTY_NAMES:
            raise KeyError(f"unknown property {name!r}; known: {', '.join(PROPERTY_NAMES)}")
        lo, hi = RANGES[name]
        if not lo <= value <= hi:
            raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
        out[:, PROPERTY_NAMES.index(name)] = value
    return torch.from_numpy(out)


@torch.inference_mode()
def render(controller, seeds: list[int], c: torch.Tensor, psi: float | None = None) -> torch.Tensor:
    """Faces for ``seeds`` and requests ``c``, drawn with the controller's own truncation unless ``psi`` is given."""
    dev = next(controller.buffers()).device
    z = torch.stack([latent_for_seed(s, controller.z_dim) for s in seeds]).to(dev)
    return controller(z, c.to(dev), psi).cpu()


def sweep_grid(controller, name: str, seeds: list[int], rows: np.ndarray, levels: int = 7, seed: int = 0, bounds=None):
    """Rows: seeds; columns: ``name`` swept over its range (or ``bounds``: lo, hi), every other property fixed per
    row."""
    lo, hi = bounds or RANGES[name]
    base = draw_conditions({}, rows, len(seeds), seed)
    tiles = []
    for s, c0 in zip(seeds, base, strict=True):
        c = c0.repeat(levels, 1)
        c[:, PROPERTY_NAMES.index(name)] = torch.linspace(lo, hi, levels)
        tiles += list(to_uint8(render(controller, [s] * levels, c)))
    return image_grid(tiles, len(seeds), levels)


def animation(
    controller,
    name: str,
    values: list[float],
    seed: int,
    rows: np.ndarray,
    out_path: str | Path,
    scale: int = 4,
    ms: int = 80,
) -> None:
    """A GIF of one face while ``name`` follows ``values`` (e.g. blink: eyes 1 -> 0 -> 1)."""
    c = draw_conditions({}, rows, 1, seed).repeat(len(values), 1)
    c[:, PROPERTY_NAMES.index(name)] = torch.tensor(values)
    save_gif(to_uint8(render(controller, [seed] * len(values), c)), out_path, scale, ms)


def save_gif(frames: np.ndarray, out_path: str | Path, scale: int = 4, ms: int = 80) -> None:
    """Frames [N, H, W, 3] uint8 as a looping GIF, each pixel ``scale`` x ``scale`` (small faces stay sharp)."""
    images = [Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST) for f in frames]
    with atomic_path(out_path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=ms, loop=0)


ANIMATIONS = {
    "blink": ("eyes", [1.0, 0.75, 0.5, 0.25, 0.05, 0.25, 0.5, 0.75, 1.0]),
    "talk": ("mouth", [0.0, 0.5, 1.0, 0.5, 0.0, 0.4, 0.9, 0.4, 0.0]),
    "turn": ("face_pose", [float(v) for v in np.linspace(-1, 1, 11)] + [float(v) for v in np.linspace(1, -1, 11)]),
}

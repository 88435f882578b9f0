"""Latent codes: z drawn from an image's own seed, and the truncation trick on per-layer codes."""

from __future__ import annotations

import torch


def latent_for_seed(seed: int, z_dim: int) -> torch.Tensor:
    """z ~ N(0, I) from the image's own seed, so any single image can be redrawn alone."""
    return torch.randn(z_dim, generator=torch.Generator().manual_seed(int(seed)))


def truncate(
    w: torch.Tensor, w_avg: torch.Tensor, num_layers: int, psi: float = 1.0, layers: int | None = None
) -> torch.Tensor:
    """Repeat w [N, w_dim] to wp [N, num_layers, w_dim] (or take wp as it is) and pull the first ``layers``
    towards ``w_avg``."""
    wp = w.unsqueeze(1).repeat(1, num_layers, 1) if w.dim() == 2 else w
    if psi != 1.0 and (layers is None or layers > 0):
        cut = num_layers if layers is None else min(layers, num_layers)
        trunc = w_avg.view(1, 1, -1) + (wp[:, :cut] - w_avg.view(1, 1, -1)) * psi
        wp = torch.cat([trunc, wp[:, cut:]], dim=1)
    return wp


# How codes are drawn when nothing says otherwise: every layer as it is (truncate with psi 1).
UNTRUNCATED = {"psi": 1.0, "layers": None}


def truncation_of(metadata: dict[bytes, bytes] | None) -> dict:
    """How the generated images were drawn, from the latents table's metadata (``vhuman.generate.latents_table``):
    ``{"psi": float, "layers": int | None}``. Every later drawing of the same codes uses it, so that an edit is
    judged on the faces its properties were measured on. A table without it was drawn untruncated."""
    metadata = metadata or {}
    if b"truncation_psi" not in metadata:
        return dict(UNTRUNCATED)
    layers = metadata.get(b"truncation_layers", b"None").decode()
    return {"psi": float(metadata[b"truncation_psi"].decode()), "layers": None if layers == "None" else int(layers)}

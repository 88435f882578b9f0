"""Which layers each latent direction acts through, probed by editing one layer (or layer group) at a time.

In StyleGAN colour lives in the fine layers and pose in the coarse ones; an edit on layers a property does not act
through only moves what it does not measure. ``directions_layer_mask`` gives ``DirectionsController`` and the
closed loop their per-row layer masks.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from vhuman.directions import critic_reading, layer_step
from vhuman.latents import UNTRUNCATED, truncate
from vhuman.vocabulary import PROPERTY_NAMES


def direction_layers(
    read,
    w: torch.Tensor,
    weights: torch.Tensor,
    num_layers: int,
    size: float = 0.25,
    keep: float = 0.15,
    groups: list[list[int]] | None = None,
    probed_rows: int | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which layers each direction acts through: a mask [R, L] and the measured effects [R, L].

    For each row r of ``weights`` and each layer, the move along row r that shifts its linear reading by ±``size``
    is applied at that layer alone to the codes ``w`` [N, w_dim], and ``read(wp)`` [N, R] reads the result; the
    effect is how far row r's reading moves per unit of the edit. A layer is kept for a row when its effect is at
    least ``keep`` of that row's largest; an edit elsewhere would only move what the row does not measure (in
    StyleGAN, colour lives in the fine layers and pose in the coarse ones). With ``groups`` (lists of layers)
    the edit moves one group at a time and each layer of a group gets the group's effect; rows from
    ``probed_rows`` on are not probed (effect 0: they keep every layer).
    """
    rows = len(weights)
    groups = groups or [[layer] for layer in range(num_layers)]
    effect = torch.zeros(rows, num_layers)
    probed = rows if probed_rows is None else probed_rows
    bar = tqdm(total=probed * len(groups), desc="directions: layer probe", unit="edit", disable=not progress)
    for r in range(probed):
        if not weights[r].abs().sum() > 0:
            bar.update(len(groups))
            continue  # a direction that could not be fitted moves nothing
        coef = torch.zeros(len(w), rows, dtype=w.dtype, device=w.device)
        coef[:, r] = size / weights[r].pow(2).sum()  # along row r alone: its linear reading moves by size
        for group in groups:
            bar.update()
            only = torch.zeros(rows, num_layers, device=w.device)
            only[r, group] = 1
            step = layer_step(coef, weights, only)
            with torch.inference_mode():
                gain = read(w.unsqueeze(1) + step)[:, r] - read(w.unsqueeze(1) - step)[:, r]
            effect[r, group] = (gain.mean() / (2 * size)).abs().float().cpu()
    bar.close()
    mask = (effect >= keep * effect.amax(dim=1, keepdim=True)) & (effect > 0)
    mask[~mask.any(dim=1)] = True  # a row the reader cannot see at all keeps every layer
    return mask.float(), effect


def directions_layer_mask(
    base: torch.nn.Module, critic, weights: torch.Tensor, probe_w: torch.Tensor, truncation: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``direction_layers`` with the critic as the reader, on the codes ``probe_w`` [N, w_dim] drawn with
    ``truncation`` (``fit_directions``'); rows after the properties (the female row) keep every layer: a female
    look is hair, lips and brows as much as the face's shape, and the critic's p(female), already near 1, shows
    too little of that to the probe."""
    truncation = truncation or UNTRUNCATED

    def read(wp):
        wp = truncate(wp, base.w_avg, base.num_layers, truncation["psi"], truncation["layers"])
        return critic_reading(critic, base.synthesis(wp), len(weights))

    groups = getattr(base, "layer_groups", None)  # a generator whose codes work in groups is probed by group
    mask, effect = direction_layers(
        read, probe_w, weights, base.num_layers, groups=groups, probed_rows=len(PROPERTY_NAMES)
    )
    mask[len(PROPERTY_NAMES) :] = 1
    return mask, effect

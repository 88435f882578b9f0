"""Stage 6b: latent directions: the linear property model in W, its per-layer edit, and the controllers built on it.

``fit_directions`` fits, per property (and for p(female)), a ridge line property ~ w on the generated images; the
edit moves w to the least-norm point where that model reads the requested values, each direction only on the
layers it acts through (``direction_layers``). ``DirectionsController`` is the InterFaceGAN-style baseline;
``ClosedLoop`` refines any controller's codes through the image with a frozen critic.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from vhuman.io import column_vectors, load_torch_file
from vhuman.latents import UNTRUNCATED, truncate, truncation_of
from vhuman.regressor import PropertyRegressor
from vhuman.ridge import RIDGE_GRID, cross_validated_ridge_line
from vhuman.vocabulary import PROPERTY_NAMES, RANGES


def move_to_linear_target(
    w: torch.Tensor,
    weights: torch.Tensor,
    bias: torch.Tensor,
    gram_inv: torch.Tensor,
    target: torch.Tensor,
    layer_mask: torch.Tensor,
) -> torch.Tensor:
    """The latent-directions edit, per layer: the least-norm move after which the linear property model
    ``weights @ w + bias`` reads ``target`` on each row's own layers; with every row on every layer it is
    ``A^T (A A^T)^-1 (target - (A w + b))`` on w. ``gram_inv`` comes from ``masked_gram_inv(weights, layer_mask)``.
    Returns wp [N, L, w_dim]."""
    gap = target - (w @ weights.t() + bias)
    return w.unsqueeze(1) + layer_step(gap @ gram_inv, weights, layer_mask)


def linear_reading(
    wp: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor, layer_mask: torch.Tensor
) -> torch.Tensor:
    """The linear property model's reading of per-layer codes [N, L, w_dim]: each row's mean over its own layers
    (what ``move_to_linear_target`` and ``layer_step`` set). [N, R]."""
    per_layer = torch.einsum("nlw,rw->nrl", wp, weights)
    mask = layer_mask.to(per_layer.dtype)
    return (per_layer * mask).sum(-1) / mask.sum(-1).clamp_min(1) + bias


def layer_step(coef: torch.Tensor, weights: torch.Tensor, layer_mask: torch.Tensor) -> torch.Tensor:
    """The per-layer move [N, L, w_dim]: row r of ``weights`` scaled by ``coef[:, r]`` on the layers where
    ``layer_mask[r]`` is 1. With a mask of ones it is the same move of w on every layer."""
    return torch.einsum("nr,rl,rw->nlw", coef, layer_mask.to(coef.dtype), weights)


def masked_gram_inv(weights: torch.Tensor, layer_mask: torch.Tensor) -> torch.Tensor:
    """(A A^T ⊙ overlap)^-1, overlap[r, s] = shared layers of rows r and s / layers of row r: the least-norm
    per-layer move that sets each row's linear reading (its direction's mean over its own layers) to a target.
    With every row on every layer it is (A A^T)^-1; rows on disjoint layers do not mix."""
    mask = layer_mask.to(weights.dtype)
    overlap = (mask @ mask.t()) / mask.sum(dim=1, keepdim=True).clamp(min=1)
    gram = (weights @ weights.t()) * overlap
    norms = weights.norm(dim=1)
    dead = (norms <= 1e-9 * norms.max()).nonzero().flatten().tolist()
    if not dead:
        try:
            return torch.linalg.inv(gram)
        except torch.linalg.LinAlgError:
            pass
    # A direction with no weight (a property the data could not fit, e.g. constant on a tiny set) cannot move
    # anything: the pseudo-inverse leaves it still and sets the others as before.
    warnings.warn(
        f"latent direction rows {dead or 'of a singular set'} cannot be set; they stay where they are", stacklevel=2
    )
    return torch.linalg.pinv(gram)


def critic_reading(critic: PropertyRegressor, images: torch.Tensor, rows: int) -> torch.Tensor:
    """What the critic reads for the first ``rows`` direction rows: the properties, then p(female)."""
    read, female_logit = critic(images)
    return torch.cat([read, torch.sigmoid(female_logit)[:, None]], dim=1)[:, :rows]


def layer_mask_or_ones(mask: torch.Tensor | None, rows: int, num_layers: int | None) -> torch.Tensor:
    """A copy of ``mask`` [rows, L]; without one, every row on every layer (directions files from before the
    per-layer search)."""
    if mask is None:
        if num_layers is None:
            raise ValueError("give a layer mask or the number of layers")
        return torch.ones(rows, num_layers)
    return mask.float().clone()


class ClosedLoop(nn.Module):
    """Feedback through the image: draw, let the frozen critic read the properties off the picture, and move the
    codes along the linear property directions (each on its own layers) by the gap between requested and read
    values; ``steps`` times.

    The move is the latent-directions edit with the critic's reading in place of the linear model's, so the codes
    only ever move within the span of the directions: too few dimensions for the critic's blind spots to be found.
    Rows of the directions after the properties (the female row) read the critic's p(female).

    With ``measure`` (images -> property values [N, P], NaN where a region is missing) the loop reads the
    properties as the workflow measures them, through the parser and the properties stage, and asks the critic only
    for p(female) and for values the measurement lacks: the critic is a learnt copy of that measurement, and its
    error is what is left in the critic's loop.
    """

    def __init__(
        self,
        critic: PropertyRegressor,
        weights: torch.Tensor,
        fixed_targets: torch.Tensor,
        steps: int,
        layer_mask: torch.Tensor | None = None,
        num_layers: int | None = None,
        measure=None,
        reach: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ):
        super().__init__()
        if len(weights) != len(PROPERTY_NAMES) + len(fixed_targets) or len(fixed_targets) > 1:
            raise ValueError(
                f"{len(weights)} direction rows with {len(fixed_targets)} fixed targets: expected one row per "
                "property, optionally followed by the female row"
            )
        self.critic = critic.eval().requires_grad_(False)
        self.register_buffer("weights", weights.float().clone())
        self.register_buffer("fixed_targets", fixed_targets.float().clone())
        self.register_buffer("layer_mask", layer_mask_or_ones(layer_mask, len(weights), num_layers))
        self.register_buffer("gram_inv", masked_gram_inv(self.weights, self.layer_mask))
        self.steps = int(steps)
        self.measure = measure  # not saved: the parser has its own file
        # The directions' bias and the reach box of their readings (ConditionalMapping.within_reach), if bounded.
        self.reach = None if reach is None else tuple(r.float().clone() for r in reach)

    def copy_with(self, steps: int, measure=None) -> ClosedLoop:
        """This loop's critic and directions with another number of steps and reader (``measure``; None: the
        critic)."""
        return ClosedLoop(
            self.critic, self.weights, self.fixed_targets, steps, self.layer_mask, measure=measure, reach=self.reach
        )

    def within_reach(self, wp: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
        """``wp`` moved back along the directions into the reach box, widened to the unedited reading ``origin``."""
        bias, low, high = (r.to(wp.device) for r in self.reach)
        reading = linear_reading(wp, self.weights, bias, self.layer_mask)
        low, high = torch.minimum(low, origin), torch.maximum(high, origin)
        gap = torch.maximum(torch.minimum(reading, high), low) - reading
        return wp + layer_step(gap @ self.gram_inv, self.weights, self.layer_mask)

    def read(self, images: torch.Tensor) -> torch.Tensor:
        read = critic_reading(self.critic, images, len(self.weights)).float()
        if self.measure is None:
            return read
        measured = self.measure(images).to(read.device, read.dtype)
        p = measured.shape[1]
        return torch.cat([torch.where(measured.isfinite(), measured, read[:, :p]), read[:, p:]], dim=1)

    def forward(self, wp: torch.Tensor, c: torch.Tensor, draw) -> torch.Tensor:
        """``draw(wp)`` renders wp [N, L, w_dim]; returns wp after ``steps`` corrections."""
        wanted = torch.cat([c, self.fixed_targets.expand(len(c), -1)], dim=1)
        origin = None if self.reach is None else linear_reading(wp, self.weights, self.reach[0], self.layer_mask)
        for _ in range(self.steps):
            gap = wanted - self.read(draw(wp))
            wp = wp + layer_step(gap @ self.gram_inv, self.weights, self.layer_mask)
            if origin is not None:  # a critic that misreads a face must not walk its codes out of W
                wp = self.within_reach(wp, origin)
        return wp

    def record(self) -> dict:
        """What a checkpoint needs to rebuild this loop (the directions are stored with the mapping)."""
        return {
            "steps": self.steps,
            "critic": {"width": self.critic.width, "input_size": self.critic.input_size},
            "critic_state_dict": self.critic.state_dict(),
        }


class Controller(nn.Module):
    """Something that turns (z, property vector) into per-layer codes and draws them with the frozen base
    synthesis, optionally refined in closed loop. Subclasses set ``base``, ``num_layers``, ``closed_loop`` (a
    ClosedLoop or None) and ``truncation`` (``vhuman.latents.truncation_of``: how the data's faces were drawn,
    which every drawing uses unless given another psi) and define ``mapping(z, c)`` -> wp [N, L, w_dim] before
    truncation."""

    truncation: dict = UNTRUNCATED

    @property
    def w_avg(self):
        return self.base.w_avg

    def drawing_truncation(self, psi: float | None, layers: int | None) -> tuple[float, int | None]:
        """(psi, layers) to draw with: the controller's own unless ``psi`` is given (then on its own layers
        unless ``layers`` is given too)."""
        if psi is None:
            return self.truncation["psi"], self.truncation["layers"]
        return psi, self.truncation["layers"] if layers is None else layers

    def wp(self, z, c, psi=None, layers=None):
        psi, layers = self.drawing_truncation(psi, layers)
        wp = self.mapping(z, c)
        if self.closed_loop is not None and self.closed_loop.steps > 0:
            wp = self.closed_loop(wp, c, lambda v: self.draw(v, psi, layers))
        return truncate(wp, self.w_avg, self.num_layers, psi, layers)

    def draw(self, wp, psi=None, layers=None):
        """Images of codes before truncation, as the closed loop sees them."""
        psi, layers = self.drawing_truncation(psi, layers)
        return self.synthesis(truncate(wp, self.w_avg, self.num_layers, psi, layers))

    def synthesis(self, wp):
        return self.base.synthesis(wp)

    def forward(self, z, c, psi=None):
        return self.synthesis(self.wp(z, c, psi))


class DirectionsController(Controller):
    """Base generator + linear property directions in W (least squares on the property table).

    For a requested property vector c, w moves to the nearest point (in the least-norm sense) where the linear
    model reads exactly c: ``w' = w + A^T (A A^T)^-1 (c - (A w + b))``. Rows of A beyond the properties (the
    gender score) are set to their ``fixed_targets`` (female) in the same move, so that setting a property does
    not change the gender on the way. With a ``layer_mask`` (``direction_layers``) each direction moves only the
    layers it acts through. With ``closed_loop`` the edit is then refined through the image.
    """

    def __init__(
        self,
        base: torch.nn.Module,
        weights: torch.Tensor,
        bias: torch.Tensor,
        fixed_targets: torch.Tensor | None = None,
        closed_loop: ClosedLoop | None = None,
        layer_mask: torch.Tensor | None = None,
        truncation: dict | None = None,
    ):
        super().__init__()
        self.base = base.eval().requires_grad_(False)
        self.truncation = dict(truncation or UNTRUNCATED)
        self.register_buffer("weights", weights.float())  # [P + H, w_dim]
        self.register_buffer("layer_mask", layer_mask_or_ones(layer_mask, len(weights), base.num_layers))
        self.register_buffer("bias", bias.float())
        self.register_buffer("fixed_targets", (torch.zeros(0) if fixed_targets is None else fixed_targets).float())
        self.register_buffer("gram_inv", masked_gram_inv(self.weights, self.layer_mask))
        self.closed_loop = closed_loop
        self.z_dim, self.w_dim, self.num_layers = base.z_dim, base.w_dim, base.num_layers
        self.resolution, self.property_names = base.resolution, PROPERTY_NAMES

    def mapping(self, z, c):
        target = torch.cat([c, self.fixed_targets.expand(len(c), -1)], dim=1)
        return move_to_linear_target(
            self.base.mapping(z), self.weights, self.bias, self.gram_inv, target, self.layer_mask
        )

    def with_closed_loop(self, closed_loop: ClosedLoop | None) -> DirectionsController:
        """The same baseline refined by another closed loop (its tensors shared, not copied or read again)."""
        return DirectionsController(
            self.base, self.weights, self.bias, self.fixed_targets, closed_loop, self.layer_mask, self.truncation
        ).eval()


# The reach box: the 0.5th to 99.5th percentile of the data's linear readings, widened by half its width each
# way (ridge readings spread less than the values they fit, so the data's own extremes read nearer the middle).
REACH_MARGIN = 0.5


def fit_directions(
    latents, properties: pd.DataFrame, labels: pd.DataFrame | None = None, ridge_grid=RIDGE_GRID
) -> dict:
    """Per property, a ridge-regularised least-squares linear model property ~ w on the images where it is valid,
    its ridge chosen from ``ridge_grid`` by cross-validation (``vhuman.ridge``; ``ridges`` in the result); with
    ``labels`` (p_female of every generated image) also a gender row, whose target is 1 (female).

    Returns ``weights`` [P (+1), w_dim], ``bias`` and ``fixed_targets`` (the targets of the rows after the
    properties), as tensors, ``rows`` (their names), ``reach_low`` / ``reach_high``: the box of linear readings
    the generated images' own codes fill, and ``truncation``: how those images were drawn (the lines hold for
    faces drawn so, and every controller built on them draws so).
    """
    ids = pd.DataFrame({"image_id": latents.column("image_id").to_pylist()}).reset_index()
    w_all = column_vectors(latents, "w").astype(np.float64)
    merged = ids.merge(properties, on="image_id")
    weights, bias, ridges = [], [], []
    for name in PROPERTY_NAMES:
        valid = merged[f"{name}_valid"].fillna(False).astype(bool).to_numpy()
        if valid.sum() < 3:
            # Nothing to fit (a parser that finds no such region on these faces): a zero direction, which the
            # edit leaves still, keeps the rest of the workflow running; the layers file and the report show it.
            warnings.warn(
                f"only {int(valid.sum())} images have a valid {name}: too few to fit a direction; it stays unset",
                stacklevel=2,
            )
            coef, b, ridge = np.zeros(w_all.shape[1]), float(np.mean(RANGES[name])), float("nan")
        else:
            rows_w, values = w_all[merged["index"].to_numpy()[valid]], merged.loc[valid, name].to_numpy(np.float64)
            coef, b, ridge = cross_validated_ridge_line(rows_w, values, ridge_grid)
        weights.append(coef)
        bias.append(b)
        ridges.append(ridge)
    rows, fixed = list(PROPERTY_NAMES), []
    if labels is not None:
        gender = ids.merge(labels[["image_id", "p_female"]], on="image_id")
        coef, b, ridge = cross_validated_ridge_line(
            w_all[gender["index"].to_numpy()], gender["p_female"].to_numpy(np.float64), ridge_grid
        )
        weights.append(coef)
        bias.append(b)
        ridges.append(ridge)
        rows.append("female")
        fixed.append(1.0)
    readings = w_all @ np.stack(weights).T + np.array(bias)  # every generated image's linear reading
    low, high = np.percentile(readings, [0.5, 99.5], axis=0)
    margin = REACH_MARGIN * (high - low)
    low[len(PROPERTY_NAMES) :], high[len(PROPERTY_NAMES) :] = -np.inf, np.inf  # the female row has its own target
    return {
        "weights": torch.tensor(np.stack(weights)),
        "bias": torch.tensor(np.array(bias)),
        "fixed_targets": torch.tensor(fixed, dtype=torch.float64),
        "rows": rows,
        "ridges": ridges,
        # Where the generator's own codes read: edits that leave this box leave W (see ConditionalMapping).
        "reach_low": torch.tensor(low - margin),
        "reach_high": torch.tensor(high + margin),
        "truncation": truncation_of(latents.schema.metadata),
    }


def load_directions(path: str | Path, base: torch.nn.Module, closed_loop: ClosedLoop | None = None):
    """The baseline from ``results/directions/directions.pth``, optionally refined in closed loop."""
    ckpt = load_torch_file(path, what="latent directions")
    return DirectionsController(
        base,
        ckpt["weights"],
        ckpt["bias"],
        ckpt.get("fixed_targets"),
        closed_loop,
        ckpt.get("layer_mask"),
        ckpt.get("truncation"),  # files from before it was recorded: drawn untruncated, as then
    ).eval()

"""The conditional generator: the property vector enters the base generator's latent path; its file format.

``ConditionalMapping`` is a trainable copy of the base mapping with the (normalised) property vector added to its
first layer through zero-started weights, followed by the latent-directions edit scaled by per-property gates that
start at zero, so a fresh model draws exactly what the base draws. A ``LatentPropertyModel`` (trained by
vhuman.amortise) then refines the codes by a few Newton steps along the directions, reading the properties off
the codes instead of off a drawn picture: the closed loop, amortised. The synthesis stays the frozen base synthesis.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
import torch.nn as nn

from vhuman.directions import (
    ClosedLoop,
    Controller,
    layer_mask_or_ones,
    layer_step,
    linear_reading,
    masked_gram_inv,
    move_to_linear_target,
)
from vhuman.discriminator import StyleGANDiscriminator
from vhuman.generators import Generator, generator_from_record, generator_record
from vhuman.genforce import discriminator_from_checkpoint
from vhuman.io import CheckpointError, load_torch_file, save_torch_atomic
from vhuman.latents import UNTRUNCATED
from vhuman.regressor import PropertyRegressor
from vhuman.vocabulary import PROPERTY_NAMES, RANGES

KIND = "vhuman-conditional-generator"


class LatentPropertyModel(nn.Module):
    """What the critic reads off the picture (the properties, then p(female)), predicted from the per-layer codes
    alone: one small tanh network per layer on the standardised code, summed, and squashed into each row's range
    (a critic's reading saturates at the ends of its range, and so does this model's)."""

    def __init__(self, num_layers: int, w_dim: int, hidden: int, low: torch.Tensor, high: torch.Tensor):
        super().__init__()
        self.per_layer = nn.ModuleList(
            nn.Sequential(nn.Linear(w_dim, hidden), nn.Tanh(), nn.Linear(hidden, len(low))) for _ in range(num_layers)
        )
        self.register_buffer("w_mean", torch.zeros(w_dim))
        self.register_buffer("w_std", torch.ones(w_dim))
        self.register_buffer("low", low.float().clone())
        self.register_buffer("high", high.float().clone())

    def forward(self, wp: torch.Tensor) -> torch.Tensor:
        x = (wp - self.w_mean) / self.w_std
        logit = sum(net(x[:, layer]) for layer, net in enumerate(self.per_layer))
        return self.low + (self.high - self.low) * torch.sigmoid(logit)


class ConditionalMapping(nn.Module):
    """The base mapping with the (normalised) property vector appended to its input through zero-started weights.

    With ``directions`` (the latent-directions baseline's linear property model in W), the output also moves
    towards the requested values along those directions, scaled per property by a gate that starts at zero: the
    model starts exactly as the base, and the fine-tune begins its search next to the baseline's edit instead of
    having to find the directions itself.
    """

    def __init__(
        self,
        base: Generator,
        num_conditions: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        directions: dict | None = None,
    ):
        super().__init__()
        if getattr(base.mapping, "label_size", 0):
            raise ValueError("conditional base generators (label_size > 0) are not supported")
        self.layers = copy.deepcopy(base.mapping)  # the trainable copy; the base stays frozen
        self.condition_weight = nn.Parameter(torch.zeros(self.layers.first_layer_width, num_conditions))
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clone())
        if directions is not None:
            weights, bias = directions["weights"].float().clone(), directions["bias"].float().clone()
            fixed = directions.get("fixed_targets")
            self.register_buffer("direction_weights", weights)
            self.register_buffer("direction_bias", bias)
            self.register_buffer("direction_fixed_targets", torch.zeros(0) if fixed is None else fixed.float().clone())
            mask = layer_mask_or_ones(directions.get("layer_mask"), len(weights), base.num_layers)
            self.register_buffer("direction_layer_mask", mask)
            self.register_buffer("direction_gram_inv", masked_gram_inv(weights, mask))
            inf = torch.full((len(weights),), float("inf"))
            self.register_buffer("reach_low", directions.get("reach_low", -inf).float().clone())
            self.register_buffer("reach_high", directions.get("reach_high", inf).float().clone())
            self.direction_gate = nn.Parameter(torch.zeros(len(weights)))
        else:
            self.direction_gate = None
        self.num_layers, self.z_dim = base.num_layers, base.z_dim
        self.latent_model: LatentPropertyModel | None = None
        self.register_buffer("latent_steps", torch.tensor(0))

    def parameter_groups(self, lr: float, lr_direction_gate: float) -> list[dict]:
        """Optimiser groups: the copied base layers at ``lr`` times the base's own scales (see
        ``Generator.mapping``), the property input at ``lr``, the direction gates at ``lr_direction_gate``."""
        scales = getattr(self.layers, "learning_rate_scales", dict)()
        groups: dict[float, list[nn.Parameter]] = {}
        for name, p in self.layers.named_parameters():
            groups.setdefault(lr * scales.get(name, 1.0), []).append(p)
        out = [{"params": params, "lr": rate} for rate, params in groups.items()]
        out.append({"params": [self.condition_weight], "lr": lr})
        if self.direction_gate is not None:
            out.append({"params": [self.direction_gate], "lr": lr_direction_gate})
        return out

    def attach_latent_model(self, model: LatentPropertyModel, steps: int) -> None:
        """Refine every drawing by ``steps`` Newton steps with ``model`` (needs the directions)."""
        if self.direction_gate is None:
            raise ValueError("the latent property model moves codes along the directions: give the directions")
        self.latent_model = model
        self.latent_steps.fill_(int(steps))

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """wp [N, L, w_dim], before truncation."""
        x = self.layers(z, first_layer_extra=((c - self.mean) / self.std) @ self.condition_weight.t())
        if self.direction_gate is None:
            return x.unsqueeze(1).repeat(1, self.num_layers, 1)
        # The gate blends, per property, the linear model's current reading with the requested value.
        current = x @ self.direction_weights.t() + self.direction_bias
        wanted = self.wanted(c)
        target = current + self.direction_gate * (wanted - current)
        wp = move_to_linear_target(
            x, self.direction_weights, self.direction_bias, self.direction_gram_inv, target, self.direction_layer_mask
        )
        origin = x @ self.direction_weights.t() + self.direction_bias
        return self.within_reach(self.latent_refine(wp, wanted, origin), origin)

    def within_reach(self, wp: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
        """Codes moved back, along the directions, into the box of linear readings the generator's own codes fill
        (``reach_low``..``reach_high``, widened to each face's unedited reading ``origin``): an edit may take a
        face to the data's edge, not past it into codes that draw no face. Codes inside are left as they are."""
        reading = linear_reading(wp, self.direction_weights, self.direction_bias, self.direction_layer_mask)
        low, high = torch.minimum(self.reach_low, origin), torch.maximum(self.reach_high, origin)
        gap = torch.maximum(torch.minimum(reading, high), low) - reading
        return self.step(wp, gap) if bool((gap != 0).any()) else wp

    def wanted(self, c: torch.Tensor) -> torch.Tensor:
        """The directions' targets for requests ``c``: the properties, then the fixed rows (female)."""
        return torch.cat([c, self.direction_fixed_targets.expand(len(c), -1)], dim=1)

    def step(self, wp: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
        """Codes moved along the directions, each on its layers, so that the readings change by ``gap``."""
        return wp + layer_step(gap @ self.direction_gram_inv, self.direction_weights, self.direction_layer_mask)

    def latent_refine(self, wp: torch.Tensor, wanted: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
        """The closed loop's correction with the latent property model as reader: no picture, no critic; each step
        kept within reach of ``origin`` (``within_reach``)."""
        for _ in range(int(self.latent_steps) if self.latent_model is not None else 0):
            wp = self.within_reach(self.step(wp, wanted - self.latent_model(wp)), origin)
        return wp


class ConditionalGenerator(Controller):
    """z and the property vector in, image out; ``synthesis`` is the frozen base synthesis."""

    def __init__(
        self,
        base: Generator,
        mapping: ConditionalMapping,
        property_names=PROPERTY_NAMES,
        closed_loop: ClosedLoop | None = None,
        truncation: dict | None = None,
    ):
        super().__init__()
        self.base = base.eval().requires_grad_(False)
        self.truncation = dict(truncation or UNTRUNCATED)
        self.cond_mapping = mapping
        self.closed_loop = closed_loop
        self.property_names = tuple(property_names)
        self.z_dim, self.w_dim = base.z_dim, base.w_dim
        self.num_layers, self.resolution = base.num_layers, base.resolution

    def mapping(self, z, c):
        return self.cond_mapping(z, c)


class ConditionalDiscriminator(nn.Module):
    """A StyleGAN discriminator with a projection of the property vector onto its last features."""

    def __init__(self, base: StyleGANDiscriminator, num_conditions: int):
        super().__init__()
        self.base = base
        width = getattr(base, f"layer{2 * base.num_blocks}").weight.shape[1]
        self.projection = nn.Linear(num_conditions, width, bias=False)
        nn.init.zeros_(self.projection.weight)

    def forward(self, images, c_norm):
        h = self.base.features(images)
        return self.base.score(h).squeeze(1) + (self.projection(c_norm) * h).sum(1) / math.sqrt(h.shape[1])


def discriminator_for(base: Generator, base_checkpoint, num_conditions: int) -> ConditionalDiscriminator:
    """The base checkpoint's discriminator where it has one (GenForce files do), else a small one from scratch."""
    if isinstance(base_checkpoint, dict) and ("discriminator" in base_checkpoint or "models" in base_checkpoint):
        disc = discriminator_from_checkpoint(base_checkpoint, "base checkpoint")
    else:
        res = base.resolution
        disc = StyleGANDiscriminator(res, fmaps_base=16 * res, fmaps_max=128)  # 16 channels at full size
    return ConditionalDiscriminator(disc.train(), num_conditions)


def save_conditional_generator(
    path: str | Path,
    base: Generator,
    mapping: ConditionalMapping,
    discriminator: nn.Module,
    closed_loop: ClosedLoop | None,
    settings: dict,
    record: dict,
    truncation: dict | None = None,
) -> dict:
    """Write ``results/finetuned.pth``: everything needed to draw (``truncation``: how it draws), with how it was
    made (``record``)."""
    result = {
        "kind": KIND,
        "truncation": dict(truncation or UNTRUNCATED),
        "property_names": list(PROPERTY_NAMES),
        "ranges": RANGES,
        "normalisation": {"mean": mapping.mean.tolist(), "std": mapping.std.tolist()},
        "settings": settings,
        "mapping": mapping.state_dict(),
        "discriminator": discriminator.state_dict(),
        **record,
        "base": generator_record(base),
    }
    if closed_loop is not None:
        result["closed_loop"] = closed_loop.record()
    save_torch_atomic(result, path)
    return result


def load_conditional_generator(path: str | Path, closed_loop_steps: int | None = None) -> ConditionalGenerator:
    """Open ``results/finetuned.pth``: the base generator and the conditional mapping, ready to sample.

    ``closed_loop_steps`` overrides the file's number of closed-loop corrections (0: open loop)."""
    ckpt = load_torch_file(path, what="fine-tuned generator")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND:
        raise CheckpointError(f"{path}: not a fine-tuned conditional generator (run `snakemake results/finetuned.pth`)")
    try:
        return _conditional_generator(ckpt, path, closed_loop_steps)
    except CheckpointError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError, IndexError, RuntimeError) as exc:
        # A damaged or crafted file: one line that names it, not a traceback of whichever part failed first.
        raise CheckpointError(
            f"{path}: a fine-tuned generator file whose contents do not fit together ({type(exc).__name__}); "
            "make it again with `snakemake results/finetuned.pth`"
        ) from exc


def _conditional_generator(ckpt: dict, path: str | Path, closed_loop_steps: int | None) -> ConditionalGenerator:
    if not isinstance(ckpt.get("base"), dict) or not isinstance(ckpt.get("mapping"), dict):
        raise CheckpointError(f"{path}: the file has no base generator record or no mapping")
    base = generator_from_record(ckpt["base"], path)
    n = len(ckpt["property_names"])
    state = ckpt["mapping"]
    directions = None
    if "direction_weights" in state:
        # Placeholders of the right shape (invertible A A^T); the loaded buffers replace them.
        k = len(state["direction_weights"])
        directions = {
            "weights": torch.eye(k, state["direction_weights"].shape[1]),
            "bias": torch.zeros(k),
            "fixed_targets": torch.zeros(len(state["direction_fixed_targets"])),
        }
        # Files from before per-layer edits moved every layer alike.
        state.setdefault("direction_layer_mask", torch.ones(k, base.num_layers))
        state.setdefault("reach_low", torch.full((k,), float("-inf")))  # files from before the reach box: none
        state.setdefault("reach_high", torch.full((k,), float("inf")))
    state.setdefault("latent_steps", torch.tensor(0))  # files from before the amortised loop
    mapping = ConditionalMapping(base, n, torch.zeros(n), torch.ones(n), directions)
    if "latent_model.low" in state:
        hidden, rows = state["latent_model.per_layer.0.0.weight"].shape[0], len(state["latent_model.low"])
        empty = torch.zeros(rows)
        mapping.attach_latent_model(LatentPropertyModel(base.num_layers, base.w_dim, hidden, empty, empty), 0)
    mapping.load_state_dict(state, strict=True)
    # Files from before the truncation was recorded trained at the fine-tune's psi on every layer.
    truncation = ckpt.get("truncation") or {"psi": float(ckpt["settings"].get("truncation_psi", 1.0)), "layers": None}
    loop = closed_loop_from(ckpt, mapping, closed_loop_steps)
    return ConditionalGenerator(base, mapping, ckpt["property_names"], loop, truncation).eval()


def closed_loop_from(ckpt: dict, mapping: ConditionalMapping, steps: int | None = None) -> ClosedLoop | None:
    """The closed loop a fine-tuned checkpoint records (None for files without one); ``steps`` overrides its own."""
    info = ckpt.get("closed_loop")
    if info is None or mapping.direction_gate is None:
        return None
    critic = PropertyRegressor(info["critic"]["width"], info["critic"]["input_size"])
    critic.load_state_dict(info["critic_state_dict"], strict=True)
    return ClosedLoop(
        critic,
        mapping.direction_weights,
        mapping.direction_fixed_targets,
        info["steps"] if steps is None else steps,
        mapping.direction_layer_mask,
        reach=(mapping.direction_bias, mapping.reach_low, mapping.reach_high),
    )

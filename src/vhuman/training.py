"""Stage 6: fine-tune the latent path so that the property values steer the generator.

The property vector is appended to the mapping network's input (after z's pixel norm) through new weights that
start at zero, so the fine-tuned model starts exactly as the base model. Only the mapping (the latent path) trains;
the synthesis stays frozen. Losses:

* control: a frozen property regressor must read the requested values back off the generated image;
* female: the same regressor's gender logit must say female;
* keep the person: when one requested property changes, w should move little (and the others still hold);
* realism: a discriminator conditioned on the properties (the base checkpoint's where it has one), with the
  non-saturating loss and lazy R1.

An EMA copy of the mapping is what gets saved. Training resumes from its last state after a kill.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from vhuman.generators import SyntheticGenerator, truncate
from vhuman.io import load_torch_file, save_torch_atomic
from vhuman.properties import property_matrix
from vhuman.regressor import PropertyRegressor
from vhuman.stylegan import StyleGANDiscriminator, StyleGANGenerator, discriminator_from_checkpoint
from vhuman.synthetic import PROPERTY_NAMES

KIND = "vhuman-conditional-generator"
RANGES = {name: (-1.0, 1.0) if name == "face_pose" else (0.0, 1.0) for name in PROPERTY_NAMES}


@dataclass
class FinetuneSettings:
    steps: int = 2000
    batch_size: int = 32
    lr_mapping: float = 1e-3
    lr_discriminator: float = 1e-3
    lr_direction_gate: float = 0.02
    control_weight: float = 10.0
    gender_weight: float = 1.0
    keep_weight: float = 0.1
    adversarial_weight: float = 0.1
    r1_gamma: float = 1.0
    r1_every: int = 16
    ema_beta: float = 0.99
    replace_probability: float = 0.5
    truncation_psi: float = 1.0
    checkpoint_every: int = 100
    log_every: int = 50
    seed: int = 0
    # Closed-loop corrections when drawing (see ClosedLoop); 0 draws open loop. Not part of training.
    closed_loop_steps: int = 2


# ---- the conditional generator ----------------------------------------------------------------------------------


def _pixel_norm(z):
    return z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)


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
    return torch.linalg.inv((weights @ weights.t()) * overlap)


def critic_reading(critic: PropertyRegressor, images: torch.Tensor, rows: int) -> torch.Tensor:
    """What the critic reads for the first ``rows`` direction rows: the properties, then p(female)."""
    read, female_logit = critic(images)
    return torch.cat([read, torch.sigmoid(female_logit)[:, None]], dim=1)[:, :rows]


class ClosedLoop(nn.Module):
    """Feedback through the image: draw, let the frozen critic read the properties off the picture, and move the
    codes along the linear property directions (each on its own layers) by the gap between requested and read
    values; ``steps`` times.

    The move is the latent-directions edit with the critic's reading in place of the linear model's, so the codes
    only ever move within the span of the directions: too few dimensions for the critic's blind spots to be found.
    Rows of the directions after the properties (the female row) read the critic's p(female).
    """

    def __init__(
        self,
        critic: PropertyRegressor,
        weights: torch.Tensor,
        fixed_targets: torch.Tensor,
        steps: int,
        layer_mask: torch.Tensor | None = None,
        num_layers: int | None = None,
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

    def forward(self, wp: torch.Tensor, c: torch.Tensor, draw) -> torch.Tensor:
        """``draw(wp)`` renders wp [N, L, w_dim]; returns wp after ``steps`` corrections."""
        wanted = torch.cat([c, self.fixed_targets.expand(len(c), -1)], dim=1)
        for _ in range(self.steps):
            gap = wanted - critic_reading(self.critic, draw(wp), len(self.weights))
            wp = wp + layer_step(gap @ self.gram_inv, self.weights, self.layer_mask)
        return wp

    def record(self) -> dict:
        """What a checkpoint needs to rebuild this loop (the directions are stored with the mapping)."""
        return {
            "steps": self.steps,
            "critic": {"width": self.critic.width, "input_size": self.critic.input_size},
            "critic_state_dict": self.critic.state_dict(),
        }


def layer_mask_or_ones(mask: torch.Tensor | None, rows: int, num_layers: int | None) -> torch.Tensor:
    """A copy of ``mask`` [rows, L]; without one, every row on every layer (directions files from before the
    per-layer search)."""
    if mask is None:
        if num_layers is None:
            raise ValueError("give a layer mask or the number of layers")
        return torch.ones(rows, num_layers)
    return mask.float().clone()


class Controller(nn.Module):
    """Something that turns (z, property vector) into per-layer codes and draws them with the frozen base
    synthesis, optionally refined in closed loop. Subclasses set ``base``, ``num_layers`` and ``closed_loop`` (a
    ClosedLoop or None) and define ``mapping(z, c)`` -> wp [N, L, w_dim] before truncation."""

    @property
    def w_avg(self):
        return self.base.w_avg

    def wp(self, z, c, psi=1.0, layers=None):
        wp = self.mapping(z, c)
        if self.closed_loop is not None and self.closed_loop.steps > 0:
            wp = self.closed_loop(
                wp, c, lambda v: self.synthesis(truncate(v, self.w_avg, self.num_layers, psi, layers))
            )
        return truncate(wp, self.w_avg, self.num_layers, psi, layers)

    def synthesis(self, wp):
        return self.base.synthesis(wp)

    def forward(self, z, c, psi=1.0):
        return self.synthesis(self.wp(z, c, psi))


class ConditionalMapping(nn.Module):
    """The base mapping with the (normalised) property vector appended to its input through zero-started weights.

    With ``directions`` (the latent-directions baseline's linear property model in W), the output also moves
    towards the requested values along those directions, scaled per property by a gate that starts at zero: the
    model starts exactly as the base, and the fine-tune begins its search next to the baseline's edit instead of
    having to find the directions itself.
    """

    def __init__(
        self,
        base: nn.Module,
        num_conditions: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        directions: dict | None = None,
    ):
        super().__init__()
        if isinstance(base, SyntheticGenerator):
            self.kind, self.layers = "synthetic", copy.deepcopy(base.mapping_net)
            first_out = self.layers[0].out_features
        elif isinstance(base, StyleGANGenerator):
            if base.mapping.label_size:
                raise ValueError("conditional base generators (label_size > 0) are not supported")
            self.kind, self.layers = "stylegan", copy.deepcopy(base.mapping)
            first_out = self.layers.dense0.weight.shape[0]
        else:
            raise TypeError(f"unsupported base generator {type(base).__name__}")
        self.condition_weight = nn.Parameter(torch.zeros(first_out, num_conditions))
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
            self.direction_gate = nn.Parameter(torch.zeros(len(weights)))
        else:
            self.direction_gate = None
        self.num_layers = base.num_layers

    def forward(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """wp [N, L, w_dim], before truncation."""
        extra = ((c - self.mean) / self.std) @ self.condition_weight.t()
        x = _pixel_norm(z)
        if self.kind == "synthetic":
            x = F.leaky_relu(self.layers[0](x) + extra, 0.2)
            for lin in self.layers[1:]:
                x = F.leaky_relu(lin(x), 0.2)
        else:
            d0 = self.layers.dense0
            x = F.leaky_relu(F.linear(x, d0.weight * d0.wscale, d0.bias * d0.lr_mul) + extra, 0.2)
            for i in range(1, self.layers.num_layers):
                x = getattr(self.layers, f"dense{i}")(x)
        if self.direction_gate is None:
            return x.unsqueeze(1).repeat(1, self.num_layers, 1)
        # The gate blends, per property, the linear model's current reading with the requested value.
        current = x @ self.direction_weights.t() + self.direction_bias
        wanted = torch.cat([c, self.direction_fixed_targets.expand(len(c), -1)], dim=1)
        target = current + self.direction_gate * (wanted - current)
        return move_to_linear_target(
            x, self.direction_weights, self.direction_bias, self.direction_gram_inv, target, self.direction_layer_mask
        )


class ConditionalGenerator(Controller):
    """z and the property vector in, image out; ``synthesis`` is the frozen base synthesis."""

    def __init__(
        self,
        base: nn.Module,
        mapping: ConditionalMapping,
        property_names=PROPERTY_NAMES,
        closed_loop: ClosedLoop | None = None,
    ):
        super().__init__()
        self.base = base.eval().requires_grad_(False)
        self.cond_mapping = mapping
        self.closed_loop = closed_loop
        self.property_names = tuple(property_names)
        self.z_dim, self.w_dim = base.z_dim, base.w_dim
        self.num_layers, self.resolution = base.num_layers, base.resolution

    def mapping(self, z, c):
        return self.cond_mapping(z, c)

    def conditions(self, values: dict[str, float | np.ndarray], fill: np.ndarray) -> torch.Tensor:
        """A [N, P] condition tensor: given values where named, ``fill`` (rows drawn from the data) elsewhere."""
        out = np.array(fill, dtype=np.float32, copy=True)
        for name, value in values.items():
            if name not in self.property_names:
                raise KeyError(f"unknown property {name!r}; known: {', '.join(self.property_names)}")
            lo, hi = RANGES[name]
            out[:, self.property_names.index(name)] = np.clip(value, lo, hi)
        return torch.from_numpy(out)


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


def discriminator_for(base_generator: nn.Module, base_checkpoint, num_conditions: int) -> ConditionalDiscriminator:
    """The base checkpoint's discriminator where it has one, else a small one trained from scratch."""
    if (
        isinstance(base_generator, StyleGANGenerator)
        and isinstance(base_checkpoint, dict)
        and ("discriminator" in base_checkpoint or "models" in base_checkpoint)
    ):
        disc = discriminator_from_checkpoint(base_checkpoint, "base checkpoint")
    else:
        res = base_generator.resolution
        disc = StyleGANDiscriminator(res, fmaps_base=16 * res, fmaps_max=128)  # 16 channels at full size
    return ConditionalDiscriminator(disc.train(), num_conditions)


# ---- data ---------------------------------------------------------------------------------------------------------


class ConditionSampler:
    """Property vectors for training: rows of the data, each property replaced by a uniform draw with prob. p."""

    def __init__(self, table: pd.DataFrame, replace_probability: float, gen: torch.Generator):
        self.rows = torch.tensor(property_matrix(table))
        if len(self.rows) == 0:
            raise ValueError("the property table is empty; cannot fine-tune")
        self.lo = torch.tensor([RANGES[n][0] for n in PROPERTY_NAMES])
        self.hi = torch.tensor([RANGES[n][1] for n in PROPERTY_NAMES])
        self.p, self.gen = replace_probability, gen

    def __call__(self, n: int) -> torch.Tensor:
        c = self.rows[torch.randint(0, len(self.rows), (n,), generator=self.gen)]
        uniform = self.lo + (self.hi - self.lo) * torch.rand(c.shape, generator=self.gen)
        return torch.where(torch.rand(c.shape, generator=self.gen) < self.p, uniform, c)

    def replace_one(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """c with one random property per row set to a new uniform value; also returns which."""
        k = torch.randint(0, c.shape[1], (len(c),), generator=self.gen)
        new = c.clone()
        u = torch.rand(len(c), generator=self.gen)
        new[torch.arange(len(c)), k] = self.lo[k] + (self.hi[k] - self.lo[k]) * u
        return new, k


def directions_fingerprint(directions: dict) -> str:
    """What of the directions file shapes the trained model: the rows, their targets and their layers."""
    digest = hashlib.sha256()
    for key in ("weights", "bias", "fixed_targets", "layer_mask"):
        value = directions.get(key)
        digest.update(key.encode() + (b"-" if value is None else torch.as_tensor(value).cpu().numpy().tobytes()))
    return digest.hexdigest()


NOT_TRAINING = ("steps", "checkpoint_every", "log_every", "closed_loop_steps")


def settings_hash(settings: FinetuneSettings, extra: dict) -> str:
    """Identifies a run; the step budget is left out so that a longer run continues a shorter one."""
    fields = {k: v for k, v in asdict(settings).items() if k not in NOT_TRAINING}
    return hashlib.sha256(json.dumps([fields, extra], sort_keys=True).encode()).hexdigest()[:16]


# ---- training -------------------------------------------------------------------------------------------------------


def _r1(disc, real, c_norm):
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(disc(real, c_norm).sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


def probe_control(
    model: ConditionalGenerator,
    regressor: PropertyRegressor,
    sampler_rows: torch.Tensor,
    n: int = 64,
    seed: int = 12345,
) -> dict:
    """Pearson r between requested and regressor-read properties on a fixed probe batch (a training monitor)."""
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    z = torch.randn(n, model.z_dim, generator=g).to(dev)
    lo = torch.tensor([RANGES[p][0] for p in PROPERTY_NAMES])
    hi = torch.tensor([RANGES[p][1] for p in PROPERTY_NAMES])
    c = (lo + (hi - lo) * torch.rand(n, len(PROPERTY_NAMES), generator=g)).to(dev)
    with torch.no_grad():
        read, logit = regressor(model(z, c))
    out = {
        f"r_{name}": float(np.corrcoef(c[:, k].cpu(), read[:, k].cpu())[0, 1]) for k, name in enumerate(PROPERTY_NAMES)
    }
    out["female_rate"] = float((logit > 0).float().mean())
    return out


def finetune(
    base: nn.Module,
    base_checkpoint,
    regressor: PropertyRegressor,
    properties: pd.DataFrame,
    real_images: torch.Tensor,
    settings: FinetuneSettings,
    work_dir: str | Path,
    out_path: str | Path,
    record: dict,
    device: torch.device,
    progress: bool = True,
    directions: dict | None = None,
) -> dict:
    """Train, checkpointing to ``work_dir/state.pth``; write the EMA model to ``out_path``.

    ``real_images`` are the female subset's images (uint8 [N, 3, H, W]) paired row by row with ``properties``.
    ``record`` is stored in the output file (base checkpoint's sha256, config, ...). ``directions`` (``fit_directions``'
    dict) is the latent-directions baseline's linear model, the mapping's gated starting edit.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    state_path, log_path = work_dir / "state.pth", work_dir / "log.csv"
    gen = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    values = property_matrix(properties)
    mean, std = torch.tensor(values.mean(0)), torch.tensor(values.std(0) + 1e-6)
    real_c = torch.from_numpy(values)

    mapping = ConditionalMapping(base, len(PROPERTY_NAMES), mean, std, directions)
    model = ConditionalGenerator(base, mapping).to(device)
    ema = copy.deepcopy(mapping).to(device).requires_grad_(False)
    disc = discriminator_for(base, base_checkpoint, len(PROPERTY_NAMES)).to(device)
    regressor = regressor.to(device).eval().requires_grad_(False)
    gate = [p for n, p in mapping.named_parameters() if n == "direction_gate"]
    rest = [p for n, p in mapping.named_parameters() if n != "direction_gate"]
    opt_g = torch.optim.Adam(
        [{"params": rest}, {"params": gate, "lr": settings.lr_direction_gate}],
        lr=settings.lr_mapping,
        betas=(0.0, 0.99),
    )
    opt_d = torch.optim.Adam(disc.parameters(), lr=settings.lr_discriminator, betas=(0.0, 0.99))
    sampler = ConditionSampler(properties, settings.replace_probability, gen)
    fingerprint = settings_hash(
        settings,
        {
            "base": record.get("base_sha256"),
            "n": len(real_c),
            "directions": None if directions is None else directions_fingerprint(directions),
        },
    )
    start = 0
    if state_path.exists():
        state = load_torch_file(state_path, what="fine-tune state")
        if state.get("fingerprint") == fingerprint and state["step"] > settings.steps:
            tqdm.write(f"{state_path} is at step {state['step']}, past this run's {settings.steps}; starting over")
        elif state.get("fingerprint") == fingerprint:
            mapping.load_state_dict(state["mapping"])
            ema.load_state_dict(state["ema"])
            disc.load_state_dict(state["discriminator"])
            opt_g.load_state_dict(state["opt_g"])
            opt_d.load_state_dict(state["opt_d"])
            gen.set_state(state["generator_rng"])
            torch.set_rng_state(state["torch_rng"])
            start = state["step"]
            tqdm.write(f"resuming the fine-tune from step {start} ({state_path})")
        else:
            tqdm.write(f"{state_path} belongs to other settings or data; starting over")
    if start == 0 and log_path.exists():
        log_path.unlink()
    amp = device.type == "cuda"
    span = (sampler.hi - sampler.lo).to(device)

    def control_loss(pred, target):
        return (((pred - target) / span) ** 2).mean()

    def save_state(step):
        save_torch_atomic(
            {
                "fingerprint": fingerprint,
                "step": step,
                "mapping": mapping.state_dict(),
                "ema": ema.state_dict(),
                "discriminator": disc.state_dict(),
                "opt_g": opt_g.state_dict(),
                "opt_d": opt_d.state_dict(),
                "generator_rng": gen.get_state(),
                "torch_rng": torch.get_rng_state(),
            },
            state_path,
        )

    bar = tqdm(
        range(start, settings.steps), initial=start, total=settings.steps, desc="fine-tune", disable=not progress
    )
    running: dict[str, list[float]] = {}
    for step in bar:
        z = torch.randn(settings.batch_size, base.z_dim, generator=gen).to(device)
        c = sampler(settings.batch_size).to(device)
        c_changed, _ = sampler.replace_one(c.cpu())
        c_changed = c_changed.to(device)
        idx = torch.randint(0, len(real_c), (settings.batch_size,), generator=gen)
        real = (real_images[idx].float() / 127.5 - 1).to(device)
        real_cn = ((real_c[idx] - mean) / std).to(device)

        # Mapping step (the discriminator is only read here). Half the batch also asks for one property changed.
        half = settings.batch_size // 2
        c_changed = c_changed[:half]
        disc.requires_grad_(False)
        with torch.autocast(device.type, enabled=amp):
            w = mapping(z, c)
            w_changed = mapping(z[:half], c_changed)
            both = model.synthesis(
                truncate(torch.cat([w, w_changed]), base.w_avg, base.num_layers, settings.truncation_psi)
            )
            images = both[: len(w)]
            read, logit = regressor(both)
            control = control_loss(read.float(), torch.cat([c, c_changed]))
            female = F.binary_cross_entropy_with_logits(logit.float(), torch.ones_like(logit.float()))
            keep = (w_changed - w[:half]).pow(2).mean() / base.w_avg.pow(2).mean().clamp(min=1e-3)
            cn = (c - mapping.mean) / mapping.std
            adversarial = F.softplus(-disc(images, cn)).mean()
            g_loss = (
                settings.control_weight * control
                + settings.gender_weight * female
                + settings.keep_weight * keep
                + settings.adversarial_weight * adversarial
            )
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        disc.requires_grad_(True)

        # Discriminator step on the same fakes.
        with torch.autocast(device.type, enabled=amp):
            d_loss = F.softplus(disc(images.detach(), cn)).mean() + F.softplus(-disc(real, real_cn)).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        if settings.r1_gamma > 0 and step % settings.r1_every == 0:
            (settings.r1_gamma / 2 * _r1(disc, real, real_cn) * settings.r1_every).backward()
        opt_d.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), mapping.parameters(), strict=True):
                p_ema.lerp_(p, 1 - settings.ema_beta)

        for key, value in (
            ("d_loss", d_loss),
            ("control", control),
            ("female", female),
            ("keep", keep),
            ("adversarial", adversarial),
        ):
            running.setdefault(key, []).append(float(value.detach()))
        done = step + 1
        if done % settings.log_every == 0 or done == settings.steps:
            row = {"step": done, **{k: float(np.mean(v)) for k, v in running.items()}}
            model.cond_mapping = ema
            row.update(probe_control(model, regressor, real_c))
            model.cond_mapping = mapping
            running = {}
            new = not log_path.exists()
            with open(log_path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    writer.writeheader()
                writer.writerow(row)
            bar.set_postfix(control=f"{row['control']:.4f}", female=f"{row['female_rate']:.2f}")
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            save_state(done)

    result = {
        "kind": KIND,
        "property_names": list(PROPERTY_NAMES),
        "ranges": RANGES,
        "normalisation": {"mean": mean.tolist(), "std": std.tolist()},
        "settings": asdict(settings),
        "mapping": ema.state_dict(),
        "discriminator": disc.state_dict(),
        **record,
    }
    if directions is not None:
        result["closed_loop"] = ClosedLoop(
            regressor.cpu(),
            ema.direction_weights.cpu(),
            ema.direction_fixed_targets.cpu(),
            settings.closed_loop_steps,
            ema.direction_layer_mask.cpu(),
        ).record()
    if isinstance(base, SyntheticGenerator):
        result["base"] = {"kind": "synthetic", "settings": base.settings(), "state_dict": base.state_dict()}
    else:
        result["base"] = {"kind": "genforce", "settings": base.settings, "state_dict": base.state_dict()}
    save_torch_atomic(result, out_path)
    return result


def load_conditional_generator(path: str | Path, closed_loop_steps: int | None = None) -> ConditionalGenerator:
    """Open ``results/finetuned.pth``: the base generator and the conditional mapping, ready to sample.

    ``closed_loop_steps`` overrides the file's number of closed-loop corrections (0: open loop)."""
    ckpt = load_torch_file(path, what="fine-tuned generator")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND:
        raise ValueError(f"{path}: not a fine-tuned conditional generator (run `snakemake results/finetuned.pth`)")
    base_info = ckpt["base"]
    base = (
        SyntheticGenerator(**base_info["settings"])
        if base_info["kind"] == "synthetic"
        else StyleGANGenerator(**base_info["settings"])
    )
    base.load_state_dict(base_info["state_dict"], strict=True)
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
    mapping = ConditionalMapping(base, n, torch.zeros(n), torch.ones(n), directions)
    mapping.load_state_dict(state, strict=True)
    return ConditionalGenerator(
        base, mapping, ckpt["property_names"], closed_loop_from(ckpt, mapping, closed_loop_steps)
    ).eval()


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
    )

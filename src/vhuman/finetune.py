"""Stage 6c: fine-tune the latent path so that the property values steer the generator.

Only the conditional mapping (vhuman.conditional) trains; the synthesis stays frozen. Losses:

* control: a frozen property regressor must read the requested values back off the generated image;
* female: the same regressor's gender logit must say female;
* keep the person: when one requested property changes, w should move little (and the others still hold);
* realism: a discriminator conditioned on the properties (the base checkpoint's where it has one), with the
  non-saturating loss and lazy R1.

Then the closed loop is amortised into the mapping (vhuman.amortise), so that one synthesis meets the request.

The loop is cut into restore / generator step / discriminator step / log / export, and knows no network's class.
Its precision is the stage's (vhuman.runtime.precision_scope around the call).
An EMA copy of the mapping is what gets saved. Training resumes from its last state after a kill.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vhuman.amortise import AmortiseSettings, amortise
from vhuman.conditional import (
    ClosedLoop,
    ConditionalGenerator,
    ConditionalMapping,
    discriminator_for,
    save_conditional_generator,
)
from vhuman.generators import Generator
from vhuman.io import append_csv_row, load_torch_file, save_torch_atomic, write_json
from vhuman.latents import UNTRUNCATED
from vhuman.properties import property_matrix
from vhuman.regressor import PropertyRegressor
from vhuman.runtime import loss_scaler, scaled_step
from vhuman.vocabulary import PROPERTY_NAMES, RANGES


@dataclass
class FinetuneSettings:
    """``finetune.train`` of the config (its defaults live there and in the schema, nowhere else)."""

    steps: int
    batch_size: int
    lr_mapping: float
    lr_discriminator: float
    lr_direction_gate: float
    control_weight: float
    gender_weight: float
    keep_weight: float
    adversarial_weight: float
    r1_gamma: float
    r1_every: int
    ema_beta: float
    replace_probability: float
    checkpoint_every: int
    log_every: int
    seed: int
    # Closed-loop corrections when drawing (see ClosedLoop); 0 draws open loop. Not part of training.
    closed_loop_steps: int


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


def probe_control(
    model: ConditionalGenerator,
    regressor: PropertyRegressor,
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
        read, logit = (t.float() for t in regressor(model(z, c)))
    out = {
        f"r_{name}": float(np.corrcoef(c[:, k].cpu(), read[:, k].cpu())[0, 1]) for k, name in enumerate(PROPERTY_NAMES)
    }
    out["female_rate"] = float((logit > 0).float().mean())
    return out


def _r1(disc, real, c_norm):
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(disc(real, c_norm).sum(), real, create_graph=True)
    return grad.pow(2).flatten(1).sum(1).mean()


@dataclass
class Batch:
    z: torch.Tensor
    c: torch.Tensor
    c_changed: torch.Tensor  # the first half of c, one property each changed
    real: torch.Tensor  # real images in [-1, 1]
    real_cn: torch.Tensor  # their normalised properties


class Finetune:
    """The state of one fine-tune: networks, optimisers, data and random streams."""

    def __init__(
        self,
        base: Generator,
        base_checkpoint,
        regressor: PropertyRegressor,
        properties: pd.DataFrame,
        real_images: torch.Tensor,
        settings: FinetuneSettings,
        device: torch.device,
        directions: dict | None,
        fingerprint_extra: dict,
    ):
        self.base, self.settings, self.device, self.real_images = base, settings, device, real_images
        self.gen = torch.Generator().manual_seed(settings.seed)
        torch.manual_seed(settings.seed)
        values = property_matrix(properties)
        self.mean, self.std = torch.tensor(values.mean(0)), torch.tensor(values.std(0) + 1e-6)
        self.real_c = torch.from_numpy(values)
        self.mapping = ConditionalMapping(base, len(PROPERTY_NAMES), self.mean, self.std, directions)
        # Faces are drawn as the data's were (the directions record it): the critic and the lines were fitted there.
        self.truncation = dict((directions or {}).get("truncation") or UNTRUNCATED)
        self.model = ConditionalGenerator(base, self.mapping, truncation=self.truncation).to(device)
        self.ema = copy.deepcopy(self.mapping).to(device).requires_grad_(False)
        self.disc = discriminator_for(base, base_checkpoint, len(PROPERTY_NAMES)).to(device)
        self.regressor = regressor.to(device).eval().requires_grad_(False)
        groups = self.mapping.parameter_groups(settings.lr_mapping, settings.lr_direction_gate)
        self.opt_g = torch.optim.Adam(groups, betas=(0.0, 0.99))
        self.opt_d = torch.optim.Adam(self.disc.parameters(), lr=settings.lr_discriminator, betas=(0.0, 0.99))
        # Loss scaling under float16 autocast (a pass-through in other precisions); built inside the stage's scope.
        self.scaler_g, self.scaler_d = loss_scaler(device), loss_scaler(device)
        self.sampler = ConditionSampler(properties, settings.replace_probability, self.gen)
        self.span = (self.sampler.hi - self.sampler.lo).to(device)
        self.fingerprint = settings_hash(
            settings,
            {
                **fingerprint_extra,
                "n": len(self.real_c),
                "truncation": self.truncation,
                "learning_rates": [group["lr"] for group in groups],
                "directions": None if directions is None else directions_fingerprint(directions),
                # A state trained in another precision is another run (built inside the stage's autocast scope).
                "autocast": str(torch.get_autocast_dtype(device.type))
                if torch.is_autocast_enabled(device.type)
                else None,
            },
        )

    # ---- restore and save ----------------------------------------------------------------------------------------

    def state(self, step: int) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "step": step,
            "mapping": self.mapping.state_dict(),
            "ema": self.ema.state_dict(),
            "discriminator": self.disc.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scalers": [self.scaler_g.state_dict(), self.scaler_d.state_dict()],
            "generator_rng": self.gen.get_state(),
            "torch_rng": torch.get_rng_state(),
        }

    def restore(self, state_path: Path) -> int:
        """The step to start from: the saved state's when it belongs to this run, else 0."""
        if not state_path.exists():
            return 0
        state = load_torch_file(state_path, what="fine-tune state")
        if state.get("fingerprint") != self.fingerprint:
            tqdm.write(f"{state_path} belongs to other settings or data; starting over")
            return 0
        if state["step"] > self.settings.steps:
            tqdm.write(f"{state_path} is at step {state['step']}, past this run's {self.settings.steps}; starting over")
            return 0
        self.mapping.load_state_dict(state["mapping"])
        self.ema.load_state_dict(state["ema"])
        self.disc.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        for scaler, saved in zip((self.scaler_g, self.scaler_d), state.get("scalers", [{}, {}]), strict=True):
            if scaler.is_enabled() and saved:  # a disabled scaler's state is empty
                scaler.load_state_dict(saved)
        self.gen.set_state(state["generator_rng"])
        torch.set_rng_state(state["torch_rng"])
        tqdm.write(f"resuming the fine-tune from step {state['step']} ({state_path})")
        return state["step"]

    # ---- one step ------------------------------------------------------------------------------------------------

    def draw_batch(self) -> Batch:
        s, dev = self.settings, self.device
        z = torch.randn(s.batch_size, self.base.z_dim, generator=self.gen).to(dev)
        c = self.sampler(s.batch_size).to(dev)
        c_changed, _ = self.sampler.replace_one(c.cpu())
        idx = torch.randint(0, len(self.real_c), (s.batch_size,), generator=self.gen)
        real = (self.real_images[idx].float() / 127.5 - 1).to(dev)
        real_cn = ((self.real_c[idx] - self.mean) / self.std).to(dev)
        return Batch(z, c, c_changed[: s.batch_size // 2].to(dev), real, real_cn)

    def generator_step(self, b: Batch) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """One step of the mapping (the discriminator is only read); returns the losses, the fakes and their
        normalised conditions. Half the batch also asks for one property changed."""
        s, base, half = self.settings, self.base, len(b.c_changed)
        self.disc.requires_grad_(False)
        w = self.mapping(b.z, b.c)
        w_changed = self.mapping(b.z[:half], b.c_changed)
        both = self.model.draw(torch.cat([w, w_changed]))
        images = both[: len(w)]
        read, logit = self.regressor(both)
        wanted = torch.cat([b.c, b.c_changed])
        losses = {
            "control": (((read.float() - wanted) / self.span) ** 2).mean(),
            "female": F.binary_cross_entropy_with_logits(logit.float(), torch.ones_like(logit.float())),
            "keep": (w_changed - w[:half]).pow(2).mean() / base.w_avg.pow(2).mean().clamp(min=1e-3),
        }
        cn = (b.c - self.mapping.mean) / self.mapping.std
        losses["adversarial"] = F.softplus(-self.disc(images, cn)).mean()
        g_loss = (
            s.control_weight * losses["control"]
            + s.gender_weight * losses["female"]
            + s.keep_weight * losses["keep"]
            + s.adversarial_weight * losses["adversarial"]
        )
        scaled_step(self.scaler_g, self.opt_g, g_loss)
        self.disc.requires_grad_(True)
        return losses, images, cn

    def discriminator_step(self, b: Batch, images: torch.Tensor, cn: torch.Tensor, step: int) -> torch.Tensor:
        s, disc = self.settings, self.disc
        d_loss = F.softplus(disc(images.detach(), cn)).mean() + F.softplus(-disc(b.real, b.real_cn)).mean()
        penalty = []
        if s.r1_gamma > 0 and step % s.r1_every == 0:
            penalty.append(s.r1_gamma / 2 * _r1(disc, b.real, b.real_cn) * s.r1_every)
        scaled_step(self.scaler_d, self.opt_d, d_loss, *penalty)
        return d_loss

    def update_ema(self) -> None:
        with torch.no_grad():
            for p_ema, p in zip(self.ema.parameters(), self.mapping.parameters(), strict=True):
                p_ema.lerp_(p, 1 - self.settings.ema_beta)

    # ---- log and export ------------------------------------------------------------------------------------------

    def log_row(self, step: int, running: dict[str, list[float]]) -> dict:
        """Mean losses since the last row and the EMA model's control on a fixed probe batch."""
        row = {"step": step, **{k: float(np.mean(v)) for k, v in running.items()}}
        self.model.cond_mapping = self.ema
        row.update(probe_control(self.model, self.regressor))
        self.model.cond_mapping = self.mapping
        return row

    def amortise(self, settings: AmortiseSettings, progress: bool) -> dict:
        """Teach the EMA mapping (the one saved) to do the closed loop's work without drawing."""
        return amortise(
            self.ema,
            self.model.draw,
            self.regressor,
            self.sampler,
            settings,
            self.device,
            progress,
        )

    def export(self, out_path: Path, record: dict) -> dict:
        closed_loop = None
        if self.ema.direction_gate is not None:
            closed_loop = ClosedLoop(
                self.regressor.cpu(),
                self.ema.direction_weights.cpu(),
                self.ema.direction_fixed_targets.cpu(),
                self.settings.closed_loop_steps,
                self.ema.direction_layer_mask.cpu(),
                reach=(self.ema.direction_bias.cpu(), self.ema.reach_low.cpu(), self.ema.reach_high.cpu()),
            )
        return save_conditional_generator(
            out_path, self.base, self.ema, self.disc, closed_loop, asdict(self.settings), record, self.truncation
        )


def finetune(
    base: Generator,
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
    amortise_settings: AmortiseSettings | None = None,
) -> dict:
    """Train, checkpointing to ``work_dir/state.pth``; write the EMA model to ``out_path``.

    ``real_images`` are the female subset's images (uint8 [N, 3, H, W]) paired row by row with ``properties``.
    ``record`` is stored in the output file (base checkpoint's sha256, config, ...). ``directions``
    (``fit_directions``' dict) is the latent-directions baseline's linear model, the mapping's gated starting edit.
    With ``amortise_settings`` the closed loop is then amortised into the mapping; that part is deterministic and
    reruns whole after a kill (its figures go to ``work_dir/amortise.json`` and into the file's record).
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    state_path, log_path = work_dir / "state.pth", work_dir / "log.csv"
    run = Finetune(
        base,
        base_checkpoint,
        regressor,
        properties,
        real_images,
        settings,
        device,
        directions,
        {"base": record.get("base_sha256")},
    )
    start = run.restore(state_path)
    if start == 0 and log_path.exists():
        log_path.unlink()
    bar = tqdm(
        range(start, settings.steps), initial=start, total=settings.steps, desc="fine-tune", disable=not progress
    )
    running: dict[str, list[float]] = {}
    for step in bar:
        batch = run.draw_batch()
        losses, images, cn = run.generator_step(batch)
        losses = {"d_loss": run.discriminator_step(batch, images, cn, step), **losses}
        run.update_ema()
        for key, value in losses.items():
            running.setdefault(key, []).append(float(value.detach()))
        done = step + 1
        if done % settings.log_every == 0 or done == settings.steps:
            row = run.log_row(done, running)
            running = {}
            append_csv_row(log_path, row)
            bar.set_postfix(control=f"{row['control']:.4f}", female=f"{row['female_rate']:.2f}")
        if done % settings.checkpoint_every == 0 or done == settings.steps:
            save_torch_atomic(run.state(done), state_path)
    if amortise_settings is not None and amortise_settings.samples > 0 and run.ema.direction_gate is not None:
        record = {**record, "amortise": run.amortise(amortise_settings, progress)}
        write_json(record["amortise"], work_dir / "amortise.json")
    return run.export(Path(out_path), record)

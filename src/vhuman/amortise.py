"""Stage 6c, second part: the closed loop, amortised into the conditional mapping.

The closed loop (vhuman.directions.ClosedLoop) meets a request for each face, but it draws the face and runs the
critic at every step. Here a ``LatentPropertyModel`` learns what the critic reads off the picture from the codes
alone, on the loop's own trajectories (each point and a jittered neighbour, so it sees the slope as well), and then
on the points where its own Newton steps land (each round adds those and refits: a model that is only right where
it was trained is exploited by the steps that use it). Drawing then costs one synthesis and no critic.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from vhuman.conditional import ConditionalMapping, LatentPropertyModel
from vhuman.directions import critic_reading
from vhuman.regressor import PropertyRegressor
from vhuman.vocabulary import PROPERTY_NAMES, RANGES


@dataclass
class AmortiseSettings:
    """``finetune.amortise`` of the config (its defaults live there and in the schema, nowhere else)."""

    samples: int  # (z, request) pairs whose closed-loop trajectories start the data; 0 turns amortising off
    loop_steps: int  # closed-loop steps recorded per pair
    jitter: float  # size of the random neighbour of each point, in the directions' reading units
    hidden: int
    steps: int  # fitting steps on the trajectories
    rounds: int  # rounds of adding the model's own landing points and refitting
    round_samples: int
    round_steps: int
    batch_size: int
    lr: float
    drawing_steps: int  # Newton steps with the model per drawn face (no synthesis, no critic)
    seed: int


Draw = Callable[[torch.Tensor], torch.Tensor]


def row_ranges() -> tuple[torch.Tensor, torch.Tensor]:
    """Each direction row's reading range: the properties', then p(female) in 0..1."""
    low = [RANGES[name][0] for name in PROPERTY_NAMES] + [0.0]
    high = [RANGES[name][1] for name in PROPERTY_NAMES] + [1.0]
    return torch.tensor(low), torch.tensor(high)


class Reader:
    """The critic's reading of drawn codes, for one mapping (whose ``step`` and ``wanted`` the loop uses)."""

    def __init__(self, mapping: ConditionalMapping, draw: Draw, critic: PropertyRegressor):
        self.mapping, self.draw, self.critic = mapping, draw, critic
        self.rows = len(mapping.direction_weights)

    def read(self, wp: torch.Tensor) -> torch.Tensor:
        return critic_reading(self.critic, self.draw(wp), self.rows).float()


@torch.no_grad()
def trajectory_readings(reader: Reader, requests, settings: AmortiseSettings, gen, device, progress) -> tuple:
    """Codes along the image closed loop from the mapping's edit, each with a jittered neighbour, what the
    critic reads off each, and which face (z) each point belongs to."""
    codes, reads, faces = [], [], []
    for first in tqdm(range(0, settings.samples, settings.batch_size), desc="amortise: loop", disable=not progress):
        z = torch.randn(settings.batch_size, reader.mapping.z_dim, generator=gen).to(device)
        c = requests(settings.batch_size).to(device)
        wp = reader.mapping(z, c)
        face = torch.arange(first, first + len(z))
        for _ in range(settings.loop_steps):
            jitter = settings.jitter * torch.randn(len(wp), reader.rows, generator=gen).to(device)
            near = reader.mapping.step(wp, jitter)
            read = reader.read(wp)
            codes += [wp.cpu(), near.cpu()]
            reads += [read.cpu(), reader.read(near).cpu()]
            faces += [face, face]
            wp = reader.mapping.step(wp, reader.mapping.wanted(c) - read)
    return torch.cat(codes), torch.cat(reads), torch.cat(faces)


@torch.no_grad()
def landing_readings(reader: Reader, requests, n: int, batch: int, gen, device) -> tuple:
    """Where the mapping with its latent model lands for fresh requests, and what the critic reads there."""
    codes, reads = [], []
    for _ in range(0, n, batch):
        z = torch.randn(batch, reader.mapping.z_dim, generator=gen).to(device)
        wp = reader.mapping(z, requests(batch).to(device))
        codes.append(wp.cpu())
        reads.append(reader.read(wp).cpu())
    return torch.cat(codes), torch.cat(reads)


def finite_only(codes: torch.Tensor, reads: torch.Tensor, *more: torch.Tensor) -> tuple:
    """Drop points whose codes or readings are not finite (float16 syntheses can overflow far from the data, and
    one NaN would spoil the whole fit), with their rows of ``more``; the last item is how many were dropped."""
    keep = codes.flatten(1).isfinite().all(1) & reads.isfinite().all(1)
    if not keep.any():
        raise FloatingPointError(
            "amortise: the critic read no finite value off the drawn faces; if precision is float16, the synthesis "
            "overflowed: set precision to bfloat16 or float32"
        )
    return (codes[keep], reads[keep], *(t[keep] for t in more), int((~keep).sum()))


def held_out_faces(faces: torch.Tensor, gen: torch.Generator, share: float = 0.05) -> torch.Tensor:
    """Which points to hold out: every point of about ``share`` of the faces. Whole faces, because a point's
    jittered neighbour and next loop step are nearly the same point: a model that is right only on faces it has
    seen would look right on them."""
    n_faces = int(faces.max()) + 1
    return torch.isin(faces, torch.randperm(n_faces, generator=gen)[: max(1, round(n_faces * share))])


def fit(model: LatentPropertyModel, codes, reads, steps: int, lr: float, batch: int, gen, device) -> None:
    model.requires_grad_(True).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    for _ in range(steps):
        idx = torch.randint(0, len(codes), (batch,), generator=gen)
        # The fit stays float32 whatever the stage's precision: it is small, and its errors are the control's.
        with torch.autocast(device.type, enabled=False):
            loss = (model(codes[idx].to(device)) - reads[idx].to(device)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
    model.requires_grad_(False).eval()


def rms_by_row(model: LatentPropertyModel, codes, reads, device) -> list[float]:
    with torch.no_grad(), torch.autocast(device.type, enabled=False):
        err = torch.cat(
            [model(codes[s : s + 1024].to(device)).cpu() - reads[s : s + 1024] for s in range(0, len(codes), 1024)]
        )
    return err.pow(2).mean(0).sqrt().tolist()


def amortise(
    mapping: ConditionalMapping,
    draw: Draw,
    critic: PropertyRegressor,
    requests: Callable[[int], torch.Tensor],
    settings: AmortiseSettings,
    device: torch.device,
    progress: bool = True,
) -> dict:
    """Train a latent property model on ``mapping``'s closed-loop trajectories and attach it (``drawing_steps``
    Newton steps per drawing). ``draw(wp)`` renders codes as the loop does (truncation included);
    ``requests(n)`` draws training requests. Returns the fit's figures: the error per row (properties, then
    p(female)) on held-out trajectory points and, per round, on the model's own landing points before refitting."""
    gen = torch.Generator().manual_seed(settings.seed)
    reader = Reader(mapping, draw, critic.eval().requires_grad_(False))
    codes, reads, faces, dropped = finite_only(*trajectory_readings(reader, requests, settings, gen, device, progress))
    held = held_out_faces(faces, gen)
    low, high = row_ranges()
    model = LatentPropertyModel(mapping.num_layers, codes.shape[-1], settings.hidden, low, high).to(device)
    flat = codes.flatten(0, 1)
    model.w_mean.copy_(flat.mean(0))
    model.w_std.copy_(flat.std(0) + 1e-6)
    train_codes, train_reads = codes[~held], reads[~held]
    fit(model, train_codes, train_reads, settings.steps, settings.lr, settings.batch_size, gen, device)
    figures = {"held_out_rms": rms_by_row(model, codes[held], reads[held], device), "landing_rms": []}
    mapping.attach_latent_model(model, settings.drawing_steps)
    for _ in tqdm(range(settings.rounds), desc="amortise: rounds", disable=not progress):
        land_codes, land_reads = landing_readings(
            reader, requests, settings.round_samples, settings.batch_size, gen, device
        )
        land_codes, land_reads, lost = finite_only(land_codes, land_reads)
        dropped += lost
        figures["landing_rms"].append(rms_by_row(model, land_codes, land_reads, device))
        train_codes, train_reads = torch.cat([train_codes, land_codes]), torch.cat([train_reads, land_reads])
        fit(model, train_codes, train_reads, settings.round_steps, settings.lr * 0.3, settings.batch_size, gen, device)
    figures["rows"] = list(PROPERTY_NAMES) + ["female"][: reader.rows - len(PROPERTY_NAMES)]
    figures["training_points"], figures["dropped_non_finite_points"] = len(train_codes), dropped
    figures["mean_landing_rms_last_round"] = float(np.mean(figures["landing_rms"][-1])) if settings.rounds else None
    return figures

"""Stage 6a: a frozen critic for the fine-tune: a CNN that reads the properties (and gender) off an image.

Trained on the property table (properties measured from masks of the female subset) and the gender labels of all
images, so it knows what male faces look like too. It is independent of the gender CNN that evaluation uses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import Conv2dNormActivation
from tqdm import tqdm

from vhuman.io import load_image_batch, load_torch_file, save_torch_atomic, write_json
from vhuman.runtime import loss_scaler, scaled_step
from vhuman.vocabulary import PROPERTY_NAMES

KIND = "vhuman-property-regressor"


@dataclass
class RegressorSettings:
    """``finetune.regressor`` of the config (its defaults live there and in the schema, nowhere else)."""

    input_size: int
    steps: int
    batch_size: int
    lr: float
    width: int
    seed: int


class PropertyRegressor(nn.Module):
    """Image in [-1, 1] -> 7 property values (in their own units) and a female logit."""

    def __init__(self, width: int = 16, input_size: int = 64):
        super().__init__()
        w = width
        self.width, self.input_size = width, input_size
        self.features = nn.Sequential(
            Conv2dNormActivation(3, w, 3),
            Conv2dNormActivation(w, 2 * w, 3, stride=2),
            Conv2dNormActivation(2 * w, 2 * w, 3),
            Conv2dNormActivation(2 * w, 4 * w, 3, stride=2),
            Conv2dNormActivation(4 * w, 8 * w, 3, stride=2),
            Conv2dNormActivation(8 * w, 8 * w, 3, stride=2),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(16 * 8 * w, 256), nn.ReLU(), nn.Linear(256, len(PROPERTY_NAMES) + 1))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.shape[-1] != self.input_size:
            # Antialiased resizing has no bfloat16 kernel on the CPU: resize in float32 (autocast leaves it be).
            images = F.interpolate(images.float(), size=(self.input_size,) * 2, mode="bilinear", antialias=True)
        out = self.head(self.features(images.contiguous(memory_format=torch.channels_last)))  # faster on the CPU
        return out[:, :-1], out[:, -1]


def lr_schedule(opt: torch.optim.Optimizer, lr: float, steps: int):
    """One-cycle (10 % warm-up, at least 2.5 steps of it) from 10 steps on; a constant rate for shorter runs, as tiny
    test settings use, where OneCycleLR's phases would be empty."""
    if steps < 10:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=min(0.5, max(0.1, 2.5 / steps)))


def train_regressor(
    images_dir: str | Path,
    properties: pd.DataFrame,
    gender_labels: pd.DataFrame,
    settings: RegressorSettings,
    out_path: str | Path,
    metrics_path: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Fit on 90 % of the images, report Pearson r per property on the other 10 %."""
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    table = gender_labels[["image_id", "p_female"]].merge(properties, on="image_id", how="left")
    ids = list(table["image_id"])
    images = load_image_batch(images_dir, ids, settings.input_size)
    targets = torch.tensor(table[list(PROPERTY_NAMES)].to_numpy(np.float32))
    valid = torch.tensor(np.stack([table[f"{n}_valid"].fillna(False).to_numpy(bool) for n in PROPERTY_NAMES], 1))
    targets = torch.nan_to_num(targets)
    female = torch.tensor(table["p_female"].to_numpy(np.float32))
    order = torch.randperm(len(ids), generator=gen)
    held, train = order[: len(ids) // 10], order[len(ids) // 10 :]
    model = PropertyRegressor(settings.width, settings.input_size)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    sched = lr_schedule(opt, settings.lr, settings.steps)
    scaler = loss_scaler(next(model.parameters()).device)
    bar = tqdm(range(settings.steps), desc="property regressor", disable=not progress)
    for step in bar:
        idx = train[torch.randint(0, len(train), (settings.batch_size,), generator=gen)]
        model.train()
        pred, logit = model(images[idx].float() / 127.5 - 1)
        m = valid[idx].float()
        loss = ((pred - targets[idx]) ** 2 * m).sum() / m.sum().clamp(min=1) * 10
        loss = loss + F.binary_cross_entropy_with_logits(logit, female[idx])
        scaled_step(scaler, opt, loss)
        sched.step()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.detach().item():.3f}")
    model.eval()
    with torch.inference_mode():
        pred = torch.cat(
            [model(images[held[s : s + 256]].float() / 127.5 - 1)[0].float() for s in range(0, len(held), 256)]
        )
    metrics = {"held_out_images": len(held), "settings": asdict(settings)}
    for k, name in enumerate(PROPERTY_NAMES):
        ok = valid[held, k]
        if ok.sum() > 2:
            metrics[name] = {
                "pearson_r": float(np.corrcoef(pred[ok, k], targets[held][ok, k])[0, 1]),
                "mae": float((pred[ok, k] - targets[held][ok, k]).abs().mean()),
            }
    save_torch_atomic({"kind": KIND, "settings": asdict(settings), "state_dict": model.state_dict()}, out_path)
    if metrics_path is not None:
        write_json(metrics, metrics_path)
    return metrics


def load_regressor(path: str | Path) -> PropertyRegressor:
    ckpt = load_torch_file(path, what="property regressor")
    model = PropertyRegressor(ckpt["settings"]["width"], ckpt["settings"]["input_size"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval().requires_grad_(False)

"""Stage 4: face parsing into the 19 CelebAMask-HQ classes, written as one palette PNG per image.

Two parsers share one interface (``parse(images uint8 [N, h, w, 3]) -> labels uint8 [N, S, S]``, S the mask size):
BiSeNet with the published weights (real faces), and ``WorldParser``, a small U-Net trained on renders of the
synthetic world (whose BiSeNet weights cannot be used). The world parser predicts at the image's resolution and
up-samples its logits to the mask size, so its masks keep sub-pixel boundaries.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import Conv2dNormActivation
from tqdm import tqdm

from vhuman import bisenet, synthetic
from vhuman.io import (
    CheckpointError,
    latent_codes,
    load_image,
    load_label_map,
    load_torch_file,
    save_png,
    save_torch_atomic,
    write_json,
)
from vhuman.latents import truncate, truncation_of
from vhuman.runtime import loss_scaler, scaled_step
from vhuman.vocabulary import CLASS_NAMES, LABEL_PALETTE

NUM_CLASSES = len(CLASS_NAMES)
PARSER_KIND = "vhuman-world-parser"
# Mirroring an image swaps the sides of these classes.
MIRROR = torch.arange(NUM_CLASSES)
for a, b in ((2, 3), (4, 5), (7, 8)):
    MIRROR[a], MIRROR[b] = b, a


@dataclass
class ParserSettings:
    """``segmentation.world_parser`` of the config (its defaults live there and in the schema, nowhere else)."""

    image_resolution: int
    train_mask_resolution: int
    train_images: int
    steps: int
    batch_size: int
    lr: float
    width: int
    seed: int


class _Block(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(Conv2dNormActivation(cin, cout, 3), Conv2dNormActivation(cout, cout, 3))


class WorldParser(nn.Module):
    """U-Net (3 levels) giving 19 logits per image pixel."""

    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.enc1, self.enc2, self.enc3 = _Block(3, w), _Block(w, 2 * w), _Block(2 * w, 4 * w)
        self.mid = _Block(4 * w, 4 * w)
        self.dec3, self.dec2, self.dec1 = _Block(8 * w, 2 * w), _Block(4 * w, w), _Block(2 * w, w)
        self.head = nn.Conv2d(w, NUM_CLASSES, 1)

    def forward(self, x):
        # Channels-last all the way: the 19-class logits' up-sampling and argmax run ~7x faster in it on the CPU.
        e1 = self.enc1(x.contiguous(memory_format=torch.channels_last))
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        m = self.mid(F.max_pool2d(e3, 2))
        d3 = self.dec3(torch.cat([F.interpolate(m, scale_factor=2, mode="bilinear"), e3], 1))
        d2 = self.dec2(torch.cat([F.interpolate(d3, scale_factor=2, mode="bilinear"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2, mode="bilinear"), e1], 1))
        return self.head(d1)

    def logits_at(self, images: torch.Tensor, size: int) -> torch.Tensor:
        """Logits up-sampled to ``size`` (images in [-1, 1])."""
        return upsampled(self(images), size)

    def labels_at(self, images: torch.Tensor, size: int, chunk_pixels: int = 1 << 19) -> torch.Tensor:
        """Labels (uint8) at ``size``: the network on the whole batch, then up-sampling and argmax a few images at a
        time, so that the 19-class logits at mask size never exist for the whole batch (320 MB for 64 images at 256).
        The same labels as ``logits_at(...).argmax(1)``, about 10 % faster on a 2-core CPU."""
        logits = self(images)
        step = max(1, chunk_pixels // (size * size))
        return torch.cat(
            [upsampled(logits[s : s + step], size).argmax(1).to(torch.uint8) for s in range(0, len(logits), step)]
        )


def upsampled(logits: torch.Tensor, size: int) -> torch.Tensor:
    if logits.shape[-1] == size:
        return logits
    return F.interpolate(logits, size=(size, size), mode="bilinear", align_corners=False)


def _augment(images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator):
    """Exposure, contrast and noise jitter, and mirroring with left/right classes swapped."""
    n = len(images)
    gain = 1 + 0.2 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    shift = 0.1 * (torch.rand(n, 1, 1, 1, generator=gen) - 0.5)
    images = (images * gain + shift + 0.03 * torch.randn(images.shape, generator=gen)).clamp(-1, 1)
    flip = torch.rand(n, generator=gen) < 0.5
    images = torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)
    labels = torch.where(flip.view(-1, 1, 1), MIRROR[labels.flip(2).long()], labels.long())
    return images, labels


def render_training_set(n: int, seed: int, image_resolution: int, mask_resolution: int, batch: int = 250):
    """Faces drawn from the world's own distribution (not from the generator) with their exact label maps."""
    params = synthetic.sample_face_params(n, seed)
    images, labels = [], []
    with torch.inference_mode():
        for s in range(0, n, batch):
            p = params[s : s + batch]
            images.append(synthetic.render_faces(p, image_resolution).images)
            labels.append(synthetic.render_faces(p, mask_resolution, with_image=False).labels)
    return torch.cat(images), torch.cat(labels)


def confusion(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.bincount(
        truth.astype(np.int64).ravel() * NUM_CLASSES + pred.astype(np.int64).ravel(), minlength=NUM_CLASSES**2
    ).reshape(NUM_CLASSES, NUM_CLASSES)


def iou_report(conf: np.ndarray) -> dict:
    """Per-class IoU and their mean over the classes that occur in the truth."""
    inter = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - inter
    present = conf.sum(1) > 0
    iou = {CLASS_NAMES[c]: float(inter[c] / union[c]) for c in range(NUM_CLASSES) if present[c]}
    return {
        "miou": float(np.mean(list(iou.values()))) if iou else float("nan"),
        "per_class": iou,
        "pixel_accuracy": float(inter.sum() / max(conf.sum(), 1)),
    }


def train_world_parser(
    settings: ParserSettings,
    out_path: str | Path,
    mask_resolution: int,
    metrics_path: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Train the world parser on fresh renders; report its mIoU on held-out renders at the mask size."""
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    images, labels = render_training_set(
        settings.train_images, settings.seed + 1, settings.image_resolution, settings.train_mask_resolution
    )
    # Small classes (eyes, inner mouth) decide the properties: weight classes by 1 / sqrt(frequency).
    freq = torch.bincount(labels.flatten().long(), minlength=NUM_CLASSES).float() / labels.numel()
    class_weight = torch.where(freq > 0, freq.clamp(min=1e-6).rsqrt(), torch.zeros_like(freq))
    class_weight = class_weight / (class_weight * freq).sum()
    model = WorldParser(settings.width)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings.lr, total_steps=settings.steps, pct_start=0.1)
    losses, scaler = [], loss_scaler(next(model.parameters()).device)
    bar = tqdm(range(settings.steps), desc="world parser", disable=not progress)
    for step in bar:
        idx = torch.randint(0, len(images), (settings.batch_size,), generator=gen)
        x, y = _augment(images[idx], labels[idx], gen)
        model.train()
        loss = F.cross_entropy(model.logits_at(x, settings.train_mask_resolution), y, weight=class_weight)
        scaled_step(scaler, opt, loss)
        sched.step()
        losses.append(loss.detach().item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    model.eval()
    save_torch_atomic({"kind": PARSER_KIND, "settings": asdict(settings), "state_dict": model.state_dict()}, out_path)
    held_images, held_labels = render_training_set(300, settings.seed + 2, settings.image_resolution, mask_resolution)
    pred = parse_tensor(model, held_images, mask_resolution)
    metrics = {
        "held_out_renders": iou_report(confusion(pred, held_labels.numpy())),
        "final_loss": float(np.mean(losses[-50:])),
        "settings": asdict(settings),
    }
    if metrics_path is not None:
        write_json(metrics, metrics_path)
    return metrics


def parse_tensor(model: WorldParser, images: torch.Tensor, mask_resolution: int, batch: int = 64) -> np.ndarray:
    out = []
    with torch.inference_mode():
        for s in range(0, len(images), batch):
            out.append(model.labels_at(images[s : s + batch], mask_resolution).numpy())
    return np.concatenate(out)


def load_world_parser(path: str | Path) -> WorldParser:
    ckpt = load_torch_file(path, what="world parser checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("kind") != PARSER_KIND:
        raise CheckpointError(
            f"{path}: not a world-parser checkpoint; rebuild it with `snakemake results/models/world_parser.pth`"
        )
    model = WorldParser(ckpt["settings"]["width"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval()


class Parser:
    """Either parser behind one call: uint8 RGB images -> uint8 label maps at ``mask_resolution``."""

    def __init__(self, kind: str, checkpoint: str | Path, mask_resolution: int, device: torch.device):
        self.kind, self.mask_resolution, self.device = kind, mask_resolution, device
        if kind == "bisenet":
            self.net = bisenet.load_bisenet(checkpoint).to(device)
        elif kind == "world":
            self.net = load_world_parser(checkpoint).to(device)
        else:
            raise ValueError(f"unknown parser kind {kind!r} (bisenet | world)")

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.kind == "bisenet":
            labels = bisenet.parse_faces(self.net, images, self.device)
            if labels.shape[-1] != self.mask_resolution:
                size = (self.mask_resolution, self.mask_resolution)
                labels = np.stack([np.asarray(Image.fromarray(lab).resize(size, Image.NEAREST)) for lab in labels])
            return labels
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(self.device)
        with torch.inference_mode():
            return self.net.labels_at(x, self.mask_resolution).cpu().numpy()


def segment_images(
    parser: Parser,
    images_dir: str | Path,
    image_ids: list[str],
    masks_dir: str | Path,
    batch_size: int = 32,
    progress: bool = True,
) -> None:
    """Write ``masks_dir/{id}.png`` (palette PNG) for every image id."""
    masks_dir = Path(masks_dir)
    masks_dir.mkdir(parents=True, exist_ok=True)
    steps = math.ceil(len(image_ids) / batch_size)
    for s in tqdm(range(0, len(image_ids), batch_size), total=steps, desc="segment", disable=not progress):
        ids = image_ids[s : s + batch_size]
        labels = parser(np.stack([load_image(Path(images_dir) / f"{i}.png") for i in ids]))
        for i, lab in zip(ids, labels, strict=True):
            save_png(lab, masks_dir / f"{i}.png", palette=LABEL_PALETTE)


def agreement_with_rendered_truth(
    masks_dir: str | Path, generator, latents_path: str | Path, image_ids: list[str], batch: int = 64
) -> dict:
    """Mean IoU of stored masks against the exact label maps that the synthetic world's ``generator`` renders at the
    masks' size for the same images (their w from ``latents_path``, truncated as the table records). The truth maps
    are drawn here for these images only, not stored for every generated one."""
    codes, cut = latent_codes(latents_path), truncation_of(pq.read_schema(latents_path).metadata)
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for start in range(0, len(image_ids), batch):
        ids = image_ids[start : start + batch]
        masks = [load_label_map(Path(masks_dir) / f"{i}.png") for i in ids]
        w = torch.from_numpy(np.stack([codes[i] for i in ids]))
        with torch.inference_mode():
            wp = truncate(w, generator.w_avg, generator.num_layers, cut["psi"], cut["layers"])
            truth = generator.synthesis_with_truth(wp, masks[0].shape[-1]).labels.numpy()
        for mask, true in zip(masks, truth, strict=True):
            conf += confusion(mask, true)
    return {"images": len(image_ids), **iou_report(conf)}

"""Stage 2b-3: a k-fold CNN ensemble that estimates gender and image quality, and the female subset.

Trained on the hand labels only (no pretrained weights, nothing downloaded). Each fold trains with early stopping
on its validation loss; out-of-fold predictions give honest metrics, and the fold ensemble labels every image that
has no hand label.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import Conv2dNormActivation
from tqdm import tqdm

from vhuman.io import load_image_batch, load_torch_file, save_torch_atomic, write_json, write_parquet_atomic
from vhuman.runtime import fused_for_inference, loss_scaler, scaled_step


@dataclass
class ClassifierSettings:
    """``gender_cnn`` of the config (its defaults live there and in the schema, nowhere else)."""

    input_size: int
    folds: int
    max_epochs: int
    patience: int
    batch_size: int
    lr: float
    weight_decay: float
    width: int
    seed: int
    mirror_at_inference: bool


class GenderQualityNet(nn.Module):
    """A small all-convolutional classifier with two logits: female and good quality."""

    def __init__(self, width: int = 32, mirror_at_inference: bool = True):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            Conv2dNormActivation(6, w, 3, stride=1),  # full resolution: blur shows in fine detail
            Conv2dNormActivation(w, 2 * w, 3, stride=2),
            Conv2dNormActivation(2 * w, 2 * w, 3, stride=2),
            Conv2dNormActivation(2 * w, 4 * w, 3, stride=2),
            Conv2dNormActivation(4 * w, 4 * w, 3, stride=2),
            nn.AdaptiveAvgPool2d(4),
        )
        # Flattened 4x4 map, not a global average: where things are (hair end, jaw line, blurred top) matters.
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(16 * 4 * w, 2))
        # Set after training: undoes the class weighting so that outputs are calibrated probabilities.
        self.register_buffer("logit_shift", torch.zeros(2))
        # Predict as the mean of the image and its mirror (gender and quality do not depend on the side): twice the
        # inference for a little steadiness. The ensemble's file records the choice (ClassifierSettings).
        self.mirror_at_inference = mirror_at_inference

    def forward(self, x):
        x = x.contiguous(memory_format=torch.channels_last)  # ~1.6x faster convolutions on the CPU, same function
        # The image and its high-pass detail: the detail channels make a blurred top easy to see.
        detail = x - F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return self.head(self.features(torch.cat([x, 4 * detail], dim=1))) + self.logit_shift


def _to_input(batch_uint8: torch.Tensor) -> torch.Tensor:
    return batch_uint8.float() / 127.5 - 1


def stratified_folds(strata: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index per sample, each stratum spread evenly over the folds."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(strata), dtype=np.int64)
    for value in np.unique(strata):
        idx = np.nonzero(strata == value)[0]
        rng.shuffle(idx)
        fold[idx] = np.arange(len(idx)) % folds
    return fold


def _random_shift(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``pad`` pixels (edges replicated): faces are not always centred."""
    h, w = x.shape[2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, len(x)), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(len(x))])


def _loss(logits, female, good, has_quality, bad_weight):
    gender_loss = F.binary_cross_entropy_with_logits(logits[:, 0], female)
    # Bad images are rare (~5 %): weight them up so the quality logit does not learn "always good".
    w = torch.where(good > 0.5, torch.ones_like(good), torch.full_like(good, bad_weight)) * has_quality
    quality_loss = (F.binary_cross_entropy_with_logits(logits[:, 1], good, reduction="none") * w).sum()
    return gender_loss + quality_loss / w.sum().clamp(min=1)


def predict(model, images, batch_size=256) -> np.ndarray:
    """[p_female, p_good_quality] per image; ``model`` in eval mode (``fused_for_inference`` of a trained one)."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = _to_input(images[start : start + batch_size])
            logits = model(x)
            if model.mirror_at_inference:
                logits = (logits + model(torch.flip(x, dims=[3]))) / 2
            out.append(torch.sigmoid(logits.float()).numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def train_fold(
    images, female, good, has_quality, train_idx, val_idx, settings: ClassifierSettings, fold: int, log=None
):
    torch.manual_seed(settings.seed * 100 + fold)
    gen = torch.Generator().manual_seed(settings.seed * 100 + fold)
    model = GenderQualityNet(settings.width, settings.mirror_at_inference)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    n_bad = float(((1 - good[train_idx]) * has_quality[train_idx]).sum())
    n_good = float((good[train_idx] * has_quality[train_idx]).sum())
    bad_weight = min(n_good / max(n_bad, 1.0), 20.0)
    steps = settings.max_epochs * -(-len(train_idx) // settings.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, settings.lr, total_steps=steps, pct_start=0.15)
    best, best_state, stale, history = float("inf"), None, 0, []
    scaler = loss_scaler(next(model.parameters()).device)
    val = [t[val_idx] for t in (female, good, has_quality)]
    for epoch in range(settings.max_epochs):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen).numpy()]
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            x = _to_input(images[idx])
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), torch.flip(x, dims=[3]), x)
            x = x * (1 + 0.1 * (torch.rand(len(idx), 1, 1, 1, generator=gen) - 0.5))  # exposure jitter
            x = _random_shift(x, max(1, x.shape[-1] // 16), gen)
            loss = _loss(model(x), female[idx], good[idx], has_quality[idx], bad_weight)
            scaled_step(scaler, opt, loss)
            schedule.step()
        model.eval()
        with torch.inference_mode():
            logits = torch.cat([model(_to_input(images[val_idx[s : s + 256]])) for s in range(0, len(val_idx), 256)])
            val_loss = float(_loss(logits, *val, bad_weight))
        history.append({"fold": fold, "epoch": epoch, "val_loss": val_loss})
        if log:
            log(f"fold {fold} epoch {epoch}: validation loss {val_loss:.4f}")
        if val_loss < best - 1e-4:
            best, stale = val_loss, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= settings.patience:
                break
    model.load_state_dict(best_state)
    # Bad images weighed bad_weight times more in the loss, which shifts the quality log-odds by log(bad_weight).
    model.logit_shift[1] = math.log(bad_weight)
    return model.eval(), history


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum formula (ties share their mean rank)."""
    labels = labels.astype(bool)
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = pd.Series(scores).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def binary_metrics(prob: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> dict:
    pred, truth = prob >= threshold, truth.astype(bool)
    tp, tn = int((pred & truth).sum()), int((~pred & ~truth).sum())
    fp, fn = int((pred & ~truth).sum()), int((~pred & truth).sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    return {
        "n": int(len(truth)),
        "accuracy": (tp + tn) / max(len(truth), 1),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
        "precision": precision,
        "recall": recall,
        "auroc": auroc(prob, truth),
        "confusion": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
    }


def hand_label_posterior(label: np.ndarray, model_p: np.ndarray, error_rate: float) -> np.ndarray:
    """P(female) (or P(good)) of a hand-labelled image: a label wrong with ``error_rate``, and the model's guess."""
    agree = np.where(label > 0.5, model_p, 1 - model_p)
    p_right = (1 - error_rate) * agree / ((1 - error_rate) * agree + error_rate * (1 - agree) + 1e-12)
    return np.where(label > 0.5, p_right, 1 - p_right)


def train_and_label(
    images_dir: str | Path,
    all_ids: list[str],
    manual: pd.DataFrame,
    settings: ClassifierSettings,
    model_path: str | Path,
    labels_path: str | Path,
    metrics_path: str | Path,
    hand_label_error_rate: float = 0.05,
    progress: bool = True,
) -> dict:
    """Train the k-fold ensemble on the hand labels; write models, labels for all images and metrics.

    Hand-labelled images get the probability that their label is right, given the assumed
    ``hand_label_error_rate`` and the out-of-fold prediction.
    """
    manual = manual.sort_values("image_id").reset_index(drop=True)
    if len(manual) < 2 * settings.folds:
        raise ValueError(
            f"only {len(manual)} hand labels: at least {2 * settings.folds} are needed for "
            f"{settings.folds}-fold training"
        )
    log = tqdm.write if progress else None
    images = load_image_batch(images_dir, list(manual["image_id"]), settings.input_size)
    female = torch.tensor((manual["gender"] == "female").to_numpy(), dtype=torch.float32)
    good = torch.tensor((manual["quality"] == "good").to_numpy(), dtype=torch.float32)
    has_quality = torch.ones_like(good)
    fold = stratified_folds(female.numpy() * 2 + good.numpy(), settings.folds, settings.seed)
    oof = np.zeros((len(manual), 2), np.float32)
    states, history = [], []
    for k in tqdm(range(settings.folds), desc="gender folds", disable=not progress):
        train_idx, val_idx = np.nonzero(fold != k)[0], np.nonzero(fold == k)[0]
        model, hist = train_fold(images, female, good, has_quality, train_idx, val_idx, settings, k, log)
        oof[val_idx] = predict(fused_for_inference(model), images[val_idx])
        states.append(model.state_dict())
        history += hist
    save_torch_atomic({"settings": asdict(settings), "folds": states}, model_path)

    metrics = {
        "hand_labels": len(manual),
        "folds": settings.folds,
        "out_of_fold": {
            "gender": binary_metrics(oof[:, 0], female.numpy()),
            "quality": binary_metrics(oof[:, 1], good.numpy()),
        },
        "history": history,
    }
    models = load_ensemble(model_path)
    labeled = set(manual["image_id"])
    rest = [i for i in all_ids if i not in labeled]
    probs, spread = ensemble_predict(models, images_dir, rest, settings.input_size, progress=progress)
    # Hand labels are not perfect either: where the out-of-fold model strongly disagrees, trust the label less.
    hand = pd.DataFrame(
        {
            "image_id": manual["image_id"],
            "p_female": hand_label_posterior(female.numpy(), oof[:, 0], hand_label_error_rate),
            "p_good_quality": hand_label_posterior(good.numpy(), oof[:, 1], hand_label_error_rate),
            "source": "manual",
            "p_female_spread": 0.0,
            "hand_female": female.numpy(),
            "hand_good_quality": good.numpy(),
        }
    )
    guessed = pd.DataFrame(
        {
            "image_id": rest,
            "p_female": probs[:, 0],
            "p_good_quality": probs[:, 1],
            "source": "model",
            "p_female_spread": spread[:, 0],
            "hand_female": np.nan,
            "hand_good_quality": np.nan,
        }
    )
    table = pd.concat([hand, guessed]).sort_values("image_id").reset_index(drop=True)
    write_parquet_atomic(pa.Table.from_pandas(table, preserve_index=False), labels_path)
    metrics["model_labels"] = len(rest)
    write_json(metrics, metrics_path)
    return metrics


def load_ensemble(path: str | Path) -> list[GenderQualityNet]:
    ckpt = load_torch_file(path, what="gender CNN ensemble")
    models = []
    for state in ckpt["folds"]:
        # Files written before the setting existed mirrored.
        model = GenderQualityNet(ckpt["settings"]["width"], ckpt["settings"].get("mirror_at_inference", True))
        model.load_state_dict(state, strict=True)
        models.append(fused_for_inference(model))  # folded once here: the ensemble only predicts
    return models


def ensemble_predict(models, images_dir, image_ids, input_size, batch_size=512, progress=False):
    """Mean and spread (std over folds) of [p_female, p_good_quality] per image."""
    means, stds = [], []
    for start in tqdm(range(0, len(image_ids), batch_size), desc="gender inference", disable=not progress):
        x = load_image_batch(images_dir, image_ids[start : start + batch_size], input_size)
        p = np.stack([predict(m, x) for m in models])
        means.append(p.mean(0))
        stds.append(p.std(0))
    if not means:
        return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)
    return np.concatenate(means), np.concatenate(stds)


def predict_images(models, images: torch.Tensor, input_size: int) -> np.ndarray:
    """Ensemble [p_female, p_good_quality] for in-memory images in [-1, 1], [N, 3, H, W]."""
    x = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255)
    if x.shape[-1] != input_size:
        x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", antialias=True).round().clamp(0, 255)
    x = x.to(torch.uint8)
    return np.stack([predict(m, x) for m in models]).mean(0)


def truth_check(labels: pd.DataFrame, truth: pd.DataFrame, subset: pd.DataFrame) -> dict:
    """Synthetic world only: the model's labels and the subset measured against the exact truth."""
    model = labels[labels["source"] == "model"].merge(truth, on="image_id")
    kept = subset.merge(truth, on="image_id")
    return {
        "model_labelled": len(model),
        "gender_auroc": auroc(model["p_female"].to_numpy(), model["gender"].to_numpy() > 0.5),
        "quality_auroc": auroc(model["p_good_quality"].to_numpy(), model["quality"].to_numpy() > 0.5),
        "subset_size": len(kept),
        "subset_female_precision": float((kept["gender"] > 0.5).mean()) if len(kept) else float("nan"),
        "subset_good_quality_precision": float((kept["quality"] > 0.5).mean()) if len(kept) else float("nan"),
        "subset_recall_of_good_females": float(
            len(kept) / max(((truth["gender"] > 0.5) & (truth["quality"] > 0.5)).sum(), 1)
        ),
    }


def female_subset(labels: pd.DataFrame, min_p_female: float, min_p_good: float, out_path: str | Path) -> pd.DataFrame:
    """Keep female, good-quality images (quality is only required where a quality estimate exists)."""
    keep = labels["p_female"] >= min_p_female
    if "p_good_quality" in labels:
        keep &= labels["p_good_quality"].isna() | (labels["p_good_quality"] >= min_p_good)
    subset = labels[keep].reset_index(drop=True)
    write_parquet_atomic(pa.Table.from_pandas(subset, preserve_index=False), out_path)
    return subset

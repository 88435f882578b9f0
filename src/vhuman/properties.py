"""Stage 5: face properties measured from a label map (19 CelebAMask-HQ classes) and its image.

Definitions (invariant to image resolution and, except hair_length, to face size; y grows downwards; pixel edges are
used for extents). The scale constants (vhuman.vocabulary) are set by what each property means in a photograph of a
real face, each with its reason there:

``eyes``
    Eye pixels (classes 4, 5) split into the image-left and image-right eye at the gap between them (labels are
    not trusted for sides). Per eye, openness = minor / major axis length of its second-moment ellipse, which is
    roll- and scale-invariant. eyes = mean openness / ``EYE_ASPECT_OPEN`` (0.5 = a wide-open eye), clipped to [0, 1].
``mouth``
    Inner-mouth share of the mouth region: pixels of 11 / pixels of 11, 12, 13, divided by ``MOUTH_SHARE_OPEN``.
``face_pose``
    Yaw from the asymmetry of the face (skin and inner features) around the nose: on every row between the eyes and
    the mouth, ((x_nose - x_left) - (x_right - x_nose)) / (x_right - x_left); their mean divided by ``YAW_FULL``.
    +1: the nose sits towards the image's right edge (the face turns to the viewer's right); -1: to the left.
``hair_color``
    Lightness of the hair: median Rec. 709 luma (sRGB values in [0, 1]) of the hair pixels away from its edges.
``hair_length``
    (lowest hair row - brow line) / (image bottom - brow line): the share of the frame below the brows that the
    hair covers, for aligned face crops (the face's place and size are fixed by the alignment). 1 is hair that
    reaches the frame's bottom edge, the longest a crop can show; ``hair_length_censored`` marks it, since the hair
    may go on below.
``background_light`` / ``background_std``
    Background pixels (class 0 only, away from its edges) in the upper half of the image, 5 % trimmed on both
    tails: mean luma, and standard deviation of luma divided by ``BACKGROUND_STD_FULL``.

Each property has a ``<name>_valid`` flag instead of a made-up value when its region is missing (the value is then
NaN), and a ``<name>_z`` column standardised over the valid rows of the dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm import tqdm

from vhuman.io import load_image, load_label_map, write_parquet_atomic
from vhuman.vocabulary import (
    BACKGROUND_STD_FULL,
    CLASS_ID,
    EYE_ASPECT_OPEN,
    MOUTH_SHARE_OPEN,
    PROPERTY_NAMES,
    RANGES,
    YAW_FULL,
)

LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)
FACE_CLASSES = (1, 2, 3, 4, 5, 10, 11, 12, 13)  # skin and inner features, not ears, neck or hair
MIN_PIXELS = 3


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion of [N, H, W] masks (image borders count as inside)."""
    m = np.pad(mask, ((0, 0), (1, 1), (1, 1)), mode="edge")
    out = mask.copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out &= m[:, dy : dy + mask.shape[1], dx : dx + mask.shape[2]]
    return out


def _isin(labels: np.ndarray, classes) -> np.ndarray:
    return np.isin(labels, np.asarray(classes, dtype=labels.dtype))


def _moments(mask: np.ndarray):
    """Per-image pixel count, centroid (y, x) and covariance (yy, xx, xy) of a [N, H, W] boolean mask."""
    idx, ys, xs = np.nonzero(mask)  # sparse: work grows with the region, not the image
    n_img = mask.shape[0]
    n = np.bincount(idx, minlength=n_img).astype(np.float64)
    safe = np.maximum(n, 1)

    def per_image(values):
        return np.bincount(idx, weights=values, minlength=n_img) / safe

    my, mx = per_image(ys.astype(np.float64)), per_image(xs.astype(np.float64))
    dy, dx = ys - my[idx], xs - mx[idx]
    return n, my, mx, per_image(dy * dy), per_image(dx * dx), per_image(dx * dy)


def _axis_ratio(cyy, cxx, cxy):
    """Minor / major axis of the second-moment ellipse; +1/12 per axis accounts for each pixel's own extent."""
    tr, det = cxx + cyy, cxx * cyy - cxy**2
    disc = np.sqrt(np.maximum(tr**2 / 4 - det, 0))
    big, small = tr / 2 + disc + 1 / 12, np.maximum(tr / 2 - disc, 0) + 1 / 12
    return np.sqrt(small / big)


def eye_openness(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, h, w = labels.shape
    xs = np.arange(w, dtype=np.float32)[None, None, :]
    eyes = _isin(labels, (CLASS_ID["l_eye"], CLASS_ID["r_eye"]))
    cols = eyes.any(1)  # [N, W]: columns that hold eye pixels
    # Split at the middle of the widest gap between eye columns; a single run of columns means one eye visible.
    split = np.full(n, w / 2, dtype=np.float32)
    for i in np.nonzero(cols.any(1))[0]:
        c = np.nonzero(cols[i])[0]
        gaps = np.diff(c)
        split[i] = (
            (c[np.argmax(gaps)] + c[np.argmax(gaps) + 1]) / 2
            if gaps.size and gaps.max() > 1
            else (w if c.mean() < w / 2 else -1)
        )
    ratios, counts = [], []
    for side in (xs < split[:, None, None], xs > split[:, None, None]):
        m = eyes & side
        cnt, _, _, cyy, cxx, cxy = _moments(m)
        ratios.append(np.where(cnt >= MIN_PIXELS, _axis_ratio(cyy, cxx, cxy), np.nan))
        counts.append(cnt)
    r = np.stack(ratios)
    seen = np.isfinite(r).sum(0)
    valid = seen > 0
    mean = np.where(valid, np.nansum(r, 0) / np.maximum(seen, 1), np.nan)
    return np.clip(mean / EYE_ASPECT_OPEN, 0, 1), valid


def mouth_openness(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    inner = (labels == CLASS_ID["mouth"]).sum((1, 2))
    total = _isin(labels, (CLASS_ID["mouth"], CLASS_ID["u_lip"], CLASS_ID["l_lip"])).sum((1, 2))
    valid = total >= MIN_PIXELS
    share = inner / np.maximum(total, 1)
    return np.where(valid, np.clip(share / MOUTH_SHARE_OPEN, 0, 1), np.nan), valid


def face_yaw(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, h, w = labels.shape
    face = _isin(labels, FACE_CLASSES)
    nose = labels == CLASS_ID["nose"]
    eyes = _isin(labels, (CLASS_ID["l_eye"], CLASS_ID["r_eye"], CLASS_ID["l_brow"], CLASS_ID["r_brow"]))
    mouth = _isin(labels, (CLASS_ID["mouth"], CLASS_ID["u_lip"], CLASS_ID["l_lip"]))
    n_nose, _, nose_x, _, _, _ = _moments(nose)
    n_eye, eye_y, _, _, _, _ = _moments(eyes)
    n_mouth, mouth_y, _, _, _, _ = _moments(mouth)
    has_row = face.any(2)  # [N, H]
    left = np.where(has_row, face.argmax(2), 0).astype(np.float32)  # first face column (its left edge)
    right = np.where(has_row, w - face[:, :, ::-1].argmax(2), 0).astype(np.float32)  # right edge
    row = np.arange(h, dtype=np.float32)[None]
    band = has_row & (row >= eye_y[:, None]) & (row <= mouth_y[:, None])
    centre = nose_x[:, None] + 0.5
    per_row = ((centre - left) - (right - centre)) / np.maximum(right - left, 1)
    count = band.sum(1)
    valid = (n_nose >= MIN_PIXELS) & (n_eye >= MIN_PIXELS) & (n_mouth >= MIN_PIXELS) & (count >= 2)
    proxy = (per_row * band).sum(1) / np.maximum(count, 1)
    return np.where(valid, np.clip(proxy / YAW_FULL, -1, 1), np.nan), valid


def hair_length(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h = labels.shape[1]
    hair_rows = (labels == CLASS_ID["hair"]).any(2)
    skin_rows = (labels == CLASS_ID["skin"]).any(2)
    n_brow, brow_y, _, _, _, _ = _moments(_isin(labels, (CLASS_ID["l_brow"], CLASS_ID["r_brow"])))
    hair_end = h - hair_rows[:, ::-1].argmax(1)  # bottom edge of the lowest hair row
    brow = brow_y + 0.5
    valid = hair_rows.any(1) & skin_rows.any(1) & (n_brow >= MIN_PIXELS) & (h > brow + 1)
    value = (hair_end - brow) / np.maximum(h - brow, 1)
    censored = hair_rows[:, -1]
    return np.where(valid, np.clip(value, 0, 1), np.nan), valid, censored


def _trimmed(values: np.ndarray, tail: float) -> np.ndarray:
    v = np.sort(values)
    lo, hi = int(tail * len(v)), int(np.ceil((1 - tail) * len(v)))
    return v[lo:hi] if hi > lo else v


def images_at(images: np.ndarray, size: tuple[int, int], what="masks") -> np.ndarray:
    """Images [N, h, w, ...] brought to the masks' size [H, W] by pixel repetition (colours stay unmixed)."""
    h, w = images.shape[1:3]
    if (h, w) == tuple(size):
        return images
    if size[0] % h or size[1] % w:
        raise ValueError(f"{what} are {size[0]}x{size[1]}, not a whole multiple of the {h}x{w} images")
    return images.repeat(size[0] // h, axis=1).repeat(size[1] // w, axis=2)


def colour_properties(labels: np.ndarray, images: np.ndarray) -> dict[str, np.ndarray]:
    """hair_color, background_light and background_std from the image under the masks."""
    n, h, w = labels.shape
    luma = images_at((images.astype(np.float32) / 255.0) @ LUMA, (h, w))  # luma first: 3x less to enlarge
    hair = labels == CLASS_ID["hair"]
    hair_core = _erode(hair)
    background = _erode(labels == CLASS_ID["background"])
    background[:, h // 2 :] = False
    out = {k: np.full(n, np.nan, dtype=np.float64) for k in ("hair_color", "background_light", "background_std")}
    for i in range(n):
        px = luma[i][hair_core[i]] if hair_core[i].sum() >= MIN_PIXELS else luma[i][hair[i]]
        if px.size >= MIN_PIXELS:
            out["hair_color"][i] = np.median(px)
        bg = luma[i][background[i]]
        if bg.size >= MIN_PIXELS:
            kept = _trimmed(bg, 0.05)
            out["background_light"][i] = kept.mean()
            out["background_std"][i] = min(kept.std() / BACKGROUND_STD_FULL, 1.0)
    return out


def measure_properties(labels: np.ndarray, images: np.ndarray) -> pd.DataFrame:
    """Properties of a batch: labels [N, H, W] uint8 and images [N, h, w, 3] uint8, H and W multiples of h and w."""
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{labels.shape[0]} label maps but {images.shape[0]} images")
    cols: dict[str, np.ndarray] = {}
    cols["eyes"], cols["eyes_valid"] = eye_openness(labels)
    cols["mouth"], cols["mouth_valid"] = mouth_openness(labels)
    cols["face_pose"], cols["face_pose_valid"] = face_yaw(labels)
    cols["hair_length"], cols["hair_length_valid"], cols["hair_length_censored"] = hair_length(labels)
    for name, values in colour_properties(labels, images).items():
        cols[name], cols[f"{name}_valid"] = values, np.isfinite(values)
    return pd.DataFrame(cols)


def add_z_scores(table: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, tuple[float, float]]]:
    """``<name>_z`` columns standardised over the valid rows; returns the (mean, std) used for each."""
    stats = {}
    for name in PROPERTY_NAMES:
        valid = table[f"{name}_valid"].astype(bool)
        mean, std = float(table.loc[valid, name].mean()), float(table.loc[valid, name].std())
        std = std if std > 0 else 1.0
        stats[name] = (mean, std)
        table[f"{name}_z"] = np.where(valid, (table[name] - mean) / std, np.nan)
    return table, stats


def property_table(
    image_ids: list[str],
    images_dir: str | Path,
    masks_dir: str | Path,
    out_path: str | Path,
    extra: pd.DataFrame | None = None,
    batch_size: int = 512,
    progress: bool = True,
) -> pd.DataFrame:
    """Measure every image's properties from ``masks_dir/{id}.png`` and write the Parquet table."""
    parts = []
    for start in tqdm(range(0, len(image_ids), batch_size), desc="properties", unit="batch", disable=not progress):
        ids = image_ids[start : start + batch_size]
        labels = np.stack([load_label_map(Path(masks_dir) / f"{i}.png") for i in ids])
        images = np.stack([load_image(Path(images_dir) / f"{i}.png") for i in ids])
        part = measure_properties(labels, images)
        part.insert(0, "image_id", ids)
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    table, stats = add_z_scores(table)
    if extra is not None:
        table = table.merge(extra, on="image_id", how="left")
    meta = {f"{name}_mean_std": f"{m!r},{s!r}" for name, (m, s) in stats.items()}
    write_parquet_atomic(pa.Table.from_pandas(table, preserve_index=False).replace_schema_metadata(meta), out_path)
    return table


def agreement_with_truth(table: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """Synthetic world only: Pearson r, MAE and valid share of every measured property against the truth."""
    merged = table.merge(truth, on="image_id", suffixes=("", "_truth"))
    out = {"images": len(merged)}
    for name in PROPERTY_NAMES:
        valid = merged[f"{name}_valid"].astype(bool)
        got, want = merged.loc[valid, name].to_numpy(), merged.loc[valid, f"{name}_truth"].to_numpy()
        out[name] = {
            "pearson_r": float(np.corrcoef(got, want)[0, 1]) if valid.sum() > 2 else float("nan"),
            "mae": float(np.abs(got - want).mean()) if valid.any() else float("nan"),
            "valid_share": float(valid.mean()),
        }
    return out


def range_shares(table: pd.DataFrame) -> dict:
    """Per property: the share of images with a valid value, and of those the shares at each end of its range
    (a value clipped there, or a physical end: a closed mouth is 0); hair also the share cut off by the frame."""
    out = {"images": len(table)}
    for name in PROPERTY_NAMES:
        valid = table[f"{name}_valid"].fillna(False).astype(bool).to_numpy()
        values = table[name].to_numpy(np.float64)[valid]
        low, high = RANGES[name]
        out[name] = {
            "valid_share": float(valid.mean()) if len(valid) else None,
            "at_low_share": float(np.mean(values <= low)) if len(values) else None,
            "at_high_share": float(np.mean(values >= high)) if len(values) else None,
        }
    if "hair_length_censored" in table:
        out["hair_length"]["cut_off_by_frame_share"] = float(table["hair_length_censored"].fillna(False).mean())
    return out


def property_matrix(table: pd.DataFrame) -> np.ndarray:
    """[N, 7] property values with each invalid entry replaced by its column's median over the valid rows
    (the middle of the range when a column has none), so every image can serve as a condition row."""
    out = np.empty((len(table), len(PROPERTY_NAMES)), np.float32)
    for k, name in enumerate(PROPERTY_NAMES):
        valid = table[f"{name}_valid"].fillna(False).astype(bool).to_numpy()
        values = table[name].to_numpy(np.float32)
        fill = np.median(values[valid]) if valid.any() else (0.0 if name == "face_pose" else 0.5)
        out[:, k] = np.where(valid, values, fill)
    return out

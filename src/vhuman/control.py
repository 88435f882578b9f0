"""Stage 7: controlled generation, the latent-directions baseline and the evaluation of control.

Both controllers take (z, property vector) and give an image: the fine-tuned generator, and the InterFaceGAN-style
baseline that moves the base generator's w along linear property directions fitted on the property table. The
evaluation sweeps each property over its range for K random z, measures the images back, and reports how well the
requested values come out and how much everything else stays put.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from vhuman.generate import latent_for_seed
from vhuman.generators import SyntheticGenerator, truncate
from vhuman.io import column_vectors, load_torch_file, save_png, to_uint8
from vhuman.properties import property_matrix
from vhuman.report import image_grid
from vhuman.synthetic import NUISANCE_NAMES, PARAM_INDEX, PROPERTY_NAMES
from vhuman.training import (
    RANGES,
    ClosedLoop,
    Controller,
    critic_reading,
    layer_mask_or_ones,
    layer_step,
    load_conditional_generator,
    masked_gram_inv,
    move_to_linear_target,
)

# The seed project's last per-z cutoffs on Pearson r (eyes, mouth, pose); 0.88 for the others.
CUTOFFS = {"eyes": 0.92, "mouth": 0.88, "face_pose": 0.88}
PROPERTY_COLUMNS = [PARAM_INDEX[n] for n in PROPERTY_NAMES]


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
    ):
        super().__init__()
        self.base = base.eval().requires_grad_(False)
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


def _ridge_line(w: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, float]:
    w_mean, y_mean = w.mean(0), y.mean()
    wc = w - w_mean
    coef = np.linalg.solve(wc.T @ wc + ridge * len(w) * np.eye(w.shape[1]), wc.T @ (y - y_mean))
    return coef, float(y_mean - coef @ w_mean)


def fit_directions(latents, properties: pd.DataFrame, labels: pd.DataFrame | None = None, ridge: float = 1e-2) -> dict:
    """Per property, a ridge-regularised least-squares linear model property ~ w on the images where it is valid;
    with ``labels`` (p_female of every generated image) also a gender row, whose target is 1 (female).

    Returns ``weights`` [P (+1), w_dim], ``bias`` and ``fixed_targets`` (the targets of the rows after the
    properties), as tensors, and ``rows`` (their names).
    """
    ids = pd.DataFrame({"image_id": latents.column("image_id").to_pylist()}).reset_index()
    w_all = column_vectors(latents, "w").astype(np.float64)
    merged = ids.merge(properties, on="image_id")
    weights, bias = [], []
    for name in PROPERTY_NAMES:
        valid = merged[f"{name}_valid"].fillna(False).astype(bool).to_numpy()
        if valid.sum() < 3:
            raise ValueError(f"only {int(valid.sum())} images have a valid {name}: too few to fit a direction")
        coef, b = _ridge_line(w_all[merged["index"].to_numpy()[valid]], merged.loc[valid, name].to_numpy(), ridge)
        weights.append(coef)
        bias.append(b)
    rows, fixed = list(PROPERTY_NAMES), []
    if labels is not None:
        gender = ids.merge(labels[["image_id", "p_female"]], on="image_id")
        coef, b = _ridge_line(w_all[gender["index"].to_numpy()], gender["p_female"].to_numpy(np.float64), ridge)
        weights.append(coef)
        bias.append(b)
        rows.append("female")
        fixed.append(1.0)
    return {
        "weights": torch.tensor(np.stack(weights)),
        "bias": torch.tensor(np.array(bias)),
        "fixed_targets": torch.tensor(fixed, dtype=torch.float64),
        "rows": rows,
    }


def direction_layers(
    read,
    w: torch.Tensor,
    weights: torch.Tensor,
    num_layers: int,
    size: float = 0.25,
    keep: float = 0.15,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which layers each direction acts through: a mask [R, L] and the measured effects [R, L].

    For each row r of ``weights`` and each layer, the move along row r that shifts its linear reading by ±``size``
    is applied at that layer alone to the codes ``w`` [N, w_dim], and ``read(wp)`` [N, R] reads the result; the
    effect is how far row r's reading moves per unit of the edit. A layer is kept for a row when its effect is at
    least ``keep`` of that row's largest; an edit elsewhere would only move what the row does not measure (in
    StyleGAN, colour lives in the fine layers and pose in the coarse ones).
    """
    rows = len(weights)
    effect = torch.zeros(rows, num_layers)
    for r in range(rows):
        coef = torch.zeros(len(w), rows, dtype=w.dtype, device=w.device)
        coef[:, r] = size / weights[r].pow(2).sum()  # along row r alone: its linear reading moves by size
        for layer in range(num_layers):
            only = torch.zeros(rows, num_layers, device=w.device)
            only[r, layer] = 1
            step = layer_step(coef, weights, only)
            with torch.inference_mode():
                gain = read(w.unsqueeze(1) + step)[:, r] - read(w.unsqueeze(1) - step)[:, r]
            effect[r, layer] = (gain.mean() / (2 * size)).abs().cpu()
    mask = (effect >= keep * effect.amax(dim=1, keepdim=True)) & (effect > 0)
    mask[~mask.any(dim=1)] = True  # a row the reader cannot see at all keeps every layer
    return mask.float(), effect


def directions_layer_mask(
    base: torch.nn.Module, critic, weights: torch.Tensor, probe_w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``direction_layers`` with the critic as the reader, on the codes ``probe_w`` [N, w_dim]; rows after the
    properties (the female row) keep every layer: a female look is hair, lips and brows as much as the face's
    shape, and the critic's p(female), already near 1, shows too little of that to the probe."""

    def read(wp):
        return critic_reading(critic, base.synthesis(truncate(wp, base.w_avg, base.num_layers)), len(weights))

    mask, effect = direction_layers(read, probe_w, weights, base.num_layers)
    mask[len(PROPERTY_NAMES) :] = 1
    return mask, effect


def load_directions(path: str | Path, base: torch.nn.Module, closed_loop: ClosedLoop | None = None):
    """The baseline from ``results/directions/directions.pth``, optionally refined in closed loop."""
    ckpt = load_torch_file(path, what="latent directions")
    return DirectionsController(
        base, ckpt["weights"], ckpt["bias"], ckpt.get("fixed_targets"), closed_loop, ckpt.get("layer_mask")
    ).eval()


def data_rows(properties: pd.DataFrame) -> np.ndarray:
    return property_matrix(properties)


def draw_conditions(values: dict[str, float], rows: np.ndarray, n: int, seed: int) -> torch.Tensor:
    """n property vectors: the given values, the rest taken from random rows of the data."""
    rng = np.random.default_rng(seed)
    out = rows[rng.integers(0, len(rows), n)].copy()
    for name, value in values.items():
        if name not in PROPERTY_NAMES:
            raise KeyError(f"unknown property {name!r}; known: {', '.join(PROPERTY_NAMES)}")
        lo, hi = RANGES[name]
        if not lo <= value <= hi:
            raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
        out[:, PROPERTY_NAMES.index(name)] = value
    return torch.from_numpy(out)


@torch.inference_mode()
def render(controller, seeds: list[int], c: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
    dev = next(controller.buffers()).device
    z = torch.stack([latent_for_seed(s, controller.z_dim) for s in seeds]).to(dev)
    return controller(z, c.to(dev), psi).cpu()


def sweep_grid(controller, name: str, seeds: list[int], rows: np.ndarray, levels: int = 7, seed: int = 0):
    """Rows: seeds; columns: ``name`` swept over its range, every other property fixed per row."""
    lo, hi = RANGES[name]
    base = draw_conditions({}, rows, len(seeds), seed)
    tiles = []
    for s, c0 in zip(seeds, base, strict=True):
        c = c0.repeat(levels, 1)
        c[:, PROPERTY_NAMES.index(name)] = torch.linspace(lo, hi, levels)
        tiles += list(to_uint8(render(controller, [s] * levels, c)))
    return image_grid(tiles, len(seeds), levels)


def animation(
    controller,
    name: str,
    values: list[float],
    seed: int,
    rows: np.ndarray,
    out_path: str | Path,
    scale: int = 4,
    ms: int = 80,
) -> None:
    """A GIF of one face while ``name`` follows ``values`` (e.g. blink: eyes 1 -> 0 -> 1)."""
    c = draw_conditions({}, rows, 1, seed).repeat(len(values), 1)
    c[:, PROPERTY_NAMES.index(name)] = torch.tensor(values)
    frames = [
        Image.fromarray(f).resize((f.shape[1] * scale, f.shape[0] * scale), Image.NEAREST)
        for f in to_uint8(render(controller, [seed] * len(values), c))
    ]
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out_path).with_suffix(".tmp.gif")
    frames[0].save(tmp, save_all=True, append_images=frames[1:], duration=ms, loop=0)
    tmp.replace(out_path)


ANIMATIONS = {
    "blink": ("eyes", [1.0, 0.75, 0.5, 0.25, 0.05, 0.25, 0.5, 0.75, 1.0]),
    "talk": ("mouth", [0.0, 0.5, 1.0, 0.5, 0.0, 0.4, 0.9, 0.4, 0.0]),
    "turn": ("face_pose", [float(v) for v in np.linspace(-1, 1, 11)] + [float(v) for v in np.linspace(1, -1, 11)]),
}


# ---- evaluation -----------------------------------------------------------------------------------------------------


def truth_of(controller, z: torch.Tensor, c: torch.Tensor, psi: float = 1.0) -> np.ndarray:
    """Synthetic world: the exact render parameters of what the controller drew, [N, len(PARAM_NAMES)]."""
    base = controller.base
    if not isinstance(base, SyntheticGenerator):
        raise TypeError("exact truth exists only for the synthetic world")
    with torch.inference_mode():
        return base.render_params(controller.wp(z, c, psi)).cpu().numpy()


def nuisance_movement(params: np.ndarray, swept: np.ndarray, z_index: np.ndarray) -> dict[str, float]:
    """Synthetic world: per swept property, how much the world's unmeasured attributes (skin tone, hair hue,
    background hue, ...; all in 0..1) move across its levels: the mean over z and attributes of their std."""
    nuisance = params[:, [PARAM_INDEX[n] for n in NUISANCE_NAMES]]
    out = {}
    for k, name in enumerate(PROPERTY_NAMES):
        per_z = [nuisance[(swept == k) & (z_index == zi)].std(axis=0).mean() for zi in np.unique(z_index[swept == k])]
        out[name] = float(np.mean(per_z))
    return out


def control_metrics(requested: np.ndarray, measured: np.ndarray, swept: np.ndarray, z_index: np.ndarray) -> dict:
    """Per property: Pearson r and MAE (requested vs measured), share of z passing the cutoff, other properties'
    movement during the sweep (mean over z and properties of their std across levels, in range units)."""
    out = {}
    span = np.array([RANGES[n][1] - RANGES[n][0] for n in PROPERTY_NAMES])
    for k, name in enumerate(PROPERTY_NAMES):
        sel = swept == k
        req, got = requested[sel, k], measured[sel, k]
        ok = np.isfinite(got)
        r = float(np.corrcoef(req[ok], got[ok])[0, 1]) if ok.sum() > 2 else float("nan")
        per_z, movement = [], []
        for zi in np.unique(z_index[sel]):
            rows = sel & (z_index == zi)
            a, b = requested[rows, k], measured[rows, k]
            fine = np.isfinite(b)
            per_z.append(np.corrcoef(a[fine], b[fine])[0, 1] if fine.sum() > 2 and np.std(b[fine]) > 0 else 0.0)
            others = np.delete(measured[rows], k, axis=1) / np.delete(span, k)
            movement.append(np.nanmean(np.nanstd(others, axis=0)))
        cutoff = CUTOFFS.get(name, 0.88)
        out[name] = {
            "pearson_r": r,
            "mae": float(np.mean(np.abs(req[ok] - got[ok]))) if ok.any() else float("nan"),
            "valid_share": float(ok.mean()),
            "cutoff": cutoff,
            "share_of_z_passing": float(np.mean(np.array(per_z) >= cutoff)),
            "other_properties_movement": float(np.nanmean(movement)),
        }
    return out


def evaluate(
    controller,
    rows: np.ndarray,
    num_z: int,
    levels: int,
    seed: int,
    measure_images=None,
    female_rate=None,
    with_truth: bool = False,
    batch: int = 64,
    progress: bool = True,
) -> dict:
    """Sweep each property over ``levels`` values for ``num_z`` random z, the others drawn once per z from data."""
    rng = np.random.default_rng(seed)
    z_all = torch.randn(num_z, controller.z_dim, generator=torch.Generator().manual_seed(seed))
    base_c = rows[rng.integers(0, len(rows), num_z)]
    requested, z_index, swept = [], [], []
    for k, name in enumerate(PROPERTY_NAMES):
        lo, hi = RANGES[name]
        for zi in range(num_z):
            for level in np.linspace(lo, hi, levels):
                c = base_c[zi].copy()
                c[k] = level
                requested.append(c)
                z_index.append(zi)
                swept.append(k)
    requested, z_index, swept = np.array(requested, np.float32), np.array(z_index), np.array(swept)
    dev = next(controller.buffers()).device
    truth, parsed, female = [], [], []
    for s in tqdm(range(0, len(requested), batch), desc="evaluate", disable=not progress):
        z = z_all[z_index[s : s + batch]].to(dev)
        c = torch.from_numpy(requested[s : s + batch]).to(dev)
        with torch.inference_mode():
            images = controller(z, c)
        if with_truth:
            truth.append(truth_of(controller, z, c))
        if measure_images is not None:
            parsed.append(measure_images(images))
        if female_rate is not None:
            female.append(female_rate(images))
    result = {"num_z": num_z, "levels": levels, "images": len(requested)}
    if with_truth:
        params = np.concatenate(truth)
        result["truth"] = control_metrics(requested, params[:, PROPERTY_COLUMNS], swept, z_index)
        for name, value in nuisance_movement(params, swept, z_index).items():
            result["truth"][name]["unmeasured_attributes_movement"] = value
        result["female_rate_truth"] = float(np.mean(params[:, PARAM_INDEX["gender"]] > 0.5))
    if parsed:
        result["parser"] = control_metrics(requested, np.concatenate(parsed), swept, z_index)
    if female:
        result["female_rate"] = float(np.mean(np.concatenate(female)))
    return result


def main(argv=None):
    """vhuman-generate: draw faces with requested property values from a fine-tuned generator."""
    ap = argparse.ArgumentParser(
        description="Draw faces with requested property values from results/finetuned.pth. "
        "Properties not given are drawn from the property table."
    )
    ap.add_argument("--checkpoint", default="results/finetuned.pth")
    ap.add_argument("--properties", default="results/properties.parquet", help="table the unset values come from")
    ap.add_argument("--seeds", default="0-7", help="z seeds: '0-7' or '1,5,9'")
    ap.add_argument("--out", default="results/controlled", help="output folder")
    ap.add_argument("--psi", type=float, default=1.0, help="truncation psi")
    ap.add_argument(
        "--closed-loop-steps",
        type=int,
        help="corrections through the image (default: the file's; 0 draws open loop, one synthesis per face)",
    )
    for name in PROPERTY_NAMES:
        lo, hi = RANGES[name]
        ap.add_argument(f"--{name}", type=float, help=f"{name} in [{lo:g}, {hi:g}]")
    args = ap.parse_args(argv)
    if "-" in args.seeds:
        a, b = args.seeds.split("-")
        seeds = list(range(int(a), int(b) + 1))
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
    values = {n: getattr(args, n) for n in PROPERTY_NAMES if getattr(args, n) is not None}
    model = load_conditional_generator(args.checkpoint, args.closed_loop_steps)
    c = draw_conditions(values, data_rows(pd.read_parquet(args.properties)), len(seeds), seed=seeds[0])
    images = to_uint8(render(model, seeds, c, args.psi))
    out = Path(args.out)
    for s, img in zip(seeds, images, strict=True):
        save_png(img, out / f"seed{s:06d}.png")
    tag = ",".join(f"{k}={v:g}" for k, v in values.items()) or "drawn from the data"
    print(f"wrote {len(seeds)} images ({tag}) to {out}")


if __name__ == "__main__":
    main()

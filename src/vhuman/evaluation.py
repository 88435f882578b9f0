"""Stage 7: how well a controller obeys. Each property is swept over its range for random z, the drawn faces
are measured back (by the synthetic world's exact truth, and through the parser and the properties stage), and
the report gives Pearson r, MAE, the share of z that pass, and how much everything else moves.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from vhuman.conditional import ConditionalGenerator, load_conditional_generator
from vhuman.directions import load_directions
from vhuman.io import to_uint8
from vhuman.judging import judged_control
from vhuman.properties import measure_properties
from vhuman.synthetic import HAIR_COLOR_RANGE, NUISANCE_NAMES, PARAM_INDEX, background_light_range
from vhuman.vocabulary import CUTOFFS, DEFAULT_CUTOFF, PROPERTY_NAMES, RANGES

PROPERTY_COLUMNS = [PARAM_INDEX[n] for n in PROPERTY_NAMES]


def truth_of(controller, wp: torch.Tensor) -> np.ndarray:
    """Synthetic world: the exact render parameters of the codes the controller drew, [N, len(PARAM_NAMES)]."""
    base = controller.base
    if not hasattr(base, "render_params"):
        raise TypeError("exact truth exists only for the synthetic world")
    with torch.inference_mode():
        return base.render_params(wp).cpu().numpy()


def reachable(requested: np.ndarray) -> np.ndarray:
    """Synthetic world: the values nearest to each request that the world can draw at all. Hair is never pure black
    or white, and a textured background leaves room for its texture, so a request for a busy black backdrop can
    only be met as a busy dark-grey one. A perfect controller lands here; its score is each metric's floor."""
    out = requested.copy()
    k = {name: i for i, name in enumerate(PROPERTY_NAMES)}
    out[:, k["hair_color"]] = np.clip(out[:, k["hair_color"]], *HAIR_COLOR_RANGE)
    low, high = background_light_range(torch.from_numpy(requested[:, k["background_std"]]))
    out[:, k["background_light"]] = np.clip(out[:, k["background_light"]], low.numpy(), high.numpy())
    return out


def nuisance_movement(params: np.ndarray, swept: np.ndarray, z_index: np.ndarray) -> dict[str, float]:
    """Synthetic world: per swept property, how much the world's unmeasured attributes (skin tone, hair hue,
    background hue, ...; all in 0..1) move across its levels: the mean over z and attributes of their std."""
    nuisance = params[:, [PARAM_INDEX[n] for n in NUISANCE_NAMES]]
    out = {}
    for k, name in enumerate(PROPERTY_NAMES):
        per_z = [nuisance[(swept == k) & (z_index == zi)].std(axis=0).mean() for zi in np.unique(z_index[swept == k])]
        out[name] = float(np.mean(per_z))
    return out


def agreement(req: np.ndarray, got: np.ndarray) -> dict:
    """Pearson r, MAE and the share within 0.1 of requested ``req`` and measured ``got`` (finite values only)."""
    ok = np.isfinite(got)
    if not ok.any():
        return {"pearson_r": float("nan"), "mae": float("nan"), "share_within_0.1": float("nan")}
    gap = np.abs(req[ok] - got[ok])
    r = float(np.corrcoef(req[ok], got[ok])[0, 1]) if ok.sum() > 2 else float("nan")
    return {"pearson_r": r, "mae": float(gap.mean()), "share_within_0.1": float(np.mean(gap <= 0.1))}


def control_metrics(requested: np.ndarray, measured: np.ndarray, swept: np.ndarray, z_index: np.ndarray) -> dict:
    """Per property: Pearson r and MAE (requested vs measured), share of z passing the cutoff, other properties'
    movement during the sweep (mean over z and properties of their std across levels, in range units), and what a
    user sees for one request: the spread of the drawn value across z at each level (mean over levels of the std)
    and the share of faces drawn within 0.1 of the request (in the property's own units)."""
    out = {}
    span = np.array([RANGES[n][1] - RANGES[n][0] for n in PROPERTY_NAMES])
    for k, name in enumerate(PROPERTY_NAMES):
        sel = swept == k
        req, got = requested[sel, k], measured[sel, k]
        ok = np.isfinite(got)
        scores = agreement(req, got)
        per_z, movement = [], []
        for zi in np.unique(z_index[sel]):
            rows = sel & (z_index == zi)
            a, b = requested[rows, k], measured[rows, k]
            fine = np.isfinite(b)
            per_z.append(np.corrcoef(a[fine], b[fine])[0, 1] if fine.sum() > 2 and np.std(b[fine]) > 0 else 0.0)
            others = np.delete(measured[rows], k, axis=1) / np.delete(span, k)
            movement.append(np.nanmean(np.nanstd(others, axis=0)))
        cutoff = CUTOFFS.get(name, DEFAULT_CUTOFF)
        spread = [np.std(got[ok & (req == level)]) for level in np.unique(req) if (ok & (req == level)).sum() > 1]
        out[name] = {
            "pearson_r": scores["pearson_r"],
            "mae": scores["mae"],
            "valid_share": float(ok.mean()),
            "cutoff": cutoff,
            "share_of_z_passing": float(np.mean(np.array(per_z) >= cutoff)),
            "other_properties_movement": float(np.nanmean(movement)),
            "spread_across_z": float(np.mean(spread)) if spread else float("nan"),
            "share_within_0.1": scores["share_within_0.1"],
        }
    return out


def controllers_to_compare(finetuned_path, directions_path, device, measure=None) -> dict:
    """The variants the evaluation draws, by name: the fine-tuned file as saved, the directions baseline, and, for a
    file with a closed loop, the file open loop, the baseline with the file's loop and, with ``measure`` (images ->
    property values [N, P]), both with the loop reading that measurement instead of the critic. Each file is read
    once; the variants share its networks."""
    finetuned = load_conditional_generator(finetuned_path).to(device)
    base, loop = finetuned.base, finetuned.closed_loop
    directions = load_directions(directions_path, base).to(device)
    out = {"finetuned": finetuned, "directions": directions}
    if loop is None:
        return out  # nothing to open or share: the first two say it all
    names = finetuned.property_names
    mapping, truncation = finetuned.cond_mapping, finetuned.truncation
    out["finetuned_open_loop"] = ConditionalGenerator(base, mapping, names, loop.copy_with(0), truncation).eval()
    # The baseline with the fine-tune's own closed loop, so that the loop's share of the result shows.
    out["directions_closed_loop"] = directions.with_closed_loop(loop)
    if measure is not None:
        measured = loop.copy_with(loop.steps, measure)
        out["finetuned_measured_loop"] = ConditionalGenerator(base, mapping, names, measured, truncation).eval()
        out["directions_measured_loop"] = directions.with_closed_loop(measured)
    return out


def drawing_cost(controller) -> dict:
    """What one drawn face costs: syntheses, critic passes and parser passes (the closed loop's), and Newton steps
    with the latent property model (a small network on the codes; no picture)."""
    loop = getattr(controller, "closed_loop", None)
    steps = loop.steps if loop is not None else 0
    parsed = steps if loop is not None and loop.measure is not None else 0
    mapping = getattr(controller, "cond_mapping", None)
    latent = int(mapping.latent_steps) if mapping is not None and mapping.latent_model is not None else 0
    return {"syntheses": 1 + steps, "critic_passes": steps, "parser_passes": parsed, "latent_model_steps": latent}


def independent_judges(landmarks, descriptor, subset_path, images_dir, reference_faces: int):
    """The evaluation's judges that are not the workflow's own: dlib's (vhuman.judges) and the stand-in gender
    classifier (vhuman.hand_label_stand_in) on every drawn face. Returns ``judge(images) -> verdicts`` and the
    dlib descriptors of up to ``reference_faces`` of the base generator's kept faces (``subset_path``), which the
    drawn faces' Fréchet distance is measured against."""
    import dataclasses

    import pandas as pd

    from vhuman.hand_label_stand_in import HandLabelStandIn
    from vhuman.io import to_uint8
    from vhuman.judges import FaceJudges
    from vhuman.judging import reference_descriptors

    judges, stand_in = FaceJudges(landmarks, descriptor), HandLabelStandIn()
    kept = pd.read_parquet(subset_path)["image_id"].tolist()
    reference = reference_descriptors(judges, images_dir, kept, reference_faces)

    def judge(images):
        pixels = to_uint8(images)
        return [dataclasses.replace(judges.judge(im), p_female=stand_in.label(im)[2]) for im in pixels]

    return judge, reference


def sweep_bounds(table, percentiles: list[float] | None) -> dict[str, tuple[float, float]]:
    """Where each property's sweep runs: its whole range (``percentiles`` None), or between two percentiles of its
    valid values in ``table`` (the female subset's properties), so that a sweep asks only for what the data holds;
    a property without valid values keeps its whole range."""
    bounds = {}
    for name in PROPERTY_NAMES:
        values = table[name][table[f"{name}_valid"].fillna(False).astype(bool)].to_numpy(np.float64)
        if percentiles is None or not len(values):
            bounds[name] = tuple(float(v) for v in RANGES[name])
        else:
            bounds[name] = tuple(float(v) for v in np.percentile(values, percentiles))
    return bounds


def measured_properties(parser, images: torch.Tensor) -> np.ndarray:
    """The workflow's own measurement of drawn faces: ``parser`` (vhuman.segmentation.Parser) and the properties
    stage on ``images`` [N, 3, H, W] in [-1, 1]; [N, P] in PROPERTY_NAMES order, NaN where a region is missing."""
    pixels = to_uint8(images)
    return measure_properties(parser(pixels), pixels)[list(PROPERTY_NAMES)].to_numpy()


def sweep_requests(
    rows: np.ndarray, num_z: int, levels: int, seed: int, bounds: dict[str, tuple[float, float]], z_dim: int
):
    """The sweeps ``evaluate`` draws: ``num_z`` random z, each with the other properties drawn once from ``rows``
    (the data's property vectors), and each property set to ``levels`` values from one end of its ``bounds`` to
    the other. Returns z [num_z, z_dim] and, per face, its request [F, P], z index [F] and swept property [F]."""
    rng = np.random.default_rng(seed)
    z_all = torch.randn(num_z, z_dim, generator=torch.Generator().manual_seed(seed))
    base_c = rows[rng.integers(0, len(rows), num_z)]
    requested, z_index, swept = [], [], []
    for k, name in enumerate(PROPERTY_NAMES):
        lo, hi = bounds[name]
        for zi in range(num_z):
            for level in np.linspace(lo, hi, levels):
                c = base_c[zi].copy()
                c[k] = level
                requested.append(c)
                z_index.append(zi)
                swept.append(k)
    return z_all, np.array(requested, np.float32), np.array(z_index), np.array(swept)


def evaluate(
    controller,
    rows: np.ndarray,
    num_z: int,
    levels: int,
    seed: int,
    measure_images=None,
    female_rate=None,
    female_rate_every: int = 1,
    with_truth: bool = False,
    batch: int = 64,
    progress: bool = True,
    judge_images=None,
    bounds: dict[str, tuple[float, float]] | None = None,
    reference_descriptors: np.ndarray | None = None,
) -> dict:
    """Sweep each property over ``levels`` values for ``num_z`` random z, the others drawn once per z from data.
    ``bounds`` (``sweep_bounds``) are where each sweep runs, each property's whole range by default;
    ``judge_images`` (images -> one vhuman.judges.Verdict each) adds the independent judges' view, and with
    ``reference_descriptors`` (the base generator's faces) their Fréchet distance in dlib's descriptor space.
    ``female_rate`` reads every ``female_rate_every``-th face only (one mean over thousands needs no more)."""
    bounds = bounds or {name: RANGES[name] for name in PROPERTY_NAMES}
    z_all, requested, z_index, swept = sweep_requests(rows, num_z, levels, seed, bounds, controller.z_dim)
    dev = next(controller.buffers()).device
    truth, parsed, female, verdicts = [], [], [], []
    for s in tqdm(range(0, len(requested), batch), desc="evaluate", disable=not progress):
        z = z_all[z_index[s : s + batch]].to(dev)
        c = torch.from_numpy(requested[s : s + batch]).to(dev)
        with torch.inference_mode():
            wp = controller.wp(z, c)  # once: with a closed loop, each call draws and reads the faces again
            images = controller.synthesis(wp)
        if with_truth:
            truth.append(truth_of(controller, wp))
        if measure_images is not None:
            parsed.append(measure_images(images))
        if female_rate is not None:
            read = images[(-s) % female_rate_every :: female_rate_every]  # faces 0, k, 2k... of the whole sweep
            if len(read):
                female.append(female_rate(read))
        if judge_images is not None:
            verdicts += judge_images(images)
    result = {"num_z": num_z, "levels": levels, "images": len(requested), "cost_per_face": drawing_cost(controller)}
    result["sweep_bounds"] = {name: list(bounds[name]) for name in PROPERTY_NAMES}
    if with_truth:
        params = np.concatenate(truth)
        result["truth"] = control_metrics(requested, params[:, PROPERTY_COLUMNS], swept, z_index)
        for name, value in nuisance_movement(params, swept, z_index).items():
            result["truth"][name]["unmeasured_attributes_movement"] = value
        near = reachable(requested)
        for k, name in enumerate(PROPERTY_NAMES):
            result["truth"][name]["perfect_controller"] = agreement(requested[swept == k, k], near[swept == k, k])
        result["female_rate_truth"] = float(np.mean(params[:, PARAM_INDEX["gender"]] > 0.5))
    if parsed:
        result["parser"] = control_metrics(requested, np.concatenate(parsed), swept, z_index)
    if female:
        female = np.concatenate(female)
        result["female_rate"], result["female_rate_faces"] = float(np.mean(female)), len(female)
    if judge_images is not None:
        result["judges"] = judged_control(verdicts, requested, swept, z_index, reference_descriptors)
    return result

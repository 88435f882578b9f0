"""Control as the independent judges see it (vhuman.judges): requested values against what dlib reads off the drawn
faces, whether a sweep keeps its person, and how often a face is found at all.

The judges' scales are their own (aspect ratios, degrees of yaw, luma), so agreement is a correlation, not an error:
Pearson r between the request and the judge's reading over each property's sweep, on the faces where the judge
found one. Properties the judges cannot read (hair, the background's spread) are left to the workflow's own
measurement.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from vhuman.io import load_image
from vhuman.judges import SAME_PERSON_DISTANCE, Verdict, same_person_share
from vhuman.vocabulary import PROPERTY_NAMES

# Which reading of a Verdict judges which property.
JUDGED = {"eyes": "eyes", "mouth": "mouth", "face_pose": "yaw", "background_light": "background_luma"}


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None  # undefined: written as null in the JSON
    return float(np.corrcoef(a, b)[0, 1])


def judged_control(
    verdicts: list[Verdict],
    requested: np.ndarray,
    swept: np.ndarray,
    z_index: np.ndarray,
    reference: np.ndarray | None = None,
) -> dict:
    """Per judged property: r of request against reading and how many faces were judged; over all sweeps: the share
    of faces found, and the share of each sweep's faces that are its first face's person (dlib's distance < 0.6;
    the first face is the one drawn for the sweep's first requested value); with ``reference`` (descriptors of
    the base generator's faces) the Fréchet distance of the drawn faces to them and its split-half floor."""
    found = np.array([v.face_found for v in verdicts], bool)
    result = {"faces": len(verdicts), "faces_found": float(found.mean()) if len(found) else None}
    for k, name in enumerate(PROPERTY_NAMES):
        if name not in JUDGED:
            continue
        reading = np.array([getattr(v, JUDGED[name]) for v in verdicts], np.float64)
        sel = (swept == k) & np.isfinite(reading)
        result[name] = {"pearson_r": _pearson(requested[sel, k], reading[sel]), "judged": int(sel.sum())}
    descriptors = np.stack([v.descriptor for v in verdicts]) if verdicts else np.zeros((0, 128))
    shares = []
    for k in np.unique(swept):
        for z in np.unique(z_index[swept == k]):
            idx = np.nonzero((swept == k) & (z_index == z))[0]
            if len(idx) > 1:
                shares.append(same_person_share(descriptors[idx[1:]], descriptors[idx[0]]))
    result["same_person_share"] = float(np.mean(shares)) if shares else None
    result["same_person_distance"] = SAME_PERSON_DISTANCE
    p_female = np.array([v.p_female for v in verdicts], np.float64)
    if np.isfinite(p_female).any():  # the stand-in classifier's view, on the faces it found
        result["female_rate_stand_in"] = float(np.mean(p_female[np.isfinite(p_female)] >= 0.5))
        result["stand_in_faces_found"] = float(np.isfinite(p_female).mean())
    if reference is not None:
        result["realism"] = realism(descriptors, reference)
    return result


def property_agreement(table, verdicts: list[Verdict]) -> dict:
    """The workflow's properties (a property table's rows) against the judges' readings of the same images: per
    judged property, Pearson r over the images where both have a value, and how many those are."""
    found = np.array([v.face_found for v in verdicts], bool)
    result = {"images": len(verdicts), "faces_found": float(found.mean()) if len(found) else None}
    for name, field in JUDGED.items():
        reading = np.array([getattr(v, field) for v in verdicts], np.float64)
        value = table[name].to_numpy(np.float64)
        sel = np.isfinite(reading) & np.isfinite(value) & table[f"{name}_valid"].fillna(False).astype(bool).to_numpy()
        result[name] = {"pearson_r": _pearson(value[sel], reading[sel]), "judged": int(sel.sum()), "judge": field}
    return result


def judge_property_table(table, images_dir, judges, progress: bool = True) -> dict:
    """``property_agreement`` for every image of a property table (``images_dir/{image_id}.png``)."""
    ids = table["image_id"].tolist()
    verdicts = [
        judges.judge(load_image(f"{images_dir}/{i}.png")) for i in tqdm(ids, desc="judges", disable=not progress)
    ]
    return property_agreement(table, verdicts)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two sets of feature vectors (rows), as FID computes it:
    |mu_a - mu_b|^2 + tr(Ca + Cb - 2 (Ca^1/2 Cb Ca^1/2)^1/2); the matrix root from symmetric eigenvalues."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    vals, vecs = np.linalg.eigh(cov_a)
    root_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    return float(
        ((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sqrt(np.clip(cross, 0, None)).sum()
    )


def realism(drawn: np.ndarray, reference: np.ndarray, seed: int = 0) -> dict:
    """How far the drawn faces' descriptors lie from the reference faces' (the base generator's female subset),
    beside the floor: the distance between two random halves of the reference, each of the same size as the sample
    the drawn faces are compared with (the distance shrinks with more faces, so sizes must match). Faces without a
    descriptor (none found) are left out and counted."""
    drawn, reference = drawn[np.isfinite(drawn).all(1)], reference[np.isfinite(reference).all(1)]
    n = min(len(drawn), len(reference) // 2)
    if n < 3:
        return {"frechet_distance": None, "split_half_floor": None, "faces": int(n)}
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(reference))
    half_a, half_b = reference[order[:n]], reference[order[n : 2 * n]]
    sample = drawn[rng.permutation(len(drawn))[:n]]
    return {
        "frechet_distance": frechet_distance(sample, half_b),
        "split_half_floor": frechet_distance(half_a, half_b),
        "faces": int(n),
    }


def reference_descriptors(judges, images_dir, image_ids: list[str], limit: int, seed: int = 0) -> np.ndarray:
    """dlib descriptors of up to ``limit`` of the given generated images (a random choice), NaN rows where no face
    was found: the base generator's faces that the drawn ones are compared with."""
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(image_ids))[:limit]
    return np.stack([judges.judge(load_image(f"{images_dir}/{image_ids[i]}.png")).descriptor for i in chosen])

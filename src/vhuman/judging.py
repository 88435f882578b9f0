"""Control as the independent judges see it (vhuman.judges): requested values against what dlib reads off the drawn
faces, whether a sweep keeps its person, and how often a face is found at all.

The judges' scales are their own (aspect ratios, degrees of yaw, luma), so agreement is a correlation, not an error:
Pearson r between the request and the judge's reading over each property's sweep, on the faces where the judge
found one. Properties the judges cannot read (hair, the background's spread) are left to the workflow's own
measurement.
"""

from __future__ import annotations

import numpy as np

from vhuman.judges import SAME_PERSON_DISTANCE, Verdict, same_person_share
from vhuman.vocabulary import PROPERTY_NAMES

# Which reading of a Verdict judges which property.
JUDGED = {"eyes": "eyes", "mouth": "mouth", "face_pose": "yaw", "background_light": "background_luma"}


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None  # undefined: written as null in the JSON
    return float(np.corrcoef(a, b)[0, 1])


def judged_control(verdicts: list[Verdict], requested: np.ndarray, swept: np.ndarray, z_index: np.ndarray) -> dict:
    """Per judged property: r of request against reading and how many faces were judged; over all sweeps: the share
    of faces found, and the share of each sweep's faces that are its first face's person (dlib's distance < 0.6;
    the first face is the one drawn for the sweep's first requested value)."""
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
    return result

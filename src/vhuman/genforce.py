"""GenForce checkpoint files: the layouts a user downloads, and strict loading into vhuman.stylegan's networks.

The model zoo's files hold 'generator', 'discriminator' and 'generator_smooth' (the EMA copy GenForce samples
with); training snapshots nest them under 'models'; bare state dicts and 'module.'-prefixed keys occur too. The
network's settings (resolution, widths, mapping depth) are read from the key table, so no config has to repeat them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from vhuman.discriminator import StyleGANDiscriminator
from vhuman.io import CheckpointError, save_torch_atomic
from vhuman.stylegan import StyleGANGenerator

GENERATOR_MARKERS = ("mapping.dense0.weight", "synthesis.layer0.const", "truncation.w_avg")


def _strip_module_prefix(state_dict: dict) -> dict:
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def pick_generator_state(ckpt, path) -> dict:
    """The state dict GenForce samples with: ``generator_smooth`` when present, else ``generator``; bare dicts too."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("models"), dict):
        ckpt = ckpt["models"]  # a GenForce training snapshot
    if isinstance(ckpt, dict):
        for key in ("generator_smooth", "generator"):
            if _is_state_dict(ckpt.get(key)):
                return _strip_module_prefix(ckpt[key])
    if _is_state_dict(ckpt):
        return _strip_module_prefix(ckpt)
    raise CheckpointError(
        f"{path}: not a GenForce StyleGAN checkpoint (expected a dict with 'generator' or "
        "'generator_smooth', or a bare state dict)"
    )


def generator_settings_from_state(sd: dict, path) -> dict:
    """Infer constructor settings (resolution, widths, mapping depth, label size) from a generator state dict."""
    missing = [k for k in GENERATOR_MARKERS if k not in sd]
    if missing:
        sample = ", ".join(list(sd)[:3])
        raise CheckpointError(
            f"{path}: not a GenForce StyleGAN (v1) generator: keys {missing} are missing "
            f"(it has e.g. {sample}). Check that the file is the StyleGAN checkpoint."
        )
    num_blocks = sum(1 for k in sd if k.startswith("synthesis.output") and k.endswith(".weight"))
    resolution = 4 * 2 ** (num_blocks - 1)
    mapping_layers = sum(1 for k in sd if k.startswith("mapping.dense") and k.endswith(".weight"))
    label_size = sd["mapping.label_weight"].shape[0] if "mapping.label_weight" in sd else 0
    in_dim = sd["mapping.dense0.weight"].shape[1]
    z_dim = in_dim // 2 if label_size else in_dim
    w_dim = sd[f"mapping.dense{mapping_layers - 1}.weight"].shape[0]
    nf_top = sd[f"synthesis.output{num_blocks - 1}.weight"].shape[1]
    fmaps_max = sd["synthesis.layer0.const"].shape[1]
    # Fused and unfused up-sampling store the same keys, so GenForce's 'auto' (fused from 128 up) is assumed.
    return dict(
        resolution=resolution,
        z_dim=z_dim,
        w_dim=w_dim,
        label_size=label_size,
        mapping_layers=mapping_layers,
        mapping_fmaps=sd["mapping.dense0.weight"].shape[0],
        image_channels=sd[f"synthesis.output{num_blocks - 1}.weight"].shape[0],
        fmaps_base=nf_top * resolution,
        fmaps_max=fmaps_max,
        fused_scale="auto",
    )


def _load_strict(module: nn.Module, sd: dict, path, what: str) -> None:
    try:
        module.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()][1:4]
        raise CheckpointError(f"{path}: {what} weights do not fit the network: {' '.join(lines)}") from exc


def generator_from_checkpoint(ckpt, path, expected_resolution: int | None = None) -> StyleGANGenerator:
    sd = pick_generator_state(ckpt, path)
    settings = generator_settings_from_state(sd, path)
    if expected_resolution is not None and settings["resolution"] != expected_resolution:
        raise CheckpointError(
            f"{path}: this generator draws {settings['resolution']}x{settings['resolution']} "
            f"images but the config asks for {expected_resolution}; fix 'resolution' in the "
            "config or use the matching checkpoint"
        )
    gen = StyleGANGenerator(**settings)
    _load_strict(gen, sd, path, "generator")
    return gen.eval()


def discriminator_from_checkpoint(ckpt, path) -> StyleGANDiscriminator:
    if isinstance(ckpt, dict) and isinstance(ckpt.get("models"), dict):
        ckpt = ckpt["models"]
    sd = ckpt.get("discriminator") if isinstance(ckpt, dict) and "discriminator" in ckpt else ckpt
    if not _is_state_dict(sd) or "input0.weight" not in _strip_module_prefix(sd):
        raise CheckpointError(f"{path}: no GenForce StyleGAN discriminator in this file")
    sd = _strip_module_prefix(sd)
    num_blocks = sum(1 for k in sd if k.startswith("input") and k.endswith(".weight"))
    resolution = 4 * 2 ** (num_blocks - 1)
    last = num_blocks - 1
    disc = StyleGANDiscriminator(
        resolution,
        image_channels=sd["input0.weight"].shape[1],
        label_size=(
            sd[f"layer{2 * last + 2}.weight"].shape[0] if sd[f"layer{2 * last + 2}.weight"].shape[0] > 1 else 0
        ),
        fmaps_base=sd["input0.weight"].shape[0] * resolution,
        fmaps_max=sd[f"input{last}.weight"].shape[0],
    )
    _load_strict(disc, sd, path, "discriminator")
    return disc.eval()


def save_genforce_checkpoint(
    path: str | Path,
    generator: StyleGANGenerator,
    discriminator: StyleGANDiscriminator | None = None,
    generator_smooth: StyleGANGenerator | None = None,
    **extra,
) -> None:
    """Write GenForce's model-zoo layout (top-level 'generator', 'discriminator', 'generator_smooth')."""
    ckpt = {"generator": generator.state_dict()}
    if discriminator is not None:
        ckpt["discriminator"] = discriminator.state_dict()
    if generator_smooth is not None:
        ckpt["generator_smooth"] = generator_smooth.state_dict()
    ckpt.update(extra)
    save_torch_atomic(ckpt, path)

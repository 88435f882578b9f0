"""Stage 1: draw images from a generator and keep every image's seed, z and w (and, in the synthetic world, truth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from tqdm import tqdm

from vhuman import synthetic
from vhuman.io import save_png, to_uint8, vectors_column, write_parquet_atomic
from vhuman.latents import latent_for_seed, truncate
from vhuman.runtime import pick_device


def image_id(index: int) -> str:
    return f"{index:06d}"


def latents_table(ids, seeds, z: np.ndarray, w: np.ndarray, truncation_psi, truncation_layers) -> pa.Table:
    """The stage's record of every image: id, seed, z and w, with the truncation that drew it as metadata."""
    table = pa.table(
        {
            "image_id": pa.array(ids),
            "seed": pa.array(seeds, pa.int64()),
            "z": vectors_column(z),
            "w": vectors_column(w),
        }
    )
    return table.replace_schema_metadata(
        {"truncation_psi": str(truncation_psi), "truncation_layers": str(truncation_layers)}
    )


def generate_images(
    generator: torch.nn.Module,
    num_images: int,
    base_seed: int,
    images_dir: str | Path,
    latents_path: str | Path,
    truncation_psi: float = 1.0,
    truncation_layers: int | None = None,
    batch_size: int = 64,
    device: str = "auto",
    truth_path: str | Path | None = None,
    progress: bool = True,
    indices: range | None = None,
) -> None:
    """Write ``images_dir/{image_id}.png`` and ``latents_path`` (image_id, seed, z, w) for images 0..N-1, or for
    ``indices`` only (one shard: ``vhuman.shards.shard_range``).

    Image i uses seed ``base_seed + i``. With a synthetic generator and ``truth_path`` the exact truth of every
    image (properties, gender, quality) is written too; its label maps are drawn from the same codes where they are
    checked (``vhuman.segmentation.agreement_with_rendered_truth``), for the kept images only.
    """
    dev = pick_device(device)
    generator = generator.to(dev).eval()
    want_truth = truth_path is not None
    if want_truth and not hasattr(generator, "synthesis_with_truth"):
        raise ValueError("truth can only be written for the synthetic world's generator")
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    ids, seeds, zs, ws, truth_rows = [], [], [], [], {name: [] for name in synthetic.TRUTH_NAMES}
    indices = range(num_images) if indices is None else indices
    with torch.inference_mode():
        for start in tqdm(range(0, len(indices), batch_size), desc="generate", unit="batch", disable=not progress):
            idx = indices[start : start + batch_size]
            batch_seeds = [base_seed + i for i in idx]
            z = torch.stack([latent_for_seed(s, generator.z_dim) for s in batch_seeds]).to(dev)
            w = generator.mapping(z)
            wp = truncate(w, generator.w_avg, generator.num_layers, truncation_psi, truncation_layers)
            if want_truth:
                rendered = generator.synthesis_with_truth(wp)
                images = rendered.images
                for name in synthetic.TRUTH_NAMES:
                    truth_rows[name].append(rendered.truth[name].cpu().numpy())
            else:
                images = generator.synthesis(wp)
            for i, rgb in zip(idx, to_uint8(images), strict=True):
                save_png(rgb, images_dir / f"{image_id(i)}.png")
            ids.extend(image_id(i) for i in idx)
            seeds.extend(batch_seeds)
            zs.append(z.cpu().numpy())
            ws.append(w.float().cpu().numpy())
    table = latents_table(ids, seeds, np.concatenate(zs), np.concatenate(ws), truncation_psi, truncation_layers)
    if want_truth:
        truth = pa.table(
            {
                "image_id": pa.array(ids),
                **{
                    name: pa.array(np.concatenate(truth_rows[name]).astype(np.float32))
                    for name in synthetic.TRUTH_NAMES
                },
            }
        )
        write_parquet_atomic(truth, truth_path)
    write_parquet_atomic(table, latents_path)

"""Files on disk: atomic writes, checkpoints, images and Parquet tables.

Everything a stage writes goes to a temporary file beside its target and is renamed into place, so a crash
never leaves a half-written artifact that Snakemake would take for finished.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

from vhuman.atomic import atomic_path


class CheckpointError(RuntimeError):
    """A weights file is missing, damaged or of the wrong network; the message names the file and the fix."""


def save_torch_atomic(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch_file(path: str | Path, what: str = "checkpoint"):
    """``torch.load`` with ``weights_only=True`` on CPU, turning every failure into one clear CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: {what} not found. Put the file there (see README, 'Real weights') "
            "or let the workflow's download rule fetch it."
        )
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: {what} is empty; delete it and download it again.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any way a damaged or foreign file breaks the unpickler: IndexError, KeyError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: cannot read this {what} (truncated or not a PyTorch file: {first}); "
            "delete it and download it again."
        ) from exc


def _finite(obj, where: str, undefined: list[str]):
    if isinstance(obj, dict):
        return {k: _finite(v, f"{where}.{k}", undefined) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v, f"{where}[{i}]", undefined) for i, v in enumerate(obj)]
    if isinstance(obj, float | np.floating) and not math.isfinite(obj):
        undefined.append(where.lstrip("."))
        return None
    return obj.item() if isinstance(obj, np.generic) else obj


def write_json(obj, path: str | Path) -> None:
    """Write ``obj`` as indented JSON, atomically. NaN and infinity are not JSON: such a value (a metric that is
    undefined, e.g. an AUROC over one class) is written as null, and stderr names it."""
    undefined: list[str] = []
    clean = _finite(obj, "", undefined)
    if undefined:
        print(f"{path}: undefined values written as null: {', '.join(undefined[:10])}", file=sys.stderr)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(clean, indent=1, allow_nan=False))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, H, W] RGB in [-1, 1] -> [N, H, W, 3] uint8, rounding as GenForce does (x + 1) * 127.5 + 0.5."""
    x = ((images.detach().float().cpu() + 1) * 127.5 + 0.5).clamp(0, 255)
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_png(array: np.ndarray, path: str | Path, palette: np.ndarray | None = None) -> None:
    """Write an RGB [H, W, 3] or label [H, W] uint8 array as PNG (label maps as palette PNGs), atomically."""
    img = Image.fromarray(array)
    if palette is not None:
        img.putpalette(palette.astype(np.uint8).flatten().tolist())  # an "L" image becomes "P", values kept
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def load_image(path: str | Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def load_image_batch(images_dir: str | Path, image_ids: list[str], size: int) -> torch.Tensor:
    """uint8 tensor [N, 3, size, size] of ``images_dir/{id}.png`` (resized with antialiasing when needed)."""
    arr = np.stack([load_image(Path(images_dir) / f"{i}.png") for i in image_ids])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    if x.shape[-1] != size:
        x = F.interpolate(x.float(), size=(size, size), mode="bilinear", antialias=True).round().clamp(0, 255)
        x = x.to(torch.uint8)
    return x


def load_label_map(path: str | Path) -> np.ndarray:
    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise ValueError(f"{path}: a label map must be a palette or greyscale PNG, not {img.mode}")
        return np.asarray(img)


def vectors_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """[N, D] float array -> Arrow fixed-size list column (D per row)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def column_vectors(table: pa.Table, name: str) -> np.ndarray:
    """Arrow fixed-size list column -> [N, D] float32 array."""
    col = table.column(name).combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)


def latent_codes(latents_path: str | Path) -> dict[str, np.ndarray]:
    """image id -> w from the generate stage's latents table."""
    try:
        table = pq.read_table(latents_path, columns=["image_id", "w"])
        return dict(zip(table.column("image_id").to_pylist(), column_vectors(table, "w"), strict=True))
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"{latents_path}: not a latents table with image_id and w ({exc}); rerun "
            "`snakemake results/generated/latents.parquet`"
        ) from None


def write_parquet_atomic(table: pa.Table, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def verify_sha256(path: str | Path, expected: str) -> None:
    """Stop with a clear error when a file's sha256 differs from the one recorded in the config."""
    if not expected:
        return
    actual = sha256_file(path)
    if actual.lower() != expected.lower():
        raise CheckpointError(
            f"{path}: sha256 {actual} does not match the config's {expected}. The file is "
            "damaged or a different release; download it again, or record the hash of the copy "
            "you trust in the config."
        )


class Tee:
    """A text stream that writes to several streams: a rule's log file and the terminal."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for s in self.streams:
            s.write(text)
            s.flush()
        return len(text)

    def flush(self):
        for s in self.streams:
            s.flush()


@contextlib.contextmanager
def logging_to(path: str | Path | None) -> Iterator[None]:
    """Copy stdout and stderr (messages, progress bars, warnings) into a rule's log file while keeping them on the
    terminal. A failure's traceback goes into the log too, so the file Snakemake points to says what broke (Snakemake
    itself prints it on the terminal)."""
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as log:
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(old_out, log), Tee(old_err, log)
        try:
            yield
        except BaseException:
            log.write(traceback.format_exc())
            raise
        finally:
            sys.stdout, sys.stderr = old_out, old_err


def append_csv_row(path: Path, row: dict) -> None:
    """One row appended to a CSV log (its header written first when the file is new)."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)

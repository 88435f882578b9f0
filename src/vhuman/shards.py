"""Sharded stages: which items a shard holds, and joining the shards' outputs into the stage's own."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vhuman.io import write_parquet_atomic


def shard_range(num_images: int, shards: int, shard: int) -> range:
    """The image indices of shard ``shard`` of ``shards``: consecutive, as equal as can be, together 0..N-1."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not one of 0..{shards - 1}")
    return range(shard * num_images // shards, (shard + 1) * num_images // shards)


def gather_shards(
    shard_dirs: list[str | Path], out_dirs: list[str | Path], tables: list[tuple[list, str | Path]]
) -> None:
    """Join shards into the stage's outputs: every file of each ``shard_dirs[k][j]`` into ``out_dirs[j]`` (hard links
    where the file system allows, else copies), and each ``(shard tables, out path)`` pair concatenated in shard
    order (the metadata of the first kept). Written so that a killed gather leaves no output half-made: files go
    in place before the tables, which Snakemake's outputs are checked by, and each table is written atomically."""
    for out in out_dirs:
        Path(out).mkdir(parents=True, exist_ok=True)
    for dirs in shard_dirs:
        for source_dir, out in zip(dirs, out_dirs, strict=True):
            for source in Path(source_dir).iterdir():
                if source.name.startswith("."):
                    continue  # Snakemake's own markers
                target = Path(out) / source.name
                target.unlink(missing_ok=True)
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copyfile(source, target)
    for parts, out_path in tables:
        pieces = [pq.read_table(path) for path in parts]
        table = pa.concat_tables(pieces).replace_schema_metadata(pieces[0].schema.metadata)
        write_parquet_atomic(table, out_path)

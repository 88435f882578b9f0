import pandas as pd
import torch

from vhuman.io import logging_to, verify_sha256
from vhuman.runtime import pick_device, precision_scope
from vhuman.segmentation import Parser, segment_images
from vhuman.shards import shard_range

with logging_to(snakemake.log[0]), precision_scope(pick_device(snakemake.params.device), snakemake.params.precision):
    torch.set_num_threads(snakemake.threads)
    verify_sha256(snakemake.input.parser, snakemake.params.sha256)
    parser = Parser(
        snakemake.params.kind,
        snakemake.input.parser,
        snakemake.params.mask_resolution,
        pick_device(snakemake.params.device),
    )
    ids = list(pd.read_parquet(snakemake.input.subset, columns=["image_id"])["image_id"])
    ids = [ids[i] for i in shard_range(len(ids), snakemake.params.shards, int(snakemake.wildcards.shard))]
    segment_images(parser, snakemake.input.images, ids, snakemake.output.masks, snakemake.params.batch_size)

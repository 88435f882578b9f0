import pandas as pd

from vhuman.io import logging_to
from vhuman.report import mask_overlay_grid

with logging_to(snakemake.log[0]):
    ids = list(pd.read_parquet(snakemake.input.subset, columns=["image_id"])["image_id"])[:8]
    mask_overlay_grid(snakemake.input.images, snakemake.input.masks, ids, snakemake.output[0])

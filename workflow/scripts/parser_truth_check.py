import pandas as pd

from vhuman.io import logging_to, write_json
from vhuman.segmentation import mask_agreement

with logging_to(snakemake.log[0]):
    ids = list(pd.read_parquet(snakemake.input.subset, columns=["image_id"])["image_id"])
    report = {"generated_images": mask_agreement(snakemake.input.masks, snakemake.input.truth_masks, ids)}
    write_json(report, snakemake.output[0])

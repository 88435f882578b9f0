import json

import pandas as pd

from vhuman.io import atomic_path, logging_to
from vhuman.segmentation import mask_agreement

with logging_to(snakemake.log[0]):
    ids = list(pd.read_parquet(snakemake.input.subset, columns=["image_id"])["image_id"])
    report = {"generated_images": mask_agreement(snakemake.input.masks, snakemake.input.truth_masks, ids)}
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(json.dumps(report, indent=1))

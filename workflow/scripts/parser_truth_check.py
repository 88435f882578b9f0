import pandas as pd
import torch

from vhuman.generators import load_generator
from vhuman.io import logging_to, write_json
from vhuman.segmentation import agreement_with_rendered_truth

with logging_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    ids = list(pd.read_parquet(snakemake.input.subset, columns=["image_id"])["image_id"])
    generator = load_generator(snakemake.input.checkpoint, snakemake.params.kind, snakemake.params.resolution)
    agreement = agreement_with_rendered_truth(snakemake.input.masks, generator.eval(), snakemake.input.latents, ids)
    write_json({"generated_images": agreement}, snakemake.output[0])

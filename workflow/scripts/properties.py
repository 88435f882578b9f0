import pandas as pd

from vhuman.io import logging_to
from vhuman.properties import property_table

with logging_to(snakemake.log[0]):
    subset = pd.read_parquet(snakemake.input.subset)
    gender = subset[["image_id", "p_female"]].rename(columns={"p_female": "gender"})
    property_table(
        list(subset["image_id"]), snakemake.input.images, snakemake.input.masks, snakemake.output[0], extra=gender
    )

import pandas as pd
import pyarrow.parquet as pq

from vhuman.control import fit_directions
from vhuman.io import logging_to, save_torch_atomic

with logging_to(snakemake.log[0]):
    directions = fit_directions(
        pq.read_table(snakemake.input.latents),
        pd.read_parquet(snakemake.input.properties),
        pd.read_parquet(snakemake.input.labels),
    )
    save_torch_atomic(
        {**directions, "base_checkpoint": snakemake.input.generator, "base_kind": snakemake.params.kind},
        snakemake.output[0],
    )

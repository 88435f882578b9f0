import pandas as pd

from vhuman.gender import truth_check
from vhuman.io import logging_to, write_json

with logging_to(snakemake.log[0]):
    result = truth_check(
        pd.read_parquet(snakemake.input.labels),
        pd.read_parquet(snakemake.input.truth),
        pd.read_parquet(snakemake.input.subset),
    )
    write_json(result, snakemake.output[0])

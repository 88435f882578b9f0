import pandas as pd

from vhuman.io import logging_to, write_json
from vhuman.properties import agreement_with_truth

with logging_to(snakemake.log[0]):
    result = agreement_with_truth(pd.read_parquet(snakemake.input.properties), pd.read_parquet(snakemake.input.truth))
    write_json(result, snakemake.output[0])

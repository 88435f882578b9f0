import pandas as pd

from vhuman.io import logging_to
from vhuman.report import property_histograms

with logging_to(snakemake.log[0]):
    property_histograms(pd.read_parquet(snakemake.input[0]), snakemake.output[0])

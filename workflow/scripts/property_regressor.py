import pandas as pd
import torch

from vhuman.io import logging_to
from vhuman.regressor import RegressorSettings, train_regressor
from vhuman.runtime import precision_scope

with logging_to(snakemake.log[0]), precision_scope(torch.device("cpu"), snakemake.params.precision):
    torch.set_num_threads(snakemake.threads)
    train_regressor(
        snakemake.input.images,
        pd.read_parquet(snakemake.input.properties),
        pd.read_parquet(snakemake.input.labels),
        RegressorSettings(**snakemake.params.settings),
        snakemake.output.model,
        snakemake.output.metrics,
    )

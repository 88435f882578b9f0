import torch

from vhuman.io import logging_to
from vhuman.runtime import precision_scope
from vhuman.segmentation import ParserSettings, train_world_parser

with logging_to(snakemake.log[0]), precision_scope(torch.device("cpu"), snakemake.params.precision):
    torch.set_num_threads(snakemake.threads)
    train_world_parser(
        ParserSettings(**snakemake.params.settings),
        snakemake.output.model,
        snakemake.params.mask_resolution,
        snakemake.output.metrics,
    )

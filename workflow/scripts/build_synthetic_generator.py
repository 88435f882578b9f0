from vhuman.generators import SyntheticGenerator
from vhuman.io import logging_to

with logging_to(snakemake.log[0]):
    SyntheticGenerator(resolution=snakemake.params.resolution, seed=snakemake.params.seed).save(snakemake.output[0])

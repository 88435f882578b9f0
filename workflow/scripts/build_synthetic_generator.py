from vhuman.generators import SyntheticGenerator, save_synthetic_generator
from vhuman.io import logging_to

with logging_to(snakemake.log[0]):
    generator = SyntheticGenerator(resolution=snakemake.params.resolution, seed=snakemake.params.seed)
    save_synthetic_generator(generator, snakemake.output[0])

from vhuman.generators import fetch_mobilestylegan
from vhuman.io import logging_to

with logging_to(snakemake.log[0]):
    fetch_mobilestylegan(snakemake.output[0], snakemake.params.archive, snakemake.params.resolution)

from vhuman.io import logging_to
from vhuman.weights import fetch_weights

with logging_to(snakemake.log[0]):
    fetch_weights(snakemake.output[0], snakemake.params.url, snakemake.params.sha256, snakemake.params.archive)

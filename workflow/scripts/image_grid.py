from vhuman.io import logging_to
from vhuman.report import image_grid_from_dir

with logging_to(snakemake.log[0]):
    image_grid_from_dir(snakemake.input.images, snakemake.output[0], snakemake.params.rows, snakemake.params.cols)

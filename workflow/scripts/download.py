from vhuman.io import download_file, logging_to

with logging_to(snakemake.log[0]):
    download_file(snakemake.params.url, snakemake.output[0], sha256=snakemake.params.sha256)

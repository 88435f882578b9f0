from pathlib import Path

from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

SYNTHETIC = config["generator"]["kind"] == "synthetic"


def generator_checkpoint():
    return config["generator"]["checkpoint"]


def final_outputs():
    return [
        "results/generated/latents.parquet",
        "results/generated/grid.png",
    ]

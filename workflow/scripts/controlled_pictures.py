from pathlib import Path

import pandas as pd

from vhuman.control import ANIMATIONS, animation, data_rows, load_directions, sweep_grid
from vhuman.io import logging_to, save_png
from vhuman.synthetic import PROPERTY_NAMES
from vhuman.training import load_conditional_generator

with logging_to(snakemake.log[0]):
    rows = data_rows(pd.read_parquet(snakemake.input.properties))
    finetuned = load_conditional_generator(snakemake.input.finetuned)
    directions = load_directions(snakemake.input.directions, finetuned.base)
    seeds = list(snakemake.params.seeds)
    for name in PROPERTY_NAMES:
        save_png(sweep_grid(finetuned, name, seeds, rows), Path(snakemake.output.sweeps) / f"finetuned_{name}.png")
        save_png(sweep_grid(directions, name, seeds, rows), Path(snakemake.output.sweeps) / f"directions_{name}.png")
    for clip, (name, values) in ANIMATIONS.items():
        animation(finetuned, name, values, seeds[0], rows, Path(snakemake.output.animations) / f"{clip}.gif")

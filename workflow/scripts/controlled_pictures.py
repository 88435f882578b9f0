from pathlib import Path

import pandas as pd
import torch

from vhuman.conditional import load_conditional_generator
from vhuman.directions import load_directions
from vhuman.evaluation import sweep_bounds
from vhuman.io import atomic_path, logging_to, save_png
from vhuman.pictures import ANIMATIONS, animation, sweep_grid
from vhuman.properties import property_matrix
from vhuman.report import animation_page_html
from vhuman.runtime import precision_scope
from vhuman.vocabulary import PROPERTY_NAMES

with logging_to(snakemake.log[0]), precision_scope(torch.device("cpu"), snakemake.params.precision):
    table = pd.read_parquet(snakemake.input.properties)
    rows, bounds = property_matrix(table), sweep_bounds(table, snakemake.params.sweep_percentiles)
    finetuned = load_conditional_generator(snakemake.input.finetuned)
    directions = load_directions(snakemake.input.directions, finetuned.base)
    seeds = list(snakemake.params.seeds)
    for name in PROPERTY_NAMES:
        for label, controller in (("finetuned", finetuned), ("directions", directions)):
            grid = sweep_grid(controller, name, seeds, rows, bounds=bounds[name])
            save_png(grid, Path(snakemake.output.sweeps) / f"{label}_{name}.png")
    for clip, (name, values) in ANIMATIONS.items():
        gif = Path(snakemake.output.animations) / f"{clip}.gif"
        animation(finetuned, name, values, seeds[0], rows, gif)
        with atomic_path(gif.with_suffix(".html")) as tmp:
            tmp.write_text(animation_page_html(gif, f"{clip}: {name} between {min(values):g} and {max(values):g}"))

from pathlib import Path

import pandas as pd
import torch

from vhuman.conditional import load_conditional_generator
from vhuman.directions import load_directions
from vhuman.io import atomic_path, logging_to, save_png
from vhuman.pictures import ANIMATIONS, animation, sweep_grid
from vhuman.properties import property_matrix
from vhuman.report import animation_page_html
from vhuman.runtime import precision_scope
from vhuman.vocabulary import PROPERTY_NAMES

with logging_to(snakemake.log[0]), precision_scope(torch.device("cpu"), snakemake.params.precision):
    rows = property_matrix(pd.read_parquet(snakemake.input.properties))
    finetuned = load_conditional_generator(snakemake.input.finetuned)
    directions = load_directions(snakemake.input.directions, finetuned.base)
    seeds = list(snakemake.params.seeds)
    for name in PROPERTY_NAMES:
        save_png(sweep_grid(finetuned, name, seeds, rows), Path(snakemake.output.sweeps) / f"finetuned_{name}.png")
        save_png(sweep_grid(directions, name, seeds, rows), Path(snakemake.output.sweeps) / f"directions_{name}.png")
    for clip, (name, values) in ANIMATIONS.items():
        gif = Path(snakemake.output.animations) / f"{clip}.gif"
        animation(finetuned, name, values, seeds[0], rows, gif)
        with atomic_path(gif.with_suffix(".html")) as tmp:
            tmp.write_text(animation_page_html(gif, f"{clip}: {name} between {min(values):g} and {max(values):g}"))

import pandas as pd
import pyarrow.parquet as pq
import torch

from vhuman.directions import fit_directions
from vhuman.generators import load_generator
from vhuman.io import column_vectors, logging_to, save_torch_atomic, write_json
from vhuman.layer_probe import directions_layer_mask
from vhuman.regressor import load_regressor
from vhuman.runtime import pick_device, precision_scope

with logging_to(snakemake.log[0]), precision_scope(pick_device(snakemake.params.device), snakemake.params.precision):
    torch.set_num_threads(snakemake.threads)
    device = pick_device(snakemake.params.device)
    latents = pq.read_table(snakemake.input.latents)
    directions = fit_directions(
        latents, pd.read_parquet(snakemake.input.properties), pd.read_parquet(snakemake.input.labels)
    )
    base = load_generator(snakemake.input.generator, snakemake.params.kind, snakemake.params.resolution).to(device)
    critic = load_regressor(snakemake.input.regressor).to(device)
    # Which layers each direction acts through, seen by the critic on the first images' codes.
    probe = torch.from_numpy(column_vectors(latents, "w")[: snakemake.params.layer_probe_images]).float().to(device)
    mask, effect = directions_layer_mask(
        base, critic, directions["weights"].float().to(device), probe, directions["truncation"]
    )
    directions["layer_mask"] = mask
    save_torch_atomic(
        {**directions, "base_checkpoint": snakemake.input.generator, "base_kind": snakemake.params.kind},
        snakemake.output.directions,
    )
    write_json(
        {
            "rows": directions["rows"],
            "ridges": directions["ridges"],  # each line's cross-validated ridge
            "effect_per_layer": effect.tolist(),
            "layers_used": [[i for i, on in enumerate(row) if on] for row in mask.tolist()],
        },
        snakemake.output.layers,
    )

import pandas as pd
import torch

from vhuman.conditional import load_conditional_generator
from vhuman.directions import load_directions
from vhuman.evaluation import evaluate
from vhuman.gender import load_ensemble, predict_images
from vhuman.io import logging_to, to_uint8, write_json
from vhuman.properties import measure_properties, property_matrix
from vhuman.runtime import pick_device, precision_scope
from vhuman.segmentation import Parser
from vhuman.vocabulary import PROPERTY_NAMES

with logging_to(snakemake.log[0]), precision_scope(pick_device(snakemake.params.device), snakemake.params.precision):
    torch.set_num_threads(snakemake.threads)
    device = pick_device(snakemake.params.device)
    settings = snakemake.params.settings
    rows = property_matrix(pd.read_parquet(snakemake.input.properties))
    finetuned = load_conditional_generator(snakemake.input.finetuned).to(device)
    open_loop = load_conditional_generator(snakemake.input.finetuned, closed_loop_steps=0).to(device)
    directions = load_directions(snakemake.input.directions, finetuned.base).to(device)
    # The baseline with the fine-tune's own closed loop, so that the loop's share of the result shows.
    directions_closed = load_directions(snakemake.input.directions, finetuned.base, finetuned.closed_loop).to(device)
    parser = Parser(snakemake.params.parser_kind, snakemake.input.parser, snakemake.params.mask_resolution, device)
    gender = load_ensemble(snakemake.input.gender_cnn)

    def measure(images):
        table = measure_properties(parser(to_uint8(images)), to_uint8(images))
        return table[list(PROPERTY_NAMES)].to_numpy()

    def measure_tensor(images):
        return torch.from_numpy(measure(images).astype("float32"))

    # The same loops reading the properties through the parser and the properties stage instead of the critic.
    measured = load_conditional_generator(snakemake.input.finetuned).to(device)
    directions_measured = load_directions(snakemake.input.directions, finetuned.base, measured.closed_loop).to(device)
    if measured.closed_loop is not None:
        measured.closed_loop.measure = measure_tensor

    def female(images):
        return predict_images(gender, images, snakemake.params.gender_input_size)[:, 0] >= 0.5

    report = {}
    controllers = {
        "finetuned": finetuned,
        "directions": directions,
        "finetuned_open_loop": open_loop,
        "directions_closed_loop": directions_closed,
        "finetuned_measured_loop": measured,
        "directions_measured_loop": directions_measured,
    }
    for name, controller in controllers.items():
        if name.endswith("_loop") and finetuned.closed_loop is None:
            continue  # a file without a closed loop: the first two say it all
        report[name] = evaluate(
            controller,
            rows,
            settings["num_z"],
            settings["levels"],
            settings["seed"],
            measure_images=measure,
            female_rate=female,
            with_truth=snakemake.params.with_truth,
        )
    write_json(report, snakemake.output[0])

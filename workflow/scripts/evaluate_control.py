import pandas as pd
import torch

from vhuman.control import data_rows, evaluate, load_directions
from vhuman.gender import load_ensemble, predict_images
from vhuman.generate import pick_device
from vhuman.io import logging_to, to_uint8, write_json
from vhuman.properties import measure_properties
from vhuman.segmentation import Parser
from vhuman.synthetic import PROPERTY_NAMES
from vhuman.training import load_conditional_generator

with logging_to(snakemake.log[0]):
    torch.set_num_threads(snakemake.threads)
    device = pick_device(snakemake.params.device)
    settings = snakemake.params.settings
    rows = data_rows(pd.read_parquet(snakemake.input.properties))
    finetuned = load_conditional_generator(snakemake.input.finetuned).to(device)
    directions = load_directions(snakemake.input.directions, finetuned.base).to(device)
    parser = Parser(snakemake.params.parser_kind, snakemake.input.parser, snakemake.params.mask_resolution, device)
    gender = load_ensemble(snakemake.input.gender_cnn)

    def measure(images):
        table = measure_properties(parser(to_uint8(images)), to_uint8(images))
        return table[list(PROPERTY_NAMES)].to_numpy()

    def female(images):
        return predict_images(gender, images, snakemake.params.gender_input_size)[:, 0] >= 0.5

    report = {}
    for name, controller in (("finetuned", finetuned), ("directions", directions)):
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

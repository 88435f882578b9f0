import pandas as pd
import torch

from vhuman.evaluation import controllers_to_compare, evaluate, independent_judges, measured_properties, sweep_bounds
from vhuman.gender import load_ensemble, predict_images
from vhuman.io import logging_to, write_json
from vhuman.properties import property_matrix
from vhuman.runtime import pick_device, precision_scope
from vhuman.segmentation import Parser
from vhuman.vocabulary import PROPERTY_NAMES

with logging_to(snakemake.log[0]), precision_scope(pick_device(snakemake.params.device), snakemake.params.precision):
    torch.set_num_threads(snakemake.threads)
    device = pick_device(snakemake.params.device)
    settings = snakemake.params.settings
    table = pd.read_parquet(snakemake.input.properties)
    rows, bounds = property_matrix(table), sweep_bounds(table, settings["sweep_percentiles"])
    parser = Parser(snakemake.params.parser_kind, snakemake.input.parser, snakemake.params.mask_resolution, device)
    gender = load_ensemble(snakemake.input.gender_cnn)

    def measure(images):
        return measured_properties(parser, images)

    def female(images):
        return predict_images(gender, images, snakemake.params.gender_input_size)[:, 0] >= 0.5

    judge = reference = None
    if "judge_landmarks" in snakemake.input.keys():  # real faces: judges that are not the workflow's own
        faces = len(PROPERTY_NAMES) * settings["num_z"] * settings["levels"]  # drawn per variant
        files = [snakemake.input[k] for k in ("judge_landmarks", "judge_descriptor", "subset", "images")]
        judge, reference = independent_judges(*files, reference_faces=2 * faces)

    controllers = controllers_to_compare(
        snakemake.input.finetuned,
        snakemake.input.directions,
        device,
        measure=lambda images: torch.from_numpy(measure(images).astype("float32")),
    )
    report = {
        name: evaluate(
            controller,
            rows,
            settings["num_z"],
            settings["levels"],
            settings["seed"],
            measure_images=measure,
            female_rate=female,
            female_rate_every=settings["female_rate_every"],
            with_truth=snakemake.params.with_truth,
            judge_images=judge,
            bounds=bounds,
            reference_descriptors=reference,
        )
        for name, controller in controllers.items()
    }
    write_json(report, snakemake.output[0])

import pandas as pd
import torch

from vhuman.amortise import AmortiseSettings
from vhuman.finetune import FinetuneSettings, finetune
from vhuman.generators import load_generator
from vhuman.io import load_image_batch, load_torch_file, logging_to, sha256_file
from vhuman.regressor import load_regressor
from vhuman.runtime import pick_device, precision_scope

with logging_to(snakemake.log[0]), precision_scope(pick_device(snakemake.params.device), snakemake.params.precision):
    torch.set_num_threads(snakemake.threads)
    base = load_generator(snakemake.input.generator, snakemake.params.kind, snakemake.params.resolution)
    properties = pd.read_parquet(snakemake.input.properties)
    directions = load_torch_file(snakemake.input.directions, what="latent directions")
    images = load_image_batch(snakemake.input.images, list(properties["image_id"]), base.resolution)
    record = {
        "base_checkpoint": snakemake.input.generator,
        "base_sha256": sha256_file(snakemake.input.generator),
        "config": snakemake.params.config,
    }
    finetune(
        base,
        load_torch_file(snakemake.input.generator),
        load_regressor(snakemake.input.regressor),
        properties,
        images,
        FinetuneSettings(**snakemake.params.settings),
        snakemake.params.work_dir,
        snakemake.output[0],
        record,
        pick_device(snakemake.params.device),
        directions=directions,
        amortise_settings=AmortiseSettings(**snakemake.params.amortise),
    )

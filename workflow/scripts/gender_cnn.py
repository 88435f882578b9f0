import pandas as pd
import torch

from vhuman.gender import ClassifierSettings, train_and_label
from vhuman.io import logging_to
from vhuman.labeling import read_labels
from vhuman.runtime import precision_scope

with logging_to(snakemake.log[0]), precision_scope(torch.device("cpu"), snakemake.params.precision):
    torch.set_num_threads(snakemake.threads)
    ids = list(pd.read_parquet(snakemake.input.latents, columns=["image_id"])["image_id"])
    manual = read_labels(snakemake.input.manual, known_ids=set(ids))
    train_and_label(
        snakemake.input.images,
        ids,
        manual,
        ClassifierSettings(**snakemake.params.settings),
        snakemake.output.model,
        snakemake.output.labels,
        snakemake.output.metrics,
        hand_label_error_rate=snakemake.params.hand_label_error_rate,
    )

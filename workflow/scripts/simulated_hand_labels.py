import sys

import pandas as pd

from vhuman.io import logging_to
from vhuman.labeling import simulate_hand_labels

with logging_to(snakemake.log[0]):
    flipped = simulate_hand_labels(
        pd.read_parquet(snakemake.input.truth),
        snakemake.params.first,
        snakemake.params.error_rate,
        snakemake.params.seed,
        snakemake.output[0],
    )
    print(
        f"Synthetic world: simulated hand labels for the first {snakemake.params.first} images from the truth, "
        f"with {flipped} labels flipped (error rate {snakemake.params.error_rate}) to mimic human mistakes.",
        file=sys.stderr,
    )

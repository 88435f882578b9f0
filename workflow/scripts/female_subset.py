import pandas as pd

from vhuman.gender import female_subset
from vhuman.io import logging_to, write_json

with logging_to(snakemake.log[0]):
    labels = pd.read_parquet(snakemake.input.labels)
    subset = female_subset(
        labels, snakemake.params.min_p_female, snakemake.params.min_p_good_quality, snakemake.output.subset
    )
    summary = {
        "images": len(labels),
        "female_subset": len(subset),
        "from_hand_labels": int((subset["source"] == "manual").sum()),
        "min_p_female": snakemake.params.min_p_female,
        "min_p_good_quality": snakemake.params.min_p_good_quality,
    }
    write_json(summary, snakemake.output.summary)

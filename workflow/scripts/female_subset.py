import json

import pandas as pd

from vhuman.gender import female_subset
from vhuman.io import atomic_path, logging_to

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
    with atomic_path(snakemake.output.summary) as tmp:
        tmp.write_text(json.dumps(summary, indent=1))

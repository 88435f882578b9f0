import json

import pandas as pd

from vhuman.gender import truth_check
from vhuman.io import atomic_path, logging_to

with logging_to(snakemake.log[0]):
    result = truth_check(
        pd.read_parquet(snakemake.input.labels),
        pd.read_parquet(snakemake.input.truth),
        pd.read_parquet(snakemake.input.subset),
    )
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(json.dumps(result, indent=1))

import json

import pandas as pd

from vhuman.io import atomic_path, logging_to
from vhuman.properties import agreement_with_truth

with logging_to(snakemake.log[0]):
    result = agreement_with_truth(pd.read_parquet(snakemake.input.properties), pd.read_parquet(snakemake.input.truth))
    with atomic_path(snakemake.output[0]) as tmp:
        tmp.write_text(json.dumps(result, indent=1))

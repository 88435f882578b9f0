import pandas as pd

from vhuman.io import logging_to, write_json
from vhuman.judges import FaceJudges
from vhuman.judging import judge_property_table
from vhuman.properties import range_shares

with logging_to(snakemake.log[0]):
    table = pd.read_parquet(snakemake.input.properties)
    judges = FaceJudges(snakemake.input.judge_landmarks, snakemake.input.judge_descriptor)
    result = {"ranges": range_shares(table), "judges": judge_property_table(table, snakemake.input.images, judges)}
    write_json(result, snakemake.output[0])

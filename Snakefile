# Attribute-controllable virtual-human faces from a pretrained StyleGAN.
# Run: snakemake --cores 8 --resources gpu=1   (config/config.yaml is the synthetic face world)

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/generate.smk"
include: "workflow/rules/gender.smk"
include: "workflow/rules/segmentation.smk"
include: "workflow/rules/properties.smk"
include: "workflow/rules/regressor.smk"
include: "workflow/rules/directions.smk"
include: "workflow/rules/finetune.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/report.smk"


localrules:
    all,


rule all:
    input:
        final_outputs(),
    default_target: True

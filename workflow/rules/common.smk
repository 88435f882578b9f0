from pathlib import Path

import yaml

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")


def check_whole_numbers(values, schema, path="config"):
    """JSON Schema takes 8.0 for an integer; a stage would not. Refuse it here, naming the key."""
    if schema.get("type") == "integer" and isinstance(values, float):
        raise WorkflowError(f"{path} must be a whole number written without a decimal point, got {values!r}")
    if isinstance(values, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in values:
                check_whole_numbers(values[key], sub, f"{path}.{key}")
    elif isinstance(values, list):
        for i, item in enumerate(values):
            check_whole_numbers(item, schema.get("items", {}), f"{path}[{i}]")


check_whole_numbers(config, yaml.safe_load(Path(workflow.basedir, "workflow/schemas/config.schema.yaml").read_text()))

if config["generate"]["shards"] > config["generate"]["num_images"]:
    raise WorkflowError(
        f"config.generate.shards ({config['generate']['shards']}) is more than generate.num_images "
        f"({config['generate']['num_images']}): a shard would draw no image; lower generate.shards"
    )

SYNTHETIC = config["generator"]["kind"] == "synthetic"


def generator_checkpoint():
    return config["generator"]["checkpoint"]


def manual_labels(wildcards):
    """The hand-label CSV; with real weights a missing file stops the DAG with what to do."""
    path = config["labels"]["manual_csv"]
    if not SYNTHETIC and not config["labels"].get("stand_in") and not Path(path).exists():
        raise WorkflowError(
            f"Hand labels {path} are missing. Generate the images, then label the first "
            f"{config['labels']['num_manual']} of them in the browser:\n"
            "  snakemake --configfile <this config> --cores 8 results/generated/latents.parquet\n"
            f"  vhuman-label --images results/generated/images --labels {path} "
            f"--first {config['labels']['num_manual']}\n"
            "then run the workflow again."
        )
    return path



def judge_files(wildcards):
    """The independent judges' model files where the configuration names them (real faces), else none."""
    if "judges" not in config:
        return {}
    return {
        "judge_landmarks": config["judges"]["landmarks"]["path"],
        "judge_descriptor": config["judges"]["descriptor"]["path"],
    }

def final_outputs():
    outputs = [
        "results/generated/latents.parquet",
        "results/generated/grid.png",
        "results/gender/metrics.json",
        "results/subset/summary.json",
        "results/segmentation/examples.png",
        "results/properties.parquet",
        "results/properties/histograms.png",
        "results/finetuned.pth",
        "results/evaluation/control.json",
        "results/evaluation/sweeps",
        "results/evaluation/animations",
    ]
    if SYNTHETIC:
        outputs += [
            "results/gender/truth_check.json",
            "results/segmentation/truth_check.json",
            "results/properties/truth_check.json",
        ]
    if "judges" in config:
        outputs += ["results/properties/judge_check.json"]
    # Tables for the report, written by rule report_tables, and the stage times of this run.
    outputs += [f"results/report/{name}.html" for name in REPORT_TABLES]
    outputs += ["results/benchmarks/stage_times.json"]
    return outputs


# The metric files shown as HTML tables in the report (a JSON file would only be a download there).
# Table name -> (metric file, caption, report category).
REPORT_TABLES = {
    "gender_metrics": ("results/gender/metrics.json", "gender_metrics.rst", "2. Gender labels"),
    "female_subset": ("results/subset/summary.json", "female_subset.rst", "2. Gender labels"),
    "control": ("results/evaluation/control.json", "control.rst", "5. Control"),
    "direction_layers": ("results/directions/layers.json", "direction_layers.rst", "5. Control"),
}
if SYNTHETIC:
    REPORT_TABLES.update(
        {
            "parser_metrics": (
                "results/segmentation/parser_metrics.json",
                "parser_metrics.rst",
                "3. Segmentation",
            ),
            "gender_truth_check": (
                "results/gender/truth_check.json",
                "gender_truth_check.rst",
                "2. Gender labels",
            ),
            "parser_truth_check": (
                "results/segmentation/truth_check.json",
                "parser_truth_check.rst",
                "3. Segmentation",
            ),
            "properties_truth_check": (
                "results/properties/truth_check.json",
                "properties_truth_check.rst",
                "4. Properties",
            ),
        }
    )


if "judges" in config:
    REPORT_TABLES["properties_judge_check"] = (
        "results/properties/judge_check.json",
        "properties_judge_check.rst",
        "4. Properties",
    )


def report_table_outputs():
    return {
        name: report(f"results/report/{name}.html", caption=f"../report/{caption}", category=category)
        for name, (_, caption, category) in REPORT_TABLES.items()
    }


def benchmark_files():
    """Every rule's benchmark file by rule, a sharded rule's one per shard (`rule/shard`, summed in the table)."""
    shards = {
        "generate_shard": range(config["generate"]["shards"]),
        "segment_shard": range(config["segmentation"]["shards"]),
    }
    files = {}
    for r in workflow.rules:
        if not r.benchmark or r.name == "stage_times":
            continue
        if r.name in shards:
            files |= {f"{r.name}/{s}": f"results/benchmarks/{r.name}/{s}.tsv" for s in shards[r.name]}
        else:
            files[r.name] = r.benchmark
    return files

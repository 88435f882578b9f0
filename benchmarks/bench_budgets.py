"""Work budgets of the embedded default, side by side on one run's inputs: each variant's result and its time.

Run after `make run` (it reads that run's results/ and config/config.yaml, and writes only under a scratch folder):

    .venv/bin/python benchmarks/bench_budgets.py --stage gender \\
        --variant gender_cnn.folds=5 --variant gender_cnn.folds=3,gender_cnn.max_epochs=10

Each variant is a comma-separated list of config overrides (dotted key = YAML value) on top of the config file; the
first variant is the yardstick. Every variant runs the stage's own package function in one process, in the same
precision (float32 unless `--precision` says otherwise), and the figures that decide whether a cut is allowed are
printed beside its time:
- gender: gender and quality AUROC against the world's truth on the images without hand labels, and the female
  subset's size, female precision and good-quality precision at the config's thresholds;
- parser: mIoU on held-out renders, and Pearson r of the properties measured from its masks of the run's kept
  images against the truth (lowest and per property);
- regressor: the critic's held-out r per property (lowest and per property).
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from vhuman.gender import ClassifierSettings, female_subset, train_and_label, truth_check
from vhuman.io import load_image
from vhuman.labeling import read_labels
from vhuman.properties import agreement_with_truth, measure_properties
from vhuman.regressor import RegressorSettings, train_regressor
from vhuman.report import machine_description
from vhuman.runtime import precision_scope
from vhuman.segmentation import ParserSettings, load_world_parser, parse_tensor, train_world_parser
from vhuman.vocabulary import PROPERTY_NAMES

CPU = torch.device("cpu")


def gender_stage(cfg, results, scratch):
    ids = list(pd.read_parquet(results / "generated/latents.parquet", columns=["image_id"])["image_id"])
    manual = read_labels(results / "labels/manual_labels.csv", known_ids=set(ids))
    train_and_label(
        results / "generated/images",
        ids,
        manual,
        ClassifierSettings(**cfg["gender_cnn"]),
        scratch / "cnn.pth",
        scratch / "labels.parquet",
        scratch / "metrics.json",
        cfg["labels"]["hand_label_error_rate"],
        progress=False,
    )
    labels = pd.read_parquet(scratch / "labels.parquet")
    subset = female_subset(
        labels, cfg["subset"]["min_p_female"], cfg["subset"]["min_p_good_quality"], scratch / "subset.parquet"
    )
    check = truth_check(labels, pd.read_parquet(results / "generated/truth.parquet"), subset)
    return {
        "gender AUROC": check["gender_auroc"],
        "quality AUROC": check["quality_auroc"],
        "subset images": check["subset_size"],
        "subset female precision": check["subset_female_precision"],
        "subset good-quality precision": check["subset_good_quality_precision"],
    }


def parser_stage(cfg, results, scratch):
    seg = cfg["segmentation"]
    metrics = train_world_parser(
        ParserSettings(**seg["world_parser"]), scratch / "parser.pth", seg["mask_resolution"], None, False
    )
    model = load_world_parser(scratch / "parser.pth")  # the saved file, as the segment rule reads it
    ids = list(pd.read_parquet(results / "subset/female.parquet", columns=["image_id"])["image_id"])
    images_dir = results / "generated/images"
    tables = []
    for start in range(0, len(ids), 512):
        part = ids[start : start + 512]
        pixels = np.stack([load_image(images_dir / f"{i}.png") for i in part])
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        table = measure_properties(parse_tensor(model, x, seg["mask_resolution"]), pixels)
        table.insert(0, "image_id", part)
        tables.append(table)
    agreement = agreement_with_truth(pd.concat(tables), pd.read_parquet(results / "generated/truth.parquet"))
    r = {name: agreement[name]["pearson_r"] for name in PROPERTY_NAMES}
    return {"mIoU": metrics["held_out_renders"]["miou"], "properties min r": min(r.values()), **r}


def regressor_stage(cfg, results, scratch):
    metrics = train_regressor(
        results / "generated/images",
        pd.read_parquet(results / "properties.parquet"),
        pd.read_parquet(results / "gender/labels.parquet"),
        RegressorSettings(**cfg["finetune"]["regressor"]),
        scratch / "regressor.pth",
        None,
        False,
    )
    r = {name: metrics[name]["pearson_r"] for name in PROPERTY_NAMES}
    return {"critic min r": min(r.values()), **r}


STAGES = {"gender": gender_stage, "parser": parser_stage, "regressor": regressor_stage}


def with_overrides(cfg: dict, variant: str) -> dict:
    """``a.b=1,c=x`` applied to a copy of ``cfg``; every key must already exist (a typo is an error)."""
    out = json.loads(json.dumps(cfg))
    for item in filter(None, variant.split(",")):
        key, _, value = item.partition("=")
        *parents, leaf = key.strip().split(".")
        section = out
        for part in parents:
            section = section[part]
        if leaf not in section:
            raise KeyError(f"{key}: no such config key")
        section[leaf] = yaml.safe_load(value)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results", type=Path)
    ap.add_argument("--config", default="config/config.yaml", type=Path)
    ap.add_argument("--stage", required=True, choices=list(STAGES))
    ap.add_argument("--variant", action="append", required=True, help="comma-separated overrides; repeatable")
    ap.add_argument("--precision", default="float32", choices=["float32", "auto", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = yaml.safe_load(args.config.read_text())
    rows = {}
    for variant in args.variant:
        run_cfg = with_overrides(cfg, variant)
        with tempfile.TemporaryDirectory() as scratch, precision_scope(CPU, args.precision):
            start = time.perf_counter()
            figures = STAGES[args.stage](run_cfg, args.results, Path(scratch))
            seconds = time.perf_counter() - start
        rows[variant or "config"] = {"seconds": round(seconds, 1), **figures}
        print(f"{variant or 'config'}: {seconds:.1f} s, " + ", ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    report = {
        "stage": args.stage,
        "precision": args.precision,
        "threads": args.threads,
        "machine": machine_description(),
        "variants": rows,
    }
    if args.out:
        args.out.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
